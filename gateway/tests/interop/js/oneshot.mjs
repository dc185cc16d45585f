// A client that reads the way the official protocol suites do: one
// one-shot `message` listener, registered again after each frame, so a
// frame that arrives in the same turn of the event loop as the one before
// it is never seen. Against the echo application (RINGWAY_URL), 20 times:
// open a WebSocket session, CONNECT to `/`, and expect the CONNECT answer,
// then the `auth` event, each to its own listener, then an echo.
//
// The server writes each frame on its own, so a client that keeps up
// reads each in its own turn. One that does not (a loaded machine) can
// still read two frames in one turn from the socket, whatever the server
// does: a second listener records every frame, so such a round is told
// from a frame never sent. Exit status 0 when every frame of every round
// was sent and at most one round of the 20 lost one to the listener that
// way (a server that wrote two frames at once loses one in every round).
import WebSocket from 'ws';

const base = (process.env.RINGWAY_URL || 'http://127.0.0.1:3000').replace(/^http/, 'ws');
const ROUNDS = 20;
const MAX_LATE_ROUNDS = 1;
/// How long a frame may take (pings keep coming meanwhile).
const WAIT_MS = 3000;

/// The next frame the one-shot listener sees that is not a ping (pings
/// are answered); `null` if none came within the wait.
function nextNonPing(socket) {
  const deadline = Date.now() + WAIT_MS;
  return new Promise((resolve) => {
    const listen = () => {
      const left = deadline - Date.now();
      if (left <= 0) return resolve(null);
      const timer = setTimeout(() => {
        socket.off('message', onFrame);
        resolve(null);
      }, left);
      const onFrame = (data) => {
        clearTimeout(timer);
        const frame = String(data);
        if (frame === '2') {
          socket.send('3');
          listen();
        } else {
          resolve(frame);
        }
      };
      socket.once('message', onFrame);
    };
    listen();
  });
}

/// One round: `true` if every frame reached the one-shot listener,
/// `false` if one came in the same turn as the frame before it (recorded
/// by the second listener); throws if a frame never came.
async function round(i) {
  const socket = new WebSocket(`${base}/socket.io/?EIO=4&transport=websocket`);
  const all = [];
  socket.on('message', (data) => all.push(String(data)));
  const open = nextNonPing(socket);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`round ${i}: no WebSocket handshake within 5 s`)), 5000);
    socket.once('open', () => { clearTimeout(timer); resolve(); });
    socket.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
  const expect = async (what, matches, got) => {
    if (got !== null) {
      if (!matches(got)) throw new Error(`round ${i}: expected ${what}, got ${got}`);
      return true;
    }
    if (all.some(matches)) return false; // sent, but read in the same turn as the frame before
    throw new Error(`round ${i}: ${what} never came (frames: ${JSON.stringify(all)})`);
  };
  try {
    if (!(await expect('the handshake', (f) => f.startsWith('0{'), await open))) return false;
    socket.send('40');
    if (!(await expect('the CONNECT answer', (f) => f.startsWith('40{'), await nextNonPing(socket)))) return false;
    if (!(await expect('the auth event', (f) => f.startsWith('42["auth"'), await nextNonPing(socket)))) return false;
    socket.send('42["message","one-shot"]');
    return await expect('the echo', (f) => f === '42["message-back","one-shot"]', await nextNonPing(socket));
  } finally {
    socket.close();
  }
}

try {
  let late = 0;
  for (let i = 0; i < ROUNDS; i++) {
    if (!(await round(i))) late += 1;
  }
  if (late > MAX_LATE_ROUNDS) {
    throw new Error(`${late} of ${ROUNDS} rounds read two frames in one turn`);
  }
  console.log(`ok oneshot: ${ROUNDS} rounds, every frame sent, ${ROUNDS - late} with every frame seen by a one-shot listener`);
  process.exit(0);
} catch (err) {
  console.error(`FAIL oneshot: ${err.message}`);
  process.exit(1);
}
