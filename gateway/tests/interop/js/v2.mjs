#!/usr/bin/env node
// Interop scenarios run with the official Socket.IO v2 client
// (socket.io-client 2.x from npm, installed as `socket.io-client-v2`:
// Engine.IO v3, Socket.IO protocol v4) against a server that runs the
// `echo` application of docs/ECHO_APP.md with `--allow-eio3` and the
// namespaces `/` and `/custom`.
//
//   RINGWAY_URL=http://127.0.0.1:3000 node v2.mjs <scenario>
//   node v2.mjs --list
//
// The same contract as run.mjs: exit 0 and one `ok <scenario>: <what was
// checked> [sids <engine ids>]` line on stdout on success; non-zero and
// `FAIL <scenario>: <why>` on stderr on failure. Env: RINGWAY_URL,
// RINGWAY_PATH (default /socket.io/), RINGWAY_TIMEOUT_MS (overrides every
// budget). Run by gateway/tests/eio3.rs, against one gateway and through a
// round-robin nginx in front of three.
//
// In Node, socket.io-client 2 polls with `b64=1` (its XHR has no binary
// support: binary travels as `b4<base64>` in text payloads) and sends
// binary WebSocket frames; browsers poll with binary payloads (tested in
// Rust with raw requests, gateway/tests/eio3.rs).

import { inspect, isDeepStrictEqual } from 'node:util';
import ioV2 from 'socket.io-client-v2';
import { io as ioV4 } from 'socket.io-client';

const BASE = (process.env.RINGWAY_URL || 'http://127.0.0.1:3000').replace(/\/+$/, '');
const SIO_PATH = process.env.RINGWAY_PATH || '/socket.io/';

// ---------------------------------------------------------------------------
// Helpers

let currentStep = 'starting';
function step(text) {
  currentStep = text;
}

