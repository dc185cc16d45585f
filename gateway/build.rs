//! The chat demo's one dependency: the official `socket.io-client` browser
//! bundle, installed from npm (`examples/chat/package-lock.json`) by
//! `scripts/demo.sh` or `scripts/test.sh`, not committed. The build never
//! runs npm or writes into the source tree: it embeds the bundle and its
//! license where `src/demo.rs` finds them when `examples/chat/node_modules`
//! has it; without it the gateway still builds (with a warning), and its
//! demo page says what is missing.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let chat = manifest.join("../examples/chat");
    let package = chat.join("node_modules/socket.io-client");
    let bundle = package.join("dist/socket.io.min.js");
    let license = package.join("LICENSE");
    println!("cargo:rerun-if-changed=../examples/chat/package-lock.json");
    // A path that does not exist would rerun this on every build: watch
    // the bundle once it is there, else the folder a later `npm ci`
    // changes.
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
                 will say so; run scripts/demo.sh (or `npm ci` in examples/chat) and build again",
                bundle.display()
            );
            (MISSING.as_bytes().to_vec(), Vec::new())
        }
    };
    write(&out.join("socket.io.min.js"), &js);
    write(&out.join("LICENSE.socket.io-client"), &text);
}

fn write(path: &Path, data: &[u8]) {
    if std::fs::read(path).ok().as_deref() != Some(data) {
        std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// What the page gets instead of the bundle when it was not installed.
const MISSING: &str = "/* socket.io-client was not installed when this gateway was built */\n\
document.addEventListener('DOMContentLoaded', function () {\n\
  document.body.textContent = 'This gateway was built without the socket.io-client bundle: \
run scripts/demo.sh (or npm ci in examples/chat), then build the gateway again.';\n\
});\n";
