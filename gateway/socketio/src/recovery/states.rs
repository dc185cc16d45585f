//! Socket states: each recoverable socket's state (id, user, data, rooms
//! with the offset each was joined at, where it started) written to the
//! store under its pid when it changes, refreshed while it lives, expired
//! after the window when it leaves; and read back and taken over by a
//! recovery.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{is_pid, Missed, Recovery};
use crate::log::{RecoveryState, RoomSince};
use crate::socket::{Socket, SocketRef};
use crate::store::StateWrite;

pub(super) enum StateOp {
    Put {
        socket: Weak<Socket>,
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

impl Recovery {
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
    pub(crate) fn forget(&self, socket: &Socket, recoverable: bool) {
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
    pub(crate) fn moved_away(&self, socket: &Socket) {
        self.unregister(socket);
    }

    /// Drops the live entry of this very socket (a recovered copy with the
    /// same pid may have replaced it).
    fn unregister(&self, socket: &Socket) {
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
            saved_at_ms: crate::store::now_ms(),
        };
        Some((r.pid.clone(), r.generation, self.codec.encode_state(&state)))
    }

    /// Queues a state write; a full queue (the store too slow or away)
    /// drops it: live sockets' states are written again by the refresh,
    /// and a dropped expiry or delete leaves a state to its time to live.
    fn queue_state(&self, op: StateOp) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.states.try_send(op) {
            self.refresh_soon.notify_one();
            crate::metrics::metrics()
                .log_appends
                .add(1, &ringway_telemetry::attr("outcome", "state_dropped"));
        }
    }

    pub(super) async fn write_states(self: Arc<Self>, mut rx: mpsc::Receiver<StateOp>) {
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
                self.refresh_soon.notify_one();
            }
        }
    }

    /// Resolves when a state write was dropped or failed: the refresh
    /// (which writes again the live states the store does not have) is
    /// due now rather than at its interval.
    pub async fn refresh_requested(&self) {
        self.refresh_soon.notified().await;
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
            Ok(Some(stored)) => {
                let Some(state) = self.codec.decode_state(&stored.data) else {
                    return Ok(None);
                };
                if self.holder_gone_too_long(&state).await {
                    return Ok(None);
                }
                Ok(Some((stored.generation, state)))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                ringway_telemetry::warn_every!(std::time::Duration::from_secs(10), %err, "recovery state read failed");
                Err(Missed::StoreDown)
            }
        }
    }

    /// Whether the state's holder died more than the window ago: a live
    /// socket's state lives long (`live_ttl`, refreshed rarely), so the
    /// window of a socket whose node died is measured from the death, as
    /// the holder's heartbeat tells it (its last beat, or the start of
    /// the node's next run: this node's too, when it wrote the state in a
    /// run before this one). Unknown (no heartbeat, an older state, the
    /// store not answering): not gone.
    async fn holder_gone_too_long(&self, state: &RecoveryState) -> bool {
        if state.saved_at_ms == 0 {
            return false;
        }
        let Ok(Some(seen)) = self.store.node_seen(&state.node).await else {
            return false;
        };
        seen.gone_longer_than(
            state.saved_at_ms,
            crate::store::now_ms(),
            self.config.window,
        )
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
