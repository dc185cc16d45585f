//! The session registry: `sid -> (owner node, epoch)`, the source of truth
//! when nodes disagree about where a session lives. Redis in a cluster;
//! in memory for a node alone (same trait, same calls).

mod memory;
pub mod recovery;
mod redis;

use ringway_redis::{ConnectOptions, RedisConfig, RedisConn};
use thiserror::Error;

use ringway_engineio::{BoxFuture, Sid};

pub use self::memory::MemoryRegistry;
pub use self::redis::RedisRegistry;

/// Where a session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub epoch: u64,
}

impl Entry {
    /// The stored form: `"<epoch> <owner>"`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.epoch, self.owner)
    }

    pub fn decode(raw: &str) -> Option<Entry> {
        let (epoch, owner) = raw.split_once(' ')?;
        Some(Entry {
            epoch: epoch.parse().ok()?,
            owner: owner.to_owned(),
        })
    }
}

/// A node's heartbeat key: `"<started ms> <last beat ms>"`, written every
/// second, living as long as the registry's entries (so it says when a
/// dead node's sockets lost it, as long as their states may be there).
pub fn alive_key(prefix: &str, node: &str) -> String {
    format!("{prefix}:alive:{node}")
}

/// A node has (or no longer has) sockets of a user in a namespace (see
/// `users.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPresence {
    pub namespace: String,
    pub user: String,
    pub node: String,
    pub present: bool,
}

/// Bound of every Redis call: a lost Redis fails calls, never hangs them.
pub(crate) const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// A connection to the Redis `config` names (any mode) whose replies may
/// take `response` (connecting is bounded by three call timeouts).
pub(crate) async fn connect_redis(
    config: &RedisConfig,
    response: std::time::Duration,
) -> Result<RedisConn, StoreError> {
    let options = ConnectOptions::new(CALL_TIMEOUT, response);
    tokio::time::timeout(CALL_TIMEOUT * 3, RedisConn::connect(config, options))
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(StoreError::from)
}

/// A Redis call bounded by [`CALL_TIMEOUT`], in a span, timed in the
/// `ringway.registry.duration` histogram by operation and outcome.
pub(crate) async fn bounded<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!("redis", op);
    let timed = tokio::time::timeout(CALL_TIMEOUT, fut);
    let result = match tracing::Instrument::instrument(timed, span).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::metrics::metrics().registry_duration.record(
        ringway_telemetry::seconds(started),
        &[
            opentelemetry::KeyValue::new("op", op),
            opentelemetry::KeyValue::new("outcome", outcome),
        ],
    );
    result
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("malformed registry entry for {0}")]
    Corrupt(String),
    #[error("{0} does not hold 64 hex digits: delete it (every session then ends)")]
    BadKey(String),
}

pub trait Registry: Send + Sync + 'static {
    /// Records that `owner` holds `sid` at `epoch`, unless the registry
    /// already has this or a later epoch for it (then `false`): the
    /// compare-and-set of a handoff, and the first write of a new session.
    fn put(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn get(&self, sid: Sid) -> BoxFuture<'_, Result<Option<Entry>, StoreError>>;

    /// Forgets `sid` if the registry still holds exactly `entry` (a session
    /// that moved on is left alone).
    fn remove(&self, sid: Sid, entry: Entry) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Extends the life of these entries (live sessions of this node);
    /// an entry the store lost (a Redis restarted empty, a write lost in a
    /// failover) is written again, as [`Registry::put`] writes it (never
    /// over a later epoch). Returns how many were written again.
    fn refresh(&self, entries: Vec<(Sid, Entry)>) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Whether the backing store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Writes, in order, which nodes have sockets of which users. A node
    /// alone keeps nothing: its own sockets are all there is.
    fn user_presence(&self, _changes: Vec<UserPresence>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The nodes that wrote they have sockets of `user` in `namespace`
    /// (dead ones too, until their entries expire: filter by the view).
    fn user_nodes(
        &self,
        _namespace: &str,
        _user: &str,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Extends the life of this node's user entries, writing again those
    /// the store lost; returns how many were written again.
    fn refresh_users(
        &self,
        _present: Vec<UserPresence>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Writes this node's heartbeat key ([`alive_key`]: when its run
    /// started, `started_ms`, and now) and says whether the store still
    /// held the previous one: `false` on a node's first call, and whenever
    /// the store lost what it had (a restart without persistence, a
    /// failover that lost writes on that server). The node then writes
    /// its sessions' entries again at once, instead of at the next
    /// refresh.
    fn heartbeat(
        &self,
        _node_id: &str,
        _started_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    /// The key every node of the cluster signs session ids with: made once
    /// (random) and shared through the store; a node alone makes its own.
    fn sid_key(&self) -> BoxFuture<'_, Result<[u8; 32], StoreError>> {
        Box::pin(std::future::ready(Ok(rand::random())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            owner: "node-1.example".into(),
            epoch: 42,
        };
        assert_eq!(e.encode(), "42 node-1.example");
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode("x node"), None);
        assert_eq!(Entry::decode("12"), None);
    }
}
