//! User-declared health checks (`healthChecks` in deployFlake): a command
//! run on the target, or an HTTP GET made from the deploying machine. Each
//! is retried every `period` seconds until it passes or its `timeout` runs out.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fleet::{HealthCheck, Probe};
use crate::process::{self, Cmd, Spawner};

/// Run `check` until it passes; the error says why its last attempt failed.
/// Command checks run where `on` runs commands (the target).
pub async fn run_check<S: Spawner>(on: &S, check: &HealthCheck) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(check.timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let attempt = match &check.probe {
            Probe::Command(argv) => command_once(on, argv, left).await,
            Probe::Http(url) => http_get(url, left).await.and_then(|code| {
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP {code}"))
                }
            }),
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() + Duration::from_secs(check.period) >= deadline => {
                return Err(format!(
                    "health check `{}` still failing after {} s: {why}",
                    check.description, check.timeout
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(check.period)).await,
        }
    }
}

async fn command_once<S: Spawner>(on: &S, argv: &[String], left: Duration) -> Result<(), String> {
    let cmd = Cmd::new(argv.iter().cloned()).timeout(left);
    let out = process::run(on, &cmd, None).await.and_then(|o| o.check());
    out.map(|_| ()).map_err(|e| e.to_string())
}

/// Split `http://host[:port]/path` into (host, port, path); IPv6 in brackets.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').ok_or_else(|| format!("{url}: unclosed '['"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("{url}: bad port `{p}`"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((host, port, path.to_string()))
}

/// A plain HTTP/1.0 GET; returns the status code.
pub async fn http_get(url: &str, limit: Duration) -> Result<u16, String> {
    let (host, port, path) = parse_http_url(url)?;
    let fut = async {
        let mut s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let host_header = crate::ssh::bracket_ipv6(&host);
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: deploy-flake\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < head.len() {
            let k = s.read(&mut head[n..]).await.map_err(|e| e.to_string())?;
            if k == 0 {
                break;
            }
            n += k;
            if head[..n].contains(&b'\n') {
                break;
            }
        }
        let line = String::from_utf8_lossy(&head[..n]);
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/"))
            .ok_or_else(|| {
                format!("not an HTTP response: {:?}", line.lines().next().unwrap_or(""))
            })?;
        Ok(code)
    };
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        Ok(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        assert_eq!(
            parse_http_url("http://web1/health").unwrap(),
            ("web1".into(), 80, "/health".into())
        );
        assert_eq!(
            parse_http_url("http://10.0.0.1:8080").unwrap(),
            ("10.0.0.1".into(), 8080, "/".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/x?y").unwrap(),
            ("::1".into(), 81, "/x?y".into())
        );
        assert!(parse_http_url("https://x/").unwrap_err().contains("only http://"));
        assert!(parse_http_url("http://x:99999/").unwrap_err().contains("bad port"));
    }

    /// A real listener on loopback answering with a given status line.
    async fn serve_once(status: &'static str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /health HTTP/1.0\r\n"));
            s.write_all(format!("{status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn http_status_is_read_from_a_real_server() {
        let url = serve_once("HTTP/1.1 204 No Content").await;
        assert_eq!(http_get(&url, Duration::from_secs(5)).await.unwrap(), 204);
        let url = serve_once("HTTP/1.0 503 Service Unavailable").await;
        assert_eq!(http_get(&url, Duration::from_secs(5)).await.unwrap(), 503);
        let err = http_get("http://127.0.0.1:1/", Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("connect to 127.0.0.1:1"), "{err}");
    }
}
