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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::store::{Offset, Record, RecoveryStore, StateWrite, StoreError, Tail};
use ringway_engineio::{Frame, Sid};

use super::fabric::Fabric;
use super::log::{Control, LogEntry, RecordCodec, RecoveryState, RoomSince};
use super::namespace::{Namespace, Target};
use super::packet::Payload;
use super::socket::SocketRef;

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

/// The private id: 128 random bits, URL-safe base64 (22 characters).
fn new_pid() -> Box<str> {
    use base64::Engine as _;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into_boxed_str()
}

fn is_pid(s: &str) -> bool {
    s.len() == 22
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

/// A socket to put into its namespace at a position of the log: what the
/// log holds after `from` that targets it is delivered first.
pub(crate) struct Install {
    pub socket: SocketRef,
    pub from: Offset,
    /// A recovery: refused if the log no longer covers `from`.
    pub check: bool,
    /// Sent before anything else (the CONNECT answer of a recovery).
    pub first: Option<Frame>,
    pub done: Option<oneshot::Sender<bool>>,
}

enum Command {
    Install(Install),
    Unlogged(LogEntry),
}

enum StateOp {
    Put {
        socket: Weak<super::socket::Socket>,
        done: Option<oneshot::Sender<()>>,
    },
    Expire {
        pid: Box<str>,
        generation: u64,
    },
    Delete {
        pid: Box<str>,
        generation: u64,
    },
}

impl StateOp {
    fn pid(&self) -> Option<Box<str>> {
        match self {
            StateOp::Put { socket, .. } => socket
                .upgrade()
                .and_then(|s| s.recovery().map(|r| r.pid.clone())),
            StateOp::Expire { pid, .. } | StateOp::Delete { pid, .. } => Some(pid.clone()),
        }
    }
}

struct Append {
    entry: Bytes,
    done: Option<oneshot::Sender<bool>>,
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

    // ---- appending -----------------------------------------------------

    /// Appends a recoverable emit; every node delivers it once it is in the
    /// log. Never blocks: a full queue delivers it unlogged.
    pub fn append(&self, entry: LogEntry) {
        self.submit(entry, None);
    }

    /// Appends and tells when the entry is in the log (`true`) or was
    /// delivered unlogged (`false`).
    pub fn append_confirmed(&self, entry: LogEntry) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.submit(entry, Some(tx));
        rx
    }

    fn submit(&self, entry: LogEntry, done: Option<oneshot::Sender<bool>>) {
        let data = self.codec.encode_entry(&entry);
        if data.len() > self.config.max_event_bytes {
            // Too large to keep: delivered, not recoverable.
            super::metrics::metrics()
                .log_appends
                .add(1, &ringway_telemetry::attr("outcome", "too_large"));
            self.unlogged(entry);
            if let Some(done) = done {
                let _ = done.send(false);
            }
            return;
        }
        if let Err(err) = self.appends.try_send(Append { entry: data, done }) {
            let append = match err {
                mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
            };
            super::metrics::metrics()
                .log_appends
                .add(1, &ringway_telemetry::attr("outcome", "queue_full"));
            self.unlogged(entry);
            if let Some(done) = append.done {
                let _ = done.send(false);
            }
        }
    }

    /// Delivers an entry that is not in the log, here and on every other
    /// node, with an offset no recovery accepts.
    fn unlogged(&self, entry: LogEntry) {
        if let Some(fabric) = self.fabric.get() {
            fabric.publish_unlogged(&entry);
        }
        self.command(Command::Unlogged(entry));
    }

    /// Hands the deliverer a command; a full queue fails an install and
    /// drops an unlogged entry.
    fn command(&self, command: Command) {
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(command)
                | mpsc::error::TrySendError::Closed(command),
            ) => match command {
                Command::Install(install) => fail(install),
                Command::Unlogged(entry) if entry.control != Control::None => {
                    // A disconnect is never dropped: it waits for room.
                    let commands = self.commands.clone();
                    tokio::spawn(async move {
                        let _ = commands.send(Command::Unlogged(entry)).await;
                    });
                }
                Command::Unlogged(_) => {
                    super::metrics::metrics()
                        .log_appends
                        .add(1, &ringway_telemetry::attr("outcome", "dropped"));
                }
            },
        }
    }

    async fn write_log(self: Arc<Self>, mut rx: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        let mut failing = false;
        while rx.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            let entries: Vec<Bytes> = batch.iter().map(|a| a.entry.clone()).collect();
            let n = entries.len() as u64;
            let started = std::time::Instant::now();
            let result = self.store.append(entries).await;
            super::metrics::metrics()
                .log_append_duration
                .record(ringway_telemetry::seconds(started), &[]);
            let ok = result.is_ok();
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("recovery log: appending again");
                        failing = false;
                    }
                }
                Err(err) => {
                    if !failing {
                        warn!(%err, "recovery log: append failed; delivering without recovery");
                        failing = true;
                    }
                    // Delivered anyway, everywhere, with an offset no
                    // recovery accepts.
                    for append in &batch {
                        if let Some(entry) = self.codec.decode_entry(&append.entry) {
                            self.unlogged(entry);
                        }
                    }
                }
            }
            super::metrics::metrics().log_appends.add(
                n,
                &ringway_telemetry::attr("outcome", if ok { "ok" } else { "unlogged" }),
            );
            for append in batch.drain(..) {
                if let Some(done) = append.done {
                    let _ = done.send(ok);
                }
            }
        }
    }

    /// An entry another node could not log: delivered here, unlogged.
    pub fn deliver_unlogged(&self, entry: LogEntry) {
        self.command(Command::Unlogged(entry));
    }

    // ---- delivering ----------------------------------------------------

    /// Puts a socket into its namespace at a log position (see
    /// [`Install`]).
    pub(crate) fn install(&self, install: Install) {
        self.command(Command::Install(install));
    }

    async fn deliver(
        self: Arc<Self>,
        mut tail: Tail,
        mut commands: mpsc::Receiver<Command>,
        namespaces: Arc<dyn NamespaceSource>,
    ) {
        let mut pending: Vec<(Install, tokio::time::Instant)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut installs = Vec::new();
                    let mut next = Some(cmd);
                    while let Some(cmd) = next.take() {
                        match cmd {
                            Command::Install(i) => installs.push(i),
                            Command::Unlogged(entry) => {
                                let _gate = self.gate();
                                deliver_entry(&*namespaces, &entry, UNLOGGED);
                            }
                        }
                        next = commands.try_recv().ok();
                    }
                    if !installs.is_empty() {
                        self.install_batch(installs, &mut pending).await;
                    }
                }
                batch = tail.batches.recv() => {
                    let Some(batch) = batch else {
                        warn!("recovery log: the tail ended");
                        return;
                    };
                    self.deliver_batch(&*namespaces, batch, &mut pending);
                }
                _ = tick.tick() => {
                    // Sockets waiting for an offset this node never reached.
                    let now = tokio::time::Instant::now();
                    let (late, wait): (Vec<_>, Vec<_>) =
                        pending.drain(..).partition(|(_, since)| now.duration_since(*since) > PENDING_WAIT);
                    pending = wait;
                    if !late.is_empty() {
                        let _gate = self.gate();
                        for (install, _) in late {
                            debug!(socket = %install.socket.id(), from = %install.from, "installed without reaching its offset");
                            admit(install);
                        }
                    }
                }
            }
        }
    }

    fn deliver_batch(
        &self,
        namespaces: &dyn NamespaceSource,
        batch: Vec<Record>,
        pending: &mut Vec<(Install, tokio::time::Instant)>,
    ) {
        for record in batch {
            let entry = self.codec.decode_entry(&record.data);
            let mut position = self.gate();
            if record.offset <= *position {
                continue;
            }
            // Sockets waiting for a position before this entry take it.
            release_where(pending, |from| from < record.offset);
            if let Some(entry) = &entry {
                deliver_entry(namespaces, entry, &record.offset.to_string());
            }
            *position = record.offset;
            release_where(pending, |from| from <= record.offset);
        }
    }

    async fn install_batch(
        &self,
        installs: Vec<Install>,
        pending: &mut Vec<(Install, tokio::time::Instant)>,
    ) {
        // The position only moves in this task: it holds while we read.
        let position = self.position();
        let Some(min_from) = installs.iter().map(|i| i.from).min() else {
            return;
        };
        let shared = self.read_after(min_from, position).await;
        for install in installs {
            let own;
            let read = match &shared {
                Err(_) => None,
                Ok(r) if r.covered || !install.check || install.from == min_from => Some(r),
                Ok(_) => {
                    // Not covered from the earliest: maybe from this one.
                    own = self.read_after(install.from, position).await;
                    own.as_ref().ok()
                }
            };
            let Some(read) = read else {
                fail(install);
                continue;
            };
            if install.check && (!read.covered || install.from > read.last) {
                fail(install);
                continue;
            }
            if install.from > position {
                // Ahead of this node's deliverer: wait for it.
                pending.push((install, tokio::time::Instant::now()));
                continue;
            }
            let _gate = self.gate();
            let (missed, ended) = replay(
                self.codec.as_ref(),
                &install.socket,
                install.from,
                &read.records,
            );
            if install.check && ended.is_some() {
                // The server disconnected this socket while its client was
                // away: not recoverable (a fresh socket, as the reference).
                fail(install);
                continue;
            }
            if !send_first(&install) {
                fail(install);
                continue;
            }
            let replayed = missed
                .into_iter()
                .map(|frames| install.socket.send_frames(frames))
                .filter(|sent| *sent)
                .count();
            if replayed > 0 {
                super::metrics::metrics().replayed.add(replayed as u64, &[]);
            }
            let socket = install.socket.clone();
            release(install);
            if let Some(control) = ended {
                // A handed-over socket the server ended on the way.
                end_by(&socket, &control);
            }
        }
    }

    /// Everything after `after` up to `until`, page by page, within the
    /// replay bound.
    async fn read_after(&self, after: Offset, until: Offset) -> Result<Replay, StoreError> {
        let mut out = Replay {
            records: Vec::new(),
            covered: true,
            last: Offset::ZERO,
        };
        let mut from = after;
        loop {
            let left = self.config.max_replay.saturating_sub(out.records.len());
            let range = match self.store.range(from, until, left.min(REPLAY_PAGE)).await {
                Ok(range) => range,
                Err(err) => {
                    ringway_telemetry::warn_every!(std::time::Duration::from_secs(10), %err, "recovery log: range read failed");
                    return Err(err);
                }
            };
            if from == after {
                out.covered = range.covered;
                out.last = range.last;
            }
            let got = range.records.len();
            if let Some(last) = range.records.last() {
                from = last.offset;
            }
            out.records.extend(range.records);
            if range.complete || from >= until {
                return Ok(out);
            }
            if out.records.len() >= self.config.max_replay || got == 0 {
                // More than the bound: a replay that long is not offered.
                out.covered = false;
                return Ok(out);
            }
        }
    }

    // ---- socket states -------------------------------------------------

    /// Records a live socket's state (connect, join, leave).
    pub(crate) fn save(&self, socket: &SocketRef) {
        self.queue_save(socket, None);
    }

    /// [`Recovery::save`], resolving once the state is written (or the
    /// write failed).
    pub(crate) fn save_confirmed(&self, socket: &SocketRef) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.queue_save(socket, Some(tx));
        rx
    }

    fn queue_save(&self, socket: &SocketRef, done: Option<oneshot::Sender<()>>) {
        match socket.recovery() {
            Some(r) if r.is_recoverable() => {
                self.live().insert(r.pid.clone(), Arc::downgrade(socket));
            }
            // Nothing to store for a socket nobody can recover.
            _ => {
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
        self.queue_state(StateOp::Put {
            socket: Arc::downgrade(socket),
            done,
        });
    }

    /// A socket left this node: recoverable for the window, or gone.
    pub(crate) fn forget(&self, socket: &super::socket::Socket, recoverable: bool) {
        let Some(r) = socket.recovery().filter(|r| r.is_recoverable()) else {
            return;
        };
        self.unregister(socket);
        let (pid, generation) = (r.pid.clone(), r.generation);
        let op = if recoverable {
            StateOp::Expire { pid, generation }
        } else {
            StateOp::Delete { pid, generation }
        };
        self.queue_state(op);
    }

    /// A socket moved to another node (handoff): its state stays, written
    /// by the new owner.
    pub(crate) fn moved_away(&self, socket: &super::socket::Socket) {
        self.unregister(socket);
    }

    /// Drops the live entry of this very socket (a recovered copy with the
    /// same pid may have replaced it).
    fn unregister(&self, socket: &super::socket::Socket) {
        let Some(r) = socket.recovery().filter(|r| r.is_recoverable()) else {
            return;
        };
        let mut live = self.live();
        if live
            .get(&r.pid)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), socket))
        {
            live.remove(&r.pid);
        }
    }

    fn snapshot(&self, socket: &SocketRef) -> Option<(Box<str>, u64, Bytes)> {
        let r = socket.recovery().filter(|r| r.is_recoverable())?;
        let state = RecoveryState {
            namespace: socket.namespace().name().to_owned(),
            socket_id: socket.id().to_string(),
            sid: socket.session().sid().to_string(),
            node: self.node_id.clone(),
            user: socket.user().map(str::to_owned),
            data: socket.data().cloned().unwrap_or_default(),
            rooms: socket
                .rooms_since()
                .into_iter()
                .map(|(room, since)| RoomSince {
                    room,
                    since: since.to_string(),
                })
                .collect(),
            started_at: r.started_at.to_string(),
        };
        Some((r.pid.clone(), r.generation, self.codec.encode_state(&state)))
    }

    /// Queues a state write; a full queue (the store too slow or away)
    /// drops it: live sockets' states are written again by the refresh,
    /// and a dropped expiry or delete leaves a state to its time to live.
    fn queue_state(&self, op: StateOp) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.states.try_send(op) {
            super::metrics::metrics()
                .log_appends
                .add(1, &ringway_telemetry::attr("outcome", "state_dropped"));
        }
    }

    async fn write_states(self: Arc<Self>, mut rx: mpsc::Receiver<StateOp>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            // Ops of one pid in order; different pids side by side.
            let mut by_pid: Vec<(Option<Box<str>>, Vec<StateOp>)> = Vec::new();
            for op in batch.drain(..) {
                let pid = op.pid();
                match by_pid.iter_mut().find(|(p, _)| p.is_some() && *p == pid) {
                    Some((_, ops)) => ops.push(op),
                    None => by_pid.push((pid, vec![op])),
                }
            }
            join_all(by_pid.into_iter().map(|(_, ops)| self.run_state_ops(ops))).await;
        }
    }

    async fn run_state_ops(&self, ops: Vec<StateOp>) {
        let mut ops = ops.into_iter().peekable();
        while let Some(op) = ops.next() {
            let result = match op {
                StateOp::Put { mut socket, done } => {
                    // A write snapshots the socket as it is then: one
                    // write serves a run of them (a socket joining many
                    // rooms at once).
                    let mut dones: Vec<_> = done.into_iter().collect();
                    while let Some(StateOp::Put { .. }) = ops.peek() {
                        if let Some(StateOp::Put { socket: next, done }) = ops.next() {
                            socket = next;
                            dones.extend(done);
                        }
                    }
                    let snapshot = socket
                        .upgrade()
                        .filter(|s| s.connected())
                        .and_then(|s| self.snapshot(&s));
                    let result = match snapshot {
                        Some((pid, generation, data)) => self
                            .store
                            .put_state(
                                &pid,
                                generation,
                                data,
                                self.config.live_ttl,
                                StateWrite::Update,
                            )
                            .await
                            .map(|_| ()),
                        None => Ok(()),
                    };
                    for done in dones {
                        let _ = done.send(());
                    }
                    result
                }
                StateOp::Expire { pid, generation } => {
                    self.store
                        .expire_state(&pid, generation, self.config.window)
                        .await
                }
                StateOp::Delete { pid, generation } => {
                    self.store.delete_state(&pid, generation).await
                }
            };
            if let Err(err) = result {
                debug!(%err, "recovery state write failed");
            }
        }
    }

    /// Keeps live sockets' states from expiring; writes again those the
    /// store lost (a restarted Redis).
    pub async fn refresh(&self) {
        let pids: Vec<String> = {
            let mut live = self.live();
            live.retain(|_, s| s.strong_count() > 0);
            live.keys().map(|p| p.to_string()).collect()
        };
        if pids.is_empty() {
            return;
        }
        match self.store.refresh_states(pids, self.config.live_ttl).await {
            Ok(missing) => {
                let sockets: Vec<SocketRef> = {
                    let live = self.live();
                    missing
                        .iter()
                        .filter_map(|p| live.get(p.as_str()).and_then(Weak::upgrade))
                        .collect()
                };
                if !sockets.is_empty() {
                    warn!(
                        count = sockets.len(),
                        "recovery states lost by the store: writing them again"
                    );
                }
                for socket in sockets {
                    self.save(&socket);
                }
            }
            Err(err) => debug!(%err, "recovery state refresh failed"),
        }
    }

    /// Trims the log to the window (and expired states, in memory).
    pub async fn trim(&self) {
        if let Err(err) = self.store.trim(self.config.window).await {
            debug!(%err, "recovery log trim failed");
        }
    }

    /// The stored state of a pid, if any, decoded.
    pub(crate) async fn load(&self, pid: &str) -> Result<Option<(u64, RecoveryState)>, Missed> {
        if !is_pid(pid) {
            return Ok(None);
        }
        match self.store.get_state(pid).await {
            Ok(Some(stored)) => Ok(self
                .codec
                .decode_state(&stored.data)
                .map(|state| (stored.generation, state))),
            Ok(None) => Ok(None),
            Err(err) => {
                ringway_telemetry::warn_every!(std::time::Duration::from_secs(10), %err, "recovery state read failed");
                Err(Missed::StoreDown)
            }
        }
    }

    /// Takes a stored state over for a recovery (generation + 1).
    pub(crate) async fn take_over(&self, socket: &SocketRef, from: u64) -> Result<(), Missed> {
        let Some((pid, generation, data)) = self.snapshot(socket) else {
            return Err(Missed::UnknownPid);
        };
        match self
            .store
            .put_state(
                &pid,
                generation,
                data,
                self.config.live_ttl,
                StateWrite::TakeOver { from },
            )
            .await
        {
            Ok(true) => {
                self.live().insert(pid, Arc::downgrade(socket));
                Ok(())
            }
            Ok(false) => Err(Missed::Raced),
            Err(err) => {
                ringway_telemetry::warn_every!(std::time::Duration::from_secs(10), %err, "recovery state write failed");
                Err(Missed::StoreDown)
            }
        }
    }
}

