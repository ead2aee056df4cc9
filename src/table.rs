//! Plain text tables: columns padded to their widest cell, two spaces
//! apart, trailing blanks trimmed.

/// The rows as lines (the first row is the header).
pub fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let cols = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let line: Vec<String> =
            row.as_ref().iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let rows = [["A", "BB"].map(String::from), ["ccc", "d"].map(String::from)];
        assert_eq!(super::table(&rows), "A    BB\nccc  d\n");
    }
}
