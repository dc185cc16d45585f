//! A msgpack Socket.IO packet from a hostile client (`--parser msgpack`):
//! `socketio::msgpack::decode` over arbitrary bytes must never panic. What
//! decodes must have placeholders that `Payload::checked` accepts; encoded
//! back with the msgpack parser it must decode to the same packet
//! (namespace, id, name, the same JSON text, the same binaries); and an
//! event or ack the default parser can carry (at most 10 binaries, a
//! namespace its text form can write: `/` then no comma) must come back
//! the same through it too.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringway_gateway::engineio::packet::{decode_text, Frame, Packet as EioPacket};
use ringway_gateway::socketio::msgpack::decode;
use ringway_gateway::socketio::packet::{self, Packet, Payload, MAX_ATTACHMENTS};
use ringway_gateway::socketio::Parser;

/// An owned view of a decoded packet, for comparisons.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connect(String, Option<String>),
    Disconnect(String),
    Event(String, Option<u64>, String, String, Vec<Bytes>),
    Ack(String, Option<u64>, String, Vec<Bytes>),
    ConnectError(String),
}

fn seen(bytes: &Bytes) -> Option<Seen> {
    let mut decoded = decode(bytes).ok()?;
    let (packet, bins) = decoded.take();
    Some(match packet {
        Packet::Connect { nsp, auth } => Seen::Connect(nsp.to_owned(), auth.map(str::to_owned)),
        Packet::Disconnect { nsp } => Seen::Disconnect(nsp.to_owned()),
        Packet::Event {
            nsp,
            id,
            name,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            Seen::Event(nsp.to_owned(), id, name, args, bins)
        }
        Packet::Ack {
            nsp,
            id,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            Seen::Ack(nsp.to_owned(), id, args, bins)
        }
        Packet::ConnectError { nsp } => Seen::ConnectError(nsp.to_owned()),
    })
}

fn binary(frames: &[Frame]) -> Bytes {
    assert_eq!(frames.len(), 1, "one frame per msgpack packet");
    match &frames[0] {
        Frame::Binary(b) => b.clone(),
        Frame::Text(t) => panic!("a msgpack packet as text: {:?}", t.as_str()),
    }
}

/// The default parser's frames read back: the text packet, then the
/// attachments.
fn through_text(frames: &[Frame]) -> (String, Option<u64>, Option<String>, String, Vec<Bytes>) {
    let Frame::Text(t) = &frames[0] else {
        panic!("text first");
    };
    let Ok(EioPacket::Message(m)) = decode_text(t.as_str()) else {
        panic!("not an Engine.IO message: {:?}", t.as_str());
    };
    let bins: Vec<Bytes> = frames[1..]
        .iter()
        .map(|f| match f {
            Frame::Binary(b) => b.clone(),
            Frame::Text(_) => panic!("an attachment as text"),
        })
        .collect();
    match packet::decode(m).unwrap_or_else(|e| panic!("refused ({e}): {m:?}")) {
        Packet::Event {
            nsp,
            id,
            name,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            (nsp.to_owned(), id, Some(name), args, bins)
        }
        Packet::Ack {
            nsp,
            id,
            args,
            attachments,
        } => {
            assert_eq!(attachments, bins.len());
            (nsp.to_owned(), id, None, args, bins)
        }
        other => panic!("re-read as {other:?}"),
    }
}

/// Whether the default parser's text form can carry this namespace.
fn text_namespace(nsp: &str) -> bool {
    nsp.starts_with('/') && !nsp.contains(',')
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let Some(first) = seen(&input) else {
        return;
    };
    let again: Bytes = match &first {
        Seen::Connect(nsp, auth) => {
            binary(&[Parser::Msgpack.encode_connect(nsp, auth.as_deref().unwrap_or(""))])
        }
        Seen::Disconnect(nsp) => binary(&[Parser::Msgpack.encode_disconnect(nsp)]),
        Seen::ConnectError(nsp) => {
            binary(&[Parser::Msgpack.encode_connect_error(nsp, "refused", None)])
        }
        Seen::Event(nsp, id, name, args, bins) => {
            let payload = Payload::checked(args.clone(), bins.clone())
                .unwrap_or_else(|e| panic!("placeholders refused ({e}): {args}"));
            let frames = Parser::Msgpack.encode_event(nsp, name, &payload, *id);
            if bins.len() <= MAX_ATTACHMENTS && text_namespace(nsp) {
                let text = Parser::Default.encode_event(nsp, name, &payload, *id);
                let (n, i, na, a, b) = through_text(&text);
                assert_eq!((&n, i, na.as_ref(), &a, &b), (nsp, *id, Some(name), args, bins));
            }
            binary(&frames)
        }
        Seen::Ack(nsp, id, args, bins) => {
            let payload = Payload::checked(args.clone(), bins.clone())
                .unwrap_or_else(|e| panic!("placeholders refused ({e}): {args}"));
            let id = id.unwrap_or(0);
            let frames = Parser::Msgpack.encode_ack(nsp, id, &payload);
            if bins.len() <= MAX_ATTACHMENTS && text_namespace(nsp) {
                let text = Parser::Default.encode_ack(nsp, id, &payload);
                let (n, i, na, a, b) = through_text(&text);
                assert_eq!((&n, i, na, &a, &b), (nsp, Some(id), None, args, bins));
            }
            binary(&frames)
        }
    };
    let second = seen(&again).unwrap_or_else(|| panic!("re-encoded packet refused: {again:?}"));
    let expected = match first {
        // Re-encoded with id 0 when the client's ack had none.
        Seen::Ack(nsp, None, args, bins) => Seen::Ack(nsp, Some(0), args, bins),
        other => other,
    };
    assert_eq!(second, expected, "input {data:?}");
});
