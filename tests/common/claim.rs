//! Target indexes (the IDX of 10.77.IDX.0/24), unique across the threads
//! and processes of concurrent test runs: a claim is a directory created
//! atomically under /run/deploy-flake-lab/claims and removed on drop.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const CLAIMS: &str = "/run/deploy-flake-lab/claims";
const FIRST: u8 = 10;
const LAST: u8 = 250;

/// One claimed index; released when dropped.
#[derive(Debug)]
pub struct Claim {
    pub idx: u8,
    dir: PathBuf,
}

impl Claim {
    /// Claims the lowest free index in 10..=250.
    pub fn take() -> Claim {
        fs::create_dir_all(CLAIMS).unwrap_or_else(|e| panic!("cannot create {CLAIMS}: {e}"));
        for idx in FIRST..=LAST {
            let dir = Path::new(CLAIMS).join(idx.to_string());
            match fs::create_dir(&dir) {
                Ok(()) => {
                    let _ = fs::write(dir.join("owner"), std::process::id().to_string());
                    return Claim { idx, dir };
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if reclaim_stale(&dir, idx) {
                        let _ = fs::write(dir.join("owner"), std::process::id().to_string());
                        return Claim { idx, dir };
                    }
                }
                Err(e) => panic!("cannot claim {}: {e}", dir.display()),
            }
        }
        panic!(
            "all lab indexes {FIRST}..={LAST} are claimed (see {CLAIMS}; `tests/lab/lab.sh leaks`)"
        )
    }
}

/// A claim whose owner process is gone and whose subnet is unused (no
/// `dfl<idx>` interface) is removed so that it can be claimed again; the
/// rename makes sure only one process removes it.
fn reclaim_stale(dir: &Path, idx: u8) -> bool {
    let owner = fs::read_to_string(dir.join("owner")).unwrap_or_default();
    let Ok(pid) = owner.trim().parse::<u32>() else {
        return false; // being created right now, or not ours to judge
    };
    if Path::new(&format!("/proc/{pid}")).exists()
        || Path::new(&format!("/sys/class/net/dfl{idx}")).exists()
    {
        return false;
    }
    let graveyard = Path::new(CLAIMS).join(format!(".stale-{}-{idx}", std::process::id()));
    if fs::rename(dir, &graveyard).is_err() {
        return false;
    }
    let _ = fs::remove_dir_all(&graveyard);
    fs::create_dir(dir).is_ok()
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
