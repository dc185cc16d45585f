//! Setting the exporters up (feature `setup`): logs, OTLP traces and
//! metrics, the Prometheus registry, trace context in gRPC metadata.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

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

/// What a process sets up.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service: &'a str,
    /// `service.instance.id`: the process's id in the cluster.
    pub instance: &'a str,
    pub log_format: LogFormat,
    /// Which spans go to the collector, as an `EnvFilter` directive (the
    /// process's own spans at info, say), whatever `RUST_LOG` says of logs.
    pub exported_spans: &'a str,
}

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
    // OTEL_SERVICE_NAME, when set, is read by the SDK's own detector (as
    // are OTEL_RESOURCE_ATTRIBUTES).
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty()) {
        builder.build()
    } else {
        builder
            .with_service_name(default_service.to_owned())
            .build()
    }
}

impl Telemetry {
    /// Sets up logging, tracing and metrics. Must run inside the tokio
    /// runtime (the OTLP exporters use it).
    pub fn init(options: Options<'_>) -> Result<Telemetry, TelemetryError> {
        let resource = resource(options.service, options.instance);
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
        let _ = REGISTRY.set(registry);
        let _ = METER_PROVIDER.set(meters.build());
        // Global too: crates built without the `setup` feature (the
        // Engine.IO layer) take their meter from the global provider.
        if let Some(provider) = METER_PROVIDER.get() {
            opentelemetry::global::set_meter_provider(provider.clone());
        }

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
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi);
        // Trace ids only where there are traces: without a tracer no span
        // carries one.
        let traced = tracer_provider.is_some();
        let fmt = match (options.log_format, traced) {
            (LogFormat::Human, true) => {
                fmt.map_event_format(super::log::WithTraceId::human).boxed()
            }
            (LogFormat::Human, false) => fmt.boxed(),
            (LogFormat::Json, true) => fmt
                .json()
                .with_current_span(true)
                .map_event_format(super::log::WithTraceId::json)
                .boxed(),
            (LogFormat::Json, false) => fmt.json().with_current_span(true).boxed(),
        };
        let otel = tracer_provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer(options.service.to_owned()))
                .with_filter(EnvFilter::new(options.exported_spans))
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

/// The meter provider [`Telemetry::init`] installed, if it ran.
pub(crate) fn meter_provider() -> Option<&'static SdkMeterProvider> {
    METER_PROVIDER.get()
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
