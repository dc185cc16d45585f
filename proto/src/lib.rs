//! Ringway's protobuf definitions, compiled at build time, and the
//! cluster credential ([`auth`]) that every internal call carries.

pub mod auth;

/// Cluster-internal services: membership (gateways <-> coordinator) and
/// node-to-node traffic (gateway <-> gateway).
pub mod cluster {
    pub mod v1 {
        tonic::include_proto!("ringway.cluster.v1");
    }
}

/// The public API: `Push` (backends call the gateways) and `Upstream`
/// (gateways call the backend).
pub mod v1 {
    tonic::include_proto!("ringway.v1");
}
