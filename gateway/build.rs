//! The chat demo's one dependency: the official `socket.io-client` browser
//! bundle, installed from npm (`examples/chat/package-lock.json`), not
//! committed. When `examples/chat/node_modules` lacks it, this runs
//! `npm ci` there (set `RINGWAY_NO_NPM=1` to skip); the bundle and its
//! license are then copied where `src/demo.rs` embeds them. Without npm
//! the gateway still builds, and its demo page says what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let chat = manifest.join("../examples/chat");
    let package = chat.join("node_modules/socket.io-client");
    let bundle = package.join("dist/socket.io.min.js");
    let license = package.join("LICENSE");
    println!("cargo:rerun-if-changed=../examples/chat/package-lock.json");
    println!("cargo:rerun-if-env-changed=RINGWAY_NO_NPM");

    if !bundle.exists() && std::env::var_os("RINGWAY_NO_NPM").is_none() {
        npm_ci(&chat);
    }
    // A path that does not exist would rerun this on every build (and
    // npm with it): watch the bundle once it is there, else the folder a
    // later `npm ci` changes.
    if bundle.exists() {
        println!("cargo:rerun-if-changed=../examples/chat/node_modules/socket.io-client/dist/socket.io.min.js");
    } else {
        println!("cargo:rerun-if-changed=../examples/chat");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let (js, text) = match (std::fs::read(&bundle), std::fs::read(&license)) {
        (Ok(js), Ok(text)) => (js, text),
        _ => {
            println!(
                "cargo:warning=the socket.io-client bundle is not installed ({}): the --demo page \
                 will say so; run `npm ci` in examples/chat and build again",
                bundle.display()
            );
            (MISSING.as_bytes().to_vec(), Vec::new())
        }
    };
    write(&out.join("socket.io.min.js"), &js);
    write(&out.join("LICENSE.socket.io-client"), &text);
}

fn npm_ci(dir: &Path) {
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => println!("cargo:warning=npm ci in {} failed: {s}", dir.display()),
        Err(e) => println!("cargo:warning=cannot run npm in {}: {e}", dir.display()),
    }
}

fn write(path: &Path, data: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(data) {
        std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// What the page gets instead of the bundle when npm was not there.
const MISSING: &str = "/* socket.io-client was not installed when this gateway was built */\n\
document.addEventListener('DOMContentLoaded', function () {\n\
  document.body.textContent = 'This gateway was built without the socket.io-client bundle: \
run npm ci in examples/chat, then build the gateway again.';\n\
});\n";
