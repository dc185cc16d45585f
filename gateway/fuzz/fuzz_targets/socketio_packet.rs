//! A Socket.IO packet from a hostile client: `socketio::packet::decode`
//! over arbitrary UTF-8; for an event or ack, `Payload::checked` with a few
//! fake attachments and `push_json`; then what decoded is re-encoded with
//! the server's encoders and must decode back to the same packet. Must
//! never panic.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringway_gateway::engineio::packet::{decode_text, Frame, Packet as EioPacket};
use ringway_gateway::socketio::packet::{
    decode, encode_ack, encode_connect, encode_connect_error, encode_disconnect, encode_event,
    Packet, Payload,
};

/// The Socket.IO packet inside a frame the server wrote.
fn reread(frame: &Frame) -> Packet<'_> {
    let Frame::Text(t) = frame else {
        panic!("a packet's first frame is text");
    };
    let Ok(EioPacket::Message(m)) = decode_text(t.as_str()) else {
        panic!("not an Engine.IO message: {:?}", t.as_str());
    };
    decode(m).unwrap_or_else(|e| panic!("re-encoded packet refused ({e}): {m:?}"))
}

/// Checks the payload with `n` fake attachments; without placeholders (or
/// with wrong ones) the arguments go out as plain JSON.
fn payload(args: &str, n: usize) -> Payload {
    let fake = (0..n).map(|i| Bytes::from(vec![i as u8; i])).collect();
    let p = match Payload::checked(args.to_owned(), fake) {
        Ok(p) => {
            assert!(p.attachments().is_empty() || p.attachments().len() == n);
            p
        }
        Err(_) => Payload::from_json_array(args.to_owned()),
    };
    // push_json appends exactly one argument to any array that parses.
    if let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(p.json()) {
        let mut pushed = p.clone();
        pushed.push_json("\"offset\"");
        let mut expected = values;
        expected.push(serde_json::Value::from("offset"));
        assert_eq!(pushed.values(), expected);
        let _ = pushed.first_str();
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packet) = decode(input) else {
        return;
    };
    // A few fake attachments even for non-binary packets: placeholders in
    // a plain EVENT are checked too.
    let extra = data.len() % 3;
    match packet {
        Packet::Event {
            nsp,
            id,
            name,
            args,
            attachments,
        } => {
            let p = payload(&args, attachments.max(extra));
            let frames = encode_event(nsp, &name, &p, id);
            assert_eq!(frames.len(), 1 + p.attachments().len());
            match reread(&frames[0]) {
                Packet::Event {
                    nsp: n2,
                    id: i2,
                    name: na2,
                    args: a2,
                    attachments: at2,
                } => {
                    assert_eq!((n2, i2, na2.as_str()), (nsp, id, name.as_str()));
                    assert_eq!(at2, p.attachments().len());
                    assert_eq!(a2.trim_end(), args.trim_end(), "args of {input:?}");
                }
                other => panic!("event re-read as {other:?}"),
            }
        }
        Packet::Ack {
            nsp,
            id,
            args,
            attachments,
        } => {
            let p = payload(&args, attachments.max(extra));
            let id = id.unwrap_or(0);
            let frames = encode_ack(nsp, id, &p);
            assert_eq!(frames.len(), 1 + p.attachments().len());
            match reread(&frames[0]) {
                Packet::Ack {
                    nsp: n2,
                    id: i2,
                    args: a2,
                    attachments: at2,
                } => {
                    assert_eq!((n2, i2), (nsp, Some(id)));
                    assert_eq!(at2, p.attachments().len());
                    assert_eq!(a2, args, "args of {input:?}");
                }
                other => panic!("ack re-read as {other:?}"),
            }
        }
        Packet::Connect { nsp, auth } => {
            let frame = encode_connect(nsp, auth.unwrap_or(""));
            assert_eq!(reread(&frame), Packet::Connect { nsp, auth });
        }
        Packet::Disconnect { nsp } => {
            let frame = encode_disconnect(nsp);
            assert_eq!(reread(&frame), Packet::Disconnect { nsp });
        }
        Packet::ConnectError { nsp } => {
            let frame = encode_connect_error(nsp, input, None);
            assert_eq!(reread(&frame), Packet::ConnectError { nsp });
        }
    }
});
