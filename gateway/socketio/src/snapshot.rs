//! What the Socket.IO layer of a session carries when the session moves
//! to another node (its `EngineHandler::Snapshot`): plain data, converted
//! for the wire by the cluster (`cluster/convert.rs`).

use bytes::Bytes;

/// A session's Socket.IO state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSnapshot {
    pub sockets: Vec<SocketSnapshot>,
    /// A namespace was joined once (the connect timeout no longer applies).
    pub ever_joined: bool,
    /// A binary packet waiting for attachments.
    pub partial: Option<PartialSnapshot>,
    /// With recovery on: the log offset the old owner had delivered up to
    /// when it handed the session over (the queue holds everything up to
    /// it); the new owner delivers what comes after. Empty without.
    pub position: String,
}

/// One socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketSnapshot {
    pub namespace: String,
    pub id: String,
    /// The CONNECT payload (a JSON object).
    pub auth: String,
    pub user: Option<String>,
    pub rooms: Vec<String>,
    /// The next id for a server -> client ack.
    pub next_ack_id: u64,
    /// Opaque application data (the upstream's `Allow.data`).
    pub data: Bytes,
    /// With recovery on: the private id (empty without), its generation,
    /// the log offset it started at and each room's join offset.
    pub pid: String,
    pub generation: u64,
    pub started_at: String,
    pub room_since: Vec<String>,
    /// Acks the socket awaits from its client.
    pub moved_acks: Vec<MovedAckSnapshot>,
}

/// An ack a socket awaits, for the node whose emit asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MovedAckSnapshot {
    pub id: u64,
    pub node: String,
    /// Time left before the asker gives up.
    pub expires_in_ms: u64,
}

/// A binary packet still waiting for attachments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialSnapshot {
    pub namespace: String,
    pub id: Option<u64>,
    /// The event name; `None` for an ack.
    pub name: Option<String>,
    pub args: String,
    pub expected: u32,
    pub received: Vec<Bytes>,
}
