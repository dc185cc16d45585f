//! Configuration checks of the real binary: `--check-config` accepts good
//! flags (and `RINGWAY_*` variables) and refuses bad ones with exit code 2.

use std::process::Command;

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringway-gateway"))
        .args(args)
        .arg("--check-config")
        .envs(env.iter().copied())
        .output()
        .expect("run ringway-gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn valid_flags_and_environment_are_accepted() {
    let (code, out) = check(
        &["--listen", "127.0.0.1:4000", "--namespace", "/,/custom"],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/custom"), "{out}");
    let (code, out) = check(
        &[],
        &[
            ("RINGWAY_PING_INTERVAL", "1234"),
            ("RINGWAY_CORS_ORIGIN", "http://a.example"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1234") && out.contains("http://a.example"),
        "{out}"
    );
}

#[test]
fn bad_values_are_refused() {
    for args in [
        &["--path", "socket.io/"][..],
        &["--namespace", "custom"],
        &["--ping-interval", "0"],
        &["--max-payload", "0"],
        &["--max-payload", "10000000", "--max-queued-bytes", "1000"],
        &["--listen", "not-an-address"],
        &["--app", "nope"],
        &["--ping-timeout", "-5"],
        &["--ws-write-interval", "1001"],
    ] {
        let (code, out) = check(args, &[]);
        assert_eq!(code, 2, "{args:?} accepted: {out}");
    }
}