/// What a catch-up read gave.
struct Replay {
    records: Vec<Record>,
    covered: bool,
    last: Offset,
}

fn release_where(pending: &mut Vec<(Install, tokio::time::Instant)>, due: impl Fn(Offset) -> bool) {
    if pending.is_empty() {
        return;
    }
    let mut i = 0;
    while i < pending.len() {
        if due(pending[i].0.from) {
            let (install, _) = pending.swap_remove(i);
            admit(install);
        } else {
            i += 1;
        }
    }
}

/// Sends a waiting socket its first packet and puts it in (the caller
/// holds the gate).
fn admit(install: Install) {
    if send_first(&install) {
        release(install);
    } else {
        fail(install);
    }
}

/// The CONNECT answer of a recovery: the socket joins its session's
/// sockets, then the answer is queued. False if the session closed.
fn send_first(install: &Install) -> bool {
    let Some(first) = &install.first else {
        return true;
    };
    let socket = &install.socket;
    let state = socket.session().data();
    state.end_connect(socket.namespace().name(), Some(socket.clone()))
        && socket.session().send(first.clone()).is_ok()
}

/// An install that cannot be done. A recovery's caller answers with a
/// fresh socket; a socket handed over from another node cannot be caught
/// up, so its session closes and the client reconnects (recovering from
/// its offset once the log answers again).
fn fail(install: Install) {
    if !install.check && install.socket.connected() {
        warn!(socket = %install.socket.id(), "a handed-over socket could not be caught up: closing its session");
        install
            .socket
            .session()
            .close(ringway_engineio::CloseReason::TransportError);
    }
    if let Some(done) = install.done {
        let _ = done.send(false);
    }
}

