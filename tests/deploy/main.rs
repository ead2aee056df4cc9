//! Lab integration tests of whole deploys: the deploy-flake binary against
//! real targets (systemd, a Nix daemon, sshd) booted on this machine.
//! Every test asserts what the targets run and boot afterwards, and what
//! the tool reported and exited with.

#[path = "../common/mod.rs"]
mod common;
mod contract;
mod deployer;
mod display;
mod helpers;
mod holes;
mod operator;
mod pipeline;
mod reboot;
mod rollout;
mod safety;
mod scale;
