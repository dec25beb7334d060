//! Upstream bodies: read under a size cap, streamed, stopping at the cap (a body over it is an
//! error, never an allocation), and upstream messages made safe to show a tenant.

/// The size caps of upstream bodies, by what is read.
pub mod cap {
    /// A JSON answer: a Docebo list page, a Salesforce describe, query page or collection result.
    pub const JSON: usize = 16 << 20;
    /// A Bulk API 2.0 result CSV (up to a bulk chunk of records, every field sent repeated).
    pub const BULK: usize = 64 << 20;
    /// A token answer.
    pub const TOKEN: usize = 64 << 10;
    /// An error answer (non-2xx): only its start is read, enough for the upstream's message.
    pub const ERROR: usize = 64 << 10;
}

/// The most characters of an upstream's message a job error or a log event shows.
pub const MESSAGE_CHARS: usize = 300;

/// An answer that could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the cap: reading stopped there.
    #[error("the answer is larger than {}: not read", size_text(*cap))]
    TooLarge {
        /// The cap.
        cap: usize,
    },
    /// The body broke off.
    #[error("the answer broke off")]
    Read(#[source] reqwest::Error),
}

/// `16 MiB`, `64 KiB` or `123 bytes`.
pub fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads a body whole if it is at most `cap` bytes; stops (and drops the connection) at the cap.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(BodyError::TooLarge { cap });
    }
    let expected = response.content_length().unwrap_or(0) as usize;
    let mut body = Vec::with_capacity(expected.min(cap).min(1 << 20));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(text(body))
}

/// The start of a body (an error answer's), at most `cap` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// What was read.
    pub text: String,
    /// Bytes read.
    pub bytes: usize,
    /// Whether the whole body was read.
    pub complete: bool,
}

impl Prefix {
    /// The body described by its size alone, for answers that are not the API's error shape.
    pub fn describe(&self) -> String {
        if self.complete {
            format!("an unrecognised body of {}", size_text(self.bytes))
        } else {
            format!("an unrecognised body of over {}", size_text(self.bytes))
        }
    }
}

/// Reads at most `cap` bytes of a body; a body that breaks off reads as what arrived.
pub async fn read_prefix(mut response: reqwest::Response, cap: usize) -> Prefix {
    let mut body = Vec::new();
    let mut complete = true;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    complete = false;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let bytes = body.len();
    Prefix {
        text: text(body),
        bytes,
        complete,
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Whether a character must not reach a tenant's screen or a log line: control characters
/// (newlines and escapes among them) and the invisible formatting ones (bidirectional overrides,
/// zero-width characters).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// An upstream's text made fit to show: hidden characters become spaces, runs of spaces one,
/// and at most `max_chars` characters are kept (an ellipsis marks the cut).
pub fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        let c = if hidden(c) { ' ' } else { c };
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            if count + 1 >= max_chars {
                out.push('…');
                return out;
            }
            out.push(' ');
            count += 1;
            space = false;
        }
        if count + 1 > max_chars {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_upstream_text() {
        assert_eq!(sanitize("  plain message ", 300), "plain message");
        assert_eq!(
            sanitize("line\r\none\t\u{1b}[31mred\u{7}\u{202e}x\u{200b}", 300),
            "line one [31mred x"
        );
        let long = "a".repeat(10_000);
        let cut = sanitize(&long, 300);
        assert_eq!(cut.chars().count(), 301);
        assert!(cut.ends_with('…'));
        assert!(sanitize("ab cd", 3).chars().count() <= 4);
        assert_eq!(size_text(16 << 20), "16 MiB");
        assert_eq!(size_text(64 << 10), "64 KiB");
        assert_eq!(size_text(1000), "1000 bytes");
    }
}
