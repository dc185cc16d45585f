//! The chat demo (`--demo`, docs/DEMO.md) in a real browser: headless
//! Chromium (the Debian package, installed by `scripts/test.sh`) driven by
//! `playwright-core` from npm (`browser/driver.rs`), with the official
//! `socket.io-client` bundle the gateway serves with the page.
//!
//! The cluster tests run `redis-server`, `ringway-coordinator`, three
//! gateways and an nginx doing plain round robin in front (no affinity):
//! the page, its scripts and every polling request of every session go to
//! the next node. Users type into the page's form and press Enter; the
//! assertions are on what the pages show (messages, transport, engine id)
//! and on nginx's access log. Screenshots of the pages are written to
//! `$RINGWAY_ARTIFACTS/browser-screenshots/` (CI keeps them), else
//! `target/browser-screenshots/`.

mod common;

#[path = "browser/driver.rs"]
mod driver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{free_port, Cluster, RegistryExt};
use common::nginx::{Access, Nginx, Upgrades};
use common::Gateway;
use driver::{Browser, Page};
use ringway_gateway::cluster::ring::{Ring, DEFAULT_VNODES};
use ringway_testkit::{eventually, Describe};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The demo on, heartbeats short enough to cross the nodes while the test
/// runs, with a timeout generous for a loaded machine.
/// Recovery on, as by default: the page works with the offsets the events
/// then carry.
const GATEWAY_ARGS: &[&str] = &[
    "--demo",
    "--recovery-window",
    "120000",
    "--ping-interval",
    "1000",
    "--ping-timeout",
    "3000",
];

/// How long a page may take to show what the test waits for.
const WAIT: Duration = Duration::from_secs(20);

const ROOM: &str = "lobby";

/// Where the screenshots go: `$RINGWAY_ARTIFACTS/browser-screenshots/`
/// (`.ci/run` sets it to the `artifacts/` folder CI keeps), else
/// `target/browser-screenshots/` (next to the binaries' directory).
fn screenshot(test: &str, label: &str) -> PathBuf {
    let dir = match std::env::var_os("RINGWAY_ARTIFACTS").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("browser-screenshots"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ringway-gateway"))
            .parent()
            .and_then(|p| p.parent())
            .expect("target directory")
            .join("browser-screenshots"),
    };
    dir.join(format!("{test}-{label}.png"))
}

/// Opens the demo at `base` (`http://host:port`), fills in the join form
/// (name, room, and the transports when given) and presses Enter; returns
/// once the page shows that it joined the room.
async fn join(browser: &Browser, base: &str, name: &str, transports: Option<&str>) -> Page {
    let page = browser.page(name).await;
    page.goto(&format!("{base}/demo/")).await;
    rejoin(&page, name, transports).await;
    page
}

/// Fills in and submits the join form of a loaded demo page.
async fn rejoin(page: &Page, name: &str, transports: Option<&str>) {
    page.fill("#name", name).await;
    if let Some(t) = transports {
        let t = serde_json::to_string(t).expect("json");
        let chosen = page
            .eval(&format!(
                "(() => {{ const s = document.getElementById('transports'); s.value = {t}; \
                 s.dispatchEvent(new Event('change')); return s.value === {t}; }})()"
            ))
            .await;
        assert_eq!(
            chosen,
            serde_json::Value::Bool(true),
            "no transports option {t}"
        );
    }
    page.fill("#room", ROOM).await;
    page.press_enter().await;
    // Joined: the form gone, the chat on screen.
    page.wait_for(
        "the room joined",
        "document.body.dataset.state === 'joined' \
         && getComputedStyle(document.getElementById('join-form')).display === 'none' \
         && getComputedStyle(document.getElementById('chat')).display !== 'none'",
        WAIT,
    )
    .await;
}

/// Types `text` into the message field and presses Enter.
async fn say(page: &Page, text: &str) {
    page.wait_for(
        "the send field enabled",
        "!document.getElementById('text').disabled",
        WAIT,
    )
    .await;
    page.fill("#text", text).await;
    page.press_enter().await;
    // The page empties the field once the message is handed to the socket.
    page.wait_for(
        "the message sent",
        "document.getElementById('text').value === ''",
        WAIT,
    )
    .await;
}

