#!/usr/bin/env node
// Connection state recovery with the official socket.io-client, against a
// gateway (or a cluster behind a proxy) running the echo application with
// recovery on. Driven by gateway/tests/recovery.rs.
//
//   RINGWAY_URL=http://127.0.0.1:3000 node recovery.mjs <scenario>
//
// Scenarios:
//   drops    one node: a client in a room loses its transport three times
//            while another client broadcasts; each time it must come back
//            recovered (same id) with every message once, in order. A
//            second client drops before it received any event (no offset)
//            and must recover everything since it joined. Transports from
//            RINGWAY_TRANSPORTS (comma separated; default polling,websocket).
//   fleet    many clients in one room (FLEET_CLIENTS, mixed transports: by
//            turns websocket only, polling then websocket, polling only)
//            that record every `tick` a publisher sends. Prints
//            `ready <json>` once every client joined, then a `report
//            <json>` line once every client got `done` (or the budget ran
//            out). The harness publishes, kills nodes and checks the report.
//   kill     the clients of a kill benchmark (loadtest/scripts/bench-kill.sh):
//            FLEET_CLIENTS clients, all on FLEET_TRANSPORTS (comma
//            separated), started evenly over FLEET_SPREAD_MS, each joins
//            FLEET_ROOM and records every `message` ({n}) with its offset.
//            Prints `ready <json>` (engine ids) once every client joined,
//            then `report <json>` once every client got the publisher's
//            last message ({done: total}) or FLEET_BUDGET_MS ran out: per
//            client lost, duplicated and reordered counts, its timeline
//            (connects, recoveries, disconnects, upgrades) and, for a
//            client with any anomaly, what it got as runs with offsets.
//            Reconnection: the client's defaults, or FLEET_RECONNECT_MS;
//            FLEET_CLIENT_OPTS (JSON) adds any other client option.
//   publish  the publisher of a kill benchmark: one WebSocket client
//            (RINGWAY_URL: a node that is not killed) that broadcasts
//            {n: 1..} into FLEET_ROOM at PUBLISH_RATE per second for
//            PUBLISH_MS, then {done: total}; prints `published <total>`.
//
// RINGWAY_PARSER=msgpack: every client uses socket.io-msgpack-parser (for
// gateways run with `--parser msgpack`).
//
// Exit 0 on success (for `fleet`: once the report is printed), non-zero
// with `FAIL <scenario>: <why>` on stderr otherwise.

import { io } from 'socket.io-client';
import msgpackParser from 'socket.io-msgpack-parser';

const BASE = (process.env.RINGWAY_URL || 'http://127.0.0.1:3000').replace(/\/+$/, '');
const PARSER_OPTS = process.env.RINGWAY_PARSER === 'msgpack' ? { parser: msgpackParser } : {};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let currentStep = 'starting';
function step(text) {
  currentStep = text;
}

function check(cond, why) {
  if (!cond) throw new Error(why);
}

