//! The process's own limits: the open-file soft limit is raised to the
//! hard limit at start, and no more hosts run at once than the open
//! files allow (each host at work holds a few: its master's sessions,
//! the lock holder, a command, a fresh login). A host that cannot open
//! a file would fail for no fault of its own ("not confirmed").

/// Open files the run itself needs, whatever the number of hosts
/// (stdio, the runtime, the flake's archive, local Nix commands).
const RESERVE: u64 = 32;
/// Open files one host at work may hold at once (measured: about 6 on
/// average, 42 for 4 hosts against 23 for one; a fresh login and a copy
/// at once hold more).
const PER_HOST: u64 = 12;

/// Raise the open-file soft limit to the hard limit; the limit now in
/// force (`None`: unknown).
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_open_files() -> Option<u64> {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return None;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(l.rlim_max as u64);
            }
        }
        Some(l.rlim_cur as u64)
    }
}

/// How many of `wanted` hosts may run at once under an open-file limit
/// of `limit`, and what to say when that is fewer. Pure.
pub fn admit(wanted: usize, limit: Option<u64>) -> (usize, Option<String>) {
    let Some(limit) = limit else { return (wanted.max(1), None) };
    let fits = (limit.saturating_sub(RESERVE) / PER_HOST).max(1);
    if (wanted as u64) <= fits {
        return (wanted.max(1), None);
    }
    let say = format!(
        "deploy-flake: {limit} open files allow {fits} host(s) at a time: running {fits} at a \
         time, not {wanted} (raise the hard limit, `ulimit -Hn`, to run more at once)"
    );
    (fits as usize, Some(say))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_at_once_fit_the_open_files() {
        assert_eq!(admit(16, Some(1024)), (16, None));
        assert_eq!(admit(500, Some(1_048_576)), (500, None));
        assert_eq!(admit(0, Some(1024)), (1, None));
        assert_eq!(admit(5, None), (5, None));
        let (n, said) = admit(300, Some(1024));
        assert_eq!(n, 82);
        assert_eq!(
            said.unwrap(),
            "deploy-flake: 1024 open files allow 82 host(s) at a time: running 82 at a time, \
             not 300 (raise the hard limit, `ulimit -Hn`, to run more at once)"
        );
        assert_eq!(admit(4, Some(32)).0, 1, "always one");
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let now = raise_open_files().unwrap();
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reads into the struct given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        assert_eq!((l.rlim_cur as u64, l.rlim_max as u64), (now, now));
    }
}
