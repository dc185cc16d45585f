//! The recovery store: what connection state recovery keeps where every
//! node can read it. Two things:
//!
//! - the **log**: one ordered sequence of recoverable emits for the whole
//!   cluster. Every entry gets an [`Offset`] (its position) when it is
//!   appended; every node reads the whole log in order (its tail) and
//!   delivers each entry to its own sockets, so every socket receives its
//!   events in log order and the last offset it saw says exactly what it
//!   has seen. Bounded by length and by time.
//! - the **states**: one record per recoverable socket, under its private
//!   id (pid), with a generation that each recovery increments.
//!
//! The trait and the memory store of a node alone are Socket.IO's
//! (`socketio/store.rs`, `socketio/memory_store.rs`); the cluster's Redis
//! store (a stream and hashes, `redis.rs`) and the records' encoding
//! (`codec.rs`) are here.

mod codec;
mod redis;

pub use self::codec::ProstCodec;
pub use self::redis::RedisRecoveryStore;
pub use ringway_socketio::memory_store::MemoryRecoveryStore;
pub use ringway_socketio::store::{
    now_ms, Appended, NodeSeen, Offset, Range, Record, RecoveryStore, StateWrite, StoreError,
    StoredState, Tail, TAIL_BATCHES,
};
