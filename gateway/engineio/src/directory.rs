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

use super::body::Receipt;
use super::errors::RequestError;
use super::packet::Frame;
use super::protocol::Protocol;
use super::session::{CloseReason, Handshake};
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

/// Where a request for a session was answered: here, or the session is
/// elsewhere (it moved to that node), or nowhere this node knows of.
#[derive(Debug)]
pub enum Located<T> {
    Served(T),
    Moved(String),
    Unknown,
}

/// Everything a session is, as it leaves one node for another: the
/// handshake, what is queued for the client, and the state of the layer
/// above (`S`, the handler's [`EngineHandler::Snapshot`]). Plain data: the
/// cluster converts it for the wire.
///
/// [`EngineHandler::Snapshot`]: super::handler::EngineHandler::Snapshot
#[derive(Debug)]
pub struct SessionSnapshot<S> {
    pub sid: Sid,
    pub handshake: Handshake,
    /// Packets queued for the client and not yet sent, in order.
    pub queue: Vec<Frame>,
    /// A ping was sent and its pong has not come back.
    pub awaiting_pong: bool,
    pub protocol: Protocol,
    /// Engine.IO v3 only: binary goes as base64 on polling (`b64=1`).
    pub base64: bool,
    /// The layer above's state (`None`: nothing to restore).
    pub upper: Option<S>,
}

/// A session handed over: its state and the registry epoch its previous
/// owner held (the new owner writes epoch + 1).
#[derive(Debug)]
pub struct Handover<S> {
    pub session: SessionSnapshot<S>,
    pub epoch: u64,
}

/// How the engine reaches the rest of the cluster; `S` is the state of
/// the layer above that moves with a session.
pub trait Directory<S: Send + 'static>: Send + Sync + 'static {
    /// Where a new session's id must point so that every node finds its
    /// owner here without I/O: a point of this node's part of the hash
    /// ring, written into the sid (see [`Sid::signed_at`]); `None` when
    /// any sid will do (a node alone, or one out of the ring: the
    /// registry then says where the session lives).
    fn placement(&self) -> Option<u64> {
        None
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
    ) -> BoxFuture<'_, Result<Handover<S>, RequestError>> {
        Box::pin(std::future::ready(Err(RequestError::UnknownSid)))
    }
}

/// The directory of a node alone: everything is local.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalDirectory;

impl<S: Send + 'static> Directory<S> for LocalDirectory {}
