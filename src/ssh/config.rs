//! The user's `sshOpts` as an ssh config file, and what to say about a
//! connection that failed.

use std::path::Path;

use super::{host_key_refused, SshError};
use crate::rules::SshOpt;

/// Translate the inventory's `sshOpts` (ssh command-line options, as the
/// fleet's rules read them) into ssh_config lines, so the master and every
/// fresh login use them alike.
pub fn ssh_opts_to_config(opts: &[String]) -> Result<Vec<String>, SshError> {
    let mut lines = Vec::new();
    for o in crate::rules::ssh_opts(opts).map_err(SshError::SshOpts)? {
        lines.push(match o {
            SshOpt::Config { key, value } if takes_rest_of_line(key) => format!("{key} {value}"),
            SshOpt::Config { key, value } => format!("{key} {}", quote_config(value)),
            SshOpt::WithValue { flag: 'i', value } => {
                format!("IdentityFile {}", quote_config(value))
            }
            SshOpt::WithValue { flag: 'J', value } => format!("ProxyJump {value}"),
            SshOpt::WithValue { flag: 'F', value } => format!("Include {}", quote_config(value)),
            SshOpt::Flag('4') => "AddressFamily inet".into(),
            SshOpt::Flag('6') => "AddressFamily inet6".into(),
            SshOpt::Flag('A') => "ForwardAgent yes".into(),
            SshOpt::Flag('C') => "Compression yes".into(),
            SshOpt::Flag('q') => "LogLevel QUIET".into(),
            other => {
                return Err(SshError::SshOpts(format!("sshOpts: {other:?} has no ssh_config form")))
            }
        });
    }
    Ok(lines)
}

/// Options whose value is the rest of the line, a command ssh hands to a
/// shell: written as they are (quotes would become part of the program's
/// name).
const REST_OF_LINE: [&str; 4] =
    ["ProxyCommand", "KnownHostsCommand", "LocalCommand", "RemoteCommand"];

