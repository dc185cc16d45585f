//! The Socket.IO layer's one seam to other nodes: emits that must reach
//! sockets elsewhere, and the rooms this node has members in.

use bytes::Bytes;

use ringway_engineio::{BoxFuture, Frame, Sid};

use super::log::LogEntry;
use super::target::Target;

pub trait Fabric: Send + Sync + 'static {
    /// An emit was delivered here; deliver it on every other node the
    /// target may reach. `frames` are encoded once, for every receiver.
    fn publish(&self, namespace: &str, target: &Target, frames: &[Frame]);

    /// A room of this node got its first member (`present`) or lost its
    /// last. Called under the namespace's room lock, so calls for one room
    /// come in order; it must not block. For a first member it may return
    /// a [`RoomReceipt`]: whoever tells the client that the join is done
    /// should await it first.
    fn room_changed(&self, namespace: &str, room: &str, present: bool) -> Option<RoomReceipt>;

    /// A recoverable emit that could not be logged: deliver it on every
    /// other node anyway (without an offset a client could recover from).
    fn publish_unlogged(&self, entry: &LogEntry);

    /// A client recovered a socket here that `node` may still hold: it
    /// drops its copy (best effort).
    fn evict(&self, node: &str, evict: Evict);

    /// This node's id in the cluster (empty alone).
    fn node_id(&self) -> &str;

    /// A client's answer to an emit with ack that `node` made before the
    /// session moved here: resolve its waiter there (best effort).
    fn moved_ack(&self, node: &str, answer: MovedAckAnswer);

    /// Packets for session `sid`, which moved from here to `node`: queue
    /// them there (best effort).
    fn session_frames(&self, node: &str, sid: Sid, frames: Vec<Frame>);
}

/// A socket its client recovered on another node: the node that still
/// holds a copy drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    /// The session the copy belongs to (a newer session of the same
    /// socket id is left alone).
    pub sid: String,
    pub namespace: String,
    pub socket_id: String,
}

/// A client's answer to an emit with ack that another node made before
/// the session moved here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAckAnswer {
    pub namespace: String,
    pub socket_id: String,
    pub id: u64,
    /// The ack's arguments (a JSON array) and binary attachments.
    pub args_json: String,
    pub attachments: Vec<Bytes>,
    /// The session the socket is on.
    pub sid: String,
}

/// Resolves once every other node knows that this node has members in a
/// room (or gave up waiting, bounded): from then on emits into the room
/// from any node reach the new member.
pub type RoomReceipt = BoxFuture<'static, ()>;

/// No other nodes: nothing to publish.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFabric;

impl Fabric for LocalFabric {
    fn publish(&self, _namespace: &str, _target: &Target, _frames: &[Frame]) {}
    fn room_changed(&self, _namespace: &str, _room: &str, _present: bool) -> Option<RoomReceipt> {
        None
    }
    fn publish_unlogged(&self, _entry: &LogEntry) {}
    fn evict(&self, _node: &str, _evict: Evict) {}
    fn node_id(&self) -> &str {
        ""
    }
    fn moved_ack(&self, _node: &str, _answer: MovedAckAnswer) {}
    fn session_frames(&self, _node: &str, _sid: Sid, _frames: Vec<Frame>) {}
}
