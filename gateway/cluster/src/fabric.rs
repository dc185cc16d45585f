//! The Socket.IO layer's [`Fabric`]: what crosses to other nodes. A room
//! emit goes to the nodes with members in its rooms (the room index), a
//! broadcast to every peer, each on the peer's ordered delivery stream; a
//! room new or gone here is announced (a join waits, bounded, for the
//! peers to confirm it); one-way `Local` calls carry evictions, acks and
//! frames for sessions that moved.

use std::sync::Arc;
use std::time::Duration;

use ringway_engineio::{Frame, Sid};
use ringway_proto::cluster::v1::{
    deliver_item, local_request, DeliverItem, Emit, LocalRequest, RoomChange, SessionFrames,
};
use ringway_socketio::{Evict, Fabric, LogEntry, MovedAckAnswer, RoomReceipt, Target};
use tracing::debug;

use crate::convert::{self, ProtoFrame};
use crate::peer::Peer;
use crate::store::UserPresence;
use crate::users::USER_WRITE_TIMEOUT;
use crate::Cluster;

/// Longest a join waits for the other nodes to confirm a new room.
const ROOM_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

impl Fabric for Cluster {
    fn publish(&self, namespace: &str, target: &Target, frames: &[Frame]) {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        if peers.is_empty() {
            return;
        }
        let receivers: Vec<&Arc<Peer>> = if target.rooms.is_empty() {
            peers.values().collect()
        } else {
            self.rooms
                .nodes_for(namespace, &target.rooms)
                .iter()
                .filter_map(|node| peers.get(node))
                .collect()
        };
        if receivers.is_empty() {
            return;
        }
        let item = DeliverItem {
            kind: Some(deliver_item::Kind::Emit(Emit {
                namespace: namespace.to_owned(),
                rooms: target.rooms.clone(),
                except_rooms: target.except_rooms.clone(),
                except_socket: target.except_socket_id(),
                frames: frames.iter().map(Frame::to_proto).collect(),
            })),
        };
        for peer in receivers {
            peer.send(item.clone());
        }
    }

    fn room_changed(&self, namespace: &str, room: &str, present: bool) -> Option<RoomReceipt> {
        if let Some(user) = ringway_socketio::user_of_room(room) {
            // Not announced: written to the registry (see users.rs).
            let upkeep = self.upkeep.clone();
            let written = self.users.changed(
                &self.registry,
                move || upkeep.write_failed(),
                UserPresence {
                    namespace: namespace.to_owned(),
                    user: user.to_owned(),
                    node: self.node_id.clone(),
                    present,
                },
            );
            return present.then(|| -> RoomReceipt {
                Box::pin(async move {
                    let _ = tokio::time::timeout(USER_WRITE_TIMEOUT, written).await;
                })
            });
        }
        self.local_rooms.set(namespace, room, present);
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        if peers.is_empty() {
            return None;
        }
        let item = DeliverItem {
            kind: Some(deliver_item::Kind::Room(RoomChange {
                namespace: namespace.to_owned(),
                room: room.to_owned(),
                joined: present,
            })),
        };
        if !present {
            for peer in peers.values() {
                peer.send(item.clone());
            }
            return None;
        }
        let confirmations: Vec<_> = peers
            .values()
            .map(|peer| peer.send_confirmed(item.clone()))
            .collect();
        Some(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + ROOM_CONFIRM_TIMEOUT;
            for confirmed in confirmations {
                // A peer that is down or slow does not hold the join up
                // for longer than the bound.
                let _ = tokio::time::timeout_at(deadline, confirmed).await;
            }
        }))
    }

    fn publish_unlogged(&self, entry: &LogEntry) {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        for peer in peers.values() {
            peer.send(DeliverItem {
                kind: Some(deliver_item::Kind::Unlogged(convert::log_entry(entry))),
            });
        }
    }

    fn evict(&self, node: &str, evict: Evict) {
        // Not a member any more: nothing of it to evict.
        self.tell(
            node,
            local_request::Op::Evict(convert::evict(evict)),
            "evict",
        );
    }

    fn node_id(&self) -> &str {
        Cluster::node_id(self)
    }

    fn moved_ack(&self, node: &str, answer: MovedAckAnswer) {
        // Not a member any more: its waiter died with it.
        let answer = convert::moved_ack_answer(answer);
        self.tell(node, local_request::Op::Ack(answer), "moved ack");
    }

    fn session_frames(&self, node: &str, sid: Sid, frames: Vec<Frame>) {
        let request = SessionFrames {
            sid: sid.to_string(),
            frames: frames.iter().map(Frame::to_proto).collect(),
        };
        self.tell(
            node,
            local_request::Op::SessionFrames(request),
            "session frames",
        );
    }
}

impl Cluster {
    /// Sends a peer a one-way `Local` call in the background (bounded by
    /// [`TELL_TIMEOUT`]); nothing if it is not a member.
    fn tell(&self, node: &str, op: local_request::Op, what: &'static str) {
        let Some(peer) = self.peer(node) else {
            return;
        };
        tokio::spawn(async move {
            let request = LocalRequest { op: Some(op) };
            match tokio::time::timeout(TELL_TIMEOUT, peer.local(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => debug!(peer = peer.node_id(), %status, "{what} failed"),
                Err(_) => debug!(peer = peer.node_id(), "{what} timed out"),
            }
        });
    }
}

/// Longest wait for a peer to take a one-way call (drop a socket
/// recovered here, resolve an ack).
const TELL_TIMEOUT: Duration = Duration::from_secs(2);
