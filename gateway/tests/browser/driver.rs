//! Headless Chromium (the Debian package `chromium`, installed by
//! `scripts/test.sh`) driven by `playwright-core` from npm: a Node process
//! (`tests/interop/js/browser-driver.mjs`) that launches the browser with
//! `executablePath` and takes one JSON command per line. Each page is a
//! browser context of its own (separate users: no shared cache or
//! storage).
//!
//! Only what the browser tests need: open a page, run JavaScript in it,
//! wait for a condition, type and press Enter, take a screenshot, read its
//! console.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

/// `RINGWAY_CHROMIUM`, else the Debian package's `/usr/bin/chromium`.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("RINGWAY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh (it installs the Debian package chromium)",
        path.display()
    );
    path
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/js")
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>;

struct Driver {
    /// `None` once the browser is being closed.
    stdin: Mutex<Option<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    /// Console lines per page.
    console: Mutex<HashMap<u64, Vec<String>>>,
}

impl Driver {
    async fn call(&self, op: &str, mut args: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        args["id"] = json!(id);
        args["op"] = json!(op);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        {
            let mut stdin = self.stdin.lock().unwrap();
            let stdin = stdin.as_mut().ok_or("the browser is closed")?;
            writeln!(stdin, "{args}").map_err(|e| format!("driver stdin: {e}"))?;
            stdin.flush().map_err(|e| format!("driver stdin: {e}"))?;
        }
        rx.await
            .map_err(|_| "the browser driver exited".to_owned())?
    }

    fn dispatch(&self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if msg["event"] == "console" {
            let page = msg["page"].as_u64().unwrap_or(0);
            let text = msg["line"].as_str().unwrap_or_default().to_owned();
            self.console
                .lock()
                .unwrap()
                .entry(page)
                .or_default()
                .push(text);
            return;
        }
        let Some(id) = msg["id"].as_u64() else {
            return;
        };
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let result = if msg["ok"] == true {
                Ok(msg["value"].clone())
            } else {
                Err(msg["error"].as_str().unwrap_or("failed").to_owned())
            };
            let _ = tx.send(result);
        }
    }
}

pub struct Browser {
    child: Child,
    driver: Arc<Driver>,
}

impl Browser {
    pub async fn launch() -> Browser {
        let chromium = binary();
        let dir = js_dir();
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "playwright-core missing in {}: run scripts/test.sh (it runs npm ci)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("browser-driver.mjs"))
            .env("RINGWAY_CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the playwright-core driver (node)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let driver = Arc::new(Driver {
            stdin: Mutex::new(Some(stdin)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            console: Mutex::new(HashMap::new()),
        });
        let (ready_tx, ready) = mpsc::channel();
        {
            let driver = driver.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains("\"event\":\"ready\"") {
                        let _ = ready_tx.send(line.clone());
                    }
                    driver.dispatch(&line);
                }
                // Fail every call still waiting.
                driver.pending.lock().unwrap().clear();
            });
        }
        let ready = ready
            .recv_timeout(Duration::from_secs(60))
            .expect("the browser did not start (playwright-core driver)");
        eprintln!("browser: {ready}");
        Browser { child, driver }
    }

    /// A new page in a browser context of its own, on `about:blank`.
    pub async fn page(&self, label: &str) -> Page {
        let id = self
            .driver
            .call("page", json!({ "label": label }))
            .await
            .unwrap_or_else(|e| panic!("{label}: new page: {e}"))
            .as_u64()
            .expect("page id");
        Page {
            driver: self.driver.clone(),
            id,
            label: label.to_owned(),
        }
    }

    pub async fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing stdin closes the browser; then the driver exits.
        self.driver.stdin.lock().unwrap().take();
        let exited = ringway_testkit::poll_until_blocking(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One page (a tab of its own browser context).
pub struct Page {
    driver: Arc<Driver>,
    id: u64,
    pub label: String,
}

impl Page {
    async fn call(&self, op: &str, mut args: Value) -> Result<Value, String> {
        args["page"] = json!(self.id);
        self.driver.call(op, args).await
    }

    /// Loads `url` and waits for its `load` event (the deferred scripts
    /// have run by then).
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.call("goto", json!({ "url": url })).await {
            panic!("{}: cannot load {url}: {e}", self.label);
        }
    }

    /// Evaluates `expr` in the page; its value (JSON), promises awaited.
    pub async fn eval(&self, expr: &str) -> Value {
        match self.call("eval", json!({ "expr": expr })).await {
            Ok(v) => v,
            Err(e) => panic!(
                "{}: {expr} threw: {e}\nconsole:\n{}",
                self.label,
                self.console().join("\n")
            ),
        }
    }

    pub async fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).expect("json");
        self.eval(&format!("document.querySelector({sel})?.textContent ?? ''"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `expr` is truthy in the page; returns its value.
    pub async fn wait_for(&self, what: &str, expr: &str, within: Duration) -> Value {
        let args = json!({ "expr": expr, "timeout_ms": within.as_millis() as u64 });
        match self.call("wait_for", args).await {
            Ok(v) => v,
            Err(e) => {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "{}: never saw {what} ({expr}) within {within:?}: {e}; page text:\n{}\nconsole:\n{}",
                    self.label,
                    text.as_str().unwrap_or_default(),
                    self.console().join("\n")
                )
            }
        }
    }

    /// Types `text` into the field (emptied first), as Playwright's fill.
    pub async fn fill(&self, selector: &str, text: &str) {
        let args = json!({ "selector": selector, "text": text });
        if let Err(e) = self.call("fill", args).await {
            panic!("{}: no usable {selector}: {e}", self.label);
        }
    }

    /// Presses Enter in the focused element (submits its form).
    pub async fn press_enter(&self) {
        if let Err(e) = self.call("press", json!({ "key": "Enter" })).await {
            panic!("{}: Enter: {e}", self.label);
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let args = json!({ "path": path.to_string_lossy() });
        if let Err(e) = self.call("screenshot", args).await {
            panic!("{}: screenshot {}: {e}", self.label, path.display());
        }
    }

    /// Console messages, uncaught errors and CSP violations so far.
    pub fn console(&self) -> Vec<String> {
        self.driver
            .console
            .lock()
            .unwrap()
            .get(&self.id)
            .cloned()
            .unwrap_or_default()
    }
}
