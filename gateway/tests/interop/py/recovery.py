#!/usr/bin/env python3
"""Connection state recovery with python-socketio (the official Python
client), driven by gateway/tests/recovery.rs.

    RINGWAY_URL=http://127.0.0.1:3000 FLEET_CLIENTS=9 python3 recovery.py fleet

python-socketio has no connection state recovery of its own, but the
protocol needs nothing it does not expose: the CONNECT payload may be a
function, called at every (re)connection, and the CONNECT answer and the
events are visible on the wire. Each client here remembers the `pid` of its
CONNECT answer and the offset (last argument) of the last recoverable event
it received, and reconnects with `{"pid": ..., "offset": ...}`; it is
recovered when the answer carries the same pid again.

Events are recorded as the client's read loop receives them (its handlers
run in threads of their own, in no fixed order), which is also the order
that decides the last offset.

Prints `ready <json>` once every client joined, then `report <json>` once
every client received `done` (or the budget ran out), like the JavaScript
fleet (recovery.mjs).
"""

import json
import os
import sys
import threading
import time

import engineio
import socketio

BASE = os.environ.get('RINGWAY_URL', 'http://127.0.0.1:3000').rstrip('/')
KINDS = [['websocket'], ['polling', 'websocket'], ['polling']]


class RecoveringClient:
    def __init__(self, i, room):
        self.i = i
        self.room = room
        self.transports = KINDS[i % len(KINDS)]
        self.lock = threading.Lock()
        self.pid = None
        self.asked = None
        self.offset = None
        self.got = []
        self.done = None
        self.connects = 0
        self.recoveries = []
        self.disconnects = []
        self.joined = threading.Event()
        self.sio = socketio.Client(
            reconnection=True,
            reconnection_delay=0.1,
            reconnection_delay_max=0.4,
            randomization_factor=0.2,
        )
        receive = self.sio.eio._receive_packet

        def on_wire(pkt):
            if pkt.packet_type == engineio.packet.MESSAGE and isinstance(pkt.data, str):
                self.wire(pkt.data)
            return receive(pkt)

        self.sio.eio._receive_packet = on_wire
        self.sio.on('connect', self.on_connect)
        self.sio.on('disconnect', lambda reason=None: self.disconnects.append(str(reason)))

    def auth(self):
        """The CONNECT payload: the recovery request once there is a pid."""
        with self.lock:
            self.asked = self.pid
            if self.pid is None:
                return {}
            if self.offset is None:
                return {'pid': self.pid}
            return {'pid': self.pid, 'offset': self.offset}

    def wire(self, data):
        # Socket.IO packets of namespace "/": CONNECT answers and events.
        if data.startswith('0{'):
            answer = json.loads(data[1:])
            with self.lock:
                recovered = answer.get('pid') is not None and answer.get('pid') == self.asked
                self.pid = answer.get('pid')
                self.connects += 1
                if self.connects > 1:
                    self.recoveries.append(recovered)
                self.recovered = recovered
        elif data.startswith('2['):
            args = json.loads(data[1:])
            with self.lock:
                if self.pid is not None and len(args) >= 2 and isinstance(args[-1], str):
                    self.offset = args[-1]
                    args = args[:-1]
                if args[0] == 'tick':
                    self.got.append(args[1])
                elif args[0] == 'done':
                    self.done = args[1]

    def on_connect(self):
        with self.lock:
            fresh = not getattr(self, 'recovered', False)
        if fresh:
            # The first socket, or a recovery that failed: join the room.
            threading.Thread(target=self.join, daemon=True).start()

    def join(self):
        try:
            self.sio.call('join', self.room, timeout=10)
            self.joined.set()
        except Exception as exc:  # noqa: BLE001 (reported, not raised)
            self.disconnects.append(f'join failed: {exc}')

    def start(self):
        self.sio.connect(BASE, transports=self.transports, auth=self.auth, wait_timeout=10)

    def report(self):
        with self.lock:
            return {
                'i': self.i,
                'transports': '+'.join(self.transports),
                'connected': self.sio.connected,
                'connects': self.connects,
                'recoveries': self.recoveries,
                'disconnects': self.disconnects,
                'done': self.done,
                'got': self.got,
            }


def fleet():
    count = int(os.environ.get('FLEET_CLIENTS', '9'))
    room = os.environ.get('FLEET_ROOM', 'chaos')
    budget = int(os.environ.get('FLEET_BUDGET_MS', '60000')) / 1000
    clients = [RecoveringClient(i, room) for i in range(count)]
    for c in clients:
        c.start()
    deadline = time.time() + 30
    for c in clients:
        if not c.joined.wait(max(0.0, deadline - time.time())):
            raise RuntimeError(f'client {c.i} ({c.transports}) did not join: {c.disconnects}')
    time.sleep(0.3)
    sids = [c.sio.eio.sid for c in clients]
    print('ready ' + json.dumps({'sids': sids}), flush=True)
    deadline = time.time() + budget
    while time.time() < deadline and any(c.done is None for c in clients):
        time.sleep(0.05)
    time.sleep(0.3)  # anything after `done` would be a duplicate
    print('report ' + json.dumps([c.report() for c in clients]), flush=True)
    for c in clients:
        try:
            c.sio.disconnect()
        except Exception:  # noqa: BLE001
            pass


def main():
    if len(sys.argv) != 2 or sys.argv[1] != 'fleet':
        print('usage: recovery.py fleet', file=sys.stderr)
        return 2
    try:
        fleet()
    except Exception as exc:  # noqa: BLE001
        print(f'FAIL fleet ({BASE}): {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    code = main()
    sys.stdout.flush()
    os._exit(code)
