//! What a PTY shell sends, made into text: UTF-8 decoded across chunk boundaries, terminal
//! escape sequences removed (bash's bracketed-paste switches, colours), and each line rendered
//! as a terminal shows it (`\r` goes back to the start of the line, `\b` one character back),
//! which is how a pager's prompt and its erasure disappear from the output.

/// The text received since the last [`Screen::clear`].
#[derive(Debug, Default)]
pub(super) struct Screen {
    text: String,
    /// Bytes of an unfinished UTF-8 character or escape sequence, kept for the next chunk.
    pending: Vec<u8>,
}

impl Screen {
    /// Adds a chunk as received.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        let bytes = std::mem::take(&mut self.pending);
        let (valid, rest) = match std::str::from_utf8(&bytes) {
            Ok(text) => (text.to_owned(), Vec::new()),
            Err(error) if error.error_len().is_none() => {
                // An unfinished character at the end: the next chunk completes it.
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                (String::from_utf8_lossy(valid).into_owned(), rest.to_vec())
            }
            Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
        };
        let unfinished = strip_escapes(&valid, &mut self.text);
        self.pending = [unfinished.as_bytes(), &rest].concat();
    }

    /// Everything received, raw (escapes removed, lines not rendered).
    pub(super) fn raw(&self) -> &str {
        &self.text
    }

    /// Where the last line starts in [`raw`](Self::raw).
    pub(super) fn last_line_start(&self) -> usize {
        self.text.rfind('\n').map_or(0, |newline| newline + 1)
    }

    /// The last line (the one a prompt or a pager waits on), rendered.
    pub(super) fn last_line(&self) -> String {
        render_line(&self.text[self.last_line_start()..])
    }

    /// Removes the last line's text from `cut` (a byte offset into the rendered last line) on:
    /// an answered pager, which must not stay in the output.
    pub(super) fn cut_last_line(&mut self, cut: usize) {
        let start = self.last_line_start();
        let mut rendered = render_line(&self.text[start..]);
        rendered.truncate(cut.min(rendered.len()));
        self.text.truncate(start);
        self.text.push_str(&rendered);
    }

    /// Forgets everything received so far.
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.pending.clear();
    }

    /// The last `n` lines, rendered, for an error message.
    pub(super) fn tail(&self, n: usize) -> String {
        let lines: Vec<String> = self.text.lines().map(render_line).collect();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }
}

/// Appends `input` to `out` without its escape sequences (CSI `ESC [ ... final`, OSC
/// `ESC ] ... BEL|ESC \`, and two-character `ESC x`); returns an unfinished sequence at the end
/// of `input`, to be completed by the next chunk.
fn strip_escapes(input: &str, out: &mut String) -> String {
    let mut chars = input.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => return input[at..].to_owned(),
            Some((_, '[')) => loop {
                match chars.next() {
                    None => return input[at..].to_owned(),
                    // Final byte of a CSI sequence.
                    Some((_, '\u{40}'..='\u{7e}')) => break,
                    Some(_) => {}
                }
            },
            Some((_, ']')) => loop {
                match chars.next() {
                    None => return input[at..].to_owned(),
                    Some((_, '\u{7}')) => break,
                    Some((_, '\u{1b}')) => {
                        chars.next();
                        break;
                    }
                    Some(_) => {}
                }
            },
            Some(_) => {}
        }
    }
    String::new()
}

/// A line as a terminal shows it: `\r` returns to its start and `\b` goes one character
/// back, and what follows overwrites. A line where something was overwritten loses its
/// trailing spaces (what is left of an erased pager prompt); others keep them.
pub(super) fn render_line(line: &str) -> String {
    let line = line.strip_suffix('\n').unwrap_or(line);
    if !line.contains(['\r', '\u{8}']) {
        return line.to_owned();
    }
    let mut cells: Vec<char> = Vec::with_capacity(line.len());
    let mut cursor: usize = 0;
    let mut overwrote = false;
    for c in line.chars() {
        match c {
            '\r' => cursor = 0,
            '\u{8}' => cursor = cursor.saturating_sub(1),
            '\u{7}' | '\0' => {}
            c => {
                if cursor < cells.len() {
                    cells[cursor] = c;
                    overwrote = true;
                } else {
                    cells.push(c);
                }
                cursor += 1;
            }
        }
    }
    let rendered: String = cells.into_iter().collect();
    if overwrote {
        rendered.trim_end().to_owned()
    } else {
        rendered
    }
}

/// `text`'s lines rendered and joined with `\n`, ending with `\n` when `text` did.
pub(super) fn render(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&render_line(line));
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_characters_split_across_chunks() {
        let mut screen = Screen::default();
        let text = "\u{1b}[?2004hcs-shell$ é\u{1b}]0;title\u{7}x";
        let bytes = text.as_bytes();
        for chunk in bytes.chunks(3) {
            screen.push(chunk);
        }
        assert_eq!(screen.raw(), "cs-shell$ éx");
    }

    #[test]
    fn an_erased_pager_leaves_nothing_behind() {
        assert_eq!(
            render_line("\u{8}\u{8}\u{8}   \u{8}\u{8}\u{8}line 21\r\n"),
            "line 21"
        );
        assert_eq!(
            render_line("\r                    \rline 21"),
            "line 21",
            "junos erases with \\r"
        );
        assert_eq!(render_line("\rkeep  "), "keep  ", "nothing overwritten");
        assert_eq!(render("a\r\nb\r\n"), "a\nb\n");
        let mut screen = Screen::default();
        screen.push(b"line 20\r\n --More-- ");
        assert_eq!(screen.last_line(), " --More-- ");
        screen.cut_last_line(0);
        screen.push(b"\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08          \x08\x08\x08\x08\x08\x08\x08\x08\x08\x08line 21\r\n");
        assert_eq!(render(screen.raw()), "line 20\nline 21\n");
    }
}
