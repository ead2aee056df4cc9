//! The user's `sshOpts` as an ssh config file, and what to say about a
//! connection that failed.

use std::path::Path;

use super::{host_key_refused, SshError};

/// Translate the inventory's `sshOpts` (ssh command-line options) into
/// ssh_config lines, so the master and every fresh login use them alike.
pub fn ssh_opts_to_config(opts: &[String]) -> Result<Vec<String>, SshError> {
    let mut out = Vec::new();
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        let (flag, inline) = if opt.starts_with('-') && opt.len() > 2 {
            (&opt[..2], Some(opt[2..].to_string()))
        } else {
            (opt.as_str(), None)
        };
        let mut value = |name: &str| -> Result<String, SshError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| SshError::SshOpts(format!("{name} needs a value"))),
            }
        };
        let line = match flag {
            "-o" => {
                let v = value("-o")?;
                let (k, val) = v
                    .split_once('=')
                    .or_else(|| v.split_once(' '))
                    .ok_or_else(|| SshError::SshOpts(format!("`-o {v}`: expected Key=Value")))?;
                format!("{} {}", k.trim(), quote_config(val.trim()))
            }
            "-i" => format!("IdentityFile {}", quote_config(&value("-i")?)),
            "-J" => format!("ProxyJump {}", value("-J")?),
            "-F" => format!("Include {}", quote_config(&value("-F")?)),
            "-4" if inline.is_none() => "AddressFamily inet".into(),
            "-6" if inline.is_none() => "AddressFamily inet6".into(),
            "-A" if inline.is_none() => "ForwardAgent yes".into(),
            "-C" if inline.is_none() => "Compression yes".into(),
            "-q" if inline.is_none() => "LogLevel QUIET".into(),
            "-p" => return Err(SshError::SshOpts(format!("`{opt}`: set sshPort instead"))),
            "-l" => return Err(SshError::SshOpts(format!("`{opt}`: set sshUser instead"))),
            _ => {
                return Err(SshError::SshOpts(format!(
                    "unsupported ssh option `{opt}`; write it as `-o Key=Value`"
                )))
            }
        };
        if line.contains('\n') || line.contains('\r') {
            return Err(SshError::SshOpts(format!("`{opt}` contains a line break")));
        }
        out.push(line);
    }
    Ok(out)
}

fn quote_config(v: &str) -> String {
    if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

/// The generated ssh config: the user's sshOpts, then the default files
/// (`-F` replaces them, and the first value of an option wins).
pub(super) fn config_file(ssh_opts: &[String]) -> Result<String, SshError> {
    let mut lines = ssh_opts_to_config(ssh_opts)?;
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
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            ssh_opts_to_config(&o).unwrap_err().to_string()
        };
        assert_eq!(
            err(&["-X"]),
            "sshOpts: unsupported ssh option `-X`; write it as `-o Key=Value`"
        );
        assert_eq!(err(&["-i"]), "sshOpts: -i needs a value");
        assert_eq!(err(&["-p", "22"]), "sshOpts: `-p`: set sshPort instead");
        assert_eq!(err(&["-lroot"]), "sshOpts: `-lroot`: set sshUser instead");
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
