//! Short runs of every scenario against a real gateway process, over both
//! transports, so the tool itself cannot rot: zero errors, every session
//! connected, every message sent received (once, in order). The cluster
//! runs start a `redis-server`, a `ringway-coordinator` and three gateways
//! of their own (like gateway/tests/common/cluster.rs).

use std::process::Command;
use std::time::Duration;

// A `redis-server` of the test's own (the test kit's).
use ringway_testkit::cluster::{secret_file, CoordinatorProcess, CoordinatorSpec, GatewayProcess};
use ringway_testkit::redis::RedisServer as Redis;
use serde_json::Value;

/// A gateway of the same build (the test kit's process), its URL.
struct Server {
    proc: GatewayProcess,
    url: String,
}

impl std::ops::Deref for Server {
    type Target = GatewayProcess;
    fn deref(&self) -> &GatewayProcess {
        &self.proc
    }
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let mut command = GatewayProcess::command();
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--ping-interval", "500", "--ping-timeout", "2000"])
            .args(extra)
            .env("RUST_LOG", "warn");
        let proc = GatewayProcess::spawn(command);
        let url = format!("http://{}", proc.addr);
        Server { proc, url }
    }
}

fn run(server: &Server, args: &[&str]) -> Value {
    run_on(&[server], args)
}

/// Runs a scenario with the node list `servers` (every one a `--url` and a
/// `--server-pid`); asserts success and zero errors.
fn run_on(servers: &[&Server], args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringway-loadtest"));
    cmd.args(args);
    for s in servers {
        cmd.args(["--url", &s.url, "--server-pid", &s.pid().to_string()]);
    }
    let out = cmd
        .args(["--json", "--quiet"])
        .output()
        .expect("run ringway-loadtest");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["error_total"], 0, "{args:?}: {}", report["errors"]);
    report
}

