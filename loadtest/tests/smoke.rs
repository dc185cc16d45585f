//! Short runs of every scenario against a real gateway process, over both
//! transports, so the tool itself cannot rot: zero errors, every session
//! connected, every message sent received (once, in order).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The gateway binary of the same build (same target directory).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/smoke-xxxx -> target/<profile>/ringway-gateway
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("ringway-gateway");
    assert!(
        bin.exists(),
        "{} missing: build the workspace (cargo build --workspace) first",
        bin.display()
    );
    bin
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(gateway_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--ping-interval",
                "500",
                "--ping-timeout",
                "2000",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start gateway");
        let stdout = child.stdout.take().expect("stdout");
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .expect("listening line");
        let url = line.rsplit(' ').next().expect("url").to_owned();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(server: &Server, args: &[&str]) -> Value {
    let pid = server.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-loadtest"))
        .args(args)
        .args([
            "--url",
            &server.url,
            "--server-pid",
            &pid,
            "--json",
            "--quiet",
        ])
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
