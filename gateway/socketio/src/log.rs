//! The recovery log's records, as the Socket.IO layer sees them: an
//! entry per recoverable emit (or per socket ended for good), and each
//! socket's state. Plain data; how they are stored as bytes is the
//! store's business ([`RecordCodec`], given to `Recovery::open`).

use bytes::Bytes;
use ringway_engineio::Sid;

use super::packet::Payload;
use super::target::Target;

/// What an entry does besides (or instead of) an emit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Control {
    /// A plain emit.
    #[default]
    None,
    /// The socket leaves its namespace for good (a server-side
    /// disconnect).
    Disconnect,
    /// The socket's whole Engine.IO session closes; none of its sockets
    /// can be recovered.
    CloseSession,
}

/// One entry of the log: an emit into a namespace (with its target), or
/// the end of a socket (`control`, the socket's id as its one room, the
/// event a notice sent just before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEntry {
    pub namespace: String,
    /// Rooms it goes to (all sockets of the namespace when empty).
    pub rooms: Vec<String>,
    pub except_rooms: Vec<String>,
    /// A socket it skips (the sender of a broadcast), or empty.
    pub except_socket: String,
    pub event: String,
    /// The arguments, a JSON array, with binary attachments beside it.
    pub args_json: String,
    pub attachments: Vec<Bytes>,
    pub control: Control,
}

impl LogEntry {
    /// The entry of an emit.
    pub fn emit(namespace: &str, target: &Target, event: &str, args: &Payload) -> LogEntry {
        LogEntry {
            namespace: namespace.to_owned(),
            rooms: target.rooms.clone(),
            except_rooms: target.except_rooms.clone(),
            except_socket: target.except_socket_id(),
            event: event.to_owned(),
            args_json: args.json().to_owned(),
            attachments: args.attachments().to_vec(),
            control: Control::None,
        }
    }

    /// The entry that ends socket `id` of `namespace` in its turn (see
    /// [`crate::Socket::end`]), with the event `notice` just before.
    pub fn end(
        namespace: &str,
        id: Sid,
        notice: Option<(&str, &Payload)>,
        close_session: bool,
    ) -> LogEntry {
        let target = Target::room(id.to_string());
        let mut entry = match notice {
            Some((event, args)) => LogEntry::emit(namespace, &target, event, args),
            None => LogEntry::emit(namespace, &target, "", &Payload::empty()),
        };
        entry.control = if close_session {
            Control::CloseSession
        } else {
            Control::Disconnect
        };
        entry
    }
}

/// A room a socket is in, and the log offset it joined at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomSince {
    pub room: String,
    pub since: String,
}

/// A socket's recovery state, stored under its private id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryState {
    pub namespace: String,
    pub socket_id: String,
    /// The session it was on, and the node that held it.
    pub sid: String,
    pub node: String,
    pub user: Option<String>,
    /// Opaque application data.
    pub data: Bytes,
    pub rooms: Vec<RoomSince>,
    /// The log offset the socket started at.
    pub started_at: String,
    /// When its holder wrote it (ms since the epoch; 0: unknown).
    pub saved_at_ms: u64,
}

/// How records are kept as bytes in a [`super::store::RecoveryStore`]:
/// the same encoding on every node, and from one version to the next (a
/// rolling upgrade reads what the old version wrote).
pub trait RecordCodec: Send + Sync + 'static {
    fn encode_entry(&self, entry: &LogEntry) -> Bytes;
    /// `None`: not an entry this codec wrote (skipped).
    fn decode_entry(&self, data: &Bytes) -> Option<LogEntry>;
    fn encode_state(&self, state: &RecoveryState) -> Bytes;
    fn decode_state(&self, data: &Bytes) -> Option<RecoveryState>;
}
