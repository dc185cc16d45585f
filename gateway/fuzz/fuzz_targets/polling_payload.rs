//! A polling POST body (or WebSocket text frames) from a hostile client:
//! `decode_payload` over arbitrary bytes, each text item through the
//! Engine.IO packet decoder on its own (as a WebSocket frame would go), and
//! what decoded re-encoded by `encode_payload` must decode to the same
//! items. Must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_gateway::engineio::packet::{decode_text, Frame, Packet};
use ringway_gateway::engineio::payload::{
    decode_item, decode_payload, encode_payload, PayloadItem, SEPARATOR,
};

fn control(p: &Packet<'_>) -> Option<&'static str> {
    Some(match p {
        Packet::Close => "1",
        Packet::Ping => "2",
        Packet::PingProbe => "2probe",
        Packet::Pong => "3",
        Packet::PongProbe => "3probe",
        Packet::Upgrade => "5",
        Packet::Noop => "6",
        Packet::Message(_) => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let items: Vec<_> = decode_payload(data).collect();

    // The payload decoder agrees with the item decoder, piece by piece.
    match std::str::from_utf8(data) {
        Err(_) => assert_eq!(items.len(), 1, "invalid UTF-8 is one error"),
        Ok(text) => {
            let pieces: Vec<&str> = text.split('\u{1e}').collect();
            assert_eq!(pieces.len(), items.len());
            for (piece, item) in pieces.iter().zip(&items) {
                assert_eq!(&decode_item(piece), item);
                if !piece.starts_with('b') {
                    assert_eq!(&decode_text(piece).map(PayloadItem::Packet), item);
                }
            }
        }
    }

    // What the client sent before its first error, re-encoded as a server
    // would write it, decodes back to the same items.
    let good: Vec<&PayloadItem<'_>> = items.iter().map_while(|i| i.as_ref().ok()).collect();
    if good.is_empty() {
        return;
    }
    let frames: Vec<Frame> = good
        .iter()
        .map(|item| match item {
            PayloadItem::Binary(b) => Frame::binary(b.clone()),
            PayloadItem::Packet(Packet::Message(m)) => Frame::message(m),
            PayloadItem::Packet(p) => Frame::control(control(p).unwrap()),
        })
        .collect();
    let body = encode_payload(&frames);
    let wire: usize = frames.iter().map(Frame::wire_len).sum::<usize>() + frames.len() - 1;
    assert_eq!(body.len(), wire);
    assert_eq!(
        body.iter().filter(|b| **b == SEPARATOR).count(),
        frames.len() - 1
    );
    let again: Vec<_> = decode_payload(&body).collect();
    assert_eq!(again.len(), good.len());
    for (a, g) in again.iter().zip(&good) {
        assert_eq!(a.as_ref(), Ok(*g));
    }
});
