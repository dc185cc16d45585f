//! Connection state recovery (Socket.IO 4.6+), across nodes.
//!
//! Every recoverable emit (an event that asks for no ack and is not
//! volatile: direct emits to a socket, room emits, namespace broadcasts,
//! Push API emits) is appended to one cluster-wide log (the
//! [`RecoveryStore`]: a Redis stream, or memory for a node alone) instead
//! of being sent. Each node runs one **deliverer** that reads the log in
//! order and delivers every entry to its own sockets, with the entry's
//! offset as the event's last argument. So every socket sees its events in
//! log order, from whichever node they were emitted, and the one offset a
//! client echoes back says exactly what it has seen of every source: a
//! reconnecting client gets the entries after it that target it, once, in
//! order, from any node.
//!
//! Each socket's own state (socket id, user, data, rooms with the offset at
//! which each was joined, the offset at which it connected) is written to
//! the store under its private id (pid) when it changes, not at
//! disconnect: a killed node sees no disconnect.
//!
//! A handoff uses the same mechanism: the old owner sends the offset it had
//! delivered up to with the session; the new owner delivers what follows.
//!
//! Its parts: the writer (`writer.rs`: emits into the log, in batches;
//! what cannot be logged goes out unlogged), the deliverer
//! (`deliverer.rs`: reads the log in order and delivers each entry to
//! this node's sockets; puts a recovered or handed-over socket in at its
//! position), the replay (`replay.rs`: which entries of the log a socket
//! missed), the socket states (`states.rs`: each recoverable socket's
//! state in the store, refreshed while it lives). Sockets and namespaces
//! report to it through the [`RecoverySink`] they define; the records are
//! the log's types (`crate::log`), their bytes the store's
//! [`RecordCodec`].

mod deliverer;
mod replay;
mod states;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::fabric::Fabric;
use super::log::{LogEntry, RecordCodec};
use super::namespace::Namespace;
use super::socket::{RecoverySink, Socket, SocketRef};
use super::store::{Offset, RecoveryStore, StoreError, Tail};

use self::deliverer::Command;
use self::states::StateOp;
use self::writer::Append;

/// The offset argument of an event delivered while the log could not be
/// written: a client that reconnects with it gets a fresh session.
pub const UNLOGGED: &str = "unlogged";

/// Appends waiting for the writer; past this, emits are delivered without
/// being logged (counted), never queued without bound.
const APPEND_QUEUE: usize = 65_536;
/// State writes waiting; past this they are dropped (counted).
const STATE_QUEUE: usize = 65_536;
/// Bound of the deliverer's commands (installs, unlogged entries): past
/// it an install fails (the client gets a fresh session) and an unlogged
/// entry is dropped (`outcome="dropped"`).
const COMMAND_QUEUE: usize = 65_536;
/// Entries per append round trip.
const APPEND_BATCH: usize = 512;
/// Entries read per range call while catching a socket up.
const REPLAY_PAGE: usize = 2_000;
/// How long a socket whose offset is ahead of this node's deliverer waits
/// for it before it is installed anyway.
const PENDING_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// How long after a disconnection a client may recover
    /// (`--recovery-window`); also how long the log keeps entries.
    pub window: Duration,
    /// Time to live of a live socket's state between refreshes.
    pub live_ttl: Duration,
    /// Most entries scanned to catch one recovery up (the log's length).
    pub max_replay: usize,
    /// Largest entry logged, in bytes; larger emits are delivered
    /// unlogged (`--recovery-max-event-bytes`).
    pub max_event_bytes: usize,
}

fn is_pid(s: &str) -> bool {
    s.len() == 22
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A CONNECT that asks to recover: the pid and, if the client had received
/// an event, the last offset it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryAsk {
    pub pid: String,
    pub offset: Option<String>,
}

/// Splits a CONNECT payload into what the application sees (without
/// `pid` and `offset`: the pid is a secret) and the recovery request.
pub fn split_auth(auth: &str) -> (String, Option<RecoveryAsk>) {
    if !auth.contains("\"pid\"") && !auth.contains("\"offset\"") {
        return (auth.to_owned(), None);
    }
    let Ok(mut map) = serde_json::from_str::<Map<String, Value>>(auth) else {
        return (auth.to_owned(), None);
    };
    let pid = map.remove("pid");
    let offset = map.remove("offset");
    let rest = Value::Object(map).to_string();
    let ask = match (pid, offset) {
        (Some(Value::String(pid)), None) => Some(RecoveryAsk { pid, offset: None }),
        (Some(Value::String(pid)), Some(Value::String(offset))) => Some(RecoveryAsk {
            pid,
            offset: Some(offset),
        }),
        // A pid with an offset that is not a string cannot be honoured.
        (Some(Value::String(pid)), Some(_)) => Some(RecoveryAsk {
            pid,
            offset: Some(String::new()),
        }),
        _ => None,
    };
    (rest, ask)
}

/// Why a recovery did not happen (a fresh session follows); the metric's
/// `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// No state under that pid: unknown, forged, expired (window over).
    UnknownPid,
    /// The state is another namespace's or another user's.
    Mismatch,
    /// The offset is malformed or beyond the log's end.
    BadOffset,
    /// The log no longer holds everything after the offset (trimmed, lost
    /// with a store restart, or more than the replay bound).
    NotCovered,
    /// Another node recovered this pid at the same time.
    Raced,
    /// The store did not answer.
    StoreDown,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::UnknownPid => "unknown_pid",
            Missed::Mismatch => "mismatch",
            Missed::BadOffset => "bad_offset",
            Missed::NotCovered => "not_covered",
            Missed::Raced => "raced",
            Missed::StoreDown => "store_down",
        }
    }
}