fn figure(report: &Value, name: &str) -> f64 {
    report["figures"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no figure {name} in {}", report["figures"]))
}

fn transports() -> [&'static str; 2] {
    ["websocket", "polling"]
}

#[test]
fn connect_and_hold() {
    let server = Server::start();
    for t in transports() {
        let r = run(
            &server,
            &[
                "connect",
                "--transport",
                t,
                "--sessions",
                "50",
                "--rate",
                "0",
            ],
        );
        assert_eq!(figure(&r, "failed"), 0.0, "{t}");
        let r = run(
            &server,
            &[
                "hold",
                "--transport",
                t,
                "--sessions",
                "40",
                "--rate",
                "200",
                "--duration",
                "1.2",
            ],
        );
        assert_eq!(figure(&r, "connected"), 40.0, "{t}");
        assert_eq!(figure(&r, "lost"), 0.0, "{t}");
        assert_eq!(figure(&r, "alive_at_end"), 40.0, "{t}");
        assert!(r["servers"][0]["rss_after_kb"].as_f64().unwrap_or(0.0) > 0.0);
    }
}

#[test]
fn echo() {
    let server = Server::start();
    for t in transports() {
        for ack in [false, true] {
            let mut args = vec![
                "echo",
                "--transport",
                t,
                "--sessions",
                "4",
                "--duration",
                "1",
                "--warmup",
                "0.2",
                "--size",
                "200",
            ];
            if ack {
                args.push("--ack");
            }
            let r = run(&server, &args);
            assert!(
                figure(&r, "round_trips") > 10.0,
                "{t} ack={ack}: {}",
                r["figures"]
            );
            let measured = r["latency"]
                .as_object()
                .and_then(|l| l.values().next())
                .and_then(|h| h["count"].as_u64())
                .unwrap_or(0);
            assert!(measured > 10, "{t} ack={ack}: {}", r["latency"]);
        }
    }
}

#[test]
fn fanout_delivers_everything_once_in_order() {
    let server = Server::start();
    for t in transports() {
        let r = run(
            &server,
            &[
                "fanout",
                "--transport",
                t,
                "--receivers",
                "20",
                "--rate",
                "50",
                "--duration",
                "1",
            ],
        );
        let expected = figure(&r, "expected");
        assert!(expected >= 20.0 * 40.0, "{t}: {}", r["figures"]);
        assert_eq!(figure(&r, "delivered"), expected, "{t}");
        assert_eq!(figure(&r, "lost"), 0.0, "{t}");
        assert_eq!(figure(&r, "duplicates"), 0.0, "{t}");
        assert_eq!(figure(&r, "reordered"), 0.0, "{t}");
    }
}

#[test]
fn polling_echo_sticky() {
    let server = Server::start();
    let r = run(
        &server,
        &[
            "polling",
            "--sessions",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--pause-ms",
            "2",
        ],
    );
    assert_eq!(r["scenario"], "polling");
    assert_eq!(r["transport"], "polling");
    assert_eq!(figure(&r, "sessions"), 4.0);
    assert!(figure(&r, "round_trips") > 10.0, "{}", r["figures"]);
    assert!(r["latency"]["echo_rtt"]["count"].as_u64().unwrap_or(0) > 10);
}

#[test]
fn connect_with_upgrade() {
    let server = Server::start();
    let r = run(
        &server,
        &["connect", "--upgrade", "--sessions", "20", "--rate", "100"],
    );
    assert_eq!(r["transport"], "polling");
    assert_eq!(figure(&r, "connected"), 20.0);
    assert_eq!(figure(&r, "upgraded"), 20.0);
    assert_eq!(figure(&r, "alive_at_end"), 20.0);
    for key in [
        "upgrade_101",
        "upgrade_probe",
        "upgrade_done",
        "after_upgrade_ack",
    ] {
        assert_eq!(r["latency"][key]["count"], 20, "{key}: {}", r["latency"]);
    }
}

// ----- a 3-node cluster -------------------------------------------------

/// Redis, a coordinator and gateways n1..n3, every gateway in every view.
/// Fields drop in order: the gateways first.
struct Cluster {
    nodes: Vec<Server>,
    _coordinator: CoordinatorProcess,
    _redis: Redis,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Cluster {
        let redis = Redis::start();
        let coordinator = CoordinatorSpec::new(&redis.url()).start();
        let coordinator_addr = coordinator.addr().to_string();
        let redis_url = redis.url();
        let nodes: Vec<Server> = (1..=3)
            .map(|i| {
                let node = format!("n{i}");
                let mut args = vec![
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--node-id",
                    &node,
                    "--coordinator",
                    &coordinator_addr,
                    "--redis-url",
                    &redis_url,
                    "--cluster-secret-file",
                    secret_file(),
                ];
                args.extend_from_slice(extra);
                Server::start_with(&args)
            })
            .collect();
        let cluster = Cluster {
            nodes,
            _coordinator: coordinator,
            _redis: redis,
        };
        cluster.wait_ready();
        cluster
    }

    /// Waits until non-sticky polling works: every node knows the others.
    fn wait_ready(&self) {
        let last = std::cell::RefCell::new(Value::Null);
        let failed = ringway_testkit::Describe(|| format!("the cluster ready: {}", last.borrow()));
        ringway_testkit::eventually_blocking(Duration::from_secs(20), &failed, || {
            let out = Command::new(env!("CARGO_BIN_EXE_ringway-loadtest"))
                .args(["polling", "--sessions", "3", "--duration", "0.3"])
                .args(["--warmup", "0", "--json", "--quiet"])
                .args(self.urls())
                .output()
                .expect("run ringway-loadtest");
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let ready = out.status.success() && report["error_total"] == 0;
            *last.borrow_mut() = report["errors"].clone();
            ready
        });
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| ["--url".to_owned(), n.url.clone()])
            .collect()
    }

    fn servers(&self) -> Vec<&Server> {
        self.nodes.iter().collect()
    }
}

#[test]
fn cluster_non_sticky_polling_and_fanout_across_nodes() {
    let cluster = Cluster::start();
    let r = run_on(
        &cluster.servers(),
        &[
            "polling",
            "--sessions",
            "6",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--pause-ms",
            "2",
        ],
    );
    assert_eq!(figure(&r, "nodes"), 3.0);
    assert_eq!(figure(&r, "sessions"), 6.0);
    assert!(figure(&r, "round_trips") > 10.0, "{}", r["figures"]);
    assert_eq!(r["servers"].as_array().map(Vec::len), Some(3));
    assert!(r["servers_total"]["cpu_us"].as_u64().unwrap_or(0) > 0);

    // Receivers on the three nodes in turn, the publisher on the first.
    let r = run_on(
        &cluster.servers(),
        &[
            "fanout",
            "--receivers",
            "30",
            "--rate",
            "50",
            "--duration",
            "1",
        ],
    );
    let expected = figure(&r, "expected");
    assert_eq!(expected, 30.0 * 50.0, "{}", r["figures"]);
    assert_eq!(figure(&r, "delivered"), expected);
    assert_eq!(figure(&r, "lost"), 0.0);
    assert_eq!(figure(&r, "duplicates"), 0.0);
    assert_eq!(figure(&r, "reordered"), 0.0);
}