function waitUntil(what, cond, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - started > timeout) return reject(new Error(`timed out after ${timeout} ms waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

function connect(transports, extra = {}) {
  return io(BASE, {
    transports,
    reconnectionDelay: 100,
    reconnectionDelayMax: 400,
    randomizationFactor: 0.2,
    timeout: 5000,
    ...PARSER_OPTS,
    ...extra,
  });
}

function connected(socket, timeout = 10000) {
  return waitUntil('a connection', () => socket.connected, timeout);
}

/** The numbers of the `message` events a socket receives (echo `broadcast`). */
function record(socket) {
  const got = [];
  socket.on('message', (msg, offset) => {
    check(typeof offset === 'string' && /^\d+-\d+$/.test(offset), `an event without its offset: ${JSON.stringify([msg, offset])}`);
    got.push(msg.n);
  });
  return got;
}

/** Checks that `got` is exactly 1..n. */
function checkSequence(label, got, n) {
  const want = Array.from({ length: n }, (_, i) => i + 1);
  check(JSON.stringify(got) === JSON.stringify(want), `${label}: got ${JSON.stringify(got)}, expected 1..${n}`);
}

async function drops() {
  const transports = (process.env.RINGWAY_TRANSPORTS || 'polling,websocket').split(',');
  step('connecting');
  const sender = connect(['websocket']);
  const a = connect(transports);
  await Promise.all([connected(sender), connected(a)]);
  check(a.recovered === false, 'a first connection is not a recovery');
  check(typeof a._pid === 'string' && a._pid.length >= 16, `no private id in the CONNECT answer (${a._pid})`);
  await a.emitWithAck('join', 'room');
  const gotA = record(a);
  let n = 0;
  const send = async (count) => {
    for (let i = 0; i < count; i++) {
      n++;
      const reached = await sender.emitWithAck('broadcast', { room: 'room', msg: { n } });
      check(typeof reached === 'number', `broadcast ack ${JSON.stringify(reached)}`);
    }
  };

  step('messages before any drop');
  await send(3);
  await waitUntil('the first messages', () => gotA.length === 3);
  const id = a.id;
  for (let round = 1; round <= 3; round++) {
    step(`drop ${round}`);
    const lost = new Promise((resolve) => a.once('disconnect', resolve));
    a.io.engine.close(); // the transport goes away; the client reconnects
    await lost;
    await send(4); // missed while away
    await connected(a);
    check(a.recovered === true, `drop ${round}: not recovered`);
    check(a.id === id, `drop ${round}: socket id changed (${id} -> ${a.id})`);
    await send(2);
    await waitUntil(`drop ${round}: every message`, () => gotA.length === n);
    checkSequence(`drop ${round}`, gotA, n);
  }

  step('a drop before the first event (no offset)');
  const b = connect(transports);
  await connected(b);
  await b.emitWithAck('join', 'room');
  const gotB = [];
  b.on('message', (msg) => gotB.push(msg.n));
  const lost = new Promise((resolve) => b.once('disconnect', resolve));
  b.io.engine.close();
  await lost;
  const first = n + 1;
  await send(5);
  await connected(b);
  check(b.recovered === true, 'a client with no offset yet was not recovered');
  await waitUntil('the messages since it joined', () => gotB.length === 5);
  check(JSON.stringify(gotB) === JSON.stringify([first, first + 1, first + 2, first + 3, first + 4]), `no-offset recovery got ${JSON.stringify(gotB)}`);
  await sleep(100);
  checkSequence('after all drops', gotA, n);
  for (const s of [a, b, sender]) s.close();
  return `3 drops recovered with ${n} messages once, in order; a client without an offset got the ${gotB.length} it missed [transports ${transports}]`;
}

async function fleet() {
  const count = Number(process.env.FLEET_CLIENTS || 30);
  const room = process.env.FLEET_ROOM || 'chaos';
  const kinds = [['websocket'], ['polling', 'websocket'], ['polling']];
  const clients = [];
  step(`connecting ${count} clients`);
  for (let i = 0; i < count; i++) {
    const transports = kinds[i % kinds.length];
    const socket = connect(transports);
    const c = {
      i,
      transports: transports.join('+'),
      socket,
      got: [],
      connects: 0,
      recoveries: [],
      disconnects: [],
      done: null,
      joined: false,
      engines: [],
    };
    socket.on('connect', () => {
      c.connects++;
      c.engines.push(socket.io.engine.id);
      if (c.connects > 1) c.recoveries.push(socket.recovered);
      if (!socket.recovered) {
        // A fresh socket (the first, or a recovery that failed) joins.
        socket.emitWithAck('join', room).then(() => {
          c.joined = true;
        });
      }
    });
    socket.on('disconnect', (reason) => c.disconnects.push(reason));
    socket.on('tick', (seq) => c.got.push(seq));
    socket.on('done', (total) => {
      c.done = total;
    });
    clients.push(c);
  }
  await waitUntil('every client joined', () => clients.every((c) => c.joined), 30000).catch((err) => {
    const late = clients
      .filter((c) => !c.joined)
      .map((c) => `${c.i} (${c.transports}, ${c.connects} connects, connected ${c.socket.connected}, disconnects ${c.disconnects})`);
    throw new Error(`${err.message}: not joined: ${late.join('; ')}`);
  });
  // Engine ids after the upgrades settle (the owner is the node that holds
  // the session then).
  await sleep(300);
  process.stdout.write(`ready ${JSON.stringify({ sids: clients.map((c) => c.socket.io.engine.id) })}\n`);
  step('waiting for done');
  const budget = Number(process.env.FLEET_BUDGET_MS || 60000);
  await waitUntil('done in every client', () => clients.every((c) => c.done !== null), budget).catch(() => {});
  await sleep(300); // anything after `done` would be a duplicate
  const report = clients.map((c) => ({
    i: c.i,
    transports: c.transports,
    connected: c.socket.connected,
    connects: c.connects,
    recoveries: c.recoveries,
    disconnects: c.disconnects,
    done: c.done,
    got: c.got,
  }));
  process.stdout.write(`report ${JSON.stringify(report)}\n`);
  for (const c of clients) c.socket.close();
  return `${count} clients reported`;
}

/** Milliseconds since this process started, rounded. */
const started = Date.now();
const now = () => Date.now() - started;

/** Lost, duplicated and reordered (as ringway-loadtest counts them: a
 * reordered message is a first copy older than one already seen). */
function tally(got, total) {
  const seen = new Uint8Array(total + 2);
  let duplicated = 0;
  let reordered = 0;
  let unexpected = 0;
  let next = 1;
  for (const n of got) {
    if (!Number.isInteger(n) || n < 1 || n > total) {
      unexpected++;
      continue;
    }
    if (seen[n]) {
      duplicated++;
      continue;
    }
    seen[n] = 1;
    if (n === next) next++;
    else if (n > next) next = n + 1;
    else reordered++;
  }
  let lost = 0;
  for (let n = 1; n <= total; n++) if (!seen[n]) lost++;
  return { lost, duplicated, reordered, unexpected };
}

/** What a client got, as runs of consecutive numbers with their offsets
 * and the session (engine id, transport) each came on. */
function runs(c) {
  const out = [];
  let run = null;
  let seg = 0;
  for (let i = 0; i < c.got.length; i++) {
    while (seg + 1 < c.segs.length && c.segs[seg + 1].at <= i) seg++;
    const s = c.segs[seg] || {};
    const via = `${s.sid}/${s.transport}`;
    if (run && c.got[i] === run.to + 1 && run.via === via) {
      run.to = c.got[i];
      run.last = c.offsets[i];
      continue;
    }
    run = { at: i, from: c.got[i], to: c.got[i], first: c.offsets[i], last: c.offsets[i], via, t: c.times[i] };
    out.push(run);
  }
  return out;
}

async function kill() {
  const count = Number(process.env.FLEET_CLIENTS || 300);
  const room = process.env.FLEET_ROOM || 'kill';
  const spread = Number(process.env.FLEET_SPREAD_MS || 2000);
  const transports = (process.env.FLEET_TRANSPORTS || 'polling,websocket').split(',');
  const clients = [];
  step(`connecting ${count} clients over ${spread} ms`);
  for (let i = 0; i < count; i++) {
    // The client's own reconnection defaults, as users run it, unless
    // FLEET_RECONNECT_MS sets the first delay (the longest is 4 times it).
    const delay = Number(process.env.FLEET_RECONNECT_MS || 0);
    const pace = delay > 0 ? { reconnectionDelay: delay, reconnectionDelayMax: 4 * delay } : {};
    const extra = JSON.parse(process.env.FLEET_CLIENT_OPTS || '{}');
    const socket = io(BASE, { transports, autoConnect: false, ...pace, ...extra });
    const c = {
      i,
      socket,
      got: [],
      offsets: [],
      times: [],
      // Where each stretch of messages came from: {at: index, sid, transport}.
      segs: [],
      timeline: [],
      recoveries: [],
      done: null,
      joined: false,
    };
    const note = (what, extra = {}) => c.timeline.push({ t: now(), what, ...extra });
    socket.io.on('open', () => {
      const engine = socket.io.engine;
      note('open', { sid: engine.id, transport: engine.transport.name });
      engine.on('upgrade', (t) => note('upgrade', { sid: engine.id, transport: t.name }));
      engine.on('upgradeError', (err) => note('upgradeError', { sid: engine.id, err: String(err && err.message) }));
      engine.on('close', (reason, desc) =>
        note('engineClose', { sid: engine.id, reason, desc: desc && (desc.description || desc.message || String(desc)) }),
      );
    });
    socket.io.on('error', (err) => note('managerError', { err: String(err && err.message) }));
    socket.on('connect', () => {
      const engine = socket.io.engine;
      const first = c.timeline.every((e) => e.what !== 'connect');
      note('connect', { sid: engine.id, transport: engine.transport.name, recovered: socket.recovered, id: socket.id });
      if (!first) c.recoveries.push(socket.recovered);
      if (!socket.recovered || !c.joined) {
        // A fresh socket (the first, or a recovery that failed) joins; so
        // does one whose join was not acked before it disconnected.
        socket.emitWithAck('join', room).then(
          () => {
            c.joined = true;
          },
          (err) => note('joinFailed', { err: String(err && err.message) }),
        );
      }
    });
    socket.on('connect_error', (err) => note('connectError', { err: String(err && err.message) }));
    socket.on('disconnect', (reason, desc) =>
      note('disconnect', {
        reason,
        desc: desc && (desc.description && String(desc.description.message || desc.description)),
        offset: socket._lastOffset,
      }),
    );
    socket.on('message', (msg, offset) => {
      if (msg && msg.done !== undefined) {
        c.done = msg.done;
        return;
      }
      const engine = socket.io.engine;
      const sid = engine && engine.id;
      const transport = engine && engine.transport && engine.transport.name;
      const seg = c.segs[c.segs.length - 1];
      if (!seg || seg.sid !== sid || seg.transport !== transport) c.segs.push({ at: c.got.length, sid, transport });
      c.got.push(msg && msg.n);
      c.offsets.push(offset);
      c.times.push(now());
    });
    clients.push(c);
  }
  for (let i = 0; i < count; i++) {
    setTimeout(() => clients[i].socket.connect(), count > 1 ? Math.round((i * spread) / (count - 1)) : 0);
  }
  await waitUntil('every client joined', () => clients.every((c) => c.joined), spread + 60000).catch((err) => {
    const late = clients.filter((c) => !c.joined).map((c) => `${c.i} (${JSON.stringify(c.timeline.slice(-3))})`);
    throw new Error(`${err.message}: not joined: ${late.slice(0, 20).join('; ')}`);
  });
  // Engine ids after the upgrades settle (the owner is the node that holds
  // the session then).
  await sleep(500);
  process.stdout.write(`ready ${JSON.stringify({ t: now(), sids: clients.map((c) => c.socket.io.engine.id) })}\n`);
  step('waiting for done');
  const budget = Number(process.env.FLEET_BUDGET_MS || 120000);
  await waitUntil('done in every client', () => clients.every((c) => c.done !== null), budget).catch(() => {});
  await sleep(500); // anything after `done` would be a duplicate
  const totals = clients.map((c) => c.done).filter((d) => d !== null);
  const total = totals.length ? Math.max(...totals) : Math.max(0, ...clients.map((c) => Math.max(0, ...c.got)));
  const report = clients.map((c) => {
    const t = tally(c.got, total);
    const bad = t.lost + t.duplicated + t.reordered + t.unexpected > 0 || c.done !== total || c.recoveries.some((r) => !r);
    return {
      i: c.i,
      transports: transports.join('+'),
      connected: c.socket.connected,
      received: c.got.length,
      done: c.done,
      ...t,
      recoveries: c.recoveries,
      timeline: c.timeline,
      runs: bad ? runs(c) : undefined,
    };
  });
  process.stdout.write(`report ${JSON.stringify({ total, clients: report })}\n`);
  for (const c of clients) c.socket.close();
  return `${count} clients reported`;
}

async function publish() {
  const room = process.env.FLEET_ROOM || 'kill';
  const rate = Number(process.env.PUBLISH_RATE || 200);
  const duration = Number(process.env.PUBLISH_MS || 20000);
  const socket = connect(['websocket']);
  await connected(socket);
  step('publishing');
  const total = Math.max(1, Math.round((rate * duration) / 1000));
  const begin = Date.now();
  let n = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((Date.now() - begin) * rate) / 1000) + 1);
      while (n < due) {
        n++;
        socket.emit('broadcast', { room, msg: { n } });
      }
      if (n >= total) return resolve();
      setTimeout(tick, 2);
    };
    tick();
  });
  // In order after every message: the same socket, the same node.
  await socket.timeout(10000).emitWithAck('broadcast', { room, msg: { done: total } });
  process.stdout.write(`published ${total} in ${Date.now() - begin} ms\n`);
  socket.close();
  return `${total} messages`;
}

const SCENARIOS = { drops, fleet, kill, publish };

async function main() {
  const name = process.argv[2];
  const run = SCENARIOS[name];
  if (!run) {
    process.stderr.write(`usage: node recovery.mjs ${Object.keys(SCENARIOS).join('|')}\n`);
    return 2;
  }
  const budget = Number(process.env.RINGWAY_TIMEOUT_MS) || 90000;
  let timer;
  const overall = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`scenario timed out after ${budget} ms`)), budget);
  });
  const failed = new Promise((_, reject) => process.on('unhandledRejection', reject));
  try {
    const summary = await Promise.race([run(), overall, failed]);
    process.stdout.write(`ok ${name}: ${summary}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`FAIL ${name} (${BASE}) during '${currentStep}': ${err && err.message ? err.message : err}\n`);
    return 1;
  } finally {
    clearTimeout(timer);
  }
}

main().then((code) => setTimeout(() => process.exit(code), 50));