const cleanups = [];
function track(closeFn) {
  cleanups.push(closeFn);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with the args of the next `event`; rejects after `timeout` ms. */
function waitFor(emitter, event, timeout = 5000, what = '') {
  const p = new Promise((resolve, reject) => {
    const handler = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for '${event}'${what ? ` (${what})` : ''}`));
    }, timeout);
    emitter.once(event, handler);
  });
  p.catch(() => {});
  return p;
}

/** Records every `event` and lets the scenario wait for the first n. */
function collector(emitter, event) {
  const items = [];
  let waiters = [];
  emitter.on(event, (...args) => {
    items.push(args);
    waiters = waiters.filter((w) => {
      if (items.length < w.n) return true;
      clearTimeout(w.timer);
      w.resolve(items.slice(0, w.n));
      return false;
    });
  });
  return {
    items,
    until(n, timeout = 5000) {
      if (items.length >= n) return Promise.resolve(items.slice(0, n));
      return new Promise((resolve, reject) => {
        const w = { n, resolve };
        w.timer = setTimeout(() => {
          waiters = waiters.filter((x) => x !== w);
          reject(new Error(`timed out after ${timeout} ms: got ${items.length} of ${n} '${event}' events`));
        }, timeout);
        waiters.push(w);
      });
    },
  };
}

function norm(v) {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, norm(x)]));
  return v;
}

function assertSame(actual, expected, what) {
  const a = norm(actual);
  const b = norm(expected);
  if (!isDeepStrictEqual(a, b)) throw new Error(`${what}: got ${short(a)}, expected ${short(b)}`);
}

function short(v) {
  return inspect(v, { depth: 8, maxArrayLength: 12, maxStringLength: 120, breakLength: Infinity });
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** A socket.io-client 2 socket with its own Manager, no reconnection. */
function v2(nsp = '/', opts = {}) {
  const socket = ioV2(BASE + nsp, { path: SIO_PATH, forceNew: true, reconnection: false, ...opts });
  track(() => socket.close());
  // Any error the client reports fails the scenario unless it expects one.
  socket.on('connect_error', (err) => fail(`connect_error on ${nsp}: ${err && err.message ? err.message : err}`));
  watchDisconnect(socket, nsp);
  return socket;
}

/** A socket.io-client 4 socket, for scenarios that mix both versions. */
function v4(nsp = '/', opts = {}) {
  const socket = ioV4(BASE + nsp, { path: SIO_PATH, forceNew: true, reconnection: false, ...opts });
  track(() => socket.disconnect());
  return socket;
}

let failScenario = () => {};
/** Set by a scenario that expects the server to disconnect it. */
let disconnectExpected = false;

/** A disconnect nobody asked for (a ping timeout, a transport error)
 * fails the scenario at once, with its reason. */
function watchDisconnect(socket, nsp) {
  socket.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect' && !disconnectExpected) {
      fail(`unexpected disconnect of ${nsp}: ${reason}`);
    }
  });
}

function fail(why) {
  failScenario(new Error(why));
}

async function connected(socket, what = 'connect') {
  if (socket.connected) return;
  await waitFor(socket, 'connect', 8000, what);
}

/** Every JSON type, nested, with text that is not ASCII (the v3 text
 * payload counts UTF-16 units: the emoji is two). */
const JSON_ARGS = [
  0,
  -12.5,
  1e21,
  'text ✓ é 😀',
  '',
  true,
  false,
  null,
  { a: { b: [1, 'x', null, { c: false }] }, 'ü': '😀😀' },
  [1, [2, [3, []]], {}],
  {},
  [],
];

async function roundTrip(socket, args, what = 'message round trip') {
  const back = waitFor(socket, 'message-back', 5000, what);
  socket.emit('message', ...args);
  const [...got] = await back;
  assertSame(got, args, what);
}

function sidOf(socket) {
  return socket.io.engine.id;
}

/** Events of every JSON type and binary, both ways, acks both ways. */
async function exchange(socket, label) {
  step(`${label}: events of every JSON type`);
  await roundTrip(socket, JSON_ARGS, `${label}: message-back of every JSON type`);
  for (const [i, v] of JSON_ARGS.entries()) {
    await roundTrip(socket, [v], `${label}: message-back of JSON value #${i}`);
  }

  step(`${label}: binary`);
  const bin = [Buffer.from([0, 1, 2, 255]), { nested: [Buffer.alloc(3000, 7), 'x'] }, Buffer.alloc(0)];
  await roundTrip(socket, bin, `${label}: message-back with binary`);
  const [back] = await (async () => {
    const p = waitFor(socket, 'message-back', 5000, 'binary arrives as Buffer');
    socket.emit('message', Buffer.from('bytes'));
    return p;
  })();
  check(Buffer.isBuffer(back), `${label}: binary came back as ${typeof back}, not a Buffer`);

  step(`${label}: ack client -> server`);
  const ackArgs = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no ack within 5 s')), 5000);
    socket.emit('message-with-ack', 'a', 2, { c: [Buffer.from([3])] }, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
  assertSame(ackArgs, ['a', 2, { c: [Buffer.from([3])] }], `${label}: ack args`);

  step(`${label}: ack server -> client`);
  const question = waitFor(socket, 'question', 5000, 'the server asks for an ack');
  const answer = waitFor(socket, 'answer', 5000, 'the server got the ack');
  socket.emit('ask', 'q?', Buffer.from([4, 2]));
  const q = await question;
  const cb = q.pop();
  check(typeof cb === 'function', `${label}: 'question' came without an ack callback`);
  assertSame(q, ['q?', Buffer.from([4, 2])], `${label}: question args`);
  cb('reply', { n: 1 }, Buffer.from([9]));
  assertSame(await answer, ['reply', { n: 1 }, Buffer.from([9])], `${label}: answer (the ack as the server got it)`);
}

// ---------------------------------------------------------------------------
// Scenarios

async function pollingUpgrade() {
  const socket = v2('/');
  const engine = socket.io.engine;
  const handshake = waitFor(engine, 'handshake');
  const upgrade = waitFor(engine, 'upgrade', 8000, 'upgrade to websocket');
  const auth = waitFor(socket, 'auth');
  check(engine.transport.name === 'polling', `first transport is '${engine.transport.name}'`);

  step('connecting (the server joins / at once)');
  await connected(socket);
  const [hs] = await handshake;
  assertSame(hs.upgrades, ['websocket'], 'handshake upgrades');
  check(hs.pingInterval > 0 && hs.pingTimeout > 0, `handshake ${JSON.stringify(hs)}`);
  assertSame(await auth, [{}], "'auth' (the default namespace's payload is {})");
  check(socket.id === engine.id, `socket.id ${socket.id} is not the engine id ${engine.id}`);

  await exchange(socket, 'polling then websocket');
  step('waiting for the upgrade');
  const [transport] = await upgrade;
  check(transport.name === 'websocket', `upgraded to '${transport.name}'`);
  await exchange(socket, 'websocket');
  // (Ringway's echo only: the reference peer does not answer `whoami`.)
  const who = await whoami(socket);
  if (who) {
    check(who.transport === 'websocket', `the server sees transport ${who.transport}`);
    check(who.sid === engine.id, `the server sees sid ${who.sid}, the client ${engine.id}`);
  }
  return `v2 handshake over polling, / joined at once, every JSON type, binary, acks both ways before and after the upgrade to websocket [sids ${sidOf(socket)}]`;
}

async function pollingOnly() {
  const socket = v2('/', { transports: ['polling'] });
  const engine = socket.io.engine;
  const handshake = waitFor(engine, 'handshake');
  step('connecting');
  await connected(socket);
  const [hs] = await handshake;
  check(engine.transport.supportsBinary === false, 'polling in Node is expected to ask b64=1');
  await exchange(socket, 'polling');

  step('a burst of 40 emits, in order');
  const backs = collector(socket, 'message-back');
  const expected = [];
  for (let i = 0; i < 40; i++) {
    const args = [i, `😀-${i}-${'é'.repeat(i * 13)}`, { i, bin: Buffer.from([i]) }];
    expected.push(args);
    socket.emit('message', ...args);
  }
  const got = await backs.until(40, 8000);
  got.forEach((args, i) => assertSame(args, expected[i], `message-back #${i}`));

  step('heartbeat: the client pings, the server answers');
  const pongs = collector(engine, 'pong');
  await pongs.until(3, Math.max(8000, hs.pingInterval * 5));
  check(socket.connected && engine.transport.name === 'polling', 'still connected over polling');
  check(engine.id === hs.sid, 'the same session all along');
  return `polling only (b64): every JSON type, binary as base64, acks both ways, 40 emits in order, 3 pongs to the client's pings [sids ${sidOf(socket)}]`;
}

async function websocketOnly() {
  const socket = v2('/', { transports: ['websocket'] });
  const engine = socket.io.engine;
  const handshake = waitFor(engine, 'handshake');
  step('connecting');
  await connected(socket);
  const [hs] = await handshake;
  assertSame(hs.upgrades, [], 'no upgrades over websocket');
  await exchange(socket, 'websocket');
  step('heartbeat');
  const pongs = collector(engine, 'pong');
  await pongs.until(2, Math.max(8000, hs.pingInterval * 4));
  check(socket.connected, 'still connected');
  return `websocket only: every JSON type, binary frames, acks both ways, pongs [sids ${sidOf(socket)}]`;
}

/** The echo application's `whoami` answer; null without one in 3 s. */
async function whoami(socket) {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), 3000);
    socket.emit('whoami', (who) => {
      clearTimeout(t);
      resolve(who);
    });
  });
}

