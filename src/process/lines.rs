//! Reading a command's output line by line in bounded memory: a line
//! longer than its cap keeps its first bytes and a mark saying how long
//! it was; the rest is read and dropped as it comes, never held. One
//! endless line (a binary blob, a target that never prints a newline)
//! costs no more than the cap.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest line shown (an `output` event, a message's tail): 64 KiB.
pub const LINE_MAX: usize = 64 << 10;
/// Room above [`LINE_MAX`] for the mark the agent leaves on a line it cut.
const MARK_ROOM: usize = 128;

/// A line as read: its text (cut, when it was longer than the cap) and
/// whether it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub cut: bool,
}

/// `text`, or its first [`LINE_MAX`] bytes with a mark when it is longer
/// (for a line kept whole as data, shown to people).
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LINE_MAX + MARK_ROOM {
        return text.into();
    }
    let mut end = LINE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    mark(&text[..end], end, text.len() as u64).into()
}

fn mark(kept: &str, at: usize, total: u64) -> String {
    format!("{kept} [truncated at {at} of {total} bytes]")
}

/// Lines of a reader, each at most `cap` bytes (plus the mark).
pub struct LineReader<R> {
    inner: BufReader<R>,
    cap: usize,
    line: Vec<u8>,
    total: u64,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(reader: R, cap: usize) -> LineReader<R> {
        LineReader { inner: BufReader::new(reader), cap, line: Vec::new(), total: 0 }
    }

    /// The next line (without its newline); `None` at the end. Cancel
    /// safe: what was read before a cancelled call stays for the next.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if self.line.is_empty() && self.total == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let newline = buf.iter().position(|b| *b == b'\n');
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            let room = self.cap.saturating_sub(self.line.len());
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.total += chunk.len() as u64;
            let used = newline.map_or(buf.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.line);
        let total = std::mem::take(&mut self.total);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if total > bytes.len() as u64 {
            Line { text: mark(&text, bytes.len(), total), cut: true }
        } else {
            Line { text, cut: false }
        }
    }
}

/// The cap for lines shown to people.
pub fn shown_cap() -> usize {
    LINE_MAX + MARK_ROOM
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], cap: usize) -> Vec<Line> {
        let mut r = LineReader::new(input, cap);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn lines_are_read_whole_up_to_the_cap_and_cut_and_marked_beyond() {
        let text = |ls: &[Line]| ls.iter().map(|l| l.text.clone()).collect::<Vec<_>>();
        assert_eq!(text(&lines(b"a\nbc\n\nlast", 10).await), ["a", "bc", "", "last"]);
        assert_eq!(text(&lines(b"", 10).await), Vec::<String>::new());
        let long = [vec![b'x'; 100], b"\nafter\n".to_vec()].concat();
        let got = lines(&long, 10).await;
        assert_eq!(got[0].text, "xxxxxxxxxx [truncated at 10 of 100 bytes]");
        assert!(got[0].cut && !got[1].cut);
        assert_eq!(got[1].text, "after");
    }

    #[tokio::test]
    async fn an_endless_line_is_read_in_bounded_memory() {
        // 8 MiB without a newline, through a small pipe: only the cap is kept.
        let (mut w, r) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let block = vec![b'x'; 1 << 20];
            for _ in 0..8 {
                w.write_all(&block).await.unwrap();
            }
        });
        let mut reader = LineReader::new(r, shown_cap());
        let line = reader.next_line().await.unwrap().unwrap();
        writer.await.unwrap();
        assert!(line.cut);
        assert!(line.text.ends_with(&format!("[truncated at {} of 8388608 bytes]", shown_cap())));
        assert!(reader.line.capacity() <= 2 * shown_cap(), "{}", reader.line.capacity());
        assert!(reader.next_line().await.unwrap().is_none());
    }

    #[test]
    fn data_lines_are_shown_cut() {
        assert_eq!(shown("short"), "short");
        let long = "é".repeat(LINE_MAX);
        let s = shown(&long);
        assert!(s.len() < LINE_MAX + 64 && s.ends_with(" bytes]"), "{}", s.len());
    }
}
