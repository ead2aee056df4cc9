//! Reading lib's compact view while Nix prints it: each host is read and
//! checked as soon as its record is complete, so that this work overlaps
//! the evaluation of the hosts after it rather than following it.
//!
//! Nix prints the view as `{"defaults":{...},"hosts":{"NAME":{...},...},
//! "rollout":{...},"schemaVersion":N}`. Anything else (the resolved document of an older
//! lib, a fleet written by hand, text this reading does not expect) is
//! kept whole and read by [`super::parse`] once it has all arrived.

use std::io::Read;

use serde::Deserialize;

use super::document::{Defaults, Hosts, Own};
use super::{parse, Inventory, InventoryError, SCHEMA_VERSION};
use crate::fleet::Settings;

/// Reads the output of the evaluation from `r` to its end.
pub fn read(mut r: impl Read) -> Result<Inventory, InventoryError> {
    let mut stream = Stream::default();
    let mut chunk = vec![0; 1 << 16];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(InventoryError::Json { source: serde_json::Error::io(e) }),
        };
        stream.text.extend_from_slice(&chunk[..n]);
        if stream.state != State::Other {
            stream.advance();
        }
    }
    stream.finish()
}

#[derive(Default)]
struct Stream {
    text: Vec<u8>,
    /// Where the next item starts.
    at: usize,
    state: State,
    defaults: Option<Defaults>,
    hosts: Hosts,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Before `{"defaults":{...}`.
    #[default]
    Start,
    /// Before `,"hosts":{`.
    Defaults,
    /// In `hosts`, before the first host (`true`), or before `,` or `}`.
    Hosts(bool),
    /// After `hosts`: the version and the end.
    Tail,
    /// Not the compact view as this reads it: read whole at the end.
    Other,
}

/// What the text at hand holds next.
enum Step {
    /// An item of `n` bytes, read; then `State`.
    Read(usize, State),
    /// Not all of the next item yet.
    Wait,
    /// Not what the compact view holds.
    Other,
}

