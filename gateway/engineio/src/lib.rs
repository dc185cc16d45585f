//! Engine.IO v4 (and v3 with `--allow-eio3`): sessions, heartbeats, the
//! polling and WebSocket transports and the upgrade between them. Knows
//! nothing of Socket.IO: the layer above plugs in through
//! [`EngineHandler`] and reads a session's revision from it.

pub mod admission;
pub mod body;
pub mod directory;
pub mod engine;
pub mod errors;
pub mod handler;
pub mod metrics;
pub mod packet;
pub mod payload;
pub mod payload_v3;
pub mod protocol;
pub mod query;
pub mod session;
pub mod sid;
mod websocket;

pub use admission::{AdmissionConfig, Refusal};
pub use body::{Body, Receipt};
pub use directory::{
    BoxFuture, Directory, ForwardedAnswer, ForwardedRequest, Handover, LocalDirectory, Located,
    SessionSnapshot,
};
pub use engine::{Engine, EngineConfig, HeldRequests};
pub use errors::{DecodeError, RequestError};
pub use handler::{EngineHandler, Message, NotMovable};
pub use packet::Frame;
pub use protocol::{Framing, Protocol};
pub use session::{CloseReason, Handshake, SendError, Session, SessionRef, TransportKind};
pub use sid::{Sid, SidKey};
