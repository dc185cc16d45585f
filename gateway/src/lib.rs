//! Ringway gateway: a Socket.IO (Engine.IO v4 + Socket.IO v5) server node.
//!
//! Data flows one way: transport -> [`engineio`] -> [`socketio`] ->
//! application ([`app`]); [`cluster`] tells the engine where sessions live
//! (backed by the [`store`] registry) and carries emits to other nodes.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod demo;
/// The Engine.IO layer, its own crate (`gateway/engineio`).
pub use ringway_engineio as engineio;
pub mod http;
pub mod node;
/// The Socket.IO layer, its own crate (`gateway/socketio`).
pub use ringway_socketio as socketio;
pub mod store;
pub mod telemetry;