/// The upgrade of every session lands on another node than its owner (a
/// handoff), while its polling transport keeps polling the nodes in turn
/// until the probe (a poll may reach the node taking the session over).
#[test]
fn cluster_upgrade_hands_sessions_off() {
    let cluster = Cluster::start();
    let r = run_on(
        &cluster.servers(),
        &["connect", "--upgrade", "--sessions", "30", "--rate", "100"],
    );
    assert_eq!(figure(&r, "upgraded"), 30.0, "{}", r["figures"]);
    assert_eq!(figure(&r, "alive_at_end"), 30.0);
}

/// Receivers on the three nodes in turn, the publisher on the first; the
/// third node is SIGKILLed mid-stream. Its receivers reconnect to the
/// others asking to recover (recovery is on by default) and nothing is
/// lost, repeated or reordered.
#[test]
fn cluster_chaos_recovers_a_killed_nodes_receivers() {
    let cluster = Cluster::start_with(&["--recovery-window", "120000"]);
    let killed = cluster.nodes[2].pid().to_string();
    let r = run_on(
        &cluster.servers(),
        &[
            "chaos",
            "--receivers",
            "30",
            "--rate",
            "50",
            "--duration",
            "3",
            "--kill-pid",
            &killed,
            "--kill-after",
            "1",
        ],
    );
    assert_eq!(figure(&r, "kills"), 1.0, "{}", r["figures"]);
    let expected = figure(&r, "expected");
    assert_eq!(expected, 30.0 * 150.0, "{}", r["figures"]);
    assert_eq!(figure(&r, "unique"), expected, "{}", r["figures"]);
    assert_eq!(figure(&r, "lost"), 0.0);
    assert_eq!(figure(&r, "duplicates"), 0.0);
    assert_eq!(figure(&r, "reordered"), 0.0);
    let lost = figure(&r, "disconnected");
    assert!(
        lost >= 1.0,
        "nobody was on the killed node: {}",
        r["figures"]
    );
    assert_eq!(figure(&r, "recovered"), lost, "{}", r["figures"]);
    assert_eq!(figure(&r, "not_recovered"), 0.0);
}

/// Receivers on the three nodes in turn; the publisher is the gRPC Push API
/// of node 1 (an EmitStream, paced, then as fast as it goes).
#[test]
fn cluster_push_through_the_api() {
    let cluster = Cluster::start_with(&["--api-token", "smoke-token"]);
    let grpc = cluster.nodes[0].api.clone().expect("the API address");
    for rate in ["100", "0"] {
        let r = run_on(
            &cluster.servers(),
            &[
                "push",
                "--grpc",
                &grpc,
                "--token",
                "smoke-token",
                "--receivers",
                "30",
                "--rate",
                rate,
                "--duration",
                "1",
            ],
        );
        let sent = figure(&r, "emits_sent");
        assert!(sent >= 50.0, "{}", r["figures"]);
        assert_eq!(figure(&r, "emits_answered"), sent);
        assert_eq!(figure(&r, "expected"), sent * 30.0);
        assert_eq!(figure(&r, "unique"), sent * 30.0, "{}", r["figures"]);
        assert_eq!(figure(&r, "duplicates"), 0.0);
        assert_eq!(figure(&r, "reordered"), 0.0);
    }
}

