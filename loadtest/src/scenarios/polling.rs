//! `polling`: long-polling sessions in closed-loop echo (the `echo`
//! scenario over `--transport polling`), non-sticky: with several `--url`
//! every HTTP request of a session (the handshake, each GET, each POST)
//! goes to the next node of the list in turn, as behind a round-robin load
//! balancer without affinity. With one URL it is the sticky baseline.
//!
//! A Ringway cluster forwards the requests that land on another node than
//! the session's owner over gRPC; a server without shared sessions answers
//! them `400 Session ID unknown` (counted as `http_status` errors).

use clap::Args;
use serde::Serialize;

use super::echo::{self, EchoArgs};
use crate::client::TransportKind;
use crate::report::Report;

#[derive(Debug, Clone, Args, Serialize)]
pub struct PollingArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub echo: EchoArgs,
}

pub async fn run(args: PollingArgs) -> Result<Report, String> {
    let mut echo_args = args.echo;
    echo_args.common.transport = TransportKind::Polling;
    let nodes = echo_args.common.urls.len();
    let mut report = echo::run_as(echo_args, "polling").await?;
    report.figure("nodes", "nodes in the list", nodes as f64, "");
    if nodes > 1 {
        report.note(format!(
            "non-sticky: each HTTP request of a session went to the next of {nodes} nodes"
        ));
    }
    Ok(report)
}