/// Puts an installed socket into its namespace and rooms (the caller
/// holds the gate; its first packet is sent).
fn release(install: Install) {
    let ok = install.socket.connected();
    if ok {
        install.socket.namespace().insert(install.socket.clone());
        install.socket.attach_rooms();
    }
    if let Some(done) = install.done {
        let _ = done.send(ok);
    }
}

/// The entry's target inside its namespace.
fn target_of(entry: &LogEntry) -> Target {
    Target {
        rooms: entry.rooms.clone(),
        except_rooms: entry.except_rooms.clone(),
        except_socket: Sid::parse(&entry.except_socket),
    }
}

fn payload_of(entry: &LogEntry) -> Payload {
    Payload::with_attachments(entry.args_json.clone(), entry.attachments.clone())
}

/// Delivers one entry to the sockets of this node it targets.
fn deliver_entry(namespaces: &dyn NamespaceSource, entry: &LogEntry, offset: &str) {
    if entry.control != Control::None {
        apply_control(namespaces, entry);
        return;
    }
    let target = target_of(entry);
    let args = payload_of(entry);
    let deliver = |ns: &Namespace| {
        let parser = ns.parser();
        let frames = parser.encode_recoverable(ns.name(), &entry.event, &args, offset);
        ns.send_recoverable(&target, &frames, || {
            parser.encode_event(ns.name(), &entry.event, &args, None)
        });
    };
    if entry.namespace.is_empty() {
        for ns in namespaces.namespaces() {
            deliver(&ns);
        }
    } else if let Some(ns) = namespaces.namespace(&entry.namespace) {
        deliver(&ns);
    }
}