fn takes_rest_of_line(key: &str) -> bool {
    REST_OF_LINE.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn quote_config(v: &str) -> String {
    if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

/// Options that say how to reach a host: they hold for the host itself
/// only. (A jump host's ssh reads the same file: a ProxyJump that held
/// for every host would send it through itself, again and again.)
fn reaches(line: &str) -> bool {
    let key = line.split_whitespace().next().unwrap_or("");
    key.eq_ignore_ascii_case("ProxyJump") || key.eq_ignore_ascii_case("ProxyCommand")
}

/// The generated ssh config for `host`: the user's sshOpts (how to reach
/// it for `host` itself only), then the default files (`-F` replaces
/// them, and the first value of an option wins).
pub(super) fn config_file(ssh_opts: &[String], host: &str) -> Result<String, SshError> {
    let (via, mut lines): (Vec<String>, Vec<String>) =
        ssh_opts_to_config(ssh_opts)?.into_iter().partition(|l| reaches(l));
    if !via.is_empty() {
        lines.push(format!("Match originalhost {}", quote_config(host)));
        lines.extend(via.into_iter().map(|l| format!("  {l}")));
        lines.push("Match all".into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        let user_cfg = Path::new(&home).join(".ssh/config");
        if user_cfg.exists() {
            lines.push(format!("Include {}", quote_config(&user_cfg.display().to_string())));
        }
    }
    if Path::new("/etc/ssh/ssh_config").exists() {
        lines.push("Include /etc/ssh/ssh_config".into());
    }
    Ok(lines.join("\n") + "\n")
}

/// What to do about a failed connection, from ssh's own words.
pub fn connect_hint(reason: &str, dest: &str) -> String {
    let hint = if host_key_refused(reason) {
        format!(
            "the host key of {dest} is not in known_hosts, or it changed; verify its fingerprint and add it \
             (deploy-flake never turns host key checking off)"
        )
    } else if reason.contains("Permission denied") {
        "the key was refused: check sshUser and that your key (or agent) is authorised on the host"
            .to_string()
    } else if reason.contains("Connection refused") {
        "nothing listens there: check hostname, sshPort and that sshd runs".to_string()
    } else if reason.contains("timed out")
        || reason.contains("No route to host")
        || reason.contains("unreachable")
    {
        "the host is unreachable: check hostname and the network (timeouts.connect bounds the wait)"
            .to_string()
    } else if reason.contains("Could not resolve hostname") {
        "the host name does not resolve: check hostname".to_string()
    } else {
        return String::new();
    };
    format!("\n  hint: {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_opts_become_config_lines() {
        let opts: Vec<String> =
            ["-i", "/k/id key", "-oUserKnownHostsFile=/k/known", "-o", "ProxyJump bastion", "-4"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(
            ssh_opts_to_config(&opts).unwrap(),
            vec![
                "IdentityFile \"/k/id key\"",
                "UserKnownHostsFile /k/known",
                "ProxyJump bastion",
                "AddressFamily inet"
            ]
        );
        // Commands are the rest of the line, spaces and quotes included.
        for (opt, line) in [
            ("ProxyCommand=nc %h %p", "ProxyCommand nc %h %p"),
            ("proxycommand ssh -W %h:%p 'jump host'", "proxycommand ssh -W %h:%p 'jump host'"),
            (
                "KnownHostsCommand=/bin/cat /k/known hosts",
                "KnownHostsCommand /bin/cat /k/known hosts",
            ),
            ("LocalCommand=echo \"%n\" >> log", "LocalCommand echo \"%n\" >> log"),
            ("RemoteCommand=exec bash -l", "RemoteCommand exec bash -l"),
            ("SetEnv=A=b c", "SetEnv \"A=b c\""),
        ] {
            let opts = vec!["-o".to_string(), opt.to_string()];
            assert_eq!(ssh_opts_to_config(&opts).unwrap(), vec![line], "{opt}");
        }
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            ssh_opts_to_config(&o).unwrap_err().to_string()
        };
        // The fleet's rules read the options; their words come through.
        for (bad, problem) in [
            (&["-X"][..], "not supported: write it as -o Key=Value"),
            (&["-i"][..], "needs a value: put it in the next element or right after the flag"),
            (&["-p", "22"][..], "set sshPort instead"),
            (&["-lroot"][..], "set sshUser instead"),
        ] {
            let e = err(bad);
            assert!(e.starts_with("sshOpts.0: expected an ssh option"), "{bad:?}: {e}");
            assert!(e.ends_with(problem), "{bad:?}: {e}");
        }
    }

    #[test]
    fn how_to_reach_the_host_holds_for_the_host_only() {
        let opts: Vec<String> =
            ["-i", "/k/id", "-J", "root@jump", "-4"].iter().map(|s| s.to_string()).collect();
        let text = config_file(&opts, "10.0.0.5").unwrap();
        let lines: Vec<&str> = text.lines().take(5).collect();
        assert_eq!(
            lines,
            [
                "IdentityFile /k/id",
                "AddressFamily inet",
                "Match originalhost 10.0.0.5",
                "  ProxyJump root@jump",
                "Match all"
            ]
        );
        let plain = config_file(&["-i".to_string(), "/k/id".to_string()], "h").unwrap();
        assert!(!plain.contains("Match"), "{plain}");
    }

    #[test]
    fn connection_failures_come_with_a_hint() {
        let e = SshError::Connect {
            dest: "root@web1:22".into(),
            reason: "Host key verification failed.".into(),
        };
        assert!(e.is_host_key() && !e.is_auth());
        assert_eq!(
            e.to_string(),
            "cannot connect to root@web1:22: Host key verification failed.\n  hint: the host key of root@web1:22 is not in \
             known_hosts, or it changed; verify its fingerprint and add it (deploy-flake never turns host key checking off)"
        );
        let refused = "ssh: connect to host x port 22: Connection refused";
        assert!(connect_hint(refused, "x").contains("sshPort"));
        assert!(connect_hint("Permission denied (publickey).", "x").contains("sshUser"));
        assert_eq!(connect_hint("something else", "x"), "");
    }
}
