//! Per-session Socket.IO state: the sockets the session has in each
//! namespace and a binary packet being reassembled.

use std::sync::{Mutex, MutexGuard};

use super::snapshot::{ClientSnapshot, MovedAckSnapshot, PartialSnapshot, SocketSnapshot};
use bytes::Bytes;

use super::socket::{Socket, SocketRef};

/// A BINARY_EVENT / BINARY_ACK waiting for its attachments.
pub(crate) struct Partial {
    pub nsp: String,
    pub id: Option<u64>,
    /// `Some` for an event, `None` for an ack.
    pub name: Option<String>,
    pub args: String,
    pub expected: usize,
    pub received: Vec<Bytes>,
}

#[derive(Default)]
struct Inner {
    sockets: Vec<SocketRef>,
    /// Namespaces whose CONNECT is being authorized.
    connecting: Vec<Box<str>>,
    partial: Option<Box<Partial>>,
    /// Set once the session closed: no socket may be added after.
    closed: bool,
    /// Whether any namespace was ever joined (for the connect timeout).
    joined: bool,
    /// CONNECTs refused so far (bad namespace, refused by the application).
    failed_connects: u32,
}

/// Stored in every Engine.IO session by the Socket.IO layer.
#[derive(Default)]
pub struct ClientState {
    inner: Mutex<Inner>,
}

