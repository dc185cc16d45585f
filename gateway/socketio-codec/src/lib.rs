//! The Socket.IO v5 packet codec (v4's, for v2 clients, differs only in
//! CONNECT and its errors), shared by the gateway and the load tester:
//! pure functions over text, no I/O.
//!
//! Wire form: `<type>[<attachments>-][<namespace>,][<ack id>][JSON]`
//! ([`header`]). [`decode`] reads what a server receives and checks the
//! JSON payload against what the packet type allows, as the reference
//! parser does; event arguments stay raw JSON text. [`write_header`] writes
//! the same grammar. Binary attachments travel as separate Engine.IO
//! messages: the layers above pair them with their packet.

use serde_json::value::RawValue;
use thiserror::Error;

/// Event names a client may not emit (they are the client library's own).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Bound on binary attachments per packet (the reference parser's limit).
pub const MAX_ATTACHMENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketKind {
    /// The kind of a packet from its type digit.
    pub fn from_digit(c: u8) -> Option<PacketKind> {
        Some(match c {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    /// The type digit of this kind.
    pub fn digit(self) -> char {
        (b'0' + self as u8) as char
    }

    pub fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("illegal attachments")]
    IllegalAttachments,
    #[error("invalid ack id")]
    InvalidAckId,
    #[error("invalid JSON payload")]
    InvalidJson,
    #[error("invalid payload for packet type")]
    InvalidPayload,
    #[error("reserved event name")]
    ReservedEvent,
    #[error("binary data outside of a binary packet")]
    UnexpectedBinary,
    #[error("text packet while binary attachments were expected")]
    UnexpectedText,
    #[error("text packet: this gateway speaks msgpack")]
    TextWithMsgpack,
    #[error("malformed msgpack packet: {0}")]
    Msgpack(&'static str),
}

/// A decoded packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `auth` is the raw CONNECT payload (a JSON object) if any.
    Connect {
        nsp: &'a str,
        auth: Option<&'a str>,
    },
    Disconnect {
        nsp: &'a str,
    },
    /// `args` is a JSON array of the arguments after the name;
    /// `attachments` binary messages follow when it is non-zero.
    Event {
        nsp: &'a str,
        id: Option<u64>,
        name: String,
        args: String,
        attachments: usize,
    },
    Ack {
        nsp: &'a str,
        id: Option<u64>,
        args: String,
        attachments: usize,
    },
    /// Only servers send these; decoded for completeness and ignored.
    ConnectError {
        nsp: &'a str,
    },
}

impl Packet<'_> {
    pub fn attachments(&self) -> usize {
        match self {
            Packet::Event { attachments, .. } | Packet::Ack { attachments, .. } => *attachments,
            _ => 0,
        }
    }
}

/// The parts every packet has, as sent: `<type>[<attachments>-][<nsp>,][<ack id>][data]`.
/// The attachment count is checked (1 to [`MAX_ATTACHMENTS`], as the
/// reference parser does); the data is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub kind: PacketKind,
    /// Binary attachments announced (binary packets only).
    pub attachments: usize,
    /// The namespace when given (`None`: the main namespace, `/`).
    pub nsp: Option<&'a str>,
    pub id: Option<u64>,
    /// Everything after the header (a JSON value, when valid).
    pub data: Option<&'a str>,
}

impl<'a> Header<'a> {
    /// The namespace (`/` when omitted).
    pub fn namespace(&self) -> &'a str {
        self.nsp.unwrap_or("/")
    }
}

