//! The few query parameters Engine.IO reads (`EIO`, `transport`, `sid`,
//! and v3's `b64`).
//! Everything else in the query belongs to the application and is kept
//! raw in the session's handshake.

use std::borrow::Cow;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct EngineQuery<'a> {
    pub eio: Option<Cow<'a, str>>,
    pub transport: Option<Cow<'a, str>>,
    pub sid: Option<Cow<'a, str>>,
    /// Engine.IO v3: the client takes binary only as base64 text.
    pub b64: Option<Cow<'a, str>>,
}

impl<'a> EngineQuery<'a> {
    /// Parses a raw query string; the first occurrence of a key wins.
    pub fn parse(query: &'a str) -> Self {
        let mut q = EngineQuery::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "EIO" => &mut q.eio,
                "transport" => &mut q.transport,
                "sid" => &mut q.sid,
                "b64" => &mut q.b64,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(percent_decode(value));
            }
        }
        q
    }
}

/// Decodes `%XX` escapes and `+`. Invalid escapes are kept as they are;
/// invalid UTF-8 becomes U+FFFD, as the reference server's query parser does.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_keys() {
        let q = EngineQuery::parse("EIO=4&transport=polling&t=abc&sid=xyz");
        assert_eq!(q.eio.as_deref(), Some("4"));
        assert_eq!(q.transport.as_deref(), Some("polling"));
        assert_eq!(q.sid.as_deref(), Some("xyz"));
    }

    #[test]
    fn first_key_wins_and_missing_is_none() {
        let q = EngineQuery::parse("transport=websocket&transport=polling&EIO");
        assert_eq!(q.transport.as_deref(), Some("websocket"));
        assert_eq!(q.eio.as_deref(), Some(""));
        assert_eq!(q.sid, None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
    }
}
