//! The application interface: the one seam between the protocol and what
//! a deployment does with it (the built-in echo, later the gRPC upstream).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use ringway_engineio::SessionRef;

use super::client::ClientState;
use super::packet::Payload;
use super::socket::{AckSender, DisconnectReason, SocketRef};

/// A client event: its name and its arguments (binary attachments
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub args: Payload,
}

/// A client asks to join a namespace.
pub struct ConnectRequest {
    pub namespace: String,
    /// The CONNECT payload, a JSON object (`{}` when none was sent).
    pub auth: String,
    /// The Engine.IO session, with the handshake (headers, query, remote
    /// address).
    pub session: SessionRef<ClientState>,
}

/// An accepted CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub user: Option<String>,
    /// Rooms the socket joins before the application sees it.
    pub rooms: Vec<String>,
    /// Opaque data kept with the socket for its lifetime (moved with it
    /// by a handoff): the upstream hook's session data.
    pub data: Option<Bytes>,
}

/// A refused CONNECT: the client gets CONNECT_ERROR with this message
/// (and `data` when given).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl Refusal {
    pub fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            data: None,
        }
    }
}

pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Grant, Refusal>> + Send + 'static>>;

pub trait Application: Send + Sync + 'static {
    /// Whether `namespace` exists. A CONNECT to any other gets
    /// CONNECT_ERROR "Invalid namespace".
    fn has_namespace(&self, namespace: &str) -> bool;

    /// Decides on a CONNECT. May take time (an upstream call); packets the
    /// client sends to that namespace meanwhile are dropped, as in the
    /// reference server.
    fn authorize(&self, _request: ConnectRequest) -> ConnectFuture {
        Box::pin(std::future::ready(Ok(Grant::default())))
    }

    /// A socket joined its namespace (its CONNECT answer is already queued).
    fn on_connect(&self, _socket: &SocketRef) {}

    /// A client event. `ack` is there when the client asked for one.
    fn on_event(&self, socket: &SocketRef, event: Event, ack: Option<AckSender>);

    /// A socket left its namespace.
    fn on_disconnect(&self, _socket: &SocketRef, _reason: DisconnectReason) {}
}