/// `--plot` draws an SVG of the run and keeps the samples in the JSON;
/// `--baseline` compares a run with a saved report (current / baseline).
#[test]
fn plot_and_baseline() {
    let server = Server::start();
    let dir = std::env::temp_dir().join(format!("ringway-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let svg = dir.join("echo.svg");
    let svg_arg = svg.to_str().expect("utf-8").to_owned();
    let args = [
        "echo",
        "--sessions",
        "4",
        "--duration",
        "2",
        "--warmup",
        "0.2",
        "--pause-ms",
        "2",
    ];
    let mut with_plot: Vec<&str> = args.to_vec();
    with_plot.extend(["--plot", &svg_arg]);
    let first = run(&server, &with_plot);
    let plot = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(
        plot.starts_with("<svg") && plot.contains("</svg>"),
        "{}",
        &plot[..plot.len().min(200)]
    );
    assert!(plot.len() > 2000, "an almost empty plot: {plot}");
    let samples = first["timeline"]["samples"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(samples >= 1, "no timeline samples: {}", first["timeline"]);

    let base = dir.join("base.json");
    std::fs::write(&base, first.to_string()).expect("write the baseline");
    let base_arg = base.to_str().expect("utf-8").to_owned();
    let mut against: Vec<&str> = args.to_vec();
    against.extend(["--baseline", &base_arg]);
    let second = run(&server, &against);
    let cmp = &second["baseline"];
    let rt = &cmp["figures"]["round_trips"];
    let (current, baseline) = (
        rt["current"].as_f64().unwrap(),
        rt["baseline"].as_f64().unwrap(),
    );
    assert_eq!(baseline, figure(&first, "round_trips"));
    assert_eq!(current, figure(&second, "round_trips"));
    let ratio = rt["ratio"].as_f64().expect("a ratio");
    assert!((ratio - current / baseline).abs() < 1e-9);
    assert!(
        cmp["latency"]["echo_rtt"]["p50"]["ratio"]
            .as_f64()
            .is_some(),
        "{cmp}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `soak` in small: sessions held on both transports, churned, some
/// echoing, some in rooms with a publisher; a counter line every second
/// on stdout before the report, no drop, no hole in any room's sequence.
#[test]
fn soak_holds_churns_echoes_and_fans_out() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-loadtest"))
        .args([
            "soak",
            "--sessions",
            "30",
            "--churn",
            "10",
            "--duration",
            "3",
        ])
        .args(["--connect-rate", "100", "--polling-fraction", "0.3"])
        .args(["--echo-fraction", "0.5", "--echo-every", "0.2"])
        .args([
            "--room-fraction",
            "0.5",
            "--rooms",
            "3",
            "--publish-rate",
            "30",
        ])
        .args(["--report-every", "1", "--url", &server.url])
        .args(["--server-pid", &server.pid().to_string()])
        .args(["--json", "--quiet"])
        .output()
        .expect("run ringway-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (report, samples) = lines.split_last().expect("a report");
    assert_eq!(report["scenario"], "soak", "{report}");
    assert_eq!(report["error_total"], 0, "{}", report["errors"]);
    assert!(samples.len() >= 3, "{} counter lines", samples.len());
    assert!(samples.iter().all(|s| s["soak_sample"].is_u64()));
    let last = samples.last().expect("a line");
    assert_eq!(last["phase"], "end");
    assert_eq!(last["held"], 0, "{last}");
    assert_eq!(figure(report, "sessions"), 30.0);
    assert_eq!(figure(report, "polling_sessions"), 9.0);
    assert_eq!(
        figure(report, "held_after_ramp"),
        30.0,
        "{}",
        report["figures"]
    );
    // Held at the end of the churn: all but those between two sessions.
    assert!(
        figure(report, "held_at_end") >= 27.0,
        "{}",
        report["figures"]
    );
    assert!(figure(report, "churned") >= 20.0, "{}", report["figures"]);
    assert_eq!(figure(report, "drops"), 0.0);
    assert_eq!(figure(report, "connect_failures"), 0.0);
    assert!(figure(report, "echoes") >= 100.0, "{}", report["figures"]);
    assert_eq!(figure(report, "echo_timeouts"), 0.0);
    assert!(figure(report, "joins") >= 15.0, "{}", report["figures"]);
    assert!(
        figure(report, "deliveries") >= 100.0,
        "{}",
        report["figures"]
    );
    assert_eq!(figure(report, "missed"), 0.0, "{}", report["figures"]);
    assert_eq!(figure(report, "out_of_order"), 0.0, "{}", report["figures"]);
    assert_eq!(figure(report, "publisher_sessions"), 1.0);
}
