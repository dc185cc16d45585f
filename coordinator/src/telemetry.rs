//! The coordinator's instruments (set up by `ringway-telemetry`, as the
//! gateway's): what it does, and gauges of the view read from the
//! dashboard's state when metrics are collected.

use std::any::Any;
use std::sync::{Arc, LazyLock};

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;
use ringway_telemetry::{attr, histogram, meter};

use crate::dashboard::Dashboard;

pub struct Metrics {
    /// Membership events, by kind (`join`, `leave`, `lapse`, ...).
    pub events: Counter<u64>,
    /// Membership RPCs served, by method and outcome.
    pub rpc_duration: Histogram<f64>,
    /// Redis calls (the view, the coordinator lock), by operation and
    /// outcome.
    pub store_duration: Histogram<f64>,
    /// Membership calls refused for their cluster credential, by reason.
    pub auth_refusals: Counter<u64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
        events: m
            .u64_counter("ringway.coordinator.events")
            .with_description("Membership events, by kind")
            .build(),
        rpc_duration: histogram(
            &m,
            "ringway.coordinator.rpc.duration",
            "Membership RPCs served (Join, Heartbeat, Leave, Watch)",
        ),
        store_duration: histogram(
            &m,
            "ringway.coordinator.store.duration",
            "Redis calls (the stored view, the coordinator lock)",
        ),
        auth_refusals: m
            .u64_counter("ringway.coordinator.auth.refusals")
            .with_description("Membership calls refused for their cluster credential, by reason")
            .build(),
    }
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Records an RPC's time and outcome (`ok` or the gRPC code).
pub fn rpc_done<T>(
    method: &'static str,
    started: std::time::Instant,
    result: &Result<T, tonic::Status>,
) {
    let outcome = ringway_telemetry::grpc_outcome(result);
    metrics().rpc_duration.record(
        ringway_telemetry::seconds(started),
        &[
            KeyValue::new("method", method),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// The gauges of the view, observed from `dashboard` at collection time.
/// Keep what this returns for as long as they should be reported.
pub fn register_observers(dashboard: Arc<Dashboard>) -> Vec<Box<dyn Any + Send + Sync>> {
    let m = meter();
    let d = dashboard.clone();
    let acting = m
        .u64_observable_gauge("ringway.coordinator.acting")
        .with_description(
            "1 when this coordinator holds the lock and serves the Membership service",
        )
        .with_callback(move |o| o.observe(u64::from(d.is_ready()), &[]))
        .build();
    let d = dashboard.clone();
    let epoch = m
        .u64_observable_gauge("ringway.coordinator.epoch")
        .with_description("Epoch of the membership view")
        .with_callback(move |o| {
            if let Some(hub) = d.hub() {
                o.observe(hub.epoch(), &[]);
            }
        })
        .build();
    let d = dashboard.clone();
    let members = m
        .u64_observable_gauge("ringway.coordinator.members")
        .with_description("Members in the view, by state")
        .with_callback(move |o| {
            let state = d.state();
            if state.epoch.is_none() {
                return;
            }
            let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
            for s in ["active", "draining"] {
                by_state.insert(s, 0);
            }
            for member in &state.members {
                *by_state.entry(member.state).or_default() += 1;
            }
            for (s, n) in by_state {
                o.observe(n, &attr("state", s));
            }
        })
        .build();
    let d = dashboard.clone();
    let sessions = m
        .u64_observable_gauge("ringway.coordinator.member.sessions")
        .with_description("Sessions per member and transport, from its last heartbeat")
        .with_callback(move |o| {
            for member in d.state().members {
                for (transport, n) in [
                    ("polling", member.polling_sessions),
                    ("websocket", member.websocket_sessions),
                ] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("node", member.node_id.clone()),
                            KeyValue::new("transport", transport),
                        ],
                    );
                }
            }
        })
        .build();
    let d = dashboard;
    let shares = m
        .f64_observable_gauge("ringway.coordinator.member.ring_share")
        .with_description("Fraction of the sid hash space a member owns on the gateways' ring")
        .with_callback(move |o| {
            for member in d.state().members {
                o.observe(member.ring_share, &attr("node", member.node_id));
            }
        })
        .build();
    vec![
        Box::new(acting),
        Box::new(epoch),
        Box::new(members),
        Box::new(sessions),
        Box::new(shares),
    ]
}