/// Ends the sockets of this node a control entry names.
fn apply_control(namespaces: &dyn NamespaceSource, entry: &LogEntry) {
    let Some(ns) = namespaces.namespace(&entry.namespace) else {
        return;
    };
    for id in entry.rooms.iter().filter_map(|id| Sid::parse(id)) {
        if let Some(socket) = ns.socket(&id) {
            end_by(&socket, entry);
        }
    }
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
fn replay(
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

/// Ends a socket as the control entry says (see [`apply_control`]).
fn end_by(socket: &SocketRef, entry: &LogEntry) {
    let notice = (!entry.event.is_empty()).then(|| payload_of(entry));
    socket.end_now(
        notice.as_ref().map(|args| (entry.event.as_str(), args)),
        entry.control == Control::CloseSession,
    );
}

/// The log entry of an emit.
pub fn entry(namespace: &str, target: &Target, event: &str, args: &Payload) -> LogEntry {
    LogEntry {
        namespace: namespace.to_owned(),
        rooms: target.rooms.clone(),
        except_rooms: target.except_rooms.clone(),
        except_socket: target
            .except_socket
            .map(|s| s.to_string())
            .unwrap_or_default(),
        event: event.to_owned(),
        args_json: args.json().to_owned(),
        attachments: args.attachments().to_vec(),
        control: Control::None,
    }
}

/// The log entry that ends socket `id` of `namespace` in its turn (see
/// [`super::socket::Socket::end`]), with the event `notice` just before.
pub fn control_entry(
    namespace: &str,
    id: Sid,
    notice: Option<(&str, &Payload)>,
    close_session: bool,
) -> LogEntry {
    let target = Target::room(id.to_string());
    let mut entry = match notice {
        Some((event, args)) => entry(namespace, &target, event, args),
        None => entry(namespace, &target, "", &Payload::empty()),
    };
    entry.control = if close_session {
        Control::CloseSession
    } else {
        Control::Disconnect
    };
    entry
}

/// The reasons after which the reference lets a socket recover.
pub fn recoverable(reason: ringway_engineio::CloseReason) -> bool {
    use ringway_engineio::CloseReason::*;
    matches!(
        reason,
        TransportClose | TransportError | PingTimeout | ForcedClose | ServerShutdown | SlowConsumer
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' record encoding: the entry's fields as JSON (the
    /// gateway's store encodes with protobuf; the recovery does not care).
    struct JsonCodec;

    impl RecordCodec for JsonCodec {
        fn encode_entry(&self, e: &LogEntry) -> Bytes {
            let control = match e.control {
                Control::None => 0,
                Control::Disconnect => 1,
                Control::CloseSession => 2,
            };
            let attachments: Vec<Vec<u8>> = e.attachments.iter().map(|b| b.to_vec()).collect();
            let v = serde_json::json!([
                e.namespace,
                e.rooms,
                e.except_rooms,
                e.except_socket,
                e.event,
                e.args_json,
                attachments,
                control
            ]);
            Bytes::from(v.to_string())
        }

        fn decode_entry(&self, data: &Bytes) -> Option<LogEntry> {
            #[allow(clippy::type_complexity)]
            let (namespace, rooms, except_rooms, except_socket, event, args_json, attachments, c): (
                String,
                Vec<String>,
                Vec<String>,
                String,
                String,
                String,
                Vec<Vec<u8>>,
                u8,
            ) = serde_json::from_slice(data).ok()?;
            Some(LogEntry {
                namespace,
                rooms,
                except_rooms,
                except_socket,
                event,
                args_json,
                attachments: attachments.into_iter().map(Bytes::from).collect(),
                control: match c {
                    1 => Control::Disconnect,
                    2 => Control::CloseSession,
                    _ => Control::None,
                },
            })
        }

        fn encode_state(&self, _state: &RecoveryState) -> Bytes {
            Bytes::new()
        }

        fn decode_state(&self, _data: &Bytes) -> Option<RecoveryState> {
            None
        }
    }

    #[test]
    fn auth_loses_pid_and_offset_and_keeps_the_rest() {
        let (auth, ask) = split_auth(r#"{"token":"t","pid":"p","offset":"1-2"}"#);
        assert_eq!(auth, r#"{"token":"t"}"#);
        assert_eq!(
            ask,
            Some(RecoveryAsk {
                pid: "p".into(),
                offset: Some("1-2".into())
            })
        );
        let (auth, ask) = split_auth(r#"{"pid":"p"}"#);
        assert_eq!(auth, "{}");
        assert_eq!(ask.unwrap().offset, None);
        // Untouched without the fields, or when they are not strings.
        assert_eq!(split_auth(r#"{"a":1}"#), (r#"{"a":1}"#.into(), None));
        assert_eq!(split_auth(r#"{"pid":7}"#).1, None);
        assert_eq!(
            split_auth(r#"{"pid":"p","offset":7}"#).1.unwrap().offset,
            Some(String::new())
        );
        // Not an object: left as it is.
        assert_eq!(split_auth(r#"["pid"]"#).1, None);
    }

    fn recoverable_socket(ns: &Arc<Namespace>) -> SocketRef {
        let session = super::super::namespace::tests::test_session();
        let recovery = SocketRecovery::restored(&new_pid(), 1, Offset::ZERO);
        crate::Socket::restored(
            ns.clone(),
            session,
            Sid::random(),
            "{}".into(),
            None,
            None,
            0,
            Some(recovery),
        )
    }

    fn record(offset: &str, entry: &LogEntry) -> Record {
        Record {
            offset: Offset::parse(offset).expect("an offset"),
            data: JsonCodec.encode_entry(entry),
        }
    }

    #[test]
    fn a_replay_stops_at_the_disconnect_of_its_socket() {
        let ns = Namespace::new(
            "/",
            Arc::new(crate::LocalFabric),
            None,
            Default::default(),
            crate::Parser::Default,
        );
        let socket = recoverable_socket(&ns);
        let other = recoverable_socket(&ns);
        let to_it = Target::room(socket.id().to_string());
        let args = Payload::from_json_array("[1]".into());
        let records = [
            record("1-0", &entry("/", &to_it, "before", &args)),
            record("2-0", &control_entry("/", other.id(), None, false)),
            record("3-0", &entry("/", &Target::all(), "also before", &args)),
            record(
                "4-0",
                &control_entry("/", socket.id(), Some(("bye", &args)), true),
            ),
            record("5-0", &entry("/", &to_it, "after", &args)),
        ];
        let (missed, ended) = replay(&JsonCodec, &socket, Offset::ZERO, &records);
        assert_eq!(missed.len(), 2, "the entries before the disconnect");
        let ended = ended.expect("the socket's own disconnect");
        assert_eq!(ended.event, "bye");
        assert_eq!(ended.control, Control::CloseSession);
        // From past it: nothing ends the socket.
        let from = Offset::parse("4-0").expect("an offset");
        let (missed, ended) = replay(&JsonCodec, &socket, from, &records);
        assert_eq!((missed.len(), ended.is_none()), (1, true));
    }

    #[test]
    fn pids_are_long_random_and_checked() {
        let a = new_pid();
        let b = new_pid();
        assert_ne!(a, b);
        assert!(is_pid(&a) && is_pid(&b));
        assert!(!is_pid("short"));
        assert!(!is_pid("aaaaaaaaaaaaaaaaaaaaa*"));
        assert!(!is_pid(&format!("{a}x")));
    }
}
