//! An Engine.IO v3 polling POST body (Socket.IO v2 clients, `--allow-eio3`)
//! from a hostile client: the first input byte picks the form (bit 0: the
//! binary form, as `application/octet-stream`; bit 1: the client asked
//! `b64=1`), the rest is the body. `payload_v3::decode_payload` must never
//! panic and must stop at its first error; what decoded before it,
//! re-encoded as the server writes it (`payload_v3::encode_payload`),
//! decodes back to the same items. The body as a WebSocket text frame and
//! as a binary message goes through the v3 item decoders too.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringway_gateway::engineio::packet::{Frame, Packet};
use ringway_gateway::engineio::payload::PayloadItem;
use ringway_gateway::engineio::payload_v3::{
    decode_binary_message, decode_item, decode_payload, encode_payload,
};

fn control(p: &Packet<'_>) -> &'static str {
    match p {
        Packet::Close => "1",
        Packet::Ping => "2",
        Packet::PingProbe => "2probe",
        Packet::Pong => "3",
        Packet::PongProbe => "3probe",
        Packet::Upgrade => "5",
        Packet::Noop => "6",
        Packet::Message(_) => unreachable!("messages are not controls"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let (binary, b64) = (flags & 1 == 1, flags & 2 == 2);

    let items: Vec<_> = decode_payload(body, binary).collect();
    // Nothing after the first error.
    if let Some(pos) = items.iter().position(Result::is_err) {
        assert_eq!(pos, items.len() - 1, "items after an error");
    }

    // The same bytes as WebSocket messages.
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = decode_item(text);
    }
    if let Ok(data) = decode_binary_message(&Bytes::copy_from_slice(body)) {
        assert_eq!(&data[..], &body[1..]);
    }

    // Re-encoded as the server writes it, decoded again: the same items.
    let good: Vec<&PayloadItem<'_>> = items.iter().map_while(|i| i.as_ref().ok()).collect();
    let frames: Vec<Frame> = good
        .iter()
        .map(|item| match item {
            PayloadItem::Binary(b) => Frame::binary(b.clone()),
            PayloadItem::Packet(Packet::Message(m)) => Frame::message(m),
            PayloadItem::Packet(p) => Frame::control(control(p)),
        })
        .collect();
    let (encoded, as_binary) = encode_payload(&frames, b64);
    assert_eq!(
        as_binary,
        !b64 && frames.iter().any(|f| matches!(f, Frame::Binary(_))),
        "the binary form only for binary packets to a client that takes it"
    );
    let again: Vec<_> = decode_payload(&encoded, as_binary).collect();
    assert_eq!(again.len(), good.len(), "{encoded:?}");
    for (a, g) in again.iter().zip(&good) {
        assert_eq!(a.as_ref(), Ok(*g));
    }
});
