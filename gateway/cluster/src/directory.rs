//! The engine's [`Directory`]: which node owns a session, and how a
//! request for a session that is not here reaches it. New sessions are
//! given sids the ring maps here; sessions opened and closed here are
//! written to the registry; a polling request is forwarded to the owner
//! (a GET by `Node.Poll`, whose answer the owner holds until this node
//! says it reached the client); a WebSocket upgrade takes the session
//! over (`Node.Handoff`). Finding the owner (ring, registry, hints of a
//! move, retries) is [`Cluster::route`].

use std::sync::Arc;

use ringway_engineio::{
    BoxFuture, CloseReason, Directory, ForwardedAnswer, ForwardedRequest, Handover, Located,
    RequestError, Sid,
};
use ringway_proto::cluster::v1::{ForwardRequest, HandoffRequest};
use ringway_socketio::ClientSnapshot;
use tracing::debug;

use crate::convert::{self, located};
use crate::store::Entry;
use crate::Cluster;

/// The directory, as `Arc<Cluster>` (registry writes run in their own
/// tasks).
#[derive(Clone)]
pub struct ClusterDirectory(pub Arc<Cluster>);

impl Directory<ClientSnapshot> for ClusterDirectory {
    fn placement(&self) -> Option<u64> {
        // Out of the ring (draining, or not in the view yet): `None`, any
        // sid; the registry says where the session lives.
        self.0.view().ring.point_in(&self.0.node_id, rand::random())
    }

    fn open_for_handshakes(&self) -> bool {
        !self.0.is_draining()
    }

    fn opened(&self, sid: Sid, epoch: u64) {
        self.0
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, epoch);
        let entry = Entry {
            owner: self.0.node_id.clone(),
            epoch,
        };
        self.0.spawn_registry_write(sid, entry, false);
    }

    fn closed(&self, sid: Sid, epoch: u64, reason: CloseReason) {
        self.0
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
        if reason == CloseReason::HandedOff {
            // The new owner writes the next epoch.
            return;
        }
        let entry = Entry {
            owner: self.0.node_id.clone(),
            epoch,
        };
        self.0.spawn_registry_write(sid, entry, true);
    }

    fn forward(
        &self,
        sid: Sid,
        hint: Option<String>,
        request: ForwardedRequest,
    ) -> BoxFuture<'_, Result<ForwardedAnswer, RequestError>> {
        // A GET's answer leaves the owner's queue only for good once this
        // node has handed it to the client: it goes by `Poll`, with a
        // receipt.
        let is_get = request.method == http::Method::GET;
        let request = ForwardRequest {
            sid: sid.to_string(),
            method: request.method.as_str().to_owned(),
            query: request.query,
            body: request.body,
            binary_body: request.binary_body,
        };
        Box::pin(self.0.route(sid, hint, move |peer| {
            let request = request.clone();
            async move {
                let answered = if is_get {
                    peer.poll(request).await
                } else {
                    peer.forward(request).await.map(|reply| (reply, None))
                };
                match answered {
                    Ok((reply, receipt)) => {
                        Ok(located(reply.disposition, reply.moved_to.clone(), || {
                            ForwardedAnswer {
                                status: reply.status as u16,
                                content_type: reply.content_type,
                                body: reply.body,
                                receipt,
                            }
                        }))
                    }
                    Err(status) => {
                        debug!(peer = peer.node_id(), %status, "forward failed");
                        Err(RequestError::UnknownSid)
                    }
                }
            }
        }))
    }

    fn take_over(
        &self,
        sid: Sid,
        hint: Option<String>,
    ) -> BoxFuture<'_, Result<Handover<ClientSnapshot>, RequestError>> {
        let request = HandoffRequest {
            sid: sid.to_string(),
            new_owner: self.0.node_id.clone(),
        };
        Box::pin(self.0.route(sid, hint, move |peer| {
            let request = request.clone();
            async move {
                match peer.handoff(request).await {
                    Ok(reply) => {
                        let epoch = reply.epoch;
                        match located(reply.disposition, reply.moved_to, || reply.session) {
                            Located::Served(Some(state)) => {
                                convert::handover(sid, state, epoch).map(Located::Served)
                            }
                            Located::Served(None) => Err(RequestError::BadRequest),
                            Located::Moved(node) => Ok(Located::Moved(node)),
                            Located::Unknown => Ok(Located::Unknown),
                        }
                    }
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        // Upgrading or upgraded already: as a local upgrade
                        // of such a session, a bad request.
                        Err(RequestError::BadRequest)
                    }
                    Err(status) => {
                        debug!(peer = peer.node_id(), %status, "handoff failed");
                        Err(RequestError::UnknownSid)
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use ringway_engineio::{Sid, SidKey};
    use ringway_ring::{sid_point, Ring, DEFAULT_VNODES};

    /// The engine writes the point the directory draws into the sid, and
    /// the ring reads it back from the sid's text: every node then names
    /// the node that made a session as its owner, at 3 and 200 members.
    #[test]
    fn a_new_sid_names_its_node_on_every_ring() {
        let key = SidKey::random();
        for n in [3, 200] {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let ring = Ring::new(names.iter().map(String::as_str), DEFAULT_VNODES);
            for name in &names {
                for _ in 0..20 {
                    let point = ring.point_in(name, rand::random()).expect("a member");
                    let sid = Sid::signed_at(&key, point);
                    assert!(sid.is_signed_by(&key));
                    assert_eq!(sid_point(sid.as_str()), Some(point));
                    assert_eq!(ring.owner_of_sid(sid.as_str()), Some(name.as_str()));
                }
            }
        }
        // An unplaced sid still has an owner (its point is random).
        let ring = Ring::new(["a", "b"], DEFAULT_VNODES);
        assert!(ring.owner_of_sid(Sid::signed(&key).as_str()).is_some());
    }
}
