//! One Socket.IO socket: a client's connection to one namespace, with its
//! own id, rooms and ack ids, carried by an Engine.IO session.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::oneshot;

use super::store::Offset;
use ringway_engineio::{CloseReason, Frame, SendError, SessionRef, Sid};

use super::client::ClientState;
use super::fabric::RoomReceipt;
use super::log::LogEntry;
use super::namespace::Namespace;
use super::packet::Payload;
use super::target::Target;

pub type SocketRef = Arc<Socket>;

/// Rooms whose names start with this are the gateway's own (a user's
/// sockets are in one): clients and the API cannot join or list them.
pub const HIDDEN_ROOM_PREFIX: char = '\u{1}';

/// The hidden room of every socket of a user.
pub fn user_room(user: &str) -> String {
    format!("{HIDDEN_ROOM_PREFIX}user:{user}")
}

/// Why a socket may not join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("room names starting with U+0001 are reserved")]
    Hidden,
    #[error("room name longer than {max} bytes")]
    NameTooLong { max: usize },
    #[error("in {max} rooms already")]
    TooManyRooms { max: usize },
}

impl JoinError {
    /// The limit's label in metrics.
    pub fn limit(&self) -> &'static str {
        match self {
            JoinError::Hidden => "hidden_room",
            JoinError::NameTooLong { .. } => "room_name",
            JoinError::TooManyRooms { .. } => "rooms_per_socket",
        }
    }
}

/// The user whose hidden room this is, if it is one.
pub fn user_of_room(room: &str) -> Option<&str> {
    room.strip_prefix(HIDDEN_ROOM_PREFIX)?.strip_prefix("user:")
}

pub fn is_hidden_room(room: &str) -> bool {
    room.starts_with(HIDDEN_ROOM_PREFIX)
}

/// Why a socket left its namespace. The strings are the reference
/// server's disconnect reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    ClientNamespaceDisconnect,
    ServerNamespaceDisconnect,
    /// The Engine.IO session ended for this reason.
    Session(CloseReason),
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Session(CloseReason::ForcedClose) => "forced server close",
            DisconnectReason::Session(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    #[error("the client did not acknowledge in time")]
    Timeout,
    #[error("the socket disconnected before acknowledging")]
    Disconnected,
    #[error(transparent)]
    Send(#[from] SendError),
}

#[derive(Default)]
struct PendingAcks {
    next_id: u64,
    waiting: AckWaiters,
    /// Acks the client owes to waiters on other nodes: emitted there
    /// before the session moved here. Id -> that node, until the waiter
    /// there gives up.
    moved: HashMap<u64, (Box<str>, Instant)>,
}

/// Longest an ack is waited for when a timeout is out of range.
const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Someone waiting for the client's answer to an emit with ack, until
/// `deadline`.
pub(crate) struct AckWaiter {
    tx: oneshot::Sender<Payload>,
    deadline: Instant,
}

impl AckWaiter {
    /// Resolves the waiter; false if it gave up.
    pub(crate) fn resolve(self, payload: Payload) -> bool {
        self.tx.send(payload).is_ok()
    }

    /// Whether it still waits.
    pub(crate) fn waits(&self, now: Instant) -> bool {
        !self.tx.is_closed() && self.deadline > now
    }
}

/// The waiters of a socket's acks by id (taken from it when its session
/// moved to another node: they wait on here for the answer sent back from
/// there).
pub(crate) type AckWaiters = HashMap<u64, AckWaiter>;

/// An ack a moved socket's client still owes: its id, the node that
/// waits for it, and until when.
pub(crate) struct AwaitedAck {
    pub id: u64,
    pub node: Box<str>,
    pub deadline: Instant,
}

/// The private id: 128 random bits, URL-safe base64 (22 characters).
pub(crate) fn new_pid() -> Box<str> {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into_boxed_str()
}

/// What a socket carries when recovery is on.
///
/// A socket whose client cannot recover (a Socket.IO v2 client: its
/// protocol has no pid and no offsets) is *tracked* only: no pid, no state
/// in the store, events without offsets; it still takes its events from
/// the log in order (so a handoff neither loses nor repeats any).
#[derive(Debug)]
pub struct SocketRecovery {
    /// Empty for a tracked-only socket.
    pub(crate) pid: Box<str>,
    pub(crate) generation: u64,
    pub(crate) started_at: Offset,
}

impl SocketRecovery {
    /// A socket that takes the log's events but can never be recovered.
    pub(crate) fn tracked(started_at: Offset) -> SocketRecovery {
        SocketRecovery {
            pid: "".into(),
            generation: 0,
            started_at,
        }
    }

    /// Its client may recover it (it has a pid; it gets offsets).
    pub(crate) fn is_recoverable(&self) -> bool {
        !self.pid.is_empty()
    }

    pub(crate) fn fresh(started_at: Offset) -> SocketRecovery {
        SocketRecovery {
            pid: new_pid(),
            generation: 1,
            started_at,
        }
    }

    pub(crate) fn restored(pid: &str, generation: u64, started_at: Offset) -> SocketRecovery {
        SocketRecovery {
            pid: pid.into(),
            generation,
            started_at,
        }
    }
}

/// What sockets and their namespace report to connection state recovery
/// when it is on (`crate::recovery::Recovery` implements it): the emits
/// to log, a socket's rooms and its end. A socket knows nothing more of
/// recovery than this and its [`SocketRecovery`].
pub trait RecoverySink: Send + Sync + 'static {
    /// Logs an emit (or a socket's end); it is delivered in log order,
    /// from the log, never here directly.
    fn append(&self, entry: LogEntry);
    /// Holds deliveries while the guard lives; the offset it shows is the
    /// last one delivered here (a room joined under it gets what follows).
    fn gate(&self) -> MutexGuard<'_, Offset>;
    /// A live socket's state changed (connected, joined, left).
    fn save(&self, socket: &SocketRef);
    /// [`RecoverySink::save`], resolving once the state is written (or
    /// the write failed).
    fn save_confirmed(&self, socket: &SocketRef) -> oneshot::Receiver<()>;
    /// A socket left this node: recoverable for the window, or gone.
    fn forget(&self, socket: &Socket, recoverable: bool);
    /// A socket moved to another node (a handoff, a recovery elsewhere):
    /// its state stays, written by the new owner.
    fn moved_away(&self, socket: &Socket);
}

