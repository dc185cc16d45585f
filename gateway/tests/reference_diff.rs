//! Bad input against the reference server: `tests/interop/py/badinput.py`
//! replays malformed queries, methods, sids, concurrent and aborted polls,
//! malformed Engine.IO and Socket.IO packets against the official server
//! (socket.io 4.8 running the echo application,
//! `loadtest/peers/reference`, as a real process) and against Ringway,
//! both with their defaults (no case uses `EIO=3`, which Ringway takes by
//! default and the reference only with `allowEIO3`), and every case must
//! be answered the same, but the differences `docs/PROTOCOL_NOTES.md`
//! documents.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::Gateway;

/// The cases that differ on purpose, each documented in
/// `docs/PROTOCOL_NOTES.md` ("Deliberate differences").
const DOCUMENTED: &[&str] = &[
    // The session outlives a long-poll its client gave up on.
    "aborted long-poll",
];

struct Reference(Child);

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_reference() -> (Reference, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/peers/reference");
    assert!(
        dir.join("node_modules/socket.io").exists(),
        "npm packages missing in {}: run scripts/test.sh (it runs npm ci)",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("server.js"))
        .args(["--port", "0"])
        .args(["--namespace", "/", "--namespace", "/custom"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the reference server (node)");
    let stdout = child.stdout.take().expect("stdout");
    let mut reference = Reference(child);
    let mut url = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the reference's output");
        if let Some(rest) = line.strip_prefix("listening on ") {
            url = Some(rest.trim().to_owned());
            break;
        }
    }
    let url = url.unwrap_or_else(|| {
        let _ = reference.0.kill();
        panic!("the reference server did not start")
    });
    (reference, url)
}

#[test]
fn bad_input_is_answered_as_the_reference_answers_it() {
    let (_reference, reference_url) = start_reference();
    // The defaults, but for the per-address handshake limit (every case
    // comes from 127.0.0.1), with the reference's namespaces.
    let gw = Gateway::start(&[
        "--handshake-rate-per-ip",
        "0",
        "--namespace",
        "/",
        "--namespace",
        "/custom",
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/py/badinput.py");
    let out = Command::new(common::python())
        .arg(script)
        .arg(&reference_url)
        .arg(format!("http://{}", gw.addr))
        .output()
        .expect("run badinput.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "badinput.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .rfind(|l| l.starts_with("same "))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let differ: Vec<&str> = summary
        .split_once(": ")
        .map(|(_, names)| names.split(", ").filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    let undocumented: Vec<&&str> = differ.iter().filter(|n| !DOCUMENTED.contains(n)).collect();
    assert!(
        undocumented.is_empty(),
        "answered unlike the reference: {undocumented:?}\n{stdout}"
    );
    eprintln!("{summary}");
}