async function namespaceQuery() {
  step('connecting to /custom with a query');
  const root = v2('/', { transports: ['polling'] });
  await connected(root, 'root');
  const custom = root.io.socket('/custom', { query: { token: 'abc', x: 'a b&c=é' } });
  const auth = waitFor(custom, 'auth');
  await connected(custom, '/custom');
  assertSame(await auth, [{ token: 'abc', x: 'a b&c=é' }], "/custom's 'auth' (the namespace query as the CONNECT payload)");
  check(custom.id === `/custom#${root.io.engine.id}`, `socket.io-client 2 names its socket ${custom.id}`);
  await exchange(custom, '/custom');

  step('an unknown namespace is refused');
  const nope = root.io.socket('/nope');
  const [err] = await waitFor(nope, 'error', 5000, 'the ERROR packet for /nope');
  assertSame(err, { message: 'Invalid namespace' }, 'the error for /nope');
  check(root.connected && custom.connected, 'the other namespaces stay connected');
  await roundTrip(custom, ['still', 'there']);

  step('leaving /custom');
  custom.close();
  await sleep(100);
  await roundTrip(root, ['root still there']);
  return `/custom joined with its query as the CONNECT payload, events, binary and acks in it, /nope refused with an ERROR packet [sids ${sidOf(root)}]`;
}

