//! Ringway's protobuf definitions, compiled at build time.

/// Cluster-internal services: membership (gateways <-> coordinator) and
/// node-to-node traffic (gateway <-> gateway).
pub mod cluster {
    pub mod v1 {
        tonic::include_proto!("ringway.cluster.v1");
    }
}
