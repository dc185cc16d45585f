//! The cluster's instruments: calls to and from other gateways, the
//! registry, refused internal calls. Recorded into the process's meter
//! (`ringway-telemetry`), so they appear in `/metrics` with the rest.

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};
use ringway_telemetry::{histogram, meter};

pub struct Metrics {
    /// Emits received from other nodes (room emits only reach nodes with
    /// members in the room).
    pub peer_emits: Counter<u64>,
    /// Calls to other gateways (`Node.Forward`, `Handoff`, `Local`), by
    /// method and outcome.
    pub peer_duration: Histogram<f64>,
    /// Items a peer's delivery queue could not take.
    pub peer_queue_drops: Counter<u64>,
    /// Registry (Redis) calls, by operation and outcome.
    pub registry_duration: Histogram<f64>,
    /// Internal calls refused for their cluster credential, by reason.
    pub cluster_auth_refusals: Counter<u64>,
    /// Rewrites of every registry entry and recovery state of the node,
    /// by reason (Redis lost data, answers again, writes failed).
    pub registry_rewrites: Counter<u64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        peer_emits: m
            .u64_counter("ringway.peer.emits")
            .with_description("Emits received from other gateways, to deliver here")
            .build(),
        peer_duration: histogram(
            &m,
            "ringway.peer.duration",
            "Calls to other gateways (Node.Forward, Handoff, Local)",
        ),
        peer_queue_drops: m
            .u64_counter("ringway.peer.queue.drops")
            .with_description("Items dropped because a peer's delivery queue was full")
            .build(),
        registry_duration: histogram(&m, "ringway.registry.duration", "Registry (Redis) calls"),
        cluster_auth_refusals: m
            .u64_counter("ringway.cluster.auth.refusals")
            .with_description("Node-to-node calls refused for their cluster credential, by reason")
            .build(),
        registry_rewrites: m
            .u64_counter("ringway.registry.rewrites")
            .with_description(
                "Rewrites of this node's registry entries and recovery states, by reason",
            )
            .build(),
    }
});

/// The cluster's instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