/// The chat messages the page shows, in order: `(from, text)`.
async fn messages(page: &Page) -> Vec<(String, String)> {
    let v = page
        .eval(
            "[...document.querySelectorAll('#messages li.msg')]\
             .map(li => [li.querySelector('.from').textContent, li.querySelector('.text').textContent])",
        )
        .await;
    serde_json::from_value(v).expect("messages")
}

/// Waits until the page shows at least `n` messages; then waits a little
/// more, so that a duplicate would show too, and returns them all.
async fn wait_messages(page: &Page, n: usize) -> Vec<(String, String)> {
    page.wait_for(
        &format!("{n} messages"),
        &format!("document.querySelectorAll('#messages li.msg').length >= {n}"),
        WAIT,
    )
    .await;
    // fixed: a negative check (no duplicate shows within the moment).
    tokio::time::sleep(Duration::from_millis(300)).await;
    messages(page).await
}

/// What the status panel shows: transport and engine id.
async fn transport(page: &Page) -> String {
    page.text("#transport").await
}

async fn engine_id(page: &Page) -> String {
    let id = page.text("#engine-id").await;
    assert!(id.len() > 5, "{}: engine id {id:?}", page.label);
    id
}

async fn wait_transport(page: &Page, name: &str) {
    page.wait_for(
        &format!("transport {name}"),
        &format!("document.getElementById('transport').textContent === '{name}'"),
        WAIT,
    )
    .await;
}

/// No uncaught script error and no Content-Security-Policy violation.
fn assert_clean_console(page: &Page) {
    let bad: Vec<String> = page
        .console()
        .into_iter()
        .filter(|l| l.starts_with("uncaught") || l.contains("Content Security Policy"))
        .collect();
    assert!(bad.is_empty(), "{}: {bad:#?}", page.label);
}

/// The chat itself, for users already in the room: first one message at a
/// time (each shown everywhere before the next is typed, so every page must
/// show the very same list), then everyone typing at once (every page shows
/// every message exactly once, each sender's in the order typed).
async fn chat(users: &[&Page]) {
    let mut expected: Vec<(String, String)> = Vec::new();
    for round in 1..=2 {
        for user in users {
            let text = format!("{} says hello #{round}", user.label);
            say(user, &text).await;
            expected.push((user.label.clone(), text));
            for page in users {
                let shown = wait_messages(page, expected.len()).await;
                assert_eq!(
                    shown, expected,
                    "{} after {}'s message #{round}",
                    page.label, user.label
                );
            }
        }
    }

    const BURST: usize = 5;
    let bursts = users.iter().map(|user| async move {
        for i in 1..=BURST {
            say(user, &format!("{} burst {i}", user.label)).await;
        }
    });
    futures_util::future::join_all(bursts).await;
    let total = expected.len() + users.len() * BURST;
    for page in users {
        let shown = wait_messages(page, total).await;
        assert_eq!(shown.len(), total, "{}: {shown:#?}", page.label);
        assert_eq!(shown[..expected.len()], expected[..], "{}", page.label);
        for user in users {
            let from_user: Vec<&str> = shown[expected.len()..]
                .iter()
                .filter(|(from, _)| *from == user.label)
                .map(|(_, text)| text.as_str())
                .collect();
            let typed: Vec<String> = (1..=BURST)
                .map(|i| format!("{} burst {i}", user.label))
                .collect();
            assert_eq!(
                from_user, typed,
                "{} shows {}'s burst so",
                page.label, user.label
            );
        }
    }
}

/// Three clustered gateways with the demo, behind one nginx.
struct Setup {
    cluster: Cluster,
    nginx: Nginx,
}

impl Setup {
    async fn start(upgrades: Upgrades) -> Setup {
        let cluster = Cluster::start(NODES.len(), GATEWAY_ARGS).await;
        let addrs: Vec<&str> = (0..NODES.len()).map(|i| cluster.addr(i)).collect();
        let nginx = Nginx::start_with(&addrs, upgrades);
        Setup { cluster, nginx }
    }

