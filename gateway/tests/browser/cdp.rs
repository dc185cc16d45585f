//! Headless Chromium driven over the Chrome DevTools Protocol: a real
//! browser (the Debian package `chromium`, installed by `scripts/test.sh`)
//! in a fresh temporary profile, one WebSocket to its DevTools endpoint,
//! and pages that are tabs of their own browser context (separate users:
//! no shared cache or storage).
//!
//! Only what the browser tests need: open a page, run JavaScript in it,
//! type and press Enter, take a screenshot, read its console.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

/// The connection to the browser: calls matched to answers by id, console
/// output and page errors kept per page session.
struct Cdp {
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    next_id: AtomicU64,
    console: Mutex<HashMap<String, Vec<String>>>,
}

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{method}: DevTools connection lost: {e}"));
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => panic!("{method} failed: {error}"),
            Ok(Err(_)) => panic!("{method}: DevTools connection closed"),
            Err(_) => panic!("{method}: no answer in {CALL_TIMEOUT:?}"),
        }
    }

    /// Reads answers and events until the connection ends.
    fn dispatch(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let result = match msg.get("error") {
                    Some(error) => Err(error.to_string()),
                    None => Ok(msg["result"].clone()),
                };
                let _ = tx.send(result);
            }
            return;
        }
        let session = msg["sessionId"].as_str().unwrap_or_default().to_owned();
        let p = &msg["params"];
        let line = match msg["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| match &v["value"] {
                                Value::String(s) => s.clone(),
                                Value::Null => v["description"].as_str().unwrap_or("").to_owned(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                )
            }
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                format!(
                    "uncaught: {} {}",
                    d["text"].as_str().unwrap_or(""),
                    d["exception"]["description"].as_str().unwrap_or("")
                )
            }
            Some("Log.entryAdded") => format!(
                "{} {}: {} {}",
                p["entry"]["source"].as_str().unwrap_or(""),
                p["entry"]["level"].as_str().unwrap_or(""),
                p["entry"]["text"].as_str().unwrap_or(""),
                p["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        self.console
            .lock()
            .unwrap()
            .entry(session)
            .or_default()
            .push(line);
    }
}

/// A headless Chromium, stopped (and its profile removed) when dropped.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    cdp: Arc<Cdp>,
    stopped: bool,
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

impl Browser {
    pub async fn launch() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "ringway-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-sync",
                "--disable-component-update",
                "--disable-background-networking",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--password-store=basic",
                "--use-mock-keychain",
                "--mute-audio",
                // Tabs the test is not looking at must keep running at
                // full speed (timers, network callbacks).
                "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows",
                "--disable-renderer-backgrounding",
                "--window-size=1000,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: the renderers and helpers go with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary().display()));
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                // Keep reading to the end: a full pipe would block Chromium.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    let mut lines = lines.lock().unwrap();
                    lines.push(line);
                    if lines.len() > 200 {
                        lines.remove(0);
                    }
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium did not open its DevTools endpoint; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect to DevTools at {url}: {e}"));
        let (sink, mut stream) = ws.split();
        let cdp = Arc::new(Cdp {
            sink: tokio::sync::Mutex::new(sink),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            console: Mutex::new(HashMap::new()),
        });
        {
            let cdp = cdp.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Text(text) = msg {
                        cdp.dispatch(text.as_str());
                    }
                }
                // Fail every call still waiting.
                cdp.pending.lock().unwrap().clear();
            });
        }
        Browser {
            child,
            profile,
            cdp,
            stopped: false,
        }
    }

    /// A new tab in a browser context of its own, on `about:blank`.
    pub async fn page(&self, label: &str) -> Page {
        let context = self
            .cdp
            .call(
                None,
                "Target.createBrowserContext",
                json!({ "disposeOnDetach": true }),
            )
            .await["browserContextId"]
            .as_str()
            .expect("browserContextId")
            .to_owned();
        let target = self
            .cdp
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": context, "newWindow": true }),
            )
            .await["targetId"]
            .as_str()
            .expect("targetId")
            .to_owned();
        let session = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
            label: label.to_owned(),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }

    /// Closes the browser (`Browser.close`, then signals if it lingers).
    pub async fn close(mut self) {
        let cdp = self.cdp.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), async move {
            let id = cdp.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = json!({ "id": id, "method": "Browser.close" });
            let _ = cdp
                .sink
                .lock()
                .await
                .send(Message::text(msg.to_string()))
                .await;
        })
        .await;
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if !exits(&mut self.child, Duration::from_millis(500)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            exits(&mut self.child, Duration::from_secs(5));
        }
        // The process group (id: the browser's pid, which Linux does not
        // reuse while the group lives): whatever is left of it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Whether the process exits within `within`.
fn exits(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One tab.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    pub label: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Loads `url` and waits for its `load` event (the deferred scripts
    /// have run by then).
    pub async fn goto(&self, url: &str) {
        let nav = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = nav["errorText"].as_str() {
            panic!("{}: cannot load {url}: {error}", self.label);
        }
        let href = serde_json::to_string(url).expect("json");
        self.wait_for(
            &format!("{url} loaded"),
            &format!("location.href === {href} && document.readyState === 'complete'"),
            Duration::from_secs(20),
        )
        .await;
    }

    /// Evaluates `expr` in the page; its value (JSON), promises awaited.
    pub async fn eval(&self, expr: &str) -> Value {
        let out = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = out.get("exceptionDetails") {
            panic!(
                "{}: {expr} threw: {}\nconsole:\n{}",
                self.label,
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or(&e.to_string()),
                self.console().join("\n")
            );
        }
        out["result"]["value"].clone()
    }

    pub async fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).expect("json");
        self.eval(&format!("document.querySelector({sel})?.textContent ?? ''"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls `expr` until it is truthy; returns its value.
    pub async fn wait_for(&self, what: &str, expr: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never saw {what} ({expr}) within {within:?}; page text:\n{}\nconsole:\n{}",
                self.label,
                self.eval("document.body ? document.body.innerText : ''")
                    .await
                    .as_str()
                    .unwrap_or_default(),
                self.console().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Focuses the field, empties it and types `text` as keyboard input.
    pub async fn fill(&self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let found = self
            .eval(&format!(
                "(() => {{ const el = document.querySelector({sel}); \
                 if (!el || el.disabled) return false; \
                 el.focus(); el.select(); return document.activeElement === el; }})()"
            ))
            .await;
        assert_eq!(
            found,
            Value::Bool(true),
            "{}: no usable {selector}",
            self.label
        );
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Presses Enter in the focused element (submits its form).
    pub async fn press_enter(&self) {
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({
                "type": kind,
                "key": "Enter",
                "code": "Enter",
                "windowsVirtualKeyCode": 13,
                "nativeVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                params["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", params).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Console messages, uncaught errors and browser log entries so far.
    pub fn console(&self) -> Vec<String> {
        self.cdp
            .console
            .lock()
            .unwrap()
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }
}