pub struct Socket {
    id: Sid,
    ns: Arc<Namespace>,
    session: SessionRef<ClientState>,
    /// The CONNECT payload (a JSON object; `{}` when none was sent).
    auth: Box<str>,
    user: Option<Box<str>>,
    /// Opaque data the application attached at CONNECT (see
    /// [`super::Grant::data`]).
    data: Option<Bytes>,
    /// Rooms, each with the log offset at which it was joined (recovery
    /// replays a room's entries from there; `ZERO` without recovery).
    rooms: Mutex<Vec<(Box<str>, Offset)>>,
    /// Allocated on the first emit that waits for an ack.
    acks: Mutex<Option<Box<PendingAcks>>>,
    connected: AtomicBool,
    /// With connection state recovery on: the private id and what goes
    /// with it.
    recovery: Option<Box<SocketRecovery>>,
}

impl Socket {
    /// A new socket, with a fresh id (recovery off).
    pub(crate) fn new(
        ns: Arc<Namespace>,
        session: SessionRef<ClientState>,
        auth: Box<str>,
        user: Option<Box<str>>,
        data: Option<Bytes>,
    ) -> SocketRef {
        Self::restored(ns, session, Sid::random(), auth, user, data, 0, None)
    }

    /// A socket moved here from another node with its session (or
    /// recovered), keeping its id and its ack numbering.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restored(
        ns: Arc<Namespace>,
        session: SessionRef<ClientState>,
        id: Sid,
        auth: Box<str>,
        user: Option<Box<str>>,
        data: Option<Bytes>,
        next_ack_id: u64,
        recovery: Option<SocketRecovery>,
    ) -> SocketRef {
        let acks = (next_ack_id > 0).then(|| {
            Box::new(PendingAcks {
                next_id: next_ack_id,
                ..PendingAcks::default()
            })
        });
        Arc::new(Socket {
            id,
            ns,
            session,
            auth,
            user,
            data,
            rooms: Mutex::new(Vec::new()),
            acks: Mutex::new(acks),
            connected: AtomicBool::new(true),
            recovery: recovery.map(Box::new),
        })
    }

    /// The recovery state, when connection state recovery is on.
    pub(crate) fn recovery(&self) -> Option<&SocketRecovery> {
        self.recovery.as_deref()
    }

    /// Whether its recoverable events carry their offset: recovery is on
    /// and the client can recover (not a Socket.IO v2 client).
    pub(crate) fn takes_offsets(&self) -> bool {
        self.recovery().is_some_and(SocketRecovery::is_recoverable)
    }

    /// The id the next emit with ack will use.
    pub(crate) fn next_ack_id(&self) -> u64 {
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |p| p.next_id)
    }

    pub fn id(&self) -> Sid {
        self.id
    }

    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    pub fn session(&self) -> &SessionRef<ClientState> {
        &self.session
    }

    pub fn auth(&self) -> &str {
        &self.auth
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The opaque data the application attached at CONNECT.
    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn rooms_lock(&self) -> MutexGuard<'_, Vec<(Box<str>, Offset)>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every room of the socket, the hidden ones included.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms_lock()
            .iter()
            .map(|(r, _)| r.to_string())
            .collect()
    }

    /// Every room with the log offset at which it was joined.
    pub fn rooms_since(&self) -> Vec<(String, Offset)> {
        self.rooms_lock()
            .iter()
            .map(|(r, since)| (r.to_string(), *since))
            .collect()
    }

    /// The rooms the application and the API see.
    pub fn public_rooms(&self) -> Vec<String> {
        self.rooms_lock()
            .iter()
            .filter(|(r, _)| !is_hidden_room(r))
            .map(|(r, _)| r.to_string())
            .collect()
    }

    /// Sets the rooms of a socket that is not in its namespace yet (moved
    /// or recovered); [`Socket::attach_rooms`] puts it into them.
    pub(crate) fn set_rooms(&self, rooms: Vec<(String, Offset)>) {
        *self.rooms_lock() = rooms
            .into_iter()
            .map(|(r, since)| (r.into_boxed_str(), since))
            .collect();
    }

    /// Puts the socket into the namespace's room index for each of its
    /// rooms (announced to the other nodes like any first member).
    pub(crate) fn attach_rooms(self: &Arc<Self>) {
        for room in self.rooms() {
            let _ = self.ns.join(self, &room);
        }
    }

    /// Queues frames on this socket's session; false if it is gone.
    pub fn send_frames(&self, frames: impl IntoIterator<Item = Frame>) -> bool {
        self.connected() && self.session.send_all(frames).is_ok()
    }

    /// Emits an event to this socket (through the recovery log when
    /// recovery is on: it arrives with its offset, once logged).
    pub fn emit(&self, event: &str, args: &Payload) -> Result<(), SendError> {
        if !self.connected() {
            return Err(SendError::Closed);
        }
        if let Some(recovery) = self.ns.recovery() {
            let target = Target::room(self.id.to_string());
            recovery.append(LogEntry::emit(self.ns.name(), &target, event, args));
            return Ok(());
        }
        let frames = self
            .ns
            .parser()
            .encode_event(self.ns.name(), event, args, None);
        let bytes: usize = frames.iter().map(Frame::wire_len).sum();
        self.session.send_all(frames)?;
        let m = super::metrics::metrics();
        m.messages_out.add(1, &[]);
        m.bytes_out(bytes as u64);
        Ok(())
    }

    /// Emits an event and waits for the client's ack.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        args: &Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        if !self.connected() {
            return Err(AckError::Send(SendError::Closed));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
            let pending = acks.get_or_insert_with(Box::default);
            let id = pending.next_id;
            pending.next_id += 1;
            let deadline = Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(|| Instant::now() + MAX_ACK_WAIT);
            pending.waiting.insert(id, AckWaiter { tx, deadline });
            id
        };
        if let Err(err) = self.session.send_all(self.ns.parser().encode_event(
            self.ns.name(),
            event,
            args,
            Some(id),
        )) {
            self.forget_ack(id);
            return Err(err.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                self.forget_ack(id);
                Err(AckError::Timeout)
            }
        }
    }

    fn forget_ack(&self, id: u64) {
        if let Some(pending) = self.acks.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            pending.waiting.remove(&id);
        }
    }

    /// An ACK from the client; unknown ids are ignored. An ack owed to a
    /// waiter on another node (emitted there before the session moved)
    /// comes back with that node, to be sent there.
    pub(crate) fn on_ack(&self, id: u64, payload: Payload) -> Option<(Box<str>, Payload)> {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let pending = acks.as_mut()?;
        if let Some(waiter) = pending.waiting.remove(&id) {
            drop(acks);
            waiter.resolve(payload);
            return None;
        }
        let now = Instant::now();
        pending.moved.retain(|_, (_, deadline)| *deadline > now);
        pending.moved.remove(&id).map(|(node, _)| (node, payload))
    }

    /// The acks still awaited, for a handoff: those waited for here (by
    /// `this_node`) and those owed to other nodes; what its waiter gave up
    /// on is left out.
    pub(crate) fn awaited_acks(&self, this_node: &str) -> Vec<AwaitedAck> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = acks.as_ref() else {
            return Vec::new();
        };
        let now = Instant::now();
        let here = pending
            .waiting
            .iter()
            .filter(|(_, w)| w.waits(now))
            .map(|(id, w)| AwaitedAck {
                id: *id,
                node: this_node.into(),
                deadline: w.deadline,
            });
        let there = pending
            .moved
            .iter()
            .filter(|(_, (_, deadline))| *deadline > now)
            .map(|(id, (node, deadline))| AwaitedAck {
                id: *id,
                node: node.clone(),
                deadline: *deadline,
            });
        here.chain(there).collect()
    }

    /// Acks of a moved socket still awaited on other nodes.
    pub(crate) fn set_moved_acks(&self, moved: impl IntoIterator<Item = AwaitedAck>) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let pending = acks.get_or_insert_with(Box::default);
        pending
            .moved
            .extend(moved.into_iter().map(|a| (a.id, (a.node, a.deadline))));
    }

    /// The waiters of this socket's acks, taken out (the session moved
    /// away: they wait on here for answers from its new node).
    pub(crate) fn take_ack_waiters(&self) -> AckWaiters {
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(|p| std::mem::take(&mut p.waiting))
            .unwrap_or_default()
    }

    /// Joins a room. In a cluster, when this is the room's first member
    /// on this node, the other nodes learn of it one hop later: await the
    /// receipt before telling anyone (an ack) that the join is done, so
    /// that emits into the room from any node reach this socket.
    /// Hidden room names (see [`HIDDEN_ROOM_PREFIX`]), names past the
    /// length limit and rooms past the socket's limit are refused
    /// (counted in `ringway.limits.refusals`).
    pub fn join(self: &Arc<Self>, room: &str) -> Result<Option<RoomReceipt>, JoinError> {
        let limits = self.ns.limits();
        let refused = if is_hidden_room(room) {
            Some(JoinError::Hidden)
        } else if room.len() > limits.max_room_name {
            Some(JoinError::NameTooLong {
                max: limits.max_room_name,
            })
        } else if limits.max_rooms_per_socket > 0 && {
            let rooms = self.rooms_lock();
            rooms.len() >= limits.max_rooms_per_socket
                && !rooms.iter().any(|(r, _)| r.as_ref() == room)
        } {
            Some(JoinError::TooManyRooms {
                max: limits.max_rooms_per_socket,
            })
        } else {
            None
        };
        if let Some(err) = refused {
            ringway_engineio::metrics::metrics()
                .limit_refusals
                .add(1, &ringway_telemetry::attr("limit", err.limit()));
            return Err(err);
        }
        Ok(self.join_any(room))
    }

    /// Joins any room, hidden ones included. With recovery on, the
    /// receipt also waits for the socket's state (with the room) to be
    /// written: a join the client was told of survives the node.
    pub(crate) fn join_any(self: &Arc<Self>, room: &str) -> Option<RoomReceipt> {
        if !self.connected() {
            return None;
        }
        let recovery = self.ns.recovery();
        let receipt = {
            // Under the deliverer's gate: the room's entries after `since`
            // are exactly the ones this socket gets.
            let gate = recovery.map(|r| r.gate());
            let since = gate.as_deref().copied().unwrap_or(Offset::ZERO);
            {
                let mut rooms = self.rooms_lock();
                if rooms.iter().any(|(r, _)| r.as_ref() == room) {
                    return None;
                }
                rooms.push((room.into(), since));
            }
            self.ns.join(self, room)
        };
        let Some(recovery) = recovery.filter(|_| self.recovery.is_some()) else {
            return receipt;
        };
        let saved = recovery.save_confirmed(self);
        Some(Box::pin(async move {
            if let Some(receipt) = receipt {
                receipt.await;
            }
            let _ = saved.await;
        }))
    }

    pub fn leave(self: &Arc<Self>, room: &str) {
        {
            let mut rooms = self.rooms_lock();
            let Some(pos) = rooms.iter().position(|(r, _)| r.as_ref() == room) else {
                return;
            };
            rooms.swap_remove(pos);
        }
        self.ns.leave(self, room);
        if let Some(recovery) = self.ns.recovery().filter(|_| self.recovery.is_some()) {
            recovery.save(self);
        }
    }

    pub(crate) fn take_rooms(&self) -> Vec<Box<str>> {
        std::mem::take(&mut *self.rooms_lock())
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// Leaves the namespace. Returns false if it had already left.
    pub(crate) fn detach(&self) -> bool {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return false;
        }
        self.ns.remove(self);
        // Waiters of pending acks see `Disconnected`.
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).take();
        true
    }

    /// Disconnects this socket from its namespace (the client gets a
    /// DISCONNECT packet; the session stays for other namespaces). For
    /// good: the socket cannot be recovered (the reference's "server
    /// namespace disconnect").
    pub fn disconnect(&self) {
        self.end(None, false);
    }

    /// Closes the whole Engine.IO session; every socket on it disconnects,
    /// for good.
    pub fn close_session(&self) {
        self.end(None, true);
    }

    /// [`Socket::disconnect`] or (`close_session`) [`Socket::close_session`],
    /// with the event `notice` sent just before. With recovery on it takes
    /// effect in the log's order: after everything emitted to the socket
    /// before, on whichever node then holds it.
    pub fn end(&self, notice: Option<(&str, &Payload)>, close_session: bool) {
        if let Some(recovery) = self.ns.recovery() {
            if self.connected() {
                recovery.append(LogEntry::end(
                    self.ns.name(),
                    self.id,
                    notice,
                    close_session,
                ));
                return;
            }
        }
        self.end_now(notice, close_session);
    }

    /// [`Socket::end`], at once.
    pub(crate) fn end_now(&self, notice: Option<(&str, &Payload)>, close_session: bool) {
        if let Some((event, args)) = notice {
            let _ = self.send_frames(self.ns.parser().encode_event(
                self.ns.name(),
                event,
                args,
                None,
            ));
        }
        if !close_session {
            if self.connected() {
                let _ = self
                    .session
                    .send(self.ns.parser().encode_disconnect(self.ns.name()));
            }
            if self.detach() {
                self.session.data().remove_socket(self);
                if let Some(recovery) = self.ns.recovery() {
                    recovery.forget(self, false);
                }
            }
            return;
        }
        if let Some(recovery) = self.ns.recovery() {
            // Deleted now; the close's own (recoverable) expiry then finds
            // nothing to keep.
            for socket in self.session.data().sockets() {
                recovery.forget(&socket, false);
            }
        }
        self.session.close_for_client(CloseReason::ForcedClose);
    }
}

/// The server's side of an ack the client asked for.
pub struct AckSender {
    socket: SocketRef,
    id: u64,
}

impl AckSender {
    pub(crate) fn new(socket: SocketRef, id: u64) -> AckSender {
        AckSender { socket, id }
    }

    /// Sends the ack; if the session moved to another node meanwhile (a
    /// handoff while the answer was being made), it goes there.
    pub fn send(self, args: &Payload) -> Result<(), SendError> {
        let ns = &self.socket.ns;
        let encode = || ns.parser().encode_ack(ns.name(), self.id, args);
        let session = &self.socket.session;
        // A moved session is closed (both are set under its lock), so a
        // send to it fails: only then is there a node to ask for.
        let sent = if self.socket.connected() {
            session.send_all(encode())
        } else {
            Err(SendError::Closed)
        };
        let Err(err) = sent else {
            return Ok(());
        };
        let Some(node) = session.moved_to() else {
            return Err(err);
        };
        self.socket
            .ns
            .fabric()
            .session_frames(&node, session.sid(), encode());
        Ok(())
    }
}