    fn node_of(&self, upstream: &str) -> Option<&'static str> {
        (0..NODES.len())
            .find(|&i| self.cluster.addr(i) == upstream)
            .map(|i| NODES[i])
    }

    fn requests_of(&self, sid: &str) -> Vec<Access> {
        self.nginx
            .access_log()
            .into_iter()
            .filter(|a| a.sid() == Some(sid))
            .collect()
    }

    /// How many polling requests of `sid` each node served.
    fn polling_nodes(&self, sid: &str) -> BTreeMap<&'static str, usize> {
        let mut per_node = BTreeMap::new();
        for a in self.requests_of(sid) {
            if a.transport() == Some("polling") {
                let node = self
                    .node_of(&a.upstream)
                    .unwrap_or_else(|| panic!("polling request not served by a node: {a:?}"));
                *per_node.entry(node).or_insert(0) += 1;
            }
        }
        per_node
    }

    /// Waits until nginx logged a request of `sid` matching `pred` (a
    /// WebSocket is logged when its tunnel closes).
    async fn wait_logged(&self, what: &str, sid: &str, pred: impl Fn(&Access) -> bool) -> Access {
        let failed = Describe(|| {
            format!(
                "nginx to log {what} of {sid}; its requests:\n{:#?}",
                self.requests_of(sid)
            )
        });
        eventually(WAIT, failed, || async {
            self.requests_of(sid).into_iter().find(&pred)
        })
        .await
    }

    /// Sessions taken over by another node so far, over the whole cluster
    /// (`ringway_handoffs_total{direction="in"}` of every node).
    async fn handoffs(&self) -> u64 {
        let mut total = 0.0;
        for i in 0..NODES.len() {
            let metrics = common::get(self.cluster.addr(i), "/metrics").await.text();
            total += metrics
                .lines()
                .filter(|l| {
                    l.starts_with("ringway_handoffs_total{") && l.contains("direction=\"in\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total as u64
    }
}

/// The node whose handshake created `sid`: the ring owner among n1..n3.
fn owner(sid: &str) -> &'static str {
    let owner = Ring::new(NODES, DEFAULT_VNODES)
        .owner_of_sid(sid)
        .unwrap_or_else(|| panic!("no ring owner for {sid}"))
        .to_owned();
    NODES
        .into_iter()
        .find(|n| *n == owner)
        .unwrap_or_else(|| panic!("owner {owner} is not one of {NODES:?}"))
}

/// Three users chat through round robin: alice and bob with the default
/// transports (polling, then the upgrade to WebSocket, which lands on
/// whichever node nginx picks: a handoff when it is not the session's
/// owner), carol on polling only (every request forwarded to the owner by
/// the node it lands on). Every page shows every message exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_through_round_robin_upgrades_to_websocket() {
    const TEST: &str = "cluster-websocket";
    let s = Setup::start(Upgrades::Pass).await;
    let base = s.nginx.url();
    let browser = Browser::launch().await;

    let alice = join(&browser, &base, "alice", None).await;
    wait_transport(&alice, "websocket").await;
    let bob = join(&browser, &base, "bob", None).await;
    wait_transport(&bob, "websocket").await;
    // Whether the upgrade lands on the session's owner depends on how many
    // requests nginx's round robin has passed since the handshake, which
    // is often the same from one page load to the next: until an upgrade
    // landed elsewhere (a handoff), bob joins again (a reload: a new
    // session), one more request through nginx shifting the rotation.
    let mut reloads = 0;
    while s.handoffs().await == 0 {
        reloads += 1;
        assert!(
            reloads <= 12,
            "no upgrade of {} sessions landed off its owner",
            reloads + 1
        );
        let shift = common::get(&s.nginx.addr, "/healthz").await;
        assert_eq!(shift.status, 200, "{}", shift.text());
        bob.goto(&format!("{base}/demo/")).await;
        rejoin(&bob, "bob", None).await;
        wait_transport(&bob, "websocket").await;
    }
    let carol = join(&browser, &base, "carol", Some("polling")).await;
    let before = [
        engine_id(&alice).await,
        engine_id(&bob).await,
        engine_id(&carol).await,
    ];

    chat(&[&alice, &bob, &carol]).await;

    assert_eq!(transport(&alice).await, "websocket");
    assert_eq!(transport(&bob).await, "websocket");
    assert_eq!(transport(&carol).await, "polling");
    let sids = [
        engine_id(&alice).await,
        engine_id(&bob).await,
        engine_id(&carol).await,
    ];
    assert_eq!(sids, before, "a page changed sessions during the chat");
    let distinct: BTreeSet<&String> = sids.iter().collect();
    assert_eq!(distinct.len(), 3, "engine ids {sids:?}");
    // Each page shows the node that holds its session: the registry's
    // owner (after a handoff, the node the WebSocket landed on).
    for (page, sid) in [&alice, &bob, &carol].into_iter().zip(&sids) {
        let owner = s.cluster.redis.registry_entry(sid).unwrap_or_default();
        let owner = owner
            .split_once(' ')
            .map(|(_, n)| n.to_owned())
            .unwrap_or_default();
        let shown = page
            .wait_for(
                "the node",
                &format!(
                    "document.getElementById('node').textContent === {}",
                    serde_json::to_string(&owner).unwrap()
                ),
                WAIT,
            )
            .await;
        assert_eq!(
            shown,
            serde_json::Value::Bool(true),
            "{}: node {owner}",
            page.label
        );
        assert!(
            NODES.contains(&owner.as_str()),
            "{}: owner {owner:?}",
            page.label
        );
    }
    for page in [&alice, &bob, &carol] {
        page.screenshot(&screenshot(TEST, &page.label)).await;
        assert_clean_console(page);
    }
    let handoffs = s.handoffs().await;

    // Closing the browser closes the WebSockets: nginx logs their tunnels.
    browser.close().await;
    for (name, sid) in [("alice", &sids[0]), ("bob", &sids[1])] {
        let ws = s
            .wait_logged("the WebSocket", sid, |a| a.transport() == Some("websocket"))
            .await;
        assert_eq!(ws.status, 101, "{name}'s upgrade request: {ws:?}");
        let ws_node = s.node_of(&ws.upstream).expect("upgrade served by a node");
        eprintln!(
            "{name} {sid}: created on {}, polling per node {:?}, WebSocket on {ws_node}",
            owner(sid),
            s.polling_nodes(sid)
        );
    }
    // Somewhere, an upgrade landed off its session's owner and the session
    // moved there (bob's earlier sessions included).
    let log = s.nginx.access_log();
    let moved: Vec<&Access> = log
        .iter()
        .filter(|a| a.transport() == Some("websocket") && a.status == 101)
        .filter(|a| s.node_of(&a.upstream) != a.sid().map(owner))
        .collect();
    assert!(
        !moved.is_empty() && handoffs >= 1,
        "no handoff ({handoffs} counted); WebSocket requests: {:#?}",
        log.iter()
            .filter(|a| a.transport() == Some("websocket"))
            .collect::<Vec<_>>()
    );
    // carol: polling only, her requests on every node, none failed before
    // the browser went away (the last few may race the close).
    let requests = s.requests_of(&sids[2]);
    assert!(
        requests.iter().all(|a| a.transport() == Some("polling")),
        "carol: {requests:#?}"
    );
    let settled = requests.len().saturating_sub(3);
    let failed: Vec<&Access> = requests[..settled]
        .iter()
        .filter(|a| a.status != 200)
        .collect();
    assert!(failed.is_empty(), "carol's failed requests: {failed:#?}");
    let per_node = s.polling_nodes(&sids[2]);
    assert_eq!(per_node.len(), 3, "carol's requests per node: {per_node:?}");
    eprintln!(
        "carol {}: created on {}, polling per node {per_node:?}; {handoffs} handoff(s), {reloads} reload(s) of bob",
        sids[2],
        owner(&sids[2])
    );
}

/// The proxy refuses WebSocket upgrades (403): the pages' upgrade probes
/// fail, they stay on polling through round robin, and the chat works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stays_on_polling_when_the_proxy_refuses_websocket() {
    const TEST: &str = "cluster-polling";
    let s = Setup::start(Upgrades::Refuse).await;
    let base = s.nginx.url();
    let browser = Browser::launch().await;

    let alice = join(&browser, &base, "alice", None).await;
    let bob = join(&browser, &base, "bob", None).await;
    let sids = [engine_id(&alice).await, engine_id(&bob).await];
    // Each page tried the upgrade, and nginx refused it.
    for sid in &sids {
        let probe = s
            .wait_logged("the upgrade request", sid, |a| {
                a.transport() == Some("websocket")
            })
            .await;
        assert!(
            probe.status == 403 && probe.upstream == "-",
            "upgrade request of {sid}: {probe:?}"
        );
    }

    chat(&[&alice, &bob]).await;

    for page in [&alice, &bob] {
        assert_eq!(transport(page).await, "polling", "{}", page.label);
        page.screenshot(&screenshot(TEST, &page.label)).await;
        assert_clean_console(page);
    }
    assert_eq!(
        [engine_id(&alice).await, engine_id(&bob).await],
        sids,
        "a page changed sessions"
    );
    browser.close().await;
    for sid in &sids {
        let per_node = s.polling_nodes(sid);
        assert!(
            per_node.len() >= 2,
            "polling requests of {sid} per node: {per_node:?}"
        );
        eprintln!(
            "{sid}: created on {}, polling per node {per_node:?}",
            owner(sid)
        );
    }
}

