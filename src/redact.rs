//! What of a flake reference may be kept or shown: never its credentials.
//! A flake URL can carry a token (`git+https://oauth2:TOKEN@host/repo`,
//! `?access_token=…`); what leaves this machine (a host's record of its
//! last deploy), what is printed (the plan, `-v`, messages) and what is
//! logged keeps its scheme, host, path and revision only. Pure.

/// Query parameters that say which revision and where in the repository,
/// never who may read it: kept.
const KEPT_PARAMS: [&str; 3] = ["rev", "ref", "dir"];

/// `flake` without user info (user names, passwords, tokens) and without
/// query parameters other than `rev`, `ref` and `dir`. A path or a
/// reference without credentials comes back as it was.
pub fn flake_ref(flake: &str) -> String {
    let (main, fragment) = match flake.split_once('#') {
        Some((m, f)) => (m, Some(f)),
        None => (flake, None),
    };
    let (main, query) = match main.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (main, None),
    };
    let mut out = without_user_info(main);
    if let Some(q) = query {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|p| KEPT_PARAMS.contains(&p.split('=').next().unwrap_or("")))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// `scheme://user:password@host/path` -> `scheme://host/path`.
fn without_user_info(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else { return s.to_string() };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// An argument of a command as a log may show it: a URL's credentials
/// taken out (see [`flake_ref`]); anything else as it is.
pub fn argument(arg: &str) -> String {
    if arg.contains("://") {
        flake_ref(arg)
    } else {
        arg.to_string()
    }
}

/// `text` without the credentials of `flake` (its user info, its query):
/// for what a local command printed about a flake reference it was given.
pub fn scrub(text: &str, flake: &str) -> String {
    let mut out = text.to_string();
    for (secret, instead) in secrets(flake) {
        out = out.replace(&secret, instead);
    }
    out
}

/// The parts of `flake` that [`flake_ref`] drops (long enough to look
/// for), and what to show instead.
fn secrets(flake: &str) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    let main = flake.split('#').next().unwrap_or(flake);
    let (main, query) = main.split_once('?').unwrap_or((main, ""));
    if let Some((_, rest)) = main.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some((user_info, _)) = authority.rsplit_once('@') {
            found.push((format!("{user_info}@"), "***@"));
        }
    }
    for p in query.split('&') {
        if !KEPT_PARAMS.contains(&p.split('=').next().unwrap_or("")) && p.len() > 2 {
            found.push((p.to_string(), "***"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_flake_references() {
        for (given, kept) in [
            (".", "."),
            ("/srv/fleet", "/srv/fleet"),
            ("path:/srv/fleet?lastModified=1", "path:/srv/fleet"),
            ("github:acme/fleet/main", "github:acme/fleet/main"),
            ("github:acme/fleet?rev=abc123&host=x", "github:acme/fleet?rev=abc123"),
            (
                "git+https://oauth2:TOKEN@git.example.com/acme/fleet.git?ref=main&rev=abc",
                "git+https://git.example.com/acme/fleet.git?ref=main&rev=abc",
            ),
            ("git+ssh://git@git.example.com:2222/fleet", "git+ssh://git.example.com:2222/fleet"),
            ("https://u:p@h/f.tar.gz?access_token=T", "https://h/f.tar.gz"),
            ("git+https://a@b:c@h/r?dir=sub#x", "git+https://h/r?dir=sub#x"),
            ("tarball+http://127.0.0.1:8080/f.tar.gz", "tarball+http://127.0.0.1:8080/f.tar.gz"),
        ] {
            assert_eq!(flake_ref(given), kept, "{given}");
        }
        assert_eq!(argument("--json"), "--json");
        assert_eq!(argument("git+https://t@h/r#x"), "git+https://h/r#x");
    }

    #[test]
    fn what_a_command_said_loses_the_credentials_of_its_flake() {
        let flake = "git+https://oauth2:TOKEN@h/r?access_token=SECRET&rev=1";
        assert_eq!(
            scrub("error: fetching 'https://oauth2:TOKEN@h/r?access_token=SECRET&rev=1'", flake),
            "error: fetching 'https://***@h/r?***&rev=1'"
        );
        assert_eq!(scrub("nothing to hide", "."), "nothing to hide");
    }
}
