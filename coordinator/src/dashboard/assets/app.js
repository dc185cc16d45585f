// The Ringway cluster dashboard. Plain JavaScript, no library: it reads the
// state from this coordinator ("api/state" once, then the "events" stream
// of Server-Sent Events, which pushes the state on every membership change
// and every second) and renders it. Relative URLs only, so the page also
// works behind a port-forward or a path prefix.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  // A stream silent for this long is shown as stale.
  const STALE_MS = 3500;
  let lastUpdate = 0;
  let connected = false;

  // Builds an element; children are nodes or strings (always as text, never
  // as HTML: node ids and addresses come from the gateways).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // A stable colour per node id, so a member keeps its colour when others
  // come and go: FNV-1a of the id, spread over the hues by the golden angle
  // (names that differ by one character get far-apart colours).
  function colour(nodeId) {
    let h = 0x811c9dc5;
    for (let i = 0; i < nodeId.length; i++) {
      h ^= nodeId.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    const hue = ((h % 997) * 137.508) % 360;
    return "hsl(" + hue.toFixed(0) + ", 62%, 46%)";
  }

  function swatch(nodeId) {
    const s = el("span", { class: "swatch" });
    s.style.background = colour(nodeId);
    return s;
  }

  const int = (n) => (n === null || n === undefined ? "\u2013" : Number(n).toLocaleString());
  const pct = (x) => (x * 100).toFixed(1) + "%";
  function rate(x) {
    if (x === null || x === undefined) return "\u2013";
    if (x >= 100) return Math.round(x).toLocaleString();
    return x.toFixed(1);
  }
  function ago(ms) {
    if (ms === null || ms === undefined) return "none yet";
    if (ms < 1000) return ms + " ms ago";
    return (ms / 1000).toFixed(1) + " s ago";
  }
  function seconds(ms) {
    return (ms / 1000).toFixed(1) + " s";
  }
  function clock(ms) {
    const d = new Date(ms);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function setStatus(text, kind) {
    const s = $("status");
    s.textContent = text;
    s.className = "status status-" + kind;
  }

  function renderSummary(state) {
    const c = state.coordinator;
    $("role").textContent = c.role;
    $("instance").textContent = c.instance_id + (c.grpc_addr ? " \u00b7 gRPC " + c.grpc_addr : "");
    $("epoch").textContent = state.epoch === null ? "\u2013" : state.epoch;
    const t = state.totals;
    $("members-count").textContent = state.epoch === null ? "\u2013" : t.members;
    $("members-active").textContent = t.active_members + " active";
    $("sessions").textContent = int(t.sessions);
    $("sessions-split").textContent = int(t.polling_sessions) + " polling \u00b7 " + int(t.websocket_sessions) + " WebSocket";
    $("rate-in").textContent = rate(t.messages_in_per_sec);
    $("rate-out").textContent = rate(t.messages_out_per_sec);
    $("settings").textContent =
      "lease TTL " + c.lease_ttl_ms + " ms \u00b7 heartbeat every " + c.heartbeat_interval_ms +
      " ms \u00b7 " + c.vnodes + " virtual nodes per member \u00b7 updated " + clock(state.generated_at_ms);

    const banner = $("banner");
    if (c.role === "standby") {
      banner.textContent = "This coordinator is a standby: another coordinator holds the lock and the view " +
        "(its dashboard shows the cluster). This one takes over when the lock is released or lapses.";
      banner.hidden = false;
    } else if (c.role === "stopping") {
      banner.textContent = "This coordinator is stopping.";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  function renderRing(members) {
    const ring = $("ring");
    const legend = $("ring-legend");
    const active = members.filter((m) => m.ring_share > 0);
    ring.replaceChildren(
      ...active.map((m) => {
        const slice = el("div", { class: "slice", title: m.node_id + ": " + pct(m.ring_share) },
          m.ring_share >= 0.08 ? m.node_id : "");
        slice.style.width = (m.ring_share * 100) + "%";
        slice.style.background = colour(m.node_id);
        return slice;
      })
    );
    legend.replaceChildren(
      ...active.map((m) => el("span", { class: "item" }, swatch(m.node_id), m.node_id + " " + pct(m.ring_share)))
    );
  }

  function renderMembers(state) {
    const members = state.members;
    const lateAfter = 2 * state.coordinator.heartbeat_interval_ms;
    const rows = members.map((m) => {
      const bar = el("span", { class: "share-bar" }, el("span"));
      bar.firstChild.style.width = (m.ring_share * 100) + "%";
      bar.firstChild.style.background = colour(m.node_id);
      const late = m.last_heartbeat_ms_ago !== null && m.last_heartbeat_ms_ago > lateAfter;
      return el("tr", { "data-node": m.node_id },
        el("td", {}, el("span", { class: "node" }, swatch(m.node_id), m.node_id)),
        el("td", {}, el("span", { class: "badge state-" + m.state }, m.state),
          m.has_lease ? null : el("span", { class: "sub", title: "restored from Redis, not joined again yet" }, " (no lease)")),
        el("td", { class: "mono" }, m.http_addr),
        el("td", { class: "mono" }, m.grpc_addr),
        el("td", { class: "mono" }, m.incarnation),
        el("td", { class: "num" }, m.joined_epoch),
        el("td", { class: "num" }, bar, pct(m.ring_share)),
        el("td", { class: "num" }, int(m.sessions)),
        el("td", { class: "num" }, int(m.polling_sessions)),
        el("td", { class: "num" }, int(m.websocket_sessions)),
        el("td", { class: "num", title: int(m.messages_in) + " since the gateway started" }, rate(m.messages_in_per_sec)),
        el("td", { class: "num", title: int(m.messages_out) + " since the gateway started" }, rate(m.messages_out_per_sec)),
        el("td", { class: late ? "late" : null, title: "lease expires in " + seconds(m.lease_expires_in_ms) },
          ago(m.last_heartbeat_ms_ago))
      );
    });
    $("members").tBodies[0].replaceChildren(...rows);
    $("no-members").hidden = members.length > 0;
  }

  function renderEvents(events) {
    const rows = events.map((e) =>
      el("tr", { "data-kind": e.kind },
        el("td", { class: "mono" }, clock(e.at_ms)),
        el("td", {}, el("span", { class: "badge kind-" + e.kind }, e.kind)),
        el("td", {}, e.node_id === null ? "" : el("span", { class: "node" }, swatch(e.node_id), e.node_id)),
        el("td", { class: "num" }, e.epoch),
        el("td", { class: "detail" }, e.detail)
      )
    );
    $("events").tBodies[0].replaceChildren(...rows);
    $("no-events").hidden = events.length > 0;
  }

  function render(state) {
    lastUpdate = Date.now();
    renderSummary(state);
    renderRing(state.members);
    renderMembers(state);
    renderEvents(state.events);
    document.title = "Ringway cluster \u00b7 " + state.totals.members + " members \u00b7 epoch " +
      (state.epoch === null ? "\u2013" : state.epoch);
    document.body.dataset.epoch = state.epoch === null ? "" : String(state.epoch);
  }

  function connect() {
    // EventSource reconnects by itself (the server asks for 1 s).
    const source = new EventSource("events");
    source.addEventListener("state", (event) => {
      connected = true;
      try {
        render(JSON.parse(event.data));
        setStatus("live", "ok");
      } catch (err) {
        setStatus("bad data: " + err.message, "bad");
      }
    });
    source.addEventListener("error", () => {
      connected = false;
      setStatus("disconnected, reconnecting\u2026", "bad");
    });
  }

  setInterval(() => {
    if (connected && lastUpdate && Date.now() - lastUpdate > STALE_MS) {
      setStatus("stale: no update for " + Math.round((Date.now() - lastUpdate) / 1000) + " s", "wait");
    }
  }, 1000);

  fetch("api/state", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.status))))
    .then(render)
    .catch(() => setStatus("connecting\u2026", "wait"))
    .finally(connect);
})();
