//! The last lines the daemon logged, kept in memory for the support
//! bundle (what a user sends along when asking for help): at most
//! [`KEPT_LINES`] lines of at most [`MAX_LINE`] bytes, oldest dropped.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// Lines kept.
pub const KEPT_LINES: usize = 500;
/// The longest line kept, in bytes; longer ones are cut.
pub const MAX_LINE: usize = 1024;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The log's writer: each write goes to stderr, and its lines are kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tee;

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;

    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter
    }
}

/// One write of [`Tee`].
#[derive(Debug)]
pub struct TeeWriter;

impl Write for TeeWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = io::stderr().write(bytes)?;
        keep(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The lines kept, oldest first.
pub(crate) fn lines() -> Vec<String> {
    let recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    recent.iter().cloned().collect()
}

fn keep(bytes: &[u8]) {
    let text = without_ansi(&String::from_utf8_lossy(bytes));
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    for line in text.lines().filter(|line| !line.is_empty()) {
        if recent.len() == KEPT_LINES {
            recent.pop_front();
        }
        recent.push_back(cut(line).to_owned());
    }
}

/// `line` cut to at most [`MAX_LINE`] bytes, at a character boundary.
fn cut(line: &str) -> &str {
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// `text` without the terminal's colour sequences (`ESC [ … letter`).
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            plain.push(c);
            continue;
        }
        for next in chars.by_ref() {
            if next.is_ascii_alphabetic() {
                break;
            }
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_plain_cut_and_bounded() {
        keep(b"\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m serving DNS\n");
        let long = "é".repeat(MAX_LINE);
        keep(long.as_bytes());
        for n in 0..KEPT_LINES {
            keep(format!("line {n}\n").as_bytes());
        }
        let kept = lines();
        assert_eq!(kept.len(), KEPT_LINES);
        assert_eq!(kept.last().map(String::as_str), Some("line 499"));
        assert_eq!(
            without_ansi("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m x"),
            "2026  INFO x"
        );
        assert!(cut(&long).len() <= MAX_LINE && cut(&long).ends_with('é'));
    }
}
