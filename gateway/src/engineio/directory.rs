//! Where sessions live: the engine's one seam to the cluster. The engine
//! serves the sessions it holds; for any other sid it asks its directory,
//! which forwards the request to the owner or takes the session over.
//!
//! [`LocalDirectory`] is the answer of a node that is alone: every session
//! is local, an unknown sid is unknown everywhere.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::Method;
use ringway_proto::cluster::v1::SessionState;

use super::body::Receipt;
use super::errors::RequestError;
use super::session::CloseReason;
use super::sid::Sid;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A polling request for a session held by another node, with its body
/// already read (and bounded).
#[derive(Debug, Clone)]
pub struct ForwardedRequest {
    pub method: Method,
    pub query: String,
    pub body: Bytes,
    pub binary_body: bool,
}

/// The owner's answer to a forwarded request, as it goes to the client.
#[derive(Debug)]
pub struct ForwardedAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
    /// Tells the owner whether the answer reached the client (a polling
    /// GET's packets are held there until then).
    pub receipt: Option<Receipt>,
}

/// A session taken over from its previous owner.
pub struct TakenOver {
    pub state: SessionState,
    /// The registry epoch of the previous owner.
    pub epoch: u64,
}

pub trait Directory: Send + Sync + 'static {
    /// Whether this node may give a new session this sid (the hash ring
    /// maps it here).
    fn accepts(&self, _sid: &Sid) -> bool {
        true
    }

    /// Whether new sessions are taken (false while draining).
    fn open_for_handshakes(&self) -> bool {
        true
    }

    /// A session now lives here, at this registry epoch.
    fn opened(&self, _sid: Sid, _epoch: u64) {}

    /// A session ended here (or moved away, `HandedOff`).
    fn closed(&self, _sid: Sid, _epoch: u64, _reason: CloseReason) {}

    /// Serves a polling request of a session that is not here. `hint` is
    /// the node it is known to have moved to, if any.
    fn forward(
        &self,
        _sid: Sid,
        _hint: Option<String>,
        _request: ForwardedRequest,
    ) -> BoxFuture<'_, Result<ForwardedAnswer, RequestError>> {
        Box::pin(std::future::ready(Err(RequestError::UnknownSid)))
    }

    /// Takes a session that is not here over from its owner (a WebSocket
    /// upgrade landed here).
    fn take_over(
        &self,
        _sid: Sid,
        _hint: Option<String>,
    ) -> BoxFuture<'_, Result<TakenOver, RequestError>> {
        Box::pin(std::future::ready(Err(RequestError::UnknownSid)))
    }
}

/// The directory of a node alone: everything is local.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalDirectory;

impl Directory for LocalDirectory {}
