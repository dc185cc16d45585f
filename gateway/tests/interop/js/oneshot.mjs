// A client that reads the way the official protocol suites do: one
// one-shot `message` listener, registered again after each frame, so a
// frame that arrives in the same turn of the event loop as the one before
// it is never seen. Against the echo application (RINGWAY_URL), 20 times:
// open a WebSocket session, CONNECT to `/`, and expect the CONNECT answer,
// then the `auth` event, each to its own listener, then an echo.
// Exit status 0 when every round saw all three.
import WebSocket from 'ws';

const base = (process.env.RINGWAY_URL || 'http://127.0.0.1:3000').replace(/^http/, 'ws');
const ROUNDS = 20;

function next(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no frame within 2 s (a frame was lost to the listener)')), 2000);
    socket.once('message', (data) => {
      clearTimeout(timer);
      resolve(String(data));
    });
  });
}

async function nextNonPing(socket) {
  for (;;) {
    const frame = await next(socket);
    if (frame !== '2') return frame;
    socket.send('3');
  }
}

async function round(i) {
  const socket = new WebSocket(`${base}/socket.io/?EIO=4&transport=websocket`);
  const open = next(socket);
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  const handshake = await open;
  if (!handshake.startsWith('0{')) throw new Error(`round ${i}: handshake ${handshake}`);
  socket.send('40');
  const connected = await nextNonPing(socket);
  if (!connected.startsWith('40{')) throw new Error(`round ${i}: expected the CONNECT answer, got ${connected}`);
  const auth = await nextNonPing(socket);
  if (!auth.startsWith('42["auth"')) throw new Error(`round ${i}: expected the auth event, got ${auth}`);
  socket.send('42["message","one-shot"]');
  const echo = await nextNonPing(socket);
  if (echo !== '42["message-back","one-shot"]') throw new Error(`round ${i}: expected the echo, got ${echo}`);
  socket.close();
}

try {
  for (let i = 0; i < ROUNDS; i++) await round(i);
  console.log(`ok oneshot: ${ROUNDS} rounds, every frame seen by a one-shot listener`);
  process.exit(0);
} catch (err) {
  console.error(`FAIL oneshot: ${err.message}`);
  process.exit(1);
}
