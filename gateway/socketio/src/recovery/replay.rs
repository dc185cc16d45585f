//! The replay: what of the log a socket missed after an offset (the
//! entries addressed to it then), and where its server ended it.

use ringway_engineio::Frame;

use crate::log::{Control, LogEntry, RecordCodec};
use crate::packet::Payload;
use crate::socket::SocketRef;
use crate::store::{Offset, Record};

pub(super) fn payload_of(entry: &LogEntry) -> Payload {
    Payload::with_attachments(entry.args_json.clone(), entry.attachments.clone())
}

/// Whether a log entry at `offset` was addressed to this socket: its
/// namespace, after the socket connected, to it or to a room it had joined
/// by then, and not excluding it.
fn targets(entry: &LogEntry, offset: Offset, socket: &SocketRef) -> bool {
    let ns = socket.namespace().name();
    if !entry.namespace.is_empty() && entry.namespace != ns {
        return false;
    }
    let Some(r) = socket.recovery() else {
        return false;
    };
    if offset <= r.started_at {
        return false;
    }
    let id = socket.id();
    if entry.except_socket == id.as_str() {
        return false;
    }
    let rooms = socket.rooms_since();
    if entry
        .except_rooms
        .iter()
        .any(|x| x == id.as_str() || rooms.iter().any(|(r, _)| r == x))
    {
        return false;
    }
    entry.rooms.is_empty()
        || entry.rooms.iter().any(|room| {
            room == id.as_str() || rooms.iter().any(|(r, since)| r == room && *since < offset)
        })
}

/// What a socket missed after `from`, an entry's frames each; and the
/// control entry that ended the socket meanwhile, if one did (the replay
/// stops there).
pub(super) fn replay(
    codec: &dyn RecordCodec,
    socket: &SocketRef,
    from: Offset,
    records: &[Record],
) -> (Vec<Vec<Frame>>, Option<LogEntry>) {
    let mut missed = Vec::new();
    for record in records.iter().filter(|r| r.offset > from) {
        let Some(entry) = codec.decode_entry(&record.data) else {
            continue;
        };
        if entry.control != Control::None {
            if ends(&entry, socket) {
                return (missed, Some(entry));
            }
            continue;
        }
        if !targets(&entry, record.offset, socket) {
            continue;
        }
        let ns = socket.namespace();
        let frames = if socket.takes_offsets() {
            ns.parser().encode_recoverable(
                ns.name(),
                &entry.event,
                &payload_of(&entry),
                &record.offset.to_string(),
            )
        } else {
            ns.parser()
                .encode_event(ns.name(), &entry.event, &payload_of(&entry), None)
        };
        missed.push(frames);
    }
    (missed, None)
}

/// Whether a control entry names this socket.
fn ends(entry: &LogEntry, socket: &SocketRef) -> bool {
    let id = socket.id();
    entry.namespace == socket.namespace().name() && entry.rooms.iter().any(|r| r == id.as_str())
}
