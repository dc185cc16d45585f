//! `ringway-coordinator`: the cluster membership service.
//!
//! Exit codes: 0 clean stop (SIGTERM/SIGINT) or `--check-config`, 2 bad
//! configuration, 3 Redis unreachable at start, 1 anything else.

// The coordinator's future (Redis in any mode under the gRPC server and
// the dashboard) nests deeper than the default limit allows.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::Parser;
use ringway_coordinator::config::Config;
use ringway_telemetry::{Options, Telemetry};
use tracing::{error, info};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(err) = config.validate() {
        eprintln!("ringway-coordinator: invalid configuration: {err}");
        return ExitCode::from(2);
    }
    if config.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ringway-coordinator: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Logs, traces and metrics first (the OTLP exporters need the
        // runtime).
        let telemetry = match Telemetry::init(Options {
            service: "ringway-coordinator",
            instance: ringway_coordinator::instance_id(),
            log_format: config.log_format,
            exported_spans: "ringway_coordinator=info",
        }) {
            Ok(t) => t,
            Err(err) => {
                eprintln!("ringway-coordinator: telemetry: {err}");
                return Err(None);
            }
        };
        let result = ringway_coordinator::run(config, shutdown_signal()).await;
        telemetry.shutdown();
        result.map_err(Some)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(None) => ExitCode::FAILURE,
        Err(Some(err)) => {
            error!("{err}");
            eprintln!("ringway-coordinator: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            error!(%err, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
