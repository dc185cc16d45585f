//! The cluster edge: the engine's plain domain types as they go between
//! nodes (`ringway.cluster.v1` messages), and back. Nothing below the
//! cluster knows the wire types.

use std::net::SocketAddr;

use bytes::Bytes;
use ringway_proto::cluster::v1 as pb;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::engineio::{
    ForwardedAnswer, Frame, Handover, Handshake, Located, Protocol, Receipt, RequestError,
    SessionSnapshot, Sid,
};

/// An Engine.IO frame on the wire between nodes.
pub trait ProtoFrame: Sized {
    /// The frame for another node (a handoff, a cross-node emit).
    fn to_proto(&self) -> pb::Frame;
    /// A frame from another node; `None` if a text frame is not UTF-8.
    fn from_proto(frame: pb::Frame) -> Option<Self>;
}

impl ProtoFrame for Frame {
    fn to_proto(&self) -> pb::Frame {
        match self {
            Frame::Text(t) => pb::Frame {
                data: Bytes::from(t.clone()),
                binary: false,
            },
            Frame::Binary(b) => pb::Frame {
                data: b.clone(),
                binary: true,
            },
        }
    }

    fn from_proto(frame: pb::Frame) -> Option<Frame> {
        if frame.binary {
            Some(Frame::Binary(frame.data))
        } else {
            Utf8Bytes::try_from(frame.data).ok().map(Frame::Text)
        }
    }
}

/// What a peer said about a session, from its wire `Disposition`.
pub(crate) fn located<T>(raw: i32, moved_to: String, served: impl FnOnce() -> T) -> Located<T> {
    match pb::Disposition::try_from(raw) {
        Ok(pb::Disposition::Served) => Located::Served(served()),
        Ok(pb::Disposition::Moved) if !moved_to.is_empty() => Located::Moved(moved_to),
        _ => Located::Unknown,
    }
}

/// The owner's answer to a forwarded request, for the wire, and the
/// receipt of its body (settled with what the forwarder reports back).
pub fn forward_reply(located: Located<ForwardedAnswer>) -> (pb::ForwardReply, Option<Receipt>) {
    let reply = match located {
        Located::Served(answer) => {
            let reply = pb::ForwardReply {
                disposition: pb::Disposition::Served as i32,
                moved_to: String::new(),
                status: u32::from(answer.status),
                content_type: answer.content_type,
                body: answer.body,
            };
            return (reply, answer.receipt);
        }
        Located::Moved(node) => pb::ForwardReply {
            disposition: pb::Disposition::Moved as i32,
            moved_to: node,
            ..pb::ForwardReply::default()
        },
        Located::Unknown => pb::ForwardReply {
            disposition: pb::Disposition::Unknown as i32,
            ..pb::ForwardReply::default()
        },
    };
    (reply, None)
}

/// A session handed over (or where it went), for the wire.
pub fn handoff_reply(located: Located<Handover<pb::SocketIoState>>) -> pb::HandoffReply {
    match located {
        Located::Served(Handover { session, epoch }) => pb::HandoffReply {
            disposition: pb::Disposition::Served as i32,
            moved_to: String::new(),
            epoch,
            session: Some(session_state(session)),
        },
        Located::Moved(node) => pb::HandoffReply {
            disposition: pb::Disposition::Moved as i32,
            moved_to: node,
            ..pb::HandoffReply::default()
        },
        Located::Unknown => pb::HandoffReply {
            disposition: pb::Disposition::Unknown as i32,
            ..pb::HandoffReply::default()
        },
    }
}

fn session_state(s: SessionSnapshot<pb::SocketIoState>) -> pb::SessionState {
    pb::SessionState {
        sid: s.sid.to_string(),
        remote_addr: s.handshake.remote_addr.to_string(),
        query: s.handshake.query,
        headers: s.handshake.raw_headers.into_string(),
        issued_ms: s.handshake.issued_ms,
        queue: s.queue.iter().map(Frame::to_proto).collect(),
        awaiting_pong: s.awaiting_pong,
        socketio: s.upper,
        protocol: s.protocol.revision(),
        base64: s.base64,
    }
}

/// A session from the node that handed it over. A revision this build
/// does not know is a bad request (the upgrade is refused; the session
/// stays where it was).
pub fn handover(
    sid: Sid,
    state: pb::SessionState,
    epoch: u64,
) -> Result<Handover<pb::SocketIoState>, RequestError> {
    let protocol = Protocol::from_revision(state.protocol).ok_or(RequestError::BadRequest)?;
    let handshake = Handshake {
        remote_addr: state
            .remote_addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        query: state.query,
        raw_headers: state.headers.into_boxed_str(),
        issued_ms: state.issued_ms,
    };
    Ok(Handover {
        epoch,
        session: SessionSnapshot {
            sid,
            handshake,
            queue: state
                .queue
                .into_iter()
                .filter_map(Frame::from_proto)
                .collect(),
            awaiting_pong: state.awaiting_pong,
            protocol,
            base64: state.base64,
            upper: state.socketio,
        },
    })
}
