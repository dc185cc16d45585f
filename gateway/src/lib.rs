//! Ringway gateway: a Socket.IO (Engine.IO v4 + Socket.IO v5) server node.
//!
//! Data flows one way: transport -> [`engineio`] -> [`socketio`] ->
//! application ([`app`]).

pub mod app;
pub mod config;
pub mod engineio;
pub mod http;
pub mod socketio;
