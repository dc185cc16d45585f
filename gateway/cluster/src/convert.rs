//! The cluster edge: the engine's plain domain types as they go between
//! nodes (`ringway.cluster.v1` messages), and back. Nothing below the
//! cluster knows the wire types.

use std::net::SocketAddr;

use bytes::Bytes;
use ringway_proto::cluster::v1 as pb;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use ringway_engineio::{
    ForwardedAnswer, Frame, Handover, Handshake, Located, Protocol, Receipt, RequestError,
    SessionSnapshot, Sid,
};
use ringway_socketio::{
    ClientSnapshot, Control, Evict, LogEntry, MovedAckAnswer, MovedAckSnapshot, PartialSnapshot,
    RecoveryState, RoomSince, SocketSnapshot,
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
pub fn handoff_reply(located: Located<Handover<ClientSnapshot>>) -> pb::HandoffReply {
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

fn session_state(s: SessionSnapshot<ClientSnapshot>) -> pb::SessionState {
    pb::SessionState {
        sid: s.sid.to_string(),
        remote_addr: s.handshake.remote_addr.to_string(),
        query: s.handshake.query,
        headers: s.handshake.raw_headers.into_string(),
        issued_ms: s.handshake.issued_ms,
        queue: s.queue.iter().map(Frame::to_proto).collect(),
        awaiting_pong: s.awaiting_pong,
        socketio: s.upper.map(client_state),
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
) -> Result<Handover<ClientSnapshot>, RequestError> {
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
            upper: state.socketio.map(client_snapshot),
        },
    })
}

/// A session's Socket.IO state, for the wire.
fn client_state(c: ClientSnapshot) -> pb::SocketIoState {
    pb::SocketIoState {
        sockets: c
            .sockets
            .into_iter()
            .map(|s| pb::SocketState {
                namespace: s.namespace,
                id: s.id,
                auth: s.auth,
                user: s.user,
                rooms: s.rooms,
                next_ack_id: s.next_ack_id,
                data: s.data,
                pid: s.pid,
                generation: s.generation,
                started_at: s.started_at,
                room_since: s.room_since,
                moved_acks: s
                    .moved_acks
                    .into_iter()
                    .map(|a| pb::MovedAck {
                        id: a.id,
                        node: a.node,
                        expires_in_ms: a.expires_in_ms,
                    })
                    .collect(),
            })
            .collect(),
        ever_joined: c.ever_joined,
        partial: c.partial.map(|p| pb::PartialPacket {
            namespace: p.namespace,
            id: p.id,
            name: p.name,
            args: p.args,
            expected: p.expected,
            received: p.received,
        }),
        position: c.position,
    }
}

/// A session's Socket.IO state from the wire.
fn client_snapshot(c: pb::SocketIoState) -> ClientSnapshot {
    ClientSnapshot {
        sockets: c
            .sockets
            .into_iter()
            .map(|s| SocketSnapshot {
                namespace: s.namespace,
                id: s.id,
                auth: s.auth,
                user: s.user,
                rooms: s.rooms,
                next_ack_id: s.next_ack_id,
                data: s.data,
                pid: s.pid,
                generation: s.generation,
                started_at: s.started_at,
                room_since: s.room_since,
                moved_acks: s
                    .moved_acks
                    .into_iter()
                    .map(|a| MovedAckSnapshot {
                        id: a.id,
                        node: a.node,
                        expires_in_ms: a.expires_in_ms,
                    })
                    .collect(),
            })
            .collect(),
        ever_joined: c.ever_joined,
        partial: c.partial.map(|p| PartialSnapshot {
            namespace: p.namespace,
            id: p.id,
            name: p.name,
            args: p.args,
            expected: p.expected,
            received: p.received,
        }),
        position: c.position,
    }
}

/// A socket to evict on the node that still holds it, for the wire.
pub fn evict(e: Evict) -> pb::Evict {
    pb::Evict {
        sid: e.sid,
        namespace: e.namespace,
        socket_id: e.socket_id,
    }
}

/// A socket to evict, from the wire.
pub fn evict_from(e: pb::Evict) -> Evict {
    Evict {
        sid: e.sid,
        namespace: e.namespace,
        socket_id: e.socket_id,
    }
}

/// A client's answer to another node's emit with ack, for the wire.
pub fn moved_ack_answer(a: MovedAckAnswer) -> pb::MovedAckAnswer {
    pb::MovedAckAnswer {
        namespace: a.namespace,
        socket_id: a.socket_id,
        id: a.id,
        args_json: a.args_json,
        attachments: a.attachments,
        sid: a.sid,
    }
}

/// A client's answer to this node's emit with ack, from the wire.
pub fn moved_ack_answer_from(a: pb::MovedAckAnswer) -> MovedAckAnswer {
    MovedAckAnswer {
        namespace: a.namespace,
        socket_id: a.socket_id,
        id: a.id,
        args_json: a.args_json,
        attachments: a.attachments,
        sid: a.sid,
    }
}

/// A recovery log entry, for the wire and the log.
pub fn log_entry(e: &LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        namespace: e.namespace.clone(),
        rooms: e.rooms.clone(),
        except_rooms: e.except_rooms.clone(),
        except_socket: e.except_socket.clone(),
        event: e.event.clone(),
        args_json: e.args_json.clone(),
        attachments: e.attachments.clone(),
        control: match e.control {
            Control::None => pb::Control::None,
            Control::Disconnect => pb::Control::Disconnect,
            Control::CloseSession => pb::Control::CloseSession,
        } as i32,
    }
}

/// A recovery log entry, from the wire or the log. A control this build
/// does not know ends nothing (a plain entry).
pub fn log_entry_from(e: pb::LogEntry) -> LogEntry {
    LogEntry {
        control: match pb::Control::try_from(e.control) {
            Ok(pb::Control::Disconnect) => Control::Disconnect,
            Ok(pb::Control::CloseSession) => Control::CloseSession,
            Ok(pb::Control::None) | Err(_) => Control::None,
        },
        namespace: e.namespace,
        rooms: e.rooms,
        except_rooms: e.except_rooms,
        except_socket: e.except_socket,
        event: e.event,
        args_json: e.args_json,
        attachments: e.attachments,
    }
}

/// A socket's recovery state, for the store.
pub fn recovery_state(s: &RecoveryState) -> pb::RecoveryState {
    pb::RecoveryState {
        namespace: s.namespace.clone(),
        socket_id: s.socket_id.clone(),
        sid: s.sid.clone(),
        node: s.node.clone(),
        user: s.user.clone(),
        data: s.data.clone(),
        rooms: s
            .rooms
            .iter()
            .map(|r| pb::RoomSince {
                room: r.room.clone(),
                since: r.since.clone(),
            })
            .collect(),
        started_at: s.started_at.clone(),
        saved_at_ms: s.saved_at_ms,
    }
}

/// A socket's recovery state, from the store.
pub fn recovery_state_from(s: pb::RecoveryState) -> RecoveryState {
    RecoveryState {
        namespace: s.namespace,
        socket_id: s.socket_id,
        sid: s.sid,
        node: s.node,
        user: s.user,
        data: s.data,
        rooms: s
            .rooms
            .into_iter()
            .map(|r| RoomSince {
                room: r.room,
                since: r.since,
            })
            .collect(),
        started_at: s.started_at,
        saved_at_ms: s.saved_at_ms,
    }
}
