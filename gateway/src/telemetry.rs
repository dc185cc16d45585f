//! Logs, traces and metrics.
//!
//! - Logs: `tracing` on stderr, human or JSON (`--log-format`), levels by
//!   `RUST_LOG`.
//! - Traces: spans go to an OTLP collector (gRPC) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set; off otherwise. `OTEL_SERVICE_NAME`
//!   and `OTEL_RESOURCE_ATTRIBUTES` name the process.
//! - Metrics: OpenTelemetry instruments (see [`Metrics`]), always readable
//!   in Prometheus text on the HTTP listener's `/metrics`, and exported by
//!   OTLP too when the endpoint is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
}

/// The Prometheus registry `/metrics` reads.
static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
/// The meter provider of this process (set once by [`Telemetry::init`]).
static METER_PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// Keeps the exporters alive; flushes them on shutdown.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

fn otlp_endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
}

fn resource(default_service: &str, instance: &str) -> Resource {
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    // OTEL_SERVICE_NAME, when set, is read by the SDK's own detector.
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty()) {
        builder.build()
    } else {
        builder
            .with_service_name(default_service.to_owned())
            .build()
    }
}

impl Telemetry {
    /// Sets up logging, tracing and metrics for the process `service`.
    /// Must run inside the tokio runtime (the OTLP exporters use it).
    /// `instance` is this process's id in the cluster (the node id).
    pub fn init(
        service: &str,
        instance: &str,
        log_format: LogFormat,
    ) -> Result<Telemetry, TelemetryError> {
        let resource = resource(service, instance);
        let endpoint = otlp_endpoint();

        // Metrics: Prometheus always, OTLP when configured.
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus);
        if endpoint.is_some() {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            // The tonic exporter runs on the tokio runtime (the SDK's
            // default reader uses a thread of its own, without a runtime).
            let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            meters = meters.with_reader(reader);
        }
        let meter_provider = meters.build();
        let _ = REGISTRY.set(registry);
        let _ = METER_PROVIDER.set(meter_provider);

        // Traces: only with a collector.
        let tracer_provider = match endpoint {
            Some(_) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
                let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
                Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource)
                        .with_span_processor(processor)
                        .build(),
                )
            }
            None => None,
        };
        if let Some(provider) = &tracer_provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
        }

        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let fmt = match log_format {
            LogFormat::Human => fmt.boxed(),
            LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        };
        // Spans go to the collector whatever RUST_LOG says of the logs
        // (the gateway's own spans, at info).
        let otel = tracer_provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(service.to_owned()))
                .with_filter(EnvFilter::new("ringway_gateway=info"))
        });
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel)
            .try_init();
        Ok(Telemetry { tracer_provider })
    }

    /// Flushes what is buffered (spans, the last metrics).
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            let _ = provider.shutdown();
        }
        if let Some(provider) = METER_PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }
}

/// The meter of this process: a no-op one before [`Telemetry::init`]
/// (library use, unit tests).
pub fn meter() -> Meter {
    match METER_PROVIDER.get() {
        Some(provider) => provider.meter("ringway"),
        None => opentelemetry::global::meter("ringway"),
    }
}

/// The metrics in Prometheus text format (empty before init).
pub fn render() -> String {
    let Some(registry) = REGISTRY.get() else {
        return String::new();
    };
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(err) = encoder.encode_utf8(&registry.gather(), &mut out) {
        tracing::warn!(%err, "cannot encode the metrics");
    }
    out
}

/// Every instrument the gateway updates as it works. Gauges of state
/// (sessions, rooms, membership) are observed at collection time instead:
/// see `register_observers` in `main.rs`.
pub struct Metrics {
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
    /// Messages from clients, and deliveries to clients.
    pub messages_in: Tally,
    pub messages_out: Tally,
    /// Bytes of those messages, `direction` receive / transmit (the
    /// semantic conventions' network.io; Engine.IO payloads as framed,
    /// binary counted as its base64 size on polling).
    pub network_io: Counter<u64>,
    /// Calls to other gateways (`Node.Forward`, `Handoff`, `Local`), by
    /// method and outcome.
    pub peer_duration: Histogram<f64>,
    /// Sessions closed, by reason (slow consumer among them).
    pub session_closes: Counter<u64>,
    /// Items a peer's delivery queue could not take.
    pub peer_queue_drops: Counter<u64>,
    /// Registry (Redis) calls, by operation and outcome.
    pub registry_duration: Histogram<f64>,
    /// Push API calls, by method.
    pub push_duration: Histogram<f64>,
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

impl Metrics {
    pub fn bytes_in(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "receive"));
    }

    pub fn bytes_out(&self, n: u64) {
        self.network_io.add(n, &attr("direction", "transmit"));
    }
}

/// Buckets (seconds) for the latencies above: 50 µs .. 10 s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

fn histogram(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(BUCKETS.to_vec())
        .build()
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = meter();
    Metrics {
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
        messages_in: Tally::new(
            m.u64_counter("ringway.messages.received")
                .with_description("Engine.IO messages received from clients")
                .build(),
        ),
        messages_out: Tally::new(
            m.u64_counter("ringway.messages.delivered")
                .with_description("Socket.IO packets queued for clients")
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
        peer_duration: histogram(
            &m,
            "ringway.peer.duration",
            "Calls to other gateways (Node.Forward, Handoff, Local)",
        ),
        session_closes: m
            .u64_counter("ringway.session.closes")
            .with_description("Sessions closed, by reason")
            .build(),
        peer_queue_drops: m
            .u64_counter("ringway.peer.queue.drops")
            .with_description("Items dropped because a peer's delivery queue was full")
            .build(),
        registry_duration: histogram(&m, "ringway.registry.duration", "Registry (Redis) calls"),
        push_duration: histogram(&m, "ringway.push.duration", "Push API calls"),
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

/// A counter that also keeps its process total readable here (the
/// heartbeat reports it to the coordinator's dashboard).
pub struct Tally {
    counter: Counter<u64>,
    total: AtomicU64,
}

impl Tally {
    fn new(counter: Counter<u64>) -> Tally {
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

/// The gateway's instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Seconds since `start`, for a histogram.
pub fn seconds(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

pub fn attr(key: &'static str, value: impl Into<opentelemetry::Value>) -> [KeyValue; 1] {
    [KeyValue::new(key, value)]
}

/// Writes a trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

/// Reads a trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A gRPC request carrying the current span's trace context (W3C
/// `traceparent`), so the called node's spans join the same trace.
pub fn traced<T>(message: T) -> tonic::Request<T> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut request = tonic::Request::new(message);
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
    });
    request
}

/// Makes `span` a child of the trace context a request carries (if any).
pub fn continue_trace<T>(request: &tonic::Request<T>, span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(request.metadata()))
    });
    let _ = span.set_parent(parent);
    record_trace_id(span);
}

/// Fills a span's `trace_id` field (declared `Empty`) with its OpenTelemetry
/// trace id, so every log line inside it names the trace. Nothing when
/// traces are off.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
    }
}
