//! Ringway's Redis connections, the same for the gateway and the
//! coordinator: one Redis server (`standalone`), a Redis Cluster
//! (`cluster`, the seed nodes given) or a primary found through Sentinel
//! (`sentinel`), each with TLS (`rediss://`, a CA file, client
//! certificates) and the password read from a file. The redis crate does
//! the work (its connection manager, cluster client and Sentinel client);
//! this crate chooses among them from the flags ([`RedisArgs`]) and gives
//! one connection type to the stores ([`RedisConn`]).
//!
//! What the modes mean for the stores: every multi-key operation must stay
//! in one hash slot (hash tags), and a blocking read (`XREAD BLOCK`) gets a
//! connection of its own with a response timeout longer than the block.

mod args;
mod conn;

#[cfg(feature = "args")]
pub use args::RedisArgs;
pub use args::{redact_url, RedisConfig, RedisConfigError, RedisMode};
pub use conn::{ConnectOptions, RedisConn};