/// The end of a CONNECT, the server's (see [`Install::first`]).
pub(crate) type Completion = Box<dyn FnOnce() -> bool + Send>;

/// A socket to put into its namespace at a position of the log: what the
/// log holds after `from` that targets it is delivered first.
pub(crate) struct Install {
    pub socket: SocketRef,
    pub from: Offset,
    /// A recovery: refused if the log no longer covers `from`.
    pub check: bool,
    /// Run before anything is delivered to it, under the gate: the
    /// server's completion of a recovering CONNECT (the socket joins its
    /// session, the answer is queued); false if the session closed.
    pub first: Option<Completion>,
    pub done: Option<oneshot::Sender<bool>>,
}

/// The namespaces of this node, shared by the Socket.IO layer and the
/// deliverer.
pub trait NamespaceSource: Send + Sync + 'static {
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>>;
    fn namespaces(&self) -> Vec<Arc<Namespace>>;
}

pub struct Recovery {
    store: Arc<dyn RecoveryStore>,
    /// How entries and states are kept as the store's bytes.
    codec: Arc<dyn RecordCodec>,
    config: RecoveryConfig,
    node_id: String,
    appends: mpsc::Sender<Append>,
    commands: mpsc::Sender<Command>,
    states: mpsc::Sender<StateOp>,
    /// The other nodes, for entries this node could not log (set by
    /// [`Recovery::start`]).
    fabric: std::sync::OnceLock<Arc<dyn Fabric>>,
    /// The deliverer's position: the last entry it delivered. Locked while
    /// an entry is being delivered, so whoever reads it under the lock
    /// (a join, a handoff taking the queue) sees a settled position.
    position: Mutex<Offset>,
    /// Live sockets with recovery state here, by pid (for refreshes).
    live: Mutex<HashMap<Box<str>, Weak<super::socket::Socket>>>,
    /// Woken when a state write was dropped or failed (see
    /// [`Recovery::refresh_requested`]).
    refresh_soon: tokio::sync::Notify,
    /// Set once by [`Recovery::start`]: the receiving ends of the queues.
    receivers: Mutex<Option<Receivers>>,
}

struct Receivers {
    appends: mpsc::Receiver<Append>,
    commands: mpsc::Receiver<Command>,
    states: mpsc::Receiver<StateOp>,
    tail: Tail,
}

impl Recovery {
    /// Opens the tail of the log (at its current end). Nothing is
    /// delivered until [`Recovery::start`].
    pub async fn open(
        store: Arc<dyn RecoveryStore>,
        codec: Arc<dyn RecordCodec>,
        config: RecoveryConfig,
        node_id: &str,
    ) -> Result<Arc<Recovery>, StoreError> {
        let tail = store.tail().await?;
        let (appends, appends_rx) = mpsc::channel(APPEND_QUEUE);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (states, states_rx) = mpsc::channel(STATE_QUEUE);
        Ok(Arc::new(Recovery {
            position: Mutex::new(tail.start),
            store,
            codec,
            config,
            node_id: node_id.to_owned(),
            appends,
            commands,
            states,
            fabric: std::sync::OnceLock::new(),
            live: Mutex::new(HashMap::new()),
            refresh_soon: tokio::sync::Notify::new(),
            receivers: Mutex::new(Some(Receivers {
                appends: appends_rx,
                commands: commands_rx,
                states: states_rx,
                tail,
            })),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The other nodes (set by [`Recovery::start`]).
    pub(crate) fn fabric(&self) -> Option<&Arc<dyn Fabric>> {
        self.fabric.get()
    }

    /// Locks the deliverer's position (deliveries wait meanwhile).
    pub(crate) fn gate(&self) -> MutexGuard<'_, Offset> {
        self.position.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn position(&self) -> Offset {
        *self.gate()
    }

    fn live(&self) -> MutexGuard<'_, HashMap<Box<str>, Weak<super::socket::Socket>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the writer, the deliverer and the state writer. Once.
    pub fn start(self: &Arc<Self>, namespaces: Arc<dyn NamespaceSource>, fabric: Arc<dyn Fabric>) {
        let Some(rx) = self
            .receivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let _ = self.fabric.set(fabric);
        tokio::spawn(self.clone().write_log(rx.appends));
        tokio::spawn(self.clone().deliver(rx.tail, rx.commands, namespaces));
        tokio::spawn(self.clone().write_states(rx.states));
    }
}

impl RecoverySink for Recovery {
    fn append(&self, entry: LogEntry) {
        Recovery::append(self, entry);
    }

    fn gate(&self) -> MutexGuard<'_, Offset> {
        Recovery::gate(self)
    }

    fn save(&self, socket: &SocketRef) {
        Recovery::save(self, socket);
    }

    fn save_confirmed(&self, socket: &SocketRef) -> oneshot::Receiver<()> {
        Recovery::save_confirmed(self, socket)
    }

    fn forget(&self, socket: &Socket, recoverable: bool) {
        Recovery::forget(self, socket, recoverable);
    }

    fn moved_away(&self, socket: &Socket) {
        Recovery::moved_away(self, socket);
    }
}

/// The reasons after which the reference lets a socket recover.
pub fn recoverable(reason: ringway_engineio::CloseReason) -> bool {
    use ringway_engineio::CloseReason::*;
    matches!(
        reason,
        TransportClose | TransportError | PingTimeout | ForcedClose | ServerShutdown | SlowConsumer
    )
}
