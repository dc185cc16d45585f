//! Engine.IO v3 framing (Socket.IO v2 clients, `--allow-eio3`): pure
//! functions, bytes in, packets out, no I/O.
//!
//! Polling payloads come in two forms:
//!
//! - **text**: each packet as `<length>:<packet>`, the length counted in
//!   UTF-16 code units (JavaScript's `string.length`, which is what the
//!   clients write and read), binary packets as `b4<base64>` (`4`: the
//!   message type). An item `0:` is empty and skipped.
//! - **binary** (`application/octet-stream`): each packet as a type byte
//!   (`0x00` text, `0x01` binary), its length as one byte per decimal
//!   digit, `0xff`, then the packet: UTF-8 text, or the packet type byte
//!   `0x04` and the data. The length counts bytes.
//!
//! A client that asked `b64=1` (socket.io-client 2 in Node: its XHR has no
//! binary support) only gets the text form. One that did not (a browser)
//! gets the text form while no binary packet is queued and the binary form
//! for answers that hold one, as the reference server answers, and may post
//! either.
//!
//! Over WebSocket a v3 binary message is the type byte `4` and the data
//! (or `b4<base64>` text with `b64=1`); text frames are as in v4.
//!
//! Decoding is strict: a length that is not decimal digits, that runs past
//! the body or splits a character, a type byte other than those above, or
//! a binary packet that is not a message is an error (the session is then
//! closed, after the packets before it were applied, as for v4).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;

use super::errors::DecodeError;
use super::packet::{decode_text, Frame};
use super::payload::PayloadItem;

/// The Engine.IO type of a message packet, in front of binary data.
const MESSAGE: u8 = 4;
/// Most digits of one length: nine are a billion bytes, far beyond any
/// payload a session accepts.
const MAX_DIGITS: usize = 9;
/// Ends the length in the binary form.
const LENGTH_END: u8 = 0xff;

/// Decodes one v3 text packet: a WebSocket text frame or one item of a
/// text payload. `b4` + base64 is a binary message.
pub fn decode_item(item: &str) -> Result<PayloadItem<'_>, DecodeError> {
    if let Some(rest) = item.strip_prefix('b') {
        let b64 = rest.strip_prefix('4').ok_or(DecodeError::UnknownType)?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| DecodeError::InvalidBase64)?;
        return Ok(PayloadItem::Binary(Bytes::from(bytes)));
    }
    decode_text(item).map(PayloadItem::Packet)
}

/// Decodes a v3 WebSocket binary message: the message type byte, then the
/// data.
pub fn decode_binary_message(data: &Bytes) -> Result<Bytes, DecodeError> {
    match data.first() {
        None => Err(DecodeError::Empty),
        Some(&MESSAGE) => Ok(data.slice(1..)),
        Some(_) => Err(DecodeError::UnknownType),
    }
}

/// The v3 WebSocket binary message for binary data.
pub fn binary_message(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(1 + data.len());
    out.push(MESSAGE);
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// `b4` + base64: binary data as v3 text.
pub fn base64_message(data: &[u8]) -> String {
    let mut out = String::with_capacity(2 + data.len().div_ceil(3) * 4);
    out.push_str("b4");
    STANDARD.encode_string(data, &mut out);
    out
}

/// Decodes a POST body item by item, stopping after the first error.
/// `binary`: it came as `application/octet-stream` (the binary form).
pub fn decode_payload(body: &[u8], binary: bool) -> Decoder<'_> {
    let rest = if binary {
        Rest::Binary(body)
    } else {
        match std::str::from_utf8(body) {
            // An empty text payload is an error, as in the reference; an
            // empty binary one holds nothing.
            Ok("") => Rest::Failed(DecodeError::Empty),
            Ok(text) => Rest::Text(text),
            Err(_) => Rest::Failed(DecodeError::InvalidUtf8),
        }
    };
    Decoder { rest }
}

/// The items of a v3 payload, lazily: see [`decode_payload`].
pub struct Decoder<'a> {
    rest: Rest<'a>,
}

enum Rest<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// The next item is this error, then nothing.
    Failed(DecodeError),
    Done,
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<PayloadItem<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = match &mut self.rest {
            Rest::Done => return None,
            Rest::Failed(err) => Err(*err),
            Rest::Text(text) => next_text(text)?,
            Rest::Binary(bytes) => next_binary(bytes)?,
        };
        if result.is_err() {
            self.rest = Rest::Done;
        }
        Some(result)
    }
}

