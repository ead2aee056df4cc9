//! Host selection: attribute names, `@tags`, globs, exclusions and ad hoc
//! `nixos://` destinations turned into an ordered list of targets.

use crate::inventory::HostSpec;

/// One host chosen for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name every event and line is tagged with (the attribute name, or
    /// the destination as written for an ad hoc host).
    pub name: String,
    pub spec: HostSpec,
}
