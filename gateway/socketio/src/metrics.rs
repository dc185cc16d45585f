//! The Socket.IO layer's instruments, recorded into the process's meter
//! (`ringway_telemetry::meter`) like the engine's; the bytes and the
//! public-port limits are the engine's instruments
//! ([`ringway_engineio::metrics`]).

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Histogram};
use ringway_engineio::metrics::Tally;
use ringway_telemetry::{histogram, meter};

/// Every instrument the Socket.IO layer updates.
pub struct SocketIoMetrics {
    /// Socket.IO packets queued for clients (the heartbeat reports the
    /// total to the coordinator).
    pub messages_out: Tally,
    /// Recovery attempts (CONNECTs with a pid), by outcome.
    pub recoveries: Counter<u64>,
    /// Events replayed to recovered or moved sockets.
    pub replayed: Counter<u64>,
    /// Recoverable emits, by outcome (`ok`: in the log; `unlogged`,
    /// `queue_full`: delivered without recovery).
    pub log_appends: Counter<u64>,
    /// Round trips of log appends (one per batch).
    pub log_append_duration: Histogram<f64>,
}

impl SocketIoMetrics {
    /// Bytes queued for clients (the engine's `network.io`, transmit).
    pub fn bytes_out(&self, n: u64) {
        ringway_engineio::metrics::metrics().bytes_out(n);
    }
}

static METRICS: LazyLock<SocketIoMetrics> = LazyLock::new(|| {
    let m = meter();
    SocketIoMetrics {
        messages_out: Tally::new(
            m.u64_counter("ringway.messages.delivered")
                .with_description("Socket.IO packets queued for clients")
                .build(),
        ),
        recoveries: m
            .u64_counter("ringway.recoveries")
            .with_description("Connection state recovery attempts, by outcome")
            .build(),
        replayed: m
            .u64_counter("ringway.recovery.replayed")
            .with_description("Events replayed to recovered or moved sockets")
            .build(),
        log_appends: m
            .u64_counter("ringway.recovery.log.appends")
            .with_description("Recoverable emits appended to the log, by outcome")
            .build(),
        log_append_duration: histogram(
            &m,
            "ringway.recovery.log.append.duration",
            "Recovery log appends (one round trip per batch)",
        ),
    }
});

/// The Socket.IO layer's instruments.
pub fn metrics() -> &'static SocketIoMetrics {
    &METRICS
}
