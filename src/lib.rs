//! deploy-flake: deploy the NixOS configurations of a Nix flake to many
//! hosts over ssh, in parallel, without leaving a host half-deployed.
//!
//! The binary (`src/main.rs`) is a thin shell around this library so that
//! tests can drive every layer directly.

pub mod agent;
pub mod budget;
pub mod build;
pub mod cli;
pub mod diff;
pub mod events;
pub mod exit;
pub mod fanout;
pub mod fleet;
pub mod health;
pub mod host;
pub mod inventory;
pub mod keys;
pub mod limits;
pub mod nix;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod redact;
pub mod report;
pub mod rollout;
pub mod rules;
pub mod runner;
pub mod secret;
pub mod select;
pub mod soak;
pub mod ssh;
pub mod status;
pub mod table;
pub mod upload;