/// The next item of a text payload, advancing `rest`; `None` at its end.
fn next_text<'a>(rest: &mut &'a str) -> Option<Result<PayloadItem<'a>, DecodeError>> {
    loop {
        if rest.is_empty() {
            return None;
        }
        let Some((digits, after)) = rest.split_once(':') else {
            return Some(Err(DecodeError::BadLength));
        };
        let Some(units) = parse_digits(digits.bytes()) else {
            return Some(Err(DecodeError::BadLength));
        };
        // Take `units` UTF-16 code units: a packet ends on a character
        // boundary or the payload is malformed.
        let mut taken = 0usize;
        let mut end = 0usize;
        for c in after.chars() {
            if taken >= units {
                break;
            }
            taken += c.len_utf16();
            end += c.len_utf8();
        }
        if taken != units {
            return Some(Err(DecodeError::BadLength));
        }
        let (item, tail) = after.split_at(end);
        *rest = tail;
        if !item.is_empty() {
            return Some(decode_item(item));
        }
    }
}

/// The next item of a binary payload, advancing `rest`; `None` at its end.
fn next_binary<'a>(rest: &mut &'a [u8]) -> Option<Result<PayloadItem<'a>, DecodeError>> {
    let (&kind, after) = rest.split_first()?;
    if kind > 1 {
        return Some(Err(DecodeError::UnknownType));
    }
    let Some(end) = after.iter().position(|&b| b == LENGTH_END) else {
        return Some(Err(DecodeError::BadLength));
    };
    let digits = &after[..end];
    if digits.iter().any(|&d| d > 9) {
        return Some(Err(DecodeError::BadLength));
    }
    let Some(len) = parse_digits(digits.iter().map(|d| d + b'0')) else {
        return Some(Err(DecodeError::BadLength));
    };
    let data = &after[end + 1..];
    if data.len() < len {
        return Some(Err(DecodeError::BadLength));
    }
    let (packet, tail) = data.split_at(len);
    *rest = tail;
    Some(if kind == 0 {
        match std::str::from_utf8(packet) {
            Ok(text) => decode_item(text),
            Err(_) => Err(DecodeError::InvalidUtf8),
        }
    } else {
        match packet.split_first() {
            None => Err(DecodeError::Empty),
            Some((&MESSAGE, data)) => Ok(PayloadItem::Binary(Bytes::copy_from_slice(data))),
            Some(_) => Err(DecodeError::UnknownType),
        }
    })
}

/// A length of 1 to [`MAX_DIGITS`] ASCII digits.
fn parse_digits(digits: impl Iterator<Item = u8>) -> Option<usize> {
    let mut value = 0usize;
    let mut count = 0usize;
    for d in digits {
        if !d.is_ascii_digit() || count == MAX_DIGITS {
            return None;
        }
        value = value * 10 + usize::from(d - b'0');
        count += 1;
    }
    (count > 0).then_some(value)
}

/// Encodes frames into one polling answer; true when it is the binary
/// form (`application/octet-stream`). `base64`: the client asked `b64=1`.
pub fn encode_payload(frames: &[Frame], base64: bool) -> (Bytes, bool) {
    let binary = !base64 && frames.iter().any(|f| matches!(f, Frame::Binary(_)));
    if binary {
        return (encode_binary(frames), true);
    }
    if frames.is_empty() {
        return (Bytes::from_static(b"0:"), false);
    }
    let mut out = String::new();
    for frame in frames {
        match frame {
            Frame::Text(t) => {
                let text = t.as_str();
                let units = if text.is_ascii() {
                    text.len()
                } else {
                    text.encode_utf16().count()
                };
                out.push_str(&units.to_string());
                out.push(':');
                out.push_str(text);
            }
            Frame::Binary(b) => {
                let packet = base64_message(b);
                out.push_str(&packet.len().to_string());
                out.push(':');
                out.push_str(&packet);
            }
        }
    }
    (Bytes::from(out), false)
}

fn encode_binary(frames: &[Frame]) -> Bytes {
    let mut out = Vec::new();
    for frame in frames {
        match frame {
            Frame::Text(t) => {
                out.push(0);
                push_length(&mut out, t.len());
                out.extend_from_slice(t.as_bytes());
            }
            Frame::Binary(b) => {
                out.push(1);
                push_length(&mut out, b.len() + 1);
                out.push(MESSAGE);
                out.extend_from_slice(b);
            }
        }
    }
    Bytes::from(out)
}

