//! `ringway-loadtest`: load scenarios against any Socket.IO v5 server (the
//! Ringway gateway, the reference Node.js server, socketioxide, ...), all
//! running the echo application of docs/ECHO_APP.md.

mod baseline;
mod client;
mod metrics;
mod otlp_sink;
mod plot;
mod report;
mod scenarios;
mod timeline;

use clap::{Parser, Subcommand};

use scenarios::{chaos, connect, echo, fanout, hold, polling, push, soak};

const LONG_ABOUT: &str = "\
Load-testing client for Socket.IO servers (Engine.IO v4 / Socket.IO v5 over
WebSocket or long-polling) that run the echo application of docs/ECHO_APP.md.

Every scenario prints a human summary (or one JSON object with --json):
p50/p90/p99/p99.9 latency, throughput, errors by kind and, given
--server-pid, the servers' RSS and CPU time read from /proc.

File descriptors: a WebSocket session holds 1 descriptor, a polling session 2.
The limit here is 20,000 per process (hard), so one ringway-loadtest process
holds at most ~19,900 WebSocket or ~9,900 polling sessions; for more, run
several processes side by side and add up their results. Client sockets are
bound to 127.0.0.1..127.0.0.N in turn (--source-ips) so that tens of
thousands of connections fit in the loopback ephemeral port range.";

#[derive(Debug, Parser)]
#[command(name = "ringway-loadtest", version, about = "Load-testing client for Socket.IO servers", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Connection storm: N sessions at a given rate; handshake latency and failures.
    Connect(connect::ConnectArgs),
    /// N idle sessions held T seconds; server RSS per session.
    Hold(hold::HoldArgs),
    /// Closed-loop echo round trips; throughput, latency, server CPU per message.
    Echo(echo::EchoArgs),
    /// Room broadcast to R receivers at a rate; delivery, loss, latency, CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// Polling-only closed-loop echo, non-sticky over a node list (--url repeated).
    Polling(polling::PollingArgs),
    /// Room fan-out published through the gRPC Push API (EmitStream), or by
    /// the server itself (--server-driver); delivery, latency, CPU per delivery.
    Push(push::PushArgs),
    /// Fanout with server processes killed mid-stream; receivers reconnect
    /// asking to recover: delivered/expected, duplicates, order, recovery time.
    Chaos(chaos::ChaosArgs),
    /// N sessions held for a long time with churn (R disconnects and
    /// connects a second), echo and room fan-out mixed in; drops reconnect;
    /// a JSON line of counters every --report-every seconds (for soaks).
    Soak(soak::SoakArgs),
    /// Not a scenario: an OTLP/gRPC receiver that only counts what it gets
    /// (for measuring the cost of exporting telemetry).
    OtlpSink(otlp_sink::SinkArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Scenario::OtlpSink(args) = cli.scenario {
        if let Err(e) = otlp_sink::run(args).await {
            eprintln!("ringway-loadtest: {e}");
            std::process::exit(2);
        }
        return;
    }
    let common = match &cli.scenario {
        Scenario::Connect(a) => &a.common,
        Scenario::Hold(a) => &a.common,
        Scenario::Echo(a) => &a.common,
        Scenario::Fanout(a) => &a.common,
        Scenario::Polling(a) => &a.echo.common,
        Scenario::Chaos(a) => &a.fanout.common,
        Scenario::Push(a) => &a.fanout.common,
        Scenario::Soak(a) => &a.common,
        Scenario::OtlpSink(_) => unreachable!("handled above"),
    };
    let (json, plot, baseline) = (common.json, common.plot.clone(), common.baseline.clone());
    let result = match cli.scenario {
        Scenario::Connect(a) => connect::run(a).await,
        Scenario::Hold(a) => hold::run(a).await,
        Scenario::Echo(a) => echo::run(a).await,
        Scenario::Fanout(a) => fanout::run(a).await,
        Scenario::Polling(a) => polling::run(a).await,
        Scenario::Chaos(a) => chaos::run(a).await,
        Scenario::Push(a) => push::run(a).await,
        Scenario::Soak(a) => soak::run(a).await,
        Scenario::OtlpSink(_) => unreachable!("handled above"),
    };
    let result = result.and_then(|mut report| {
        if let Some(file) = &baseline {
            report.baseline = Some(baseline::compare(&report, file)?);
        }
        if let Some(file) = &plot {
            plot::write_svg(&report, file)?;
        }
        Ok(report)
    });
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_human());
            }
        }
        Err(e) => {
            eprintln!("ringway-loadtest: {e}");
            std::process::exit(2);
        }
    }
}
