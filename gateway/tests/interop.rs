//! Interop with the official clients, as real processes against a real
//! gateway process: `socket.io-client` / `engine.io-client` from npm and
//! `python-socketio` from PyPI (installed by `scripts/test.sh`). Each
//! scenario (see `tests/interop/README.md`) asserts data, not just a
//! connection.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn run(program: &Path, script: &Path, scenario: &str) {
    let gw = Gateway::start_suite();
    let out = Command::new(program)
        .arg(script)
        .arg(scenario)
        .env("RINGWAY_URL", format!("http://{}", gw.addr))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{scenario} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn js(scenario: &str) {
    let dir = interop_dir().join("js");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "npm packages missing in {}: run scripts/test.sh (it runs npm ci)",
        dir.display()
    );
    run(Path::new("node"), &dir.join("run.mjs"), scenario);
}

fn py(scenario: &str) {
    run(
        &common::python(),
        &interop_dir().join("py/run.py"),
        scenario,
    );
}

/// Compatibility issue, point 3: a client that reads one frame per turn
/// of its event loop (a one-shot listener registered again after each
/// frame, as the official protocol suites read) sees the CONNECT answer
/// and the event the application emits with it, each in its own turn.
#[test]
fn js_one_shot_listener_sees_every_frame_of_an_exchange() {
    let dir = interop_dir().join("js");
    run(Path::new("node"), &dir.join("oneshot.mjs"), "oneshot");
}

macro_rules! scenarios {
    ($runner:ident: $($name:ident => $scenario:literal),* $(,)?) => {
        mod $runner {
            $(
                #[test]
                fn $name() {
                    super::$runner($scenario);
                }
            )*
        }
    };
}

scenarios!(js:
    polling_upgrade => "polling-upgrade",
    polling_only => "polling-only",
    websocket_only => "websocket-only",
    binary_ws => "binary-ws",
    binary_polling => "binary-polling",
    ack_client_to_server => "ack-client-to-server",
    ack_server_to_client => "ack-server-to-client",
    namespace => "namespace",
    connect_error => "connect-error",
    rooms_broadcast => "rooms-broadcast",
    server_disconnect => "server-disconnect",
    reconnect_after_close => "reconnect-after-close",
    reconnect_after_close_polling => "reconnect-after-close-polling",
    ping_timeout => "ping-timeout",
    engineio_echo => "engineio-echo",
    many_messages_upgrade => "many-messages-upgrade",
);

scenarios!(py:
    polling_upgrade => "polling-upgrade",
    polling_only => "polling-only",
    polling_burst => "polling-burst",
    websocket_only => "websocket-only",
    binary => "binary",
    ack_client_to_server => "ack-client-to-server",
    ack_server_to_client => "ack-server-to-client",
    namespace => "namespace",
    connect_error => "connect-error",
    rooms_broadcast => "rooms-broadcast",
    server_disconnect => "server-disconnect",
    reconnect_after_close => "reconnect-after-close",
);

/// SIGTERM closes the sessions the way the reference does, so the official
/// client reconnects by itself once a server is back on the address.
#[test]
fn js_shutdown_reconnect() {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    let dir = interop_dir().join("js");
    let mut gw = Gateway::start_suite();
    let addr = gw.addr.clone();
    let mut child = Command::new("node")
        .arg(dir.join("run.mjs"))
        .arg("shutdown-reconnect")
        .env("RINGWAY_URL", format!("http://{addr}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(ready.as_deref(), Some("READY"), "client did not get ready");
    let status = gw.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway exit: {status:?}"
    );
    let _restarted = Gateway::start_raw(&[
        "--listen",
        &addr,
        "--ping-interval",
        "300",
        "--ping-timeout",
        "200",
    ]);
    let out = child.wait_with_output().expect("node");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        out.status.success(),
        "shutdown-reconnect failed: {}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every scenario the runners list is wired up above.
#[test]
fn every_js_scenario_is_run() {
    let out = Command::new("node")
        .arg(interop_dir().join("js/run.mjs"))
        .arg("--list")
        .output()
        .expect("node");
    let listed = String::from_utf8_lossy(&out.stdout);
    // The cluster scenarios run through nginx in cluster_interop.rs, the
    // msgpack one in msgpack.rs.
    let source = [
        include_str!("interop.rs"),
        include_str!("cluster_interop.rs"),
        include_str!("msgpack.rs"),
    ]
    .concat();
    for name in listed
        .lines()
        .filter(|l| !l.is_empty() && *l != "shutdown-reconnect")
    {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "scenario {name} is not run"
        );
    }
}
