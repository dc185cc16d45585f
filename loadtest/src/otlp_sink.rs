//! `otlp-sink`: an OTLP/gRPC receiver that accepts traces and metrics and
//! only counts them, for measuring what exporting telemetry costs a
//! server (`scripts/bench-telemetry.sh`). Prints
//! `otlp sink listening on ADDR`, then once a second (with `--report`)
//! the totals so far.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub listen: String,

    /// Print the totals every second.
    #[arg(long)]
    pub report: bool,
}

#[derive(Default)]
struct Counts {
    span_exports: AtomicU64,
    spans: AtomicU64,
    metric_exports: AtomicU64,
    metrics: AtomicU64,
}

#[derive(Clone, Default)]
struct Sink {
    counts: Arc<Counts>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.counts.span_exports.fetch_add(1, Ordering::Relaxed);
        self.counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let metrics: usize = request
            .get_ref()
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .map(|s| s.metrics.len())
            .sum();
        self.counts.metric_exports.fetch_add(1, Ordering::Relaxed);
        self.counts
            .metrics
            .fetch_add(metrics as u64, Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

pub async fn run(args: SinkArgs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    println!("otlp sink listening on {addr}");
    let sink = Sink::default();
    if args.report {
        let counts = sink.counts.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                println!(
                    "spans {} in {} exports, metrics {} in {} exports",
                    counts.spans.load(Ordering::Relaxed),
                    counts.span_exports.load(Ordering::Relaxed),
                    counts.metrics.load(Ordering::Relaxed),
                    counts.metric_exports.load(Ordering::Relaxed)
                );
            }
        });
    }
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .add_service(MetricsServiceServer::new(sink))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("otlp sink: {e}"))
}
