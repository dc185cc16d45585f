//! The one seam between Engine.IO and whatever runs on top of it
//! (Socket.IO, or the plain Engine.IO echo). The engine never calls up
//! except through this trait.

use bytes::Bytes;

use super::session::{CloseReason, SessionRef};

/// The layer above cannot hand this session over now (a CONNECT is being
/// decided, for example); the upgrade is refused and the session stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session busy: cannot be handed off now")]
pub struct NotMovable;

/// A message received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(Bytes),
}

pub trait EngineHandler: Send + Sync + 'static {
    /// Per-session state of the layer above, stored inside the session.
    type Data: Default + Send + Sync + 'static;

    /// The layer above's state of a session, as it moves to another node
    /// with the session ([`EngineHandler::export`], [`EngineHandler::restore`]).
    type Snapshot: Send + 'static;

    /// A session opened (after the open packet was queued).
    fn on_open(&self, session: &SessionRef<Self::Data>);

    /// A message arrived. Calls for one session never overlap and come in
    /// the order the client sent them.
    fn on_message(&self, session: &SessionRef<Self::Data>, message: Message<'_>);

    /// How long after the open [`EngineHandler::on_open_timeout`] should be
    /// called (once), if at all.
    fn open_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Called once, `open_timeout` after the open, if the session lives.
    fn on_open_timeout(&self, _session: &SessionRef<Self::Data>) {}

    /// The session ended; it is already gone from the engine. With
    /// `HandedOff` it lives on at another node: nothing ended for the
    /// application.
    fn on_close(&self, session: &SessionRef<Self::Data>, reason: CloseReason);

    /// The state of the layer above, for a handoff to another node.
    /// `take` takes the session's queue away (for the move): the layer
    /// above calls it once it has its state, at a moment where nothing it
    /// sends can fall between the two. Not called when it refuses.
    fn export(
        &self,
        _session: &SessionRef<Self::Data>,
        take: &mut dyn FnMut(),
    ) -> Result<Option<Self::Snapshot>, NotMovable> {
        take();
        Ok(None)
    }

    /// Restores what [`EngineHandler::export`] gave, in a session taken
    /// over from another node (before its first message here).
    fn restore(&self, _session: &SessionRef<Self::Data>, _state: Option<Self::Snapshot>) {}
}
