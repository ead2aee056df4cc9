//! Lab integration tests of whole deploys: the deploy-flake binary against
//! real targets (systemd, a Nix daemon, sshd) booted on this machine.
//! Every test asserts what the targets run and boot afterwards, and what
//! the tool reported and exited with.

/// For each named function taking a `Suite`, a module of that name with
/// one test per suite (`<name>::bookworm`, `::trixie`, `::sid`): the tests
/// whose outcome depends on the target's Nix, systemd or OpenSSH.
macro_rules! on_every_suite {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::common::Suite;
                #[test]
                fn bookworm() {
                    super::$name(Suite::Bookworm)
                }
                #[test]
                fn trixie() {
                    super::$name(Suite::Trixie)
                }
                #[test]
                fn sid() {
                    super::$name(Suite::Sid)
                }
            }
        )*
    };
}

#[path = "../common/mod.rs"]
mod common;
mod contract;
mod deployer;
mod display;
mod elsewhere;
mod helpers;
mod holes;
mod hostile;
mod keys;
mod leak;
mod operator;
mod pipeline;
mod reboot;
mod rollout;
mod runs;
mod safety;
mod scale;
mod truth;