/// Reads the header of one text packet (client's or server's: the
/// grammar is the same both ways).
pub fn header(input: &str) -> Result<Header<'_>, PacketError> {
    let bytes = input.as_bytes();
    let kind = PacketKind::from_digit(*bytes.first().ok_or(PacketError::Empty)?)
        .ok_or(PacketError::UnknownType)?;
    let mut i = 1;

    let mut attachments = 0;
    if kind.is_binary() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i >= bytes.len() || bytes[i] != b'-' || i - start > 3 {
            return Err(PacketError::IllegalAttachments);
        }
        attachments = input[start..i]
            .parse::<usize>()
            .map_err(|_| PacketError::IllegalAttachments)?;
        if attachments == 0 || attachments > MAX_ATTACHMENTS {
            return Err(PacketError::IllegalAttachments);
        }
        i += 1;
    }

    let mut nsp = None;
    if bytes.get(i) == Some(&b'/') {
        let start = i;
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        nsp = Some(&input[start..i]);
        if i < bytes.len() {
            i += 1; // the comma
        }
    }

    let mut id = None;
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        id = Some(
            input[start..i]
                .parse::<u64>()
                .map_err(|_| PacketError::InvalidAckId)?,
        );
    }

    let data = if i < bytes.len() {
        Some(&input[i..])
    } else {
        None
    };
    Ok(Header {
        kind,
        attachments,
        nsp,
        id,
        data,
    })
}

/// Decodes one text packet a server receives and checks its payload
/// against what its type allows (the reference parser's
/// `isPayloadValid`).
pub fn decode(input: &str) -> Result<Packet<'_>, PacketError> {
    let Header {
        kind,
        attachments,
        nsp,
        id,
        data,
    } = header(input)?;
    let nsp = nsp.unwrap_or("/");
    Ok(match kind {
        PacketKind::Connect => {
            if let Some(d) = data {
                is_json_object(d)?;
            }
            Packet::Connect { nsp, auth: data }
        }
        PacketKind::Disconnect => {
            if data.is_some() {
                return Err(PacketError::InvalidPayload);
            }
            Packet::Disconnect { nsp }
        }
        PacketKind::ConnectError => {
            let v: serde_json::Value =
                serde_json::from_str(data.ok_or(PacketError::InvalidPayload)?)
                    .map_err(|_| PacketError::InvalidJson)?;
            if !(v.is_string() || v.is_object()) {
                return Err(PacketError::InvalidPayload);
            }
            Packet::ConnectError { nsp }
        }
        PacketKind::Event | PacketKind::BinaryEvent => {
            let (name, args) = event_name(data.ok_or(PacketError::InvalidPayload)?)?;
            Packet::Event {
                nsp,
                id,
                name,
                args,
                attachments,
            }
        }
        PacketKind::Ack | PacketKind::BinaryAck => {
            let d = data.ok_or(PacketError::InvalidPayload)?;
            parse_array(d)?;
            Packet::Ack {
                nsp,
                id,
                args: d.to_owned(),
                attachments,
            }
        }
    })
}

fn is_json_object(d: &str) -> Result<(), PacketError> {
    let raw: &RawValue = serde_json::from_str(d).map_err(|_| PacketError::InvalidJson)?;
    if raw.get().trim_start().starts_with('{') {
        Ok(())
    } else {
        Err(PacketError::InvalidPayload)
    }
}

/// The items of a JSON array, raw: `InvalidPayload` for JSON that is not
/// an array, `InvalidJson` for what is not JSON.
pub fn parse_array(d: &str) -> Result<Vec<&RawValue>, PacketError> {
    let trimmed = d.trim_start();
    if !trimmed.starts_with('[') {
        // Valid JSON but not an array, or not JSON at all.
        return match serde_json::from_str::<&RawValue>(d) {
            Ok(_) => Err(PacketError::InvalidPayload),
            Err(_) => Err(PacketError::InvalidJson),
        };
    }
    serde_json::from_str(d).map_err(|_| PacketError::InvalidJson)
}