/// The page on a single gateway: it joins, chats, and when the gateway
/// goes away and comes back (same address) it reconnects by itself, joins
/// the room again with a new session and the chat goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_page_reconnects_after_a_restart() {
    const TEST: &str = "single-node";
    let addr = format!("127.0.0.1:{}", free_port());
    let args = ["--listen", addr.as_str(), "--demo"];
    let mut gateway = Gateway::start_raw(&args);
    let base = format!("http://{addr}");
    let browser = Browser::launch().await;

    let alice = join(&browser, &base, "alice", None).await;
    let bob = join(&browser, &base, "bob", Some("websocket")).await;
    wait_transport(&alice, "websocket").await;
    assert_eq!(transport(&bob).await, "websocket");
    let before = [engine_id(&alice).await, engine_id(&bob).await];
    say(&alice, "before").await;
    for page in [&alice, &bob] {
        assert_eq!(
            wait_messages(page, 1).await,
            [("alice".to_owned(), "before".to_owned())]
        );
    }

    gateway.kill();
    for page in [&alice, &bob] {
        page.wait_for(
            "the disconnection",
            "document.getElementById('state').textContent !== 'joined'",
            WAIT,
        )
        .await;
    }
    let gateway = Gateway::start_raw(&args);
    for page in [&alice, &bob] {
        page.wait_for(
            "joined again",
            "document.body.dataset.state === 'joined' && \
             [...document.querySelectorAll('#messages li.system')]\
             .filter(li => li.textContent.includes('joined room')).length === 2",
            WAIT,
        )
        .await;
    }
    wait_transport(&alice, "websocket").await;
    let after = [engine_id(&alice).await, engine_id(&bob).await];
    assert!(
        before[0] != after[0] && before[1] != after[1],
        "sessions before {before:?}, after {after:?}"
    );
    say(&bob, "after").await;
    let expected = [
        ("alice".to_owned(), "before".to_owned()),
        ("bob".to_owned(), "after".to_owned()),
    ];
    for page in [&alice, &bob] {
        assert_eq!(wait_messages(page, 2).await, expected, "{}", page.label);
        page.screenshot(&screenshot(TEST, &page.label)).await;
    }

    // Leave brings the form back; joining again is a new session with an
    // empty list, in the room again.
    alice.eval("document.getElementById('leave').click()").await;
    alice
        .wait_for(
            "the join form back",
            "getComputedStyle(document.getElementById('join-form')).display !== 'none' \
             && getComputedStyle(document.getElementById('chat')).display === 'none'",
            WAIT,
        )
        .await;
    rejoin(&alice, "alice", None).await;
    assert_ne!(engine_id(&alice).await, after[0]);
    say(&bob, "welcome back").await;
    let back = [("bob".to_owned(), "welcome back".to_owned())];
    assert_eq!(wait_messages(&alice, 1).await, back);
    assert_eq!(wait_messages(&bob, 3).await[2], back[0]);
    for page in [&alice, &bob] {
        assert_clean_console(page);
    }
    browser.close().await;
    drop(gateway);
}

