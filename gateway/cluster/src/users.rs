//! Where a user's sockets are, without telling every node: the hidden room
//! of a user (`ringway_socketio::user_room`) is not announced to the
//! peers like other rooms. A node writes to the registry that it has
//! sockets of a user (`(namespace, user) -> nodes`) when it gets the
//! user's first socket and when it loses the last, and whoever targets a
//! user (the Push API) reads the registry. So a node's memory holds its
//! own users only, and a join costs one Redis write instead of a
//! confirmation from every peer.
//!
//! The writes go out in order (one task, batched): a user's last socket
//! leaving and a new one arriving right after cannot be applied the other
//! way round. A new socket's join waits (bounded) for its write, as other
//! joins wait for the peers: an emit to the user that starts after the
//! join is answered finds the node.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::store::{Registry, UserPresence};

/// Longest a join waits for its user's write.
pub const USER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Writes per round trip.
const BATCH: usize = 512;
/// Writes waiting (Redis slow or away); past this a change is not queued
/// and the registry is marked for a rewrite, which writes every user this
/// node has (a departure not written leaves a stale field: a user lookup
/// then asks one node too many, never one too few).
const QUEUE: usize = 65_536;

type Write = (UserPresence, Option<oneshot::Sender<()>>);

#[derive(Default)]
pub(crate) struct Users {
    /// The users this node has sockets of: (namespace, user).
    here: Mutex<HashSet<(String, String)>>,
    /// The writer's queue, started on first use (inside the runtime).
    writes: OnceLock<mpsc::Sender<Write>>,
}

impl Users {
    fn here(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.here.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this node holds now, for a rewrite.
    pub(crate) fn snapshot(&self, node: &str) -> Vec<UserPresence> {
        self.here()
            .iter()
            .map(|(namespace, user)| UserPresence {
                namespace: namespace.clone(),
                user: user.clone(),
                node: node.to_owned(),
                present: true,
            })
            .collect()
    }

    /// Records a change here and queues its write; the receiver resolves
    /// once it is written (or failed).
    pub(crate) fn changed<F>(
        &self,
        registry: &std::sync::Arc<dyn Registry>,
        on_failure: F,
        change: UserPresence,
    ) -> oneshot::Receiver<()>
    where
        F: Fn() + Clone + Send + Sync + 'static,
    {
        let key = (change.namespace.clone(), change.user.clone());
        if change.present {
            self.here().insert(key);
        } else {
            self.here().remove(&key);
        }
        let (done, receipt) = oneshot::channel();
        let writes = self.writes.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_in_order(registry.clone(), rx, on_failure.clone()));
            tx
        });
        if writes.try_send((change, Some(done))).is_err() {
            // Full (or the runtime ending): the rewrite will do it.
            on_failure();
        }
        receipt
    }
}

async fn write_in_order(
    registry: std::sync::Arc<dyn Registry>,
    mut rx: mpsc::Receiver<Write>,
    on_failure: impl Fn(),
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let changes: Vec<UserPresence> = batch.iter().map(|(c, _)| c.clone()).collect();
        if let Err(err) = registry.user_presence(changes).await {
            ringway_telemetry::warn_every!(Duration::from_secs(10), %err, "user presence write failed");
            debug!(%err, "user presence write failed");
            on_failure();
        }
        for (_, done) in batch.drain(..) {
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}
