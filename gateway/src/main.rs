//! `ringway-gateway`: one gateway node. With no cluster settings it is a
//! one-node cluster with in-memory state, ready on the listen address.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringway_gateway::api::jwt::{Jwt, Verifier};
use ringway_gateway::api::upstream::{UpstreamApp, UpstreamSettings};
use ringway_gateway::app::EchoApp;
use ringway_gateway::config::{without_password, AppKind, Config};
use ringway_gateway::node::{Node, NodeError};
use ringway_gateway::socketio::Application;
use ringway_gateway::telemetry::{self, Telemetry};
use tracing::{error, info};

/// Why the gateway stopped with an error; each has its exit code.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Redis did not answer at start (exit code 3).
    #[error("{0}")]
    Redis(String),
    #[error("{0}")]
    Other(String),
}

impl From<NodeError> for Failure {
    fn from(err: NodeError) -> Failure {
        match err {
            NodeError::Redis(message) => Failure::Redis(message),
            NodeError::Other(message) => Failure::Other(message),
        }
    }
}

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(err) = config.validate() {
        eprintln!("ringway-gateway: invalid configuration: {err}");
        return ExitCode::from(2);
    }
    if config.check_config {
        let mut shown = config.clone();
        shown.redis.redis_urls = shown
            .redis
            .redis_urls
            .iter()
            .map(|u| without_password(u))
            .collect();
        println!("{shown:#?}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ringway-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The application: the backend's hooks (--upstream), else the built-in
    // one, behind JWT verification when a key is set.
    let jwt = match Verifier::from_config(&config) {
        Ok(jwt) => jwt,
        Err(err) => {
            eprintln!("ringway-gateway: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match (UpstreamSettings::from_config(&config), config.app, jwt) {
        (Some(settings), _, _) => runtime.block_on(async {
            let app = UpstreamApp::new(settings)
                .map_err(|e| Failure::Other(format!("--upstream: {e}")))?;
            run(config, app).await
        }),
        (None, AppKind::Echo, Some(jwt)) => {
            let app = Jwt::new(
                EchoApp::new(config.namespaces.clone(), &config.node_id()),
                jwt,
            );
            runtime.block_on(run(config, app))
        }
        (None, AppKind::Echo, None) => {
            let app = EchoApp::new(config.namespaces.clone(), &config.node_id());
            runtime.block_on(run(config, app))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("ringway-gateway: {err}");
            match err {
                Failure::Redis(_) => ExitCode::from(3),
                Failure::Other(_) => ExitCode::FAILURE,
            }
        }
    }
}

async fn run<A: Application>(config: Config, app: A) -> Result<(), Failure> {
    let fd_limit = raise_fd_limit();
    // Logs, traces and metrics first (the OTLP exporters need the runtime).
    let node_id = config.node_id();
    let telemetry = Telemetry::init(telemetry::Options {
        service: "ringway-gateway",
        instance: &node_id,
        log_format: config.log_format,
        // Every layer's spans: the Engine.IO and Socket.IO crates' too.
        exported_spans:
            "ringway_gateway=info,ringway_engineio=info,ringway_socketio=info,ringway_cluster=info",
    })
    .map_err(|e| Failure::Other(format!("telemetry: {e}")))?;
    match fd_limit {
        Ok((before, after)) if before != after => {
            info!(
                before,
                after, "file descriptor limit raised to the hard limit"
            )
        }
        Ok((limit, _)) => info!(limit, "file descriptor limit"),
        Err(err) => tracing::warn!(%err, "cannot read the file descriptor limit"),
    }
    let result = serve(config, app).await;
    telemetry.shutdown();
    result
}

/// Starts the node, prints its addresses (tests and scripts read them),
/// and drains it on SIGTERM or SIGINT.
async fn serve<A: Application>(config: Config, app: A) -> Result<(), Failure> {
    let mut node = Node::new(config, app).start().await?;
    if let Some(metrics) = node.metrics_addr {
        println!("ringway-gateway metrics listening on {metrics}");
    }
    if let Some(api) = node.api_addr {
        println!("ringway-gateway api listening on {api}");
    }
    if let Some(grpc) = node.grpc_addr {
        println!("ringway-gateway grpc listening on {grpc}");
    }
    // Tests and scripts read the bound address from this line.
    println!("ringway-gateway listening on http://{}", node.addr);
    let _ = std::io::stdout().flush();
    let shutdown = node.take_shutdown();
    let stopped = node.stopped();
    tokio::pin!(stopped);
    tokio::select! {
        result = &mut stopped => return result.map_err(Failure::from),
        () = shutdown_signal() => {}
    }
    if let Some(shutdown) = shutdown {
        let _ = shutdown.send(());
    }
    stopped.await.map_err(Failure::from)
}

/// Raises the soft limit on open files to the hard limit (every session
/// holds a socket; container runtimes often start processes at 1024).
/// Returns the limit before and after.
fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
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
