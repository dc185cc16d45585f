//! The Engine.IO layer's instruments. They record into the process's
//! meter (`ringway_telemetry::meter`), so they appear on `/metrics` with
//! the rest of the gateway's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;
use ringway_telemetry::{attr, histogram, meter};

/// Every instrument the engine updates as it works.
pub struct EngineMetrics {
    /// New sessions, by transport.
    pub handshakes: Counter<u64>,
    /// Requests refused, by Engine.IO error.
    pub request_errors: Counter<u64>,
    /// Completed upgrades to WebSocket.
    pub upgrades: Counter<u64>,
    /// Sessions taken over from (`in`) or handed to (`out`) another node.
    pub handoffs: Counter<u64>,
    pub handoff_duration: Histogram<f64>,
    /// Polling requests forwarded to their owner, by method.
    pub forwards: Counter<u64>,
    pub forward_duration: Histogram<f64>,
    /// Answers of forwarded polls that the forwarding node did not
    /// confirm delivered (it failed, or its client went away), whose
    /// packets went back to the queue.
    pub poll_answers_retaken: Counter<u64>,
    /// Messages from clients.
    pub messages_in: Tally,
    /// Bytes of the messages received from clients and queued for them,
    /// `direction` receive / transmit (the semantic conventions'
    /// network.io; Engine.IO payloads as framed, binary counted as its
    /// base64 size on polling).
    pub network_io: Counter<u64>,
    /// Sessions closed, by reason (slow consumer among them).
    pub session_closes: Counter<u64>,
    /// Requests, sessions and packets refused by a public-port limit, by
    /// limit (the layers above count theirs here too).
    pub limit_refusals: Counter<u64>,
}

impl EngineMetrics {
    pub fn bytes_in(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "receive"));
    }

    pub fn bytes_out(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "transmit"));
    }
}

static METRICS: LazyLock<EngineMetrics> = LazyLock::new(|| {
    let m = meter();
    EngineMetrics {
        handshakes: m
            .u64_counter("ringway.handshakes")
            .with_description("Sessions opened")
            .build(),
        request_errors: m
            .u64_counter("ringway.request.errors")
            .with_description("Requests refused with an Engine.IO error")
            .build(),
        upgrades: m
            .u64_counter("ringway.upgrades")
            .with_description("Sessions upgraded to WebSocket")
            .build(),
        handoffs: m
            .u64_counter("ringway.handoffs")
            .with_description("Sessions moved between nodes")
            .build(),
        handoff_duration: histogram(
            &m,
            "ringway.handoff.duration",
            "Time to take a session over",
        ),
        forwards: m
            .u64_counter("ringway.forwards")
            .with_description("Polling requests forwarded to the owner node")
            .build(),
        forward_duration: histogram(&m, "ringway.forward.duration", "Forwarded request time"),
        poll_answers_retaken: m
            .u64_counter("ringway.poll.answers.retaken")
            .with_description("Forwarded poll answers not confirmed delivered, requeued")
            .build(),
        messages_in: Tally::new(
            m.u64_counter("ringway.messages.received")
                .with_description("Engine.IO messages received from clients")
                .build(),
        ),
        network_io: m
            .u64_counter("ringway.network.io")
            .with_unit("By")
            .with_description(
                "Bytes of the messages received from clients (direction=receive) \
                 and queued for them (direction=transmit)",
            )
            .build(),
        session_closes: m
            .u64_counter("ringway.session.closes")
            .with_description("Sessions closed, by reason")
            .build(),
        limit_refusals: m
            .u64_counter("ringway.limits.refusals")
            .with_description(
                "Requests, sessions and packets refused by a public-port limit, by limit",
            )
            .build(),
    }
});

/// The engine's instruments.
pub fn metrics() -> &'static EngineMetrics {
    &METRICS
}

/// A counter that also keeps its process total readable (the heartbeat
/// reports it to the coordinator's dashboard).
pub struct Tally {
    counter: Counter<u64>,
    total: AtomicU64,
}

impl Tally {
    pub fn new(counter: Counter<u64>) -> Tally {
        Tally {
            counter,
            total: AtomicU64::new(0),
        }
    }

    pub fn add(&self, value: u64, attributes: &[KeyValue]) {
        self.total.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, attributes);
    }

    /// Everything added since the process started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}
