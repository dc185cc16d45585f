//! Applications built into the gateway.

pub mod echo;

pub use echo::{EchoApp, EngineEcho};
