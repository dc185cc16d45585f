//! The writer: recoverable emits into the log, in batches; what cannot
//! be logged (too large, the queue full, the store failing) is delivered
//! unlogged, here and on every other node, with an offset no recovery
//! accepts.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::deliverer::{fail, Command};
use super::{Recovery, APPEND_BATCH};
use crate::log::{Control, LogEntry};
use crate::store::Appended;

pub(super) struct Append {
    pub(super) entry: Bytes,
    pub(super) done: Option<oneshot::Sender<bool>>,
}

impl Recovery {
    /// Appends a recoverable emit; every node delivers it once it is in the
    /// log. Never blocks: a full queue delivers it unlogged.
    pub fn append(&self, entry: LogEntry) {
        self.submit(entry, None);
    }

    /// Appends and tells when the entry is in the log as durably as the
    /// store makes it (`true`), or was delivered unlogged or is in the log
    /// without the replicas' confirmation (`false`).
    pub fn append_confirmed(&self, entry: LogEntry) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.submit(entry, Some(tx));
        rx
    }

    fn submit(&self, entry: LogEntry, done: Option<oneshot::Sender<bool>>) {
        let data = self.codec.encode_entry(&entry);
        if data.len() > self.config.max_event_bytes {
            // Too large to keep: delivered, not recoverable.
            crate::metrics::metrics()
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
            crate::metrics::metrics()
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
    pub(super) fn command(&self, command: Command) {
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
                    crate::metrics::metrics()
                        .log_appends
                        .add(1, &ringway_telemetry::attr("outcome", "dropped"));
                }
            },
        }
    }

    pub(super) async fn write_log(self: Arc<Self>, mut rx: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        let mut failing = false;
        while rx.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            let entries: Vec<Bytes> = batch.iter().map(|a| a.entry.clone()).collect();
            let n = entries.len() as u64;
            let started = std::time::Instant::now();
            let result = self.store.append(entries).await;
            crate::metrics::metrics()
                .log_append_duration
                .record(ringway_telemetry::seconds(started), &[]);
            let ok = result.is_ok();
            let durable = matches!(result, Ok(Appended::Durable));
            match result {
                Ok(_) => {
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
            let outcome = match (ok, durable) {
                (true, true) => "ok",
                // In the log, not confirmed on the replicas in time.
                (true, false) => "unreplicated",
                (false, _) => "unlogged",
            };
            crate::metrics::metrics()
                .log_appends
                .add(n, &ringway_telemetry::attr("outcome", outcome));
            for append in batch.drain(..) {
                if let Some(done) = append.done {
                    let _ = done.send(durable);
                }
            }
        }
    }

    /// An entry another node could not log: delivered here, unlogged.
    pub fn deliver_unlogged(&self, entry: LogEntry) {
        self.command(Command::Unlogged(entry));
    }
}
