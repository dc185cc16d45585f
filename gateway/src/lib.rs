//! Ringway gateway: a Socket.IO (Engine.IO v4 + Socket.IO v5) server node.
//!
//! Data flows one way: transport -> [`engineio`] -> [`socketio`] ->
//! application ([`app`]); [`cluster`] tells the engine where sessions live
//! (backed by the [`store`] registry) and carries emits to other nodes.

pub mod api;
pub mod app;
/// The cluster, its own crate (`gateway/cluster`): membership, peers,
/// forwarding and handoff calls, the registry and the recovery stores.
pub use ringway_cluster as cluster;
/// The stores (`gateway/cluster/src/store`).
pub use ringway_cluster::store;
pub mod config;
pub mod demo;
/// The Engine.IO layer, its own crate (`gateway/engineio`).
pub use ringway_engineio as engineio;
pub mod http;
pub mod node;
/// The Socket.IO layer, its own crate (`gateway/socketio`).
pub use ringway_socketio as socketio;
pub mod telemetry;
