#!/usr/bin/env node
// Reference peer: the official Socket.IO (socket.io 4 / engine.io 6) server
// running the `echo` application of docs/ECHO_APP.md, so that Ringway's
// interop tests and benchmarks can be checked against the real thing.
//
//   node server.js [--host 127.0.0.1] [--port 3000] [--path /socket.io/]
//                  [--namespace / --namespace /custom ...]
//                  [--ping-interval MS] [--ping-timeout MS]
//                  [--max-payload BYTES] [--cors-origin ORIGIN] [--recovery]
//                  [--redis redis://127.0.0.1:6379/] [--allow-eio3] [--parser msgpack]
//
// Every flag can also be given by environment variable: HOST, PORT, SIO_PATH,
// NAMESPACES (comma separated), PING_INTERVAL, PING_TIMEOUT, MAX_PAYLOAD,
// CORS_ORIGIN, RECOVERY=1, REDIS_URL, ALLOW_EIO3=1, PARSER. Flags win over
// the environment. `--allow-eio3` takes Socket.IO v2 clients (allowEIO3);
// `--parser msgpack` speaks socket.io-msgpack-parser (as Ringway's
// `--parser msgpack`).
// `--redis URL` turns the Redis adapter (@socket.io/redis-adapter over the
// `redis` client) on, for multi-node runs: room emits and broadcasts reach
// the sockets of every node started with the same Redis. With `--recovery`
// too, the adapter is @socket.io/redis-streams-adapter instead, the one
// that supports connection state recovery across nodes. Each node still
// needs sticky sessions for long-polling (the reference's own rule); the
// `broadcast` ack then counts the room's members on this node only.
// `--port 0` picks a free port. Once bound, prints
// `listening on http://HOST:PORT` on stdout.
'use strict';

const http = require('http');
const { Server: SioServer } = require('socket.io');
const engine = require('engine.io');

const ASK_TIMEOUT_MS = 5000;

function parseArgs(argv, env) {
  const opts = {
    host: env.HOST || '127.0.0.1',
    port: env.PORT !== undefined ? Number(env.PORT) : 3000,
    path: env.SIO_PATH || '/socket.io/',
    namespaces: env.NAMESPACES ? env.NAMESPACES.split(',').filter(Boolean) : [],
    pingInterval: env.PING_INTERVAL !== undefined ? Number(env.PING_INTERVAL) : 25000,
    pingTimeout: env.PING_TIMEOUT !== undefined ? Number(env.PING_TIMEOUT) : 20000,
    maxPayload: env.MAX_PAYLOAD !== undefined ? Number(env.MAX_PAYLOAD) : 1000000,
    corsOrigin: env.CORS_ORIGIN || null,
    recovery: env.RECOVERY === '1' || env.RECOVERY === 'true',
    redis: env.REDIS_URL || null,
    allowEio3: env.ALLOW_EIO3 === '1' || env.ALLOW_EIO3 === 'true',
    parser: env.PARSER || 'default',
  };
  let cliNamespaces = null;
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      if (i + 1 >= argv.length) usage(`missing value for ${arg}`);
      return argv[++i];
    };
    const num = () => {
      const v = next();
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0) usage(`bad number for ${arg}: ${v}`);
      return n;
    };
    switch (arg) {
      case '--host': opts.host = next(); break;
      case '--port': opts.port = num(); break;
      case '--path': opts.path = next(); break;
      case '--namespace': (cliNamespaces = cliNamespaces || []).push(next()); break;
      case '--ping-interval': opts.pingInterval = num(); break;
      case '--ping-timeout': opts.pingTimeout = num(); break;
      case '--max-payload': opts.maxPayload = num(); break;
      case '--cors-origin': opts.corsOrigin = next(); break;
      case '--recovery': opts.recovery = true; break;
      case '--redis': opts.redis = next(); break;
      case '--allow-eio3': opts.allowEio3 = true; break;
      case '--parser': opts.parser = next(); break;
      case '-h': case '--help': usage(null); break;
      default: usage(`unknown argument: ${arg}`);
    }
  }
  if (cliNamespaces) opts.namespaces = cliNamespaces;
  if (opts.parser !== 'default' && opts.parser !== 'msgpack') usage(`unknown parser: ${opts.parser}`);
  if (opts.namespaces.length === 0) opts.namespaces = ['/'];
  opts.namespaces = opts.namespaces.map((n) => (n.startsWith('/') ? n : '/' + n));
  return opts;
}