impl Stream {
    /// Reads every item that has arrived whole.
    fn advance(&mut self) {
        loop {
            match self.step() {
                Step::Read(n, state) => {
                    self.at += n;
                    self.state = state;
                }
                Step::Wait => return,
                Step::Other => {
                    self.state = State::Other;
                    return;
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        let rest = &self.text[self.at..];
        match self.state {
            State::Start => {
                let key = b"{\"defaults\":";
                match expect(rest, key) {
                    Step::Read(..) => {}
                    other => return other,
                }
                let Some(end) = value_end(rest, key.len()) else { return Step::Wait };
                match serde_json::from_slice(&rest[key.len()..end]) {
                    Ok(d) => self.defaults = Some(d),
                    Err(_) => return Step::Other,
                }
                Step::Read(end, State::Defaults)
            }
            State::Defaults => match expect(rest, b",\"hosts\":{") {
                Step::Read(n, _) => Step::Read(n, State::Hosts(true)),
                other => other,
            },
            State::Hosts(first) => match (rest.first(), first) {
                (None, _) => Step::Wait,
                (Some(b'}'), _) => Step::Read(1, State::Tail),
                (Some(b','), false) => match host(&rest[1..], &self.defaults, &mut self.hosts) {
                    Step::Read(n, state) => Step::Read(n + 1, state),
                    other => other,
                },
                (Some(_), true) => host(rest, &self.defaults, &mut self.hosts),
                (Some(_), false) => Step::Other,
            },
            State::Tail | State::Other => Step::Wait,
        }
    }

    fn finish(self) -> Result<Inventory, InventoryError> {
        if self.state == State::Tail {
            // `,"rollout":{...},"schemaVersion":N}` read as an object.
            let mut tail = self.text[self.at..].to_vec();
            if tail.first() == Some(&b',') {
                tail[0] = b'{';
                if let Ok(Tail { rollout, schema_version }) = serde_json::from_slice(&tail) {
                    if schema_version == SCHEMA_VERSION {
                        let doc = self.hosts.into_document(schema_version, rollout);
                        return super::finish(doc);
                    }
                }
            }
        }
        parse(&String::from_utf8_lossy(&self.text))
    }
}

/// `text` starts with `prefix` (`Read`), may yet (`Wait`), or cannot.
fn expect(text: &[u8], prefix: &[u8]) -> Step {
    let n = text.len().min(prefix.len());
    if text[..n] != prefix[..n] {
        Step::Other
    } else if n < prefix.len() {
        Step::Wait
    } else {
        Step::Read(n, State::Other)
    }
}

/// `"NAME":{...}` at the start of `text`, read into `hosts`.
fn host(text: &[u8], defaults: &Option<Defaults>, hosts: &mut Hosts) -> Step {
    if text.first().is_some_and(|b| *b != b'"') {
        return Step::Other;
    }
    let Some(key_end) = value_end(text, 0) else { return Step::Wait };
    match text.get(key_end) {
        None => return Step::Wait,
        Some(b':') => {}
        Some(_) => return Step::Other,
    }
    let Some(end) = value_end(text, key_end + 1) else { return Step::Wait };
    let name = serde_json::from_slice::<String>(&text[..key_end]);
    let own = serde_json::from_slice::<Own>(&text[key_end + 1..end]);
    match (name, own, defaults) {
        (Ok(name), Ok(own), Some(d)) => hosts.push_own(name, own, d),
        _ => return Step::Other,
    }
    Step::Read(end, State::Hosts(false))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Tail {
    #[serde(default, deserialize_with = "super::document::present")]
    rollout: Option<Settings>,
    schema_version: u32,
}

/// Where the JSON value that starts at `text[from]` ends (one past its last
/// byte), or `None` when it has not all arrived. A string, an object or a
/// list ends with its closing byte; anything else where a `,`, `}` or `]`
/// follows.
fn value_end(text: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                i = string_end(text, i + 1)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// One past the `"` that closes the string whose text starts at `from`.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let n = text.get(from..)?.iter().position(|b| *b == b'"' || *b == b'\\')?;
        match text[from + n] {
            b'"' => return Some(from + n + 1),
            _ => from += n + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` handed over in pieces of `size` bytes.
    struct Pieces<'a> {
        text: &'a [u8],
        size: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.size.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    fn read_in_pieces(text: &str, size: usize) -> Result<Inventory, String> {
        read(Pieces { text: text.as_bytes(), size }).map_err(|e| e.to_string())
    }

    #[test]
    fn values_end_where_json_says() {
        assert_eq!(value_end(br#""a\"b",x"#, 0), Some(6));
        assert_eq!(value_end(br#""a\\",x"#, 0), Some(5));
        assert_eq!(value_end(br#"{"a":[1,{"}":2}]},x"#, 0), Some(17));
        assert_eq!(value_end(br#"12}"#, 0), Some(2));
        assert_eq!(value_end(br#"{"a":"#, 0), None);
        assert_eq!(value_end(br#""a\"#, 0), None);
    }

    const DEFAULTS: &str = r#"{"buildOn":"target","healthChecks":[],"magicRollback":true,"selfCheck":null,"sshOpts":[],"sshPort":22,"sshUser":"deploy","sudo":"sudo","tags":[],"timeouts":{"activate":600,"boot":300,"build":7200,"confirm":30,"connect":10,"copy":600,"lock":10,"preflight":60,"selfCheck":120}}"#;

    /// Each host is read once its record is complete, before the rest.
    #[test]
    fn hosts_are_read_as_they_arrive() {
        let text = format!(
            r#"{{"defaults":{DEFAULTS},"hosts":{{"a":{{}},"b":{{"tags":["}}"]}},"c":{{}}}},"schemaVersion":1}}"#
        );
        let mut stream = Stream::default();
        let cut = text.find(r#""c":"#).unwrap() + 3;
        for (part, hosts) in [(&text[..cut - 6], 1), (&text[cut - 6..cut], 2), (&text[cut..], 3)] {
            stream.text.extend_from_slice(part.as_bytes());
            stream.advance();
            assert_eq!(stream.hosts.len(), hosts, "after {part}");
        }
        assert!(stream.state == State::Tail);
        assert_eq!(stream.finish().unwrap().hosts.len(), 3);
        // What follows the hosts is read without the text before it.
        let tail = br#"{"rollout":{"batches":["25%"],"canary":[],"maxFailures":0,"soak":30},"schemaVersion":1}"#;
        let tail: Tail = serde_json::from_slice(tail).unwrap();
        assert_eq!((tail.rollout.unwrap().soak, tail.schema_version), (Some(30), 1));
        assert!(serde_json::from_slice::<Tail>(br#"{"rollout":null,"schemaVersion":1}"#).is_err());
    }

    /// However the text arrives, it reads as [`parse`] reads it whole.
    #[test]
    fn any_split_reads_as_the_whole_text() {
        let defaults = DEFAULTS;
        let texts = [
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{"hostname":"10.0.0.1","tags":["x,}}"]}},"b\"}}":{{"hostname":"h","configuration":"b"}},"c":{{}}}},"schemaVersion":1}}"#
            ),
            format!(r#"{{"defaults":{defaults},"hosts":{{}},"schemaVersion":1}}"#),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{"sshPort":0}},"b":{{"sshPort":0}}}},"schemaVersion":1}}"#
            ),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{"sshPort":0}}}},"schemaVersion":2}}"#
            ),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{"sshPrt":22}}}},"schemaVersion":1}}"#
            ),
            format!(r#"{{"defaults":{defaults},"hosts":{{"a":"x"}},"schemaVersion":1}}"#),
            format!(r#"{{"defaults":{defaults}, "hosts":{{"a":{{}}}},"schemaVersion":1}}"#),
            format!(r#"{{"defaults":{defaults},"hosts":{{"a":{{}}}},"schemaVersion":1,"x":2}}"#),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{}}}},"rollout":{{"batches":["25%"],"canary":["a"],"maxFailures":0,"soak":null}},"schemaVersion":1}}"#
            ),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{}}}},"rollout":{{"batches":[],"canary":[],"maxFailures":0,"soak":null}},"schemaVersion":1}}"#
            ),
            format!(
                r#"{{"defaults":{defaults},"hosts":{{"a":{{}}}},"rollout":null,"schemaVersion":1}}"#
            ),
            r#"{"hosts":{},"schemaVersion":1}"#.to_string(),
            r#"{"defaults":[],"hosts":{},"schemaVersion":1}"#.to_string(),
            "{".to_string(),
            String::new(),
        ];
        for text in &texts {
            let whole = parse(text).map_err(|e| e.to_string());
            for size in [1, 2, 3, 7, 64, 1 << 16] {
                assert_eq!(read_in_pieces(text, size), whole, "{text} in pieces of {size}");
            }
        }
        assert_eq!(read_in_pieces(&texts[0], 5).unwrap().hosts.len(), 3);
    }
}
