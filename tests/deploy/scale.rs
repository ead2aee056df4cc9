//! Many hosts at once, on a deployer that is slow for want of CPU: slower,
//! never wrong.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::common::{Lab, Suite};
use crate::helpers::*;

/// A cgroup (v1 cpu controller) holding its processes to `percent` of one
/// CPU; removed (its remaining processes killed) when dropped.
struct Starved {
    dir: PathBuf,
    /// The same processes, for their CPU time.
    acct: PathBuf,
}

impl Starved {
    fn new(percent: u32) -> Starved {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/deploy-flake-starved-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("the cpu cgroup controller (v1) is mounted");
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), (percent * 1000).to_string()).unwrap();
        let acct = PathBuf::from("/sys/fs/cgroup/cpuacct").join(dir.file_name().unwrap());
        std::fs::create_dir_all(&acct).expect("the cpuacct cgroup controller (v1) is mounted");
        Starved { dir, acct }
    }

    /// `cmd`, run inside the cgroup (with everything it starts).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        let script = "echo $$ > \"$0/cgroup.procs\" && echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"";
        c.arg("-c").arg(script).arg(&self.dir).arg(&self.acct);
        c.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }

    /// CPU time used inside, in seconds.
    fn cpu_secs(&self) -> f64 {
        let ns = std::fs::read_to_string(self.acct.join("cpuacct.usage")).unwrap_or_default();
        ns.trim().parse::<f64>().map_or(f64::NAN, |n| n / 1e9)
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.acct);
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                let _ = std::fs::remove_dir(&self.acct);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// 32 targets, no parallel limit, the deployer held to a tenth of one CPU:
/// every host is deployed and none is rolled back, although the deployer
/// takes far longer than the confirmation timeout (15 s) to get to most of
/// them after their activation.
#[test]
fn a_starved_deployer_deploys_every_host_and_rolls_none_back() {
    let lab = Lab::boot(32, Suite::Trixie);
    let entries = |config: &str| -> Vec<String> {
        lab.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                host_entry(&lab, &format!("h{i:02}"), t, config, "timeouts.confirm = 15;")
            })
            .collect()
    };
    let v1 = deploy(&flake(&lab, &entries("healthy-v1")), &["--all", "--max-parallel", "0"]);
    assert_eq!(v1.code, 0, "baseline: {v1}");

    let f = flake(&lab, &entries("healthy-v2"));
    let starved = Starved::new(10);
    let started = Instant::now();
    let out = starved.wrap(&command(&f, &["--all", "--max-parallel", "0"])).output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    eprintln!(
        "32 hosts on a tenth of a CPU: {:?}, {:.1} CPU-s in the deployer",
        run.elapsed,
        starved.cpu_secs()
    );
    assert!(
        run.elapsed.as_secs() > 45,
        "the deployer was far slower than the confirm timeout: {:?}",
        run.elapsed
    );
    assert!(!events(&run.stdout).iter().any(|e| e["event"] == "rolled-back"), "{run}");
    let ended: Vec<String> = (0..lab.targets.len())
        .map(|i| {
            format!("{} {}", run.outcome(&format!("h{i:02}")), run.message(&format!("h{i:02}")))
        })
        .filter(|e| e != "deployed ")
        .collect();
    assert!(ended.is_empty(), "not deployed: {ended:#?}");
    for (i, t) in lab.targets.iter().enumerate() {
        let host = format!("h{i:02}");
        assert_eq!(run.outcome(&host), "deployed", "{host}: {run}");
        assert_eq!(t.current_system(), Some(run.system(&host)), "{host}");
    }
    assert_eq!(run.code, 0, "{run}");
}