/// The demo's files over plain HTTP: only with `--demo` (or
/// `RINGWAY_DEMO`), right content types and cache headers, 404 for other
/// files, GET and HEAD only; the page carries the `--path`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_files_are_served_with_the_flag_only() {
    let off = Gateway::start(&[]);
    assert_eq!(common::get(&off.addr, "/demo/").await.status, 404);
    // The variable sets it as the flag does.
    for (value, on) in [
        ("true", true),
        ("1", true),
        ("yes", true),
        ("false", false),
        ("0", false),
        ("off", false),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringway-gateway"))
            .arg("--check-config")
            .env("RINGWAY_DEMO", value)
            .output()
            .expect("run ringway-gateway --check-config");
        let config = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "RINGWAY_DEMO={value}: {config}");
        assert!(
            config.contains(&format!("demo: {on},")),
            "RINGWAY_DEMO={value}: {config}"
        );
    }

    let on = Gateway::start(&["--demo"]);
    let page = common::get(&on.addr, "/demo/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page.header("content-security-policy").is_some());
    let html = page.text();
    assert!(html.contains("<title>Ringway chat demo</title>"), "{html}");
    assert!(html.contains(r#"<meta name="ringway-path" content="/socket.io/">"#));
    assert!(html.contains(r#"<script src="socket.io.min.js""#));

    let bundle = common::get(&on.addr, "/demo/socket.io.min.js").await;
    assert_eq!(bundle.status, 200);
    assert!(
        bundle
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/javascript")),
        "{:?}",
        bundle.headers
    );
    assert!(
        bundle.text().starts_with("/*!\n * Socket.IO v4.8.4\n"),
        "license header of the bundle"
    );
    let etag = bundle.header("etag").expect("etag").to_owned();
    let again = common::request(
        &on.addr,
        "GET",
        "/demo/socket.io.min.js",
        &[("if-none-match", &etag)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    for (file, content_type) in [
        ("app.js", "application/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
        ("socket.io-client.LICENSE", "text/plain; charset=utf-8"),
    ] {
        let resp = common::get(&on.addr, &format!("/demo/{file}")).await;
        assert_eq!(resp.status, 200, "{file}");
        assert_eq!(resp.header("content-type"), Some(content_type), "{file}");
    }
    let head = common::request(&on.addr, "HEAD", "/demo/app.js", &[], bytes::Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    for missing in [
        "/demo/nope.js",
        "/demo/socket.io.min.js.map",
        "/demo/../healthz",
        "/demos",
    ] {
        assert_eq!(
            common::get(&on.addr, missing).await.status,
            404,
            "{missing}"
        );
    }
    let post = common::post(&on.addr, "/demo/", "x").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let bare = common::get(&on.addr, "/demo?room=a").await;
    assert_eq!(bare.status, 308);
    assert_eq!(bare.header("location"), Some("/demo/?room=a"));
    // The Socket.IO endpoint is unaffected.
    common::Polling::open(&on.addr, "/socket.io/").await;

    let rt = Gateway::start(&["--demo", "--path", "/rt/"]);
    let html = common::get(&rt.addr, "/demo/").await.text();
    assert!(
        html.contains(r#"<meta name="ringway-path" content="/rt/">"#),
        "{html}"
    );
}

/// The coordinator's dashboard in the browser: three members, live; one
/// gateway stops and the page shows two, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_members_live() {
    const TEST: &str = "dashboard";
    let mut cluster = Cluster::start(NODES.len(), GATEWAY_ARGS).await;
    let browser = Browser::launch().await;
    let page = browser.page("operator").await;
    page.goto(&format!("http://{}/", cluster.coordinator.http))
        .await;
    let rows = |n: usize| {
        format!(
            "document.getElementById('members-count').textContent === '{n}' \
             && document.querySelectorAll('#members tbody tr').length === {n}"
        )
    };
    page.wait_for("three members", &rows(3), WAIT).await;
    for node in NODES {
        let listed = page
            .eval(&format!(
                "[...document.querySelectorAll('#members tbody tr')].some(tr => tr.textContent.includes('{node}'))"
            ))
            .await;
        assert_eq!(listed, serde_json::Value::Bool(true), "{node} not listed");
    }
    page.screenshot(&screenshot(TEST, "three-members")).await;
    // n3 stops: its lease lapses and the page follows the view.
    cluster.nodes[2].kill();
    page.wait_for("two members", &rows(2), WAIT).await;
    let gone = page
        .eval("[...document.querySelectorAll('#members tbody tr')].some(tr => tr.textContent.includes('n3'))")
        .await;
    assert_eq!(gone, serde_json::Value::Bool(false), "n3 still listed");
    page.wait_for(
        "the lapse in the events",
        "[...document.querySelectorAll('#events tbody tr')].some(tr => tr.textContent.includes('lapse') && tr.textContent.includes('n3'))",
        WAIT,
    )
    .await;
    page.screenshot(&screenshot(TEST, "two-members")).await;
    assert_clean_console(&page);
    browser.close().await;
}