function usage(err) {
  const text =
    'usage: node server.js [--host H] [--port P] [--path /socket.io/] [--namespace NS]...\n' +
    '                      [--ping-interval MS] [--ping-timeout MS] [--max-payload BYTES]\n' +
    '                      [--cors-origin ORIGIN] [--recovery] [--redis URL] [--allow-eio3] [--parser msgpack]\n';
  if (err) {
    process.stderr.write(`server.js: ${err}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

// The last argument of an event handler is the ack callback when the client
// asked for one.
function splitAck(args) {
  if (args.length > 0 && typeof args[args.length - 1] === 'function') {
    return args.pop();
  }
  return null;
}

// The Socket.IO `echo` application (docs/ECHO_APP.md), for one namespace.
function onConnection(socket) {
  const nsp = socket.nsp;
  socket.emit('auth', socket.handshake.auth || {});

  socket.on('message', (...args) => {
    splitAck(args);
    socket.emit('message-back', ...args);
  });

  socket.on('message-with-ack', (...args) => {
    const ack = splitAck(args);
    if (ack) ack(...args);
  });

  socket.on('echo', (...args) => {
    const ack = splitAck(args);
    socket.emit('echo', ...args);
    if (ack) ack(...args);
  });

  socket.on('join', (...args) => {
    const ack = splitAck(args);
    socket.join(args[0]);
    if (ack) ack(true);
  });

  socket.on('leave', (...args) => {
    const ack = splitAck(args);
    socket.leave(args[0]);
    if (ack) ack(true);
  });

  socket.on('broadcast', (...args) => {
    const ack = splitAck(args);
    const req = args[0] || {};
    nsp.to(req.room).emit('message', req.msg);
    if (ack) {
      const members = nsp.adapter.rooms.get(req.room);
      ack(members ? members.size : 0);
    }
  });

  socket.on('ask', (...args) => {
    splitAck(args);
    socket.timeout(ASK_TIMEOUT_MS).emit('question', ...args, (err, ...answer) => {
      if (err) socket.emit('answer-timeout');
      else socket.emit('answer', ...answer);
    });
  });

  // The room emitted into by the server itself, for the load test's `push
  // --server-driver`: `message {seq, t}` (t: wall-clock nanoseconds) into
  // `room` at `rate` per second (0: as fast as the event loop allows) for
  // `duration_ms`, then `drive-done` with the count to the asking socket.
  socket.on('drive', (...args) => {
    splitAck(args);
    const req = args[0] || {};
    const rate = Number(req.rate) || 0;
    const duration = Number(req.duration_ms) || 1000;
    const pad = req.pad > 0 ? 'x'.repeat(req.pad) : null;
    const started = performance.now();
    let seq = 0;
    const emitOne = () => {
      const msg = { seq, t: Math.round((performance.timeOrigin + performance.now()) * 1e6) };
      if (pad) msg.pad = pad;
      nsp.to(req.room).emit('message', msg);
      seq++;
    };
    const total = Math.round((duration / 1000) * rate);
    const tick = () => {
      const elapsed = performance.now() - started;
      if (elapsed >= duration) {
        while (rate > 0 && seq < total) emitOne();
        socket.emit('drive-done', seq);
        return;
      }
      if (rate > 0) {
        const due = Math.min(Math.floor((elapsed / 1000) * rate), total);
        while (seq < due) emitOne();
        setTimeout(tick, 1);
      } else {
        for (let i = 0; i < 20; i++) emitOne();
        setImmediate(tick);
      }
    };
    tick();
  });

  socket.on('server-disconnect', () => {
    socket.disconnect(false);
  });

  socket.on('server-close', () => {
    socket.conn.close();
  });
}

// The Redis adapter for `--redis URL`: a publishing and a subscribing
// connection, both connected before the server starts.
async function redisAdapter(url) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on('error', (err) => process.stderr.write(`server.js: redis: ${err.message}\n`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  // The connections end with the process (closing them by hand makes the
  // client reject its pending subscription commands noisily).
  return { adapter: createAdapter(pubClient, subClient) };
}

// The Redis Streams adapter for `--redis URL --recovery`: one connection.
async function redisStreamsAdapter(url) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-streams-adapter');
  const client = createClient({ url });
  client.on('error', (err) => process.stderr.write(`server.js: redis: ${err.message}\n`));
  await client.connect();
  return { adapter: createAdapter(client) };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2), process.env);
  let redis = null;
  if (opts.redis) {
    redis = opts.recovery ? await redisStreamsAdapter(opts.redis) : await redisAdapter(opts.redis);
  }
  // `*` cannot be combined with credentials; any other origin allows them.
  const cors = opts.corsOrigin
    ? { origin: opts.corsOrigin, credentials: opts.corsOrigin !== '*' }
    : undefined;
  const common = {
    pingInterval: opts.pingInterval,
    pingTimeout: opts.pingTimeout,
    maxHttpBufferSize: opts.maxPayload,
    allowEIO3: opts.allowEio3,
    cors,
    // Both servers share one HTTP server: neither may kill the other's upgrades.
    destroyUpgrade: false,
  };

  const sioPath = opts.path.replace(/\/+$/, '') || '/';
  const httpServer = http.createServer((req, res) => {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  });
  // WebSocket upgrades for any other path are refused.
  httpServer.on('upgrade', (req, sock) => {
    const url = req.url || '';
    if (!url.startsWith('/engine.io/') && !url.startsWith(sioPath + '/')) {
      sock.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
    }
  });

  // Plain Engine.IO echo at /engine.io/.
  const eio = engine.attach(httpServer, { ...common, path: '/engine.io' });
  eio.on('connection', (socket) => {
    socket.on('message', (data) => socket.send(data));
  });

  // Socket.IO application.
  const io = new SioServer(httpServer, {
    ...common,
    path: sioPath,
    serveClient: false,
    connectionStateRecovery: opts.recovery ? {} : undefined,
    adapter: redis ? redis.adapter : undefined,
    parser: opts.parser === 'msgpack' ? require('socket.io-msgpack-parser') : undefined,
  });
  const served = new Set(opts.namespaces);
  if (!served.has('/')) {
    // The main namespace always exists in socket.io: refuse it like any other.
    io.of('/').use((_socket, next) => next(new Error('Invalid namespace')));
  }
  for (const name of served) io.of(name).on('connection', onConnection);

  httpServer.listen(opts.port, opts.host, () => {
    const { port } = httpServer.address();
    const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
    process.stdout.write(`listening on http://${host}:${port}\n`);
  });

  const shutdown = () => {
    io.close();
    eio.close();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}

main().catch((err) => {
  process.stderr.write(`server.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
