// Ringway chat demo: one Socket.IO session per tab, on the built-in echo
// application (docs/ECHO_APP.md): `join` a room, then `broadcast`
// {room, msg: {from, text}}; the gateway emits `message` with msg to every
// socket of the room on every node, the sender included, so each tab shows
// exactly the `message` events it receives. See docs/DEMO.md.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const meta = document.querySelector('meta[name="ringway-path"]');
  // Opened from disk, the placeholder is still there: the default path.
  const path = meta && meta.content.startsWith("/") ? meta.content : "/socket.io/";
  const TRANSPORTS = ["polling,websocket", "polling", "websocket"];

  let socket = null;
  let session = null; // { name, room }

  // The form starts from the query string (?name=&room=&transports=), so a
  // link or a reload brings the same chat back.
  const params = new URLSearchParams(location.search);
  $("name").value = params.get("name") || "guest-" + Math.floor(1000 + Math.random() * 9000);
  $("room").value = params.get("room") || "lobby";
  if (TRANSPORTS.includes(params.get("transports"))) {
    $("transports").value = params.get("transports");
  }

  function set(id, text) {
    $(id).textContent = text;
  }

  function time() {
    return new Date().toLocaleTimeString();
  }

  function append(li) {
    const list = $("messages");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // A line of the session's own story (connected, joined, disconnected...).
  function system(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = `${time()}  ${text}`;
    append(li);
  }

  // A chat message: a `message` event of the room.
  function message(msg) {
    const li = document.createElement("li");
    li.className = "msg";
    const ok = msg && typeof msg.from === "string" && typeof msg.text === "string";
    const from = ok ? msg.from : "?";
    const text = ok ? msg.text : JSON.stringify(msg);
    if (session && from === session.name) li.classList.add("mine");
    const stamp = document.createElement("time");
    stamp.textContent = time();
    const who = document.createElement("span");
    who.className = "from";
    who.textContent = from;
    const what = document.createElement("span");
    what.className = "text";
    what.textContent = text;
    li.append(stamp, who, what);
    append(li);
  }

  function canSend(yes) {
    $("text").disabled = !yes;
    $("send").disabled = !yes;
    if (yes) $("text").focus();
  }

  // Transport and engine id: after each (re)connection and each upgrade.
  function showEngine() {
    const engine = socket && socket.io.engine;
    set("transport", engine && engine.transport ? engine.transport.name : "-");
    set("engine-id", (engine && engine.id) || "-");
    document.body.dataset.transport = engine && engine.transport ? engine.transport.name : "";
  }

  // The node that holds the session (the echo application's `whoami`):
  // after each connection and each upgrade (a handoff moves it).
  function showNode() {
    const current = socket;
    if (!current || !current.connected) {
      set("node", "-");
      return;
    }
    current.timeout(5000).emit("whoami", (err, me) => {
      if (current !== socket) return;
      set("node", err || !me ? "?" : me.node);
      document.body.dataset.node = err || !me ? "" : me.node;
    });
  }

  function start(name, room, transports) {
    session = { name, room };
    set("me", name);
    set("room-name", room);
    set("state", "connecting");
    $("messages").replaceChildren();
    $("join-form").hidden = true;
    $("chat").hidden = false;
    const query = new URLSearchParams({ name, room, transports });
    history.replaceState(null, "", `${location.pathname}?${query}`);

    socket = io({
      path,
      transports: transports.split(","),
      // A Manager of its own: a new join after Leave starts afresh.
      forceNew: true,
      reconnectionDelay: 500,
      reconnectionDelayMax: 3000,
    });
    const manager = socket.io;

    // A new Engine.IO session (first connection or reconnection).
    manager.on("open", () => {
      const engine = manager.engine;
      engine.on("upgrade", () => {
        showEngine();
        showNode();
        system(`upgraded to ${engine.transport.name}`);
      });
      showEngine();
    });
    manager.on("reconnect_attempt", (n) => set("state", `reconnecting (attempt ${n})`));
    manager.on("reconnect", (n) => system(`reconnected after ${n} attempt(s)`));

    socket.on("connect", () => {
      set("state", "connected");
      set("socket-id", socket.id);
      set("recovered", socket.recovered ? "yes" : "no");
      showEngine();
      showNode();
      system(
        `connected over ${socket.io.engine.transport.name}, engine id ${socket.io.engine.id}` +
          (socket.recovered ? " (recovered: missed messages follow)" : ""),
      );
      // Rooms belong to a socket: join again after every reconnection.
      const current = socket;
      current.timeout(5000).emit("join", room, (err) => {
        if (current !== socket) return;
        if (err) {
          set("state", "join failed");
          system(`join ${room}: no answer`);
          return;
        }
        set("state", "joined");
        document.body.dataset.state = "joined";
        system(`joined room ${room} as ${name}`);
        canSend(true);
      });
    });

    socket.on("message", message);

    socket.on("connect_error", (err) => {
      set("state", "cannot connect");
      system(`connection error: ${err.message}`);
    });

    socket.on("disconnect", (reason) => {
      canSend(false);
      document.body.dataset.state = "";
      set("state", "disconnected");
      set("socket-id", "-");
      showEngine();
      system(`disconnected: ${reason}`);
      // The client reconnects by itself except after a server-side
      // disconnect of the namespace: reconnect then too.
      if (reason === "io server disconnect") socket.connect();
    });
  }

  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    const room = $("room").value.trim();
    if (!name || !room) return;
    start(name, room, $("transports").value);
  });

  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value;
    if (!text.trim() || !socket || !socket.connected || !session) return;
    // Everyone in the room gets it back as `message`, this tab too.
    socket.emit("broadcast", { room: session.room, msg: { from: session.name, text } });
    $("text").value = "";
  });

  $("leave").addEventListener("click", () => {
    if (socket) {
      if (socket.connected) socket.emit("leave", session.room);
      socket.disconnect();
      socket = null;
    }
    session = null;
    canSend(false);
    document.body.dataset.state = "";
    $("chat").hidden = true;
    $("join-form").hidden = false;
    history.replaceState(null, "", location.pathname);
  });

  if (params.get("join") === "1") $("join-form").requestSubmit();
})();