async function rooms() {
  step('two v2 clients (polling, websocket) and a v4 client in one room');
  const a = v2('/', { transports: ['polling'] });
  const b = v2('/', { transports: ['websocket'] });
  const c = v4('/');
  watchDisconnect(c, '/ (v4)');
  const outsider = v2('/');
  await Promise.all([connected(a, 'a'), connected(b, 'b'), connected(c, 'c'), connected(outsider, 'outsider')]);
  const join = (s) =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no join ack')), 5000);
      s.emit('join', 'r1', (ok) => {
        clearTimeout(t);
        resolve(ok);
      });
    });
  for (const s of [a, b, c]) check((await join(s)) === true, 'join acked true');
  const got = [a, b, c, outsider].map((s) => collector(s, 'message'));

  step('a v2 client broadcasts into the room');
  // (The echo application's `broadcast` re-encodes `msg` as JSON: no binary.)
  const msg1 = { from: 'a', text: 'héllo 😀', n: [1.5, false, null] };
  a.emit('broadcast', { room: 'r1', msg: msg1 });
  for (const [i, coll] of got.slice(0, 3).entries()) {
    const [first] = await coll.until(1, 10000);
    // A v4 client with recovery on gets the offset as one more argument.
    assertSame(first.slice(0, 1), [msg1], `room message at member #${i}`);
    if (i < 2) check(first.length === 1, `a v2 client got ${first.length} arguments (no offsets for v2)`);
  }

  step('the v4 client broadcasts into the room');
  const msg2 = { from: 'c', n: [1, null, true] };
  c.emit('broadcast', { room: 'r1', msg: msg2 });
  for (const [i, coll] of got.slice(0, 3).entries()) {
    const second = (await coll.until(2, 10000))[1];
    assertSame(second.slice(0, 1), [msg2], `second room message at member #${i}`);
  }
  await sleep(300);
  check(got[3].items.length === 0, `the socket outside the room got ${short(got[3].items)}`);
  return `room broadcasts between v2 (polling, websocket) and v4 clients, nothing outside the room, no offsets for v2 [sids ${[a, b, outsider].map(sidOf).join(' ')} ${c.io.engine.id}]`;
}

async function serverDisconnect() {
  const socket = v2('/');
  await connected(socket);
  const sid = sidOf(socket);
  disconnectExpected = true;
  const disconnect = waitFor(socket, 'disconnect', 5000);
  socket.emit('server-disconnect');
  const [reason] = await disconnect;
  check(reason === 'io server disconnect', `disconnect reason '${reason}'`);
  return `server-side DISCONNECT seen as 'io server disconnect' [sids ${sid}]`;
}

const SCENARIOS = {
  'v2-polling-upgrade': { run: pollingUpgrade, budget: 20000 },
  'v2-polling-only': { run: pollingOnly, budget: 20000 },
  'v2-websocket-only': { run: websocketOnly, budget: 20000 },
  'v2-namespace-query': { run: namespaceQuery, budget: 20000 },
  'v2-rooms': { run: rooms, budget: 20000 },
  'v2-server-disconnect': { run: serverDisconnect },
};

async function main() {
  const name = process.argv[2];
  if (name === '--list') {
    process.stdout.write(Object.keys(SCENARIOS).join('\n') + '\n');
    return 0;
  }
  if (!name || !SCENARIOS[name]) {
    process.stderr.write(`usage: node v2.mjs <scenario> | --list\n${name ? `unknown scenario '${name}'\n` : ''}`);
    return 2;
  }
  const scenario = SCENARIOS[name];
  const budget = Number(process.env.RINGWAY_TIMEOUT_MS) || scenario.budget || 10000;
  let timer;
  const overall = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`scenario timed out after ${budget} ms`)), budget);
  });
  const failed = new Promise((_, reject) => {
    failScenario = reject;
    process.on('unhandledRejection', reject);
  });
  let code;
  try {
    const summary = await Promise.race([scenario.run(), overall, failed]);
    process.stdout.write(`ok ${name}: ${summary}\n`);
    code = 0;
  } catch (err) {
    process.stderr.write(`FAIL ${name} (${BASE}) during '${currentStep}': ${err && err.message ? err.message : err}\n`);
    code = 1;
  }
  clearTimeout(timer);
  for (const close of cleanups.reverse()) {
    try { close(); } catch { /* ignore */ }
  }
  return code;
}

main().then((code) => setTimeout(() => process.exit(code), 50));