/// Splits an event array into its name and the remaining arguments as a
/// JSON array text.
pub fn event_name(data: &str) -> Result<(String, String), PacketError> {
    let items = parse_array(data)?;
    let first = items.first().ok_or(PacketError::InvalidPayload)?;
    let first_text = first.get();
    let name = if first_text.starts_with('"') {
        serde_json::from_str::<String>(first_text).map_err(|_| PacketError::InvalidJson)?
    } else if first_text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        // The reference accepts numeric event names.
        first_text.to_owned()
    } else {
        return Err(PacketError::InvalidPayload);
    };
    if RESERVED_EVENTS.contains(&name.as_str()) {
        return Err(PacketError::ReservedEvent);
    }
    let args = match items.get(1) {
        None => "[]".to_owned(),
        Some(second) => {
            // `second` borrows from `data`: everything from it to the end
            // is the rest of the array, closing bracket included.
            let offset = second.get().as_ptr() as usize - data.as_ptr() as usize;
            let mut args = String::with_capacity(data.len() - offset + 1);
            args.push('[');
            args.push_str(&data[offset..]);
            args
        }
    };
    Ok((name, args))
}

/// Writes a packet's header: the type (binary when there are
/// attachments), the attachment count, the namespace unless `/`, the ack
/// id. The data follows.
pub fn write_header(
    out: &mut String,
    kind: PacketKind,
    attachments: usize,
    nsp: &str,
    id: Option<u64>,
) {
    let kind = match (kind, attachments > 0) {
        (PacketKind::Event, true) => PacketKind::BinaryEvent,
        (PacketKind::Ack, true) => PacketKind::BinaryAck,
        (k, _) => k,
    };
    out.push(kind.digit());
    if kind.is_binary() {
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_and_write_the_same_grammar() {
        for (text, kind, attachments, nsp, id, data) in [
            ("0", PacketKind::Connect, 0, None, None, None),
            (
                "0/admin,{\"t\":1}",
                PacketKind::Connect,
                0,
                Some("/admin"),
                None,
                Some("{\"t\":1}"),
            ),
            (
                "2[\"a\"]",
                PacketKind::Event,
                0,
                None,
                None,
                Some("[\"a\"]"),
            ),
            (
                "213[\"a\"]",
                PacketKind::Event,
                0,
                None,
                Some(13),
                Some("[\"a\"]"),
            ),
            (
                "51-/x,7[1]",
                PacketKind::BinaryEvent,
                1,
                Some("/x"),
                Some(7),
                Some("[1]"),
            ),
            (
                "1/chat,",
                PacketKind::Disconnect,
                0,
                Some("/chat"),
                None,
                None,
            ),
        ] {
            let h = header(text).expect(text);
            assert_eq!(
                (h.kind, h.attachments, h.nsp, h.id, h.data),
                (kind, attachments, nsp, id, data),
                "{text}"
            );
            let mut out = String::new();
            write_header(&mut out, kind, attachments, h.namespace(), id);
            out.push_str(data.unwrap_or(""));
            let same = if text == "1/chat," { "1/chat," } else { text };
            assert_eq!(out, same, "{text}");
        }
        assert_eq!(header(""), Err(PacketError::Empty));
        assert_eq!(header("9"), Err(PacketError::UnknownType));
        assert_eq!(header("5-[]"), Err(PacketError::IllegalAttachments));
        assert_eq!(header("511-[]"), Err(PacketError::IllegalAttachments));
        assert_eq!(
            header("299999999999999999999[]"),
            Err(PacketError::InvalidAckId)
        );
    }

    #[test]
    fn decode_checks_payloads_as_the_reference_does() {
        assert_eq!(
            decode("2[\"hi\",1]"),
            Ok(Packet::Event {
                nsp: "/",
                id: None,
                name: "hi".into(),
                args: "[1]".into(),
                attachments: 0,
            })
        );
        assert_eq!(decode("2[\"connect\"]"), Err(PacketError::ReservedEvent));
        assert_eq!(decode("1{}"), Err(PacketError::InvalidPayload));
        assert_eq!(decode("0[]"), Err(PacketError::InvalidPayload));
        assert_eq!(decode("3[1"), Err(PacketError::InvalidJson));
    }
}