/// A length as one byte per decimal digit, then `0xff`.
fn push_length(out: &mut Vec<u8>, len: usize) {
    out.extend(len.to_string().bytes().map(|d| d - b'0'));
    out.push(LENGTH_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Packet;

    fn all(body: &[u8], binary: bool) -> Vec<Result<PayloadItem<'_>, DecodeError>> {
        decode_payload(body, binary).collect()
    }

    #[test]
    fn text_payloads_as_the_reference_writes_them() {
        let frames = [
            Frame::control("3"),
            Frame::message("2[\"é😀\"]"),
            Frame::binary(Bytes::from_static(&[1, 2, 3])),
        ];
        let (body, binary) = encode_payload(&frames, true);
        assert!(!binary);
        // "42[\"é😀\"]": 8 characters, 9 UTF-16 units (the emoji is two).
        // The reference's encoder writes exactly these bytes.
        assert_eq!(&body[..], "1:39:42[\"é😀\"]6:b4AQID".as_bytes());
        assert_eq!(
            all(&body, false),
            vec![
                Ok(PayloadItem::Packet(Packet::Pong)),
                Ok(PayloadItem::Packet(Packet::Message("2[\"é😀\"]"))),
                Ok(PayloadItem::Binary(Bytes::from_static(&[1, 2, 3]))),
            ]
        );
        assert_eq!(&encode_payload(&[], true).0[..], b"0:");
    }

    #[test]
    fn binary_payloads_as_the_reference_writes_them() {
        let frames = [
            Frame::message("51-[\"b\",{\"_placeholder\":true,\"num\":0}]"),
            Frame::binary(Bytes::from_static(&[0xff; 12])),
        ];
        let (body, binary) = encode_payload(&frames, false);
        assert!(binary);
        let text = "451-[\"b\",{\"_placeholder\":true,\"num\":0}]";
        let mut expected = vec![0, 3, 9, 0xff];
        expected.extend_from_slice(text.as_bytes());
        expected.extend_from_slice(&[1, 1, 3, 0xff, 4]);
        expected.extend_from_slice(&[0xff; 12]);
        assert_eq!(text.len(), 39);
        assert_eq!(&body[..], &expected[..]);
        assert_eq!(
            all(&body, true),
            vec![
                Ok(PayloadItem::Packet(Packet::Message(&text[1..]))),
                Ok(PayloadItem::Binary(Bytes::from_static(&[0xff; 12]))),
            ]
        );
        // Text only: the text form even for a client that takes binary.
        let (body, binary) = encode_payload(&[Frame::message("x")], false);
        assert!(!binary);
        assert_eq!(&body[..], b"2:4x");
    }

    #[test]
    fn empty_items_are_skipped_and_bad_lengths_refused() {
        assert_eq!(
            all(b"0:1:2", false),
            vec![Ok(PayloadItem::Packet(Packet::Ping))]
        );
        assert_eq!(all(b"0:", false), vec![]);
        assert_eq!(all(b"", false), vec![Err(DecodeError::Empty)]);
        assert_eq!(all(b"", true), vec![]);
        for bad in [
            &b"1:2x"[..],
            b"2:2",
            b":2",
            b"a:2",
            b"1:21",
            b"-1:2",
            b"1234567890:2",
        ] {
            let items = all(bad, false);
            assert!(
                items.last().is_some_and(Result::is_err),
                "{:?}: {items:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A length that splits a surrogate pair.
        assert_eq!(
            all("2:4😀".as_bytes(), false),
            vec![Err(DecodeError::BadLength)]
        );
        // The packets before the error are delivered, nothing after.
        assert_eq!(
            all(b"1:22:4", false),
            vec![
                Ok(PayloadItem::Packet(Packet::Ping)),
                Err(DecodeError::BadLength)
            ]
        );
        // Binary form: bad type byte, digit out of range, no end, short data.
        for bad in [
            &[2u8, 1, 0xff, b'2'][..],
            &[0, 10, 0xff, b'2'],
            &[0, 1, b'2'],
            &[0, 5, 0xff, b'2'],
            &[1, 1, 0xff, 2],
            &[1, 0, 0xff],
            &[0, 0xff],
        ] {
            let items = all(bad, true);
            assert!(
                items.last().is_some_and(Result::is_err),
                "{bad:?}: {items:?}"
            );
        }
        // Base64 only as a message.
        assert_eq!(decode_item("b2AQID"), Err(DecodeError::UnknownType));
        assert_eq!(decode_item("b4!!"), Err(DecodeError::InvalidBase64));
    }

    #[test]
    fn websocket_binary_messages_carry_the_type_byte() {
        let msg = binary_message(&[9, 8]);
        assert_eq!(&msg[..], &[4, 9, 8]);
        assert_eq!(decode_binary_message(&msg), Ok(Bytes::from_static(&[9, 8])));
        assert_eq!(
            decode_binary_message(&Bytes::from_static(&[2, 1])),
            Err(DecodeError::UnknownType)
        );
        assert_eq!(
            decode_binary_message(&Bytes::new()),
            Err(DecodeError::Empty)
        );
        assert_eq!(base64_message(&[1, 2, 3]), "b4AQID");
    }
}