impl ClientState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn socket(&self, nsp: &str) -> Option<SocketRef> {
        self.lock()
            .sockets
            .iter()
            .find(|s| s.namespace().name() == nsp)
            .cloned()
    }

    pub fn sockets(&self) -> Vec<SocketRef> {
        self.lock().sockets.clone()
    }

    /// Counts a refused CONNECT; the count so far.
    pub fn connect_failed(&self) -> usize {
        let mut inner = self.lock();
        inner.failed_connects = inner.failed_connects.saturating_add(1);
        inner.failed_connects as usize
    }

    pub(crate) fn ever_joined(&self) -> bool {
        self.lock().joined
    }

    /// Marks `nsp` as being connected.
    pub(crate) fn begin_connect(&self, nsp: &str) -> Result<(), ConnectRefused> {
        let mut inner = self.lock();
        if inner.sockets.iter().any(|s| s.namespace().name() == nsp) {
            return Err(ConnectRefused::Joined);
        }
        if inner.closed || inner.connecting.iter().any(|n| n.as_ref() == nsp) {
            return Err(ConnectRefused::Busy);
        }
        inner.connecting.push(nsp.into());
        Ok(())
    }

    pub(crate) fn is_connecting(&self, nsp: &str) -> bool {
        self.lock().connecting.iter().any(|n| n.as_ref() == nsp)
    }

    /// Adds the socket of an accepted CONNECT, whose namespace stays
    /// "connecting" (a handoff waits) until [`ClientState::end_connect`],
    /// once its answer is queued: packets the client sends after reading
    /// the answer find the socket, and a handoff never takes the socket
    /// without its answer. False when the session closed meanwhile (the
    /// caller must undo the socket).
    pub(crate) fn join_connecting(&self, socket: SocketRef) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.joined = true;
        inner.sockets.push(socket);
        true
    }

    /// Ends a CONNECT (answered, refused, or its session closed).
    pub(crate) fn end_connect(&self, nsp: &str) {
        self.lock().connecting.retain(|n| n.as_ref() != nsp);
    }

    pub(crate) fn remove_socket(&self, socket: &Socket) {
        self.lock()
            .sockets
            .retain(|s| !std::ptr::eq(s.as_ref(), socket));
    }

    /// The session closed: hands out every socket, refuses new ones.
    pub(crate) fn close(&self) -> Vec<SocketRef> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.partial = None;
        std::mem::take(&mut inner.sockets)
    }

    /// What a handoff carries: the sockets (ids, auth, user, rooms, ack
    /// numbering, application data), whether any namespace was joined, and a binary packet
    /// still waiting for attachments. `None` while a CONNECT is being
    /// decided (its answer belongs to this node).
    pub(crate) fn export(&self, this_node: &str) -> Option<ClientSnapshot> {
        let inner = self.lock();
        if !inner.connecting.is_empty() {
            return None;
        }
        let sockets = inner
            .sockets
            .iter()
            .map(|s| {
                let (rooms, room_since): (Vec<String>, Vec<String>) = s
                    .rooms_since()
                    .into_iter()
                    .map(|(room, since)| (room, since.to_string()))
                    .unzip();
                let r = s.recovery();
                SocketSnapshot {
                    namespace: s.namespace().name().to_owned(),
                    id: s.id().to_string(),
                    auth: s.auth().to_owned(),
                    user: s.user().map(str::to_owned),
                    rooms,
                    next_ack_id: s.next_ack_id(),
                    data: s.data().cloned().unwrap_or_default(),
                    pid: r.map(|r| r.pid.to_string()).unwrap_or_default(),
                    generation: r.map_or(0, |r| r.generation),
                    started_at: r.map(|r| r.started_at.to_string()).unwrap_or_default(),
                    room_since: if r.is_some() { room_since } else { Vec::new() },
                    moved_acks: moved_acks(s, this_node),
                }
            })
            .collect();
        let partial = inner.partial.as_ref().map(|p| PartialSnapshot {
            namespace: p.nsp.clone(),
            id: p.id,
            name: p.name.clone(),
            args: p.args.clone(),
            expected: p.expected as u32,
            received: p.received.clone(),
        });
        Some(ClientSnapshot {
            sockets,
            ever_joined: inner.joined,
            partial,
            position: String::new(),
        })
    }

    /// The ack numbering and awaited acks of an exported state, again: an
    /// emit with ack made between [`ClientState::export`] and the moment
    /// the session stopped taking packets is in the queue that moves.
    pub(crate) fn refresh_acks(&self, state: &mut ClientSnapshot, this_node: &str) {
        let inner = self.lock();
        for exported in &mut state.sockets {
            let socket = inner.sockets.iter().find(|s| {
                s.namespace().name() == exported.namespace && s.id().as_str() == exported.id
            });
            if let Some(socket) = socket.filter(|s| s.connected()) {
                exported.next_ack_id = socket.next_ack_id();
                exported.moved_acks = moved_acks(socket, this_node);
            }
        }
    }

    /// Restores the flags of an exported state; sockets are added one by
    /// one with [`ClientState::add_restored`].
    pub(crate) fn restore_flags(&self, ever_joined: bool, partial: Option<PartialSnapshot>) {
        let mut inner = self.lock();
        inner.joined = ever_joined;
        inner.partial = partial.map(|p| {
            Box::new(Partial {
                nsp: p.namespace,
                id: p.id,
                name: p.name,
                args: p.args,
                expected: p.expected as usize,
                received: p.received,
            })
        });
    }

    pub(crate) fn add_restored(&self, socket: SocketRef) {
        self.lock().sockets.push(socket);
    }

    pub(crate) fn has_partial(&self) -> bool {
        self.lock().partial.is_some()
    }

    pub(crate) fn start_partial(&self, partial: Partial) {
        self.lock().partial = Some(Box::new(partial));
    }

    /// Adds one attachment; `Ok(Some)` with the packet once it is
    /// complete.
    pub(crate) fn push_attachment(
        &self,
        data: Bytes,
    ) -> Result<Option<Box<Partial>>, UnexpectedAttachment> {
        let mut inner = self.lock();
        let partial = inner.partial.as_mut().ok_or(UnexpectedAttachment)?;
        partial.received.push(data);
        if partial.received.len() < partial.expected {
            return Ok(None);
        }
        Ok(inner.partial.take())
    }
}

/// Why a CONNECT cannot begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnectRefused {
    /// The namespace is joined already: the client broke the protocol.
    #[error("namespace joined twice")]
    Joined,
    /// A CONNECT to it is being decided, or the session closed: ignored.
    #[error("a CONNECT to this namespace is under way, or the session closed")]
    Busy,
}

/// A binary message when no binary packet waits for attachments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("binary data outside of a binary packet")]
pub(crate) struct UnexpectedAttachment;

/// A socket's awaited acks as a handoff carries them.
fn moved_acks(socket: &Socket, this_node: &str) -> Vec<MovedAckSnapshot> {
    let now = std::time::Instant::now();
    socket
        .awaited_acks(this_node)
        .into_iter()
        .map(|a| MovedAckSnapshot {
            id: a.id,
            node: a.node.into(),
            expires_in_ms: a.deadline.saturating_duration_since(now).as_millis() as u64,
        })
        .collect()
}
