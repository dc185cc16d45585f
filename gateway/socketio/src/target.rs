//! Who an emit reaches inside one namespace: rooms, rooms skipped, a
//! socket skipped. Shared by namespaces, the fabric and the log.

use ringway_engineio::Sid;

/// Who a broadcast reaches inside one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Rooms to reach; empty means every socket of the namespace. A room
    /// named like a socket id reaches that socket, as in the reference.
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms are skipped.
    pub except_rooms: Vec<String>,
    /// This socket is skipped (the sender, for `socket.broadcast`).
    pub except_socket: Option<Sid>,
}

impl Target {
    pub fn room(room: impl Into<String>) -> Target {
        Target {
            rooms: vec![room.into()],
            ..Target::default()
        }
    }

    pub fn all() -> Target {
        Target::default()
    }

    /// The skipped socket's id as records and messages carry it (empty:
    /// none).
    pub fn except_socket_id(&self) -> String {
        self.except_socket
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
}
