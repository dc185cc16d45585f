#!/usr/bin/env python3
"""Interop scenarios run with the official Python client (python-socketio's
synchronous socketio.Client) against a server running the `echo` application
of docs/ECHO_APP.md.

    RINGWAY_URL=http://127.0.0.1:3000 python3 run.py <scenario>
    python3 run.py --list

Exit 0 and one `ok <scenario>: <what was checked>` line on stdout on success;
non-zero and `FAIL <scenario>: <why>` on stderr on failure.
Env: RINGWAY_URL (default http://127.0.0.1:3000), RINGWAY_PATH (Socket.IO
path, default /socket.io/), RINGWAY_TIMEOUT_MS (overrides every budget).

python-socketio runs every received event handler in a thread of its own, so
handlers may run out of order. Order is therefore checked on the wire: the
Engine.IO packets are recorded as the client's read loop receives them.
"""

import json
import os
import sys
import threading
import time

import engineio
import socketio

BASE = os.environ.get('RINGWAY_URL', 'http://127.0.0.1:3000').rstrip('/')
SIO_PATH = os.environ.get('RINGWAY_PATH', '/socket.io/').strip('/')

# ---------------------------------------------------------------------------
# Shared helpers


class Fail(Exception):
    pass


_step = ['starting']


def step(text):
    """Names what the scenario is doing, for failure messages."""
    _step[0] = text


def check(cond, what):
    if not cond:
        raise Fail(what)


def same(actual, expected, what):
    check(actual == expected, f'{what}: got {actual!r}, expected {expected!r}')


class Events:
    """Thread-safe record of the events one client received, per namespace."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items = {}

    def record(self, name, args, namespace='/'):
        with self.cond:
            self.items.setdefault((namespace, name), []).append(tuple(args))
            self.cond.notify_all()

    def get(self, name, namespace='/'):
        with self.cond:
            return list(self.items.get((namespace, name), []))

    def wait(self, name, n=1, timeout=5.0, namespace='/'):
        """Returns the first n recorded `name` events (argument tuples)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.items.get((namespace, name), [])) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = len(self.items.get((namespace, name), []))
                    raise Fail(f"timed out after {timeout} s: got {got} of {n} '{name}' events on {namespace}")
                self.cond.wait(left)
            return list(self.items[(namespace, name)][:n])

    def expect_no_more(self, name, count, seconds, namespace='/'):
        time.sleep(seconds)
        got = self.get(name, namespace)
        check(len(got) == count, f"unexpected '{name}' on {namespace}: {got[count:]!r}")


_clients = []


def client(namespaces=('/',), **kwargs):
    """A socketio.Client (no reconnection unless asked) whose events are recorded
    in `client.events` and whose received Engine.IO packets are recorded, in
    wire order, in `client.wire`."""
    kwargs.setdefault('reconnection', False)
    sio = socketio.Client(**kwargs)
    ev = Events()
    sio.events = ev
    for ns in namespaces:
        sio.on('*', (lambda ns: lambda event, *args: ev.record(event, args, ns))(ns), namespace=ns)
        sio.on('connect', (lambda ns: lambda: ev.record('connect', (), ns))(ns), namespace=ns)
        sio.on('disconnect', (lambda ns: lambda reason=None: ev.record('disconnect', (reason,), ns))(ns), namespace=ns)
        sio.on('connect_error', (lambda ns: lambda data=None: ev.record('connect_error', (data,), ns))(ns), namespace=ns)
    sio.wire = []
    sio.pings = 0
    receive = sio.eio._receive_packet

    def recording_receive(pkt):
        if pkt.packet_type == engineio.packet.MESSAGE:
            sio.wire.append(pkt.data)
        elif pkt.packet_type == engineio.packet.PING:
            sio.pings += 1
        return receive(pkt)

    sio.eio._receive_packet = recording_receive
    _clients.append(sio)
    return sio


def connect(sio, namespaces=('/',), **kwargs):
    sio.connect(BASE, namespaces=list(namespaces), socketio_path=SIO_PATH, wait_timeout=5, **kwargs)


def wire_events(sio, name):
    """Args of the `name` events received on `/` without ack id, in wire order
    (text packets only)."""
    out = []
    prefix = '2["' + name + '"'
    for data in list(sio.wire):
        if isinstance(data, str) and data.startswith(prefix):
            out.append(tuple(json.loads(data[1:])[1:]))
    return out


def round_trip(sio, args, what='message-back'):
    before = len(sio.events.get('message-back'))
    sio.emit('message', tuple(args))
    got = sio.events.wait('message-back', before + 1)[before]
    same(got, tuple(args), what)


MIXED_ARGS = [
    1, '2', {'3': [True]}, None, False, -42.5, '', 'ünïcødé ✓ 🚀 "quoted" \\ back',
    [1, [2, [3, []]]], {'nested': {'a': 1.5, 'b': 'x', 'c': [None, {}]}},
]


def burst_in_order(sio, n, what, window=None):
    """n emits in bursts of `window` (all at once if None); every message-back
    arrives exactly once, in wire order."""
    before = len(sio.events.get('message-back'))
    expected = [(i, f'payload-{i}-' + 'x' * (i * 37), {'i': i, 'even': i % 2 == 0}) for i in range(n)]
    window = window or n
    for start in range(0, n, window):
        for args in expected[start:start + window]:
            sio.emit('message', args)
        sio.events.wait('message-back', before + min(n, start + window), timeout=8)
    got = sio.events.get('message-back')[before:]
    check(sorted(got, key=lambda a: a[0]) == expected, f'{what}: replies differ from the emits')
    on_wire = [a for a in wire_events(sio, 'message-back') if isinstance(a[0], int)]
    same([a[0] for a in on_wire[-n:]], list(range(n)), f'{what}: order of replies on the wire')


# ---------------------------------------------------------------------------
# Scenarios


def polling_upgrade():
    sio = client()
    step('connecting (polling, then upgrade)')
    connect(sio)
    same(sio.eio.upgrades, ['websocket'], 'handshake upgrades (polling handshake)')
    same(sio.transport(), 'websocket', 'transport after connect')
    same(sio.events.wait('auth')[0], ({},), "'auth' event")
    step('round trip over websocket')
    round_trip(sio, MIXED_ARGS)
    return f'polling handshake offered websocket, upgraded, message-back echoed {len(MIXED_ARGS)} mixed args'


def polling_only():
    sio = client()
    step('connecting over polling')
    connect(sio, transports=['polling'])
    same(sio.transport(), 'polling', 'transport')
    same(sio.events.wait('auth')[0], ({},), "'auth' event")
    # python-engineio's client refuses a polling payload of more than 16
    # packets (Payload.max_decode_packets) and drops the session, so the
    # replies are kept below that by emitting in bursts of 8.
    step('50 emits in bursts of 8')
    burst_in_order(sio, 50, 'polling bursts', window=8)
    step('10 sequential round trips')
    for i in range(10):
        round_trip(sio, ['seq', i, MIXED_ARGS[i]], f'sequential round trip #{i}')
    hb = heartbeat_check(sio)
    same(sio.transport(), 'polling', 'transport at the end')
    return f'50 emits (bursts of 8) echoed once each, in wire order + 10 sequential round trips over polling; {hb}'


def polling_burst():
    # Ringway caps a polling answer at 16 packets (--max-poll-packets), so a
    # burst of replies reaches python-engineio over several polls instead of
    # one answer it would refuse. (The reference server fails this one.)
    sio = client()
    step('connecting over polling')
    connect(sio, transports=['polling'])
    sio.events.wait('auth')
    step('60 emits at once')
    burst_in_order(sio, 60, 'one burst')
    check(not sio.events.get('disconnect'), f"disconnected: {sio.events.get('disconnect')}")
    return '60 emits in one burst echoed once each, in wire order, over polling'


def heartbeat_check(sio):
    interval, timeout = sio.eio.ping_interval, sio.eio.ping_timeout
    if interval > 1:
        return 'heartbeat not checked (pingInterval > 1 s)'
    step('idle through several heartbeats')
    pings = sio.pings
    time.sleep(3 * interval + timeout)
    pings = sio.pings - pings
    check(not sio.events.get('disconnect'), f"disconnected while idle: {sio.events.get('disconnect')}")
    check(pings >= 2, f'only {pings} pings in {3 * interval + timeout:.1f} s (pingInterval {interval} s)')
    round_trip(sio, ['after-heartbeats'], 'message-back after heartbeats')
    return f'survived {pings} pings'


def websocket_only():
    sio = client()
    step('connecting over websocket')
    connect(sio, transports=['websocket'])
    same(sio.transport(), 'websocket', 'transport')
    same(sio.eio.upgrades, [], "handshake 'upgrades' over a direct websocket")
    same(sio.events.wait('auth')[0], ({},), "'auth' event")
    step('round trips')
    round_trip(sio, MIXED_ARGS)
    burst_in_order(sio, 50, 'websocket burst')
    same(sio.call('message-with-ack', {'ws': True}, timeout=3), {'ws': True}, 'ack over websocket')
    hb = heartbeat_check(sio)
    return f'websocket from the start (upgrades []), mixed args + 50 emits in wire order + ack; {hb}'


def binary_args():
    big = bytes((i * 31 + 7) & 0xff for i in range(3000))
    return (
        bytes([0, 1, 2, 3, 0x7f, 0x80, 0xfe, 0xff]),
        {'nested': {'buf': big, 'text': 'not binary'}, 'list': [b'\x09\x08\x07', 'x', 7]},
        [b'', {'deep': [['héllo wörld'.encode()]]}],
        'a plain string',
    )


def binary_over(transports):
    sio = client()
    step(f'connecting ({"+".join(transports)})')
    connect(sio, transports=transports)
    args = binary_args()
    step('message with binary args')
    sio.emit('message', args)
    got = sio.events.wait('message-back')[0]
    same(got, args, 'binary message-back')
    step('message-with-ack with binary args')
    ack = sio.call('message-with-ack', (args[0], 'mid', {'b': args[1]['nested']['buf']}), timeout=3)
    same(ack, (args[0], 'mid', {'b': args[1]['nested']['buf']}), 'binary ack args')
    single = sio.call('message-with-ack', {'blob': args[0], 'list': [args[2][1]]}, timeout=3)
    same(single, {'blob': args[0], 'list': [args[2][1]]}, 'binary ack (one arg)')
    same(sio.transport(), transports[-1], 'transport')
    return sio.transport()


def binary():
    used = [binary_over(['polling', 'websocket']), binary_over(['polling'])]
    return f'over {" and ".join(used)}: 5 binary values (nested, empty, 3000 B) echoed byte-exact; binary acks ok'


def ack_client_to_server():
    sio = client()
    step('connecting')
    connect(sio)

    step('callback ack')
    done = threading.Event()
    got = []

    def cb(*args):
        got.append(args)
        done.set()

    sio.emit('message-with-ack', (1, '2', {'3': [True]}), callback=cb)
    check(done.wait(3), 'no ack within 3 s')
    same(got[0], (1, '2', {'3': [True]}), 'callback ack args')

    step('call()')
    same(sio.call('message-with-ack', {'a': [1, 2]}, timeout=3), {'a': [1, 2]}, 'call() result (one arg)')
    same(sio.call('message-with-ack', ('x', 'y'), timeout=3), ('x', 'y'), 'call() result (two args)')

    step('20 concurrent acks')
    lock = threading.Lock()
    results = {}
    all_done = threading.Event()

    def make_cb(i):
        def cb(*args):
            with lock:
                results[i] = args
                if len(results) == 20:
                    all_done.set()
        return cb

    for i in range(20):
        sio.emit('message-with-ack', {'i': i, 's': f'v{i}'}, callback=make_cb(i))
    check(all_done.wait(5), f'only {len(results)} of 20 acks')
    for i in range(20):
        same(results[i], ({'i': i, 's': f'v{i}'},), f'ack #{i} (ids routed to the right callbacks)')

    step("'echo' with ack")
    same(sio.call('echo', ('e1', {'e': 2}), timeout=3), ('e1', {'e': 2}), "'echo' ack")
    same(sio.events.wait('echo')[0], ('e1', {'e': 2}), "'echo' event back")
    return 'callback ack, call() with 1 and 2 args, 20 concurrent acks in the right callbacks, echo event + ack'


def ack_server_to_client():
    sio = client()
    mode = {'delay': 0}
    questions = []

    def transform(args):
        return ('re:' + args[0], len(args), {'got': list(args)}, b'\xca\xfe')

    @sio.on('question')
    def question(*args):
        questions.append(args)
        if mode['delay']:
            time.sleep(mode['delay'])  # answers after the server's 5 s timeout
        return transform(args)

    step('connecting')
    connect(sio)

    step('ask, client acks')
    ask_args = ('q1', 42, {'k': [1, 2]})
    sio.emit('ask', ask_args)
    same(sio.events.wait('answer')[0], transform(ask_args), "'answer' args (the client's ack args, incl. binary)")
    same(questions[0], ask_args, "'question' args")
    check(any(isinstance(d, str) and d.startswith('2') and '["question"' in d and d[1:2].isdigit() for d in sio.wire),
          "'question' did not ask for an ack")

    step('ask, client acks only after 6 s (server timeout 5 s)')
    mode['delay'] = 6
    t0 = time.monotonic()
    sio.emit('ask', 'q2')
    sio.events.wait('answer-timeout', timeout=9)
    elapsed = time.monotonic() - t0
    check(4 <= elapsed <= 8, f"'answer-timeout' after {elapsed:.2f} s, expected about 5")
    time.sleep(max(0, 6.7 - (time.monotonic() - t0)))
    check(len(sio.events.get('answer')) == 1, f"late ack produced an 'answer': {sio.events.get('answer')[1:]}")
    return f"answer = ack args (with binary); ack after the timeout -> answer-timeout after {elapsed:.2f} s, late ack ignored"


def namespace():
    sio = client(namespaces=('/custom', '/'))
    step('connecting /custom and / on one client, auth {token: abc}')
    connect(sio, namespaces=('/custom', '/'), auth={'token': 'abc'})
    same(sio.events.wait('auth', namespace='/custom')[0], ({'token': 'abc'},), "'auth' on /custom")
    same(sio.events.wait('auth', namespace='/')[0], ({'token': 'abc'},), "'auth' on / (python sends one auth to every namespace)")
    sid_custom, sid_root = sio.get_sid('/custom'), sio.get_sid('/')
    check(sid_custom and sid_root and sid_custom != sid_root, f'socket ids {sid_custom} {sid_root}')

    step('messages stay in their namespace')
    sio.emit('message', 'on-custom', namespace='/custom')
    sio.emit('message', 'on-root')
    same(sio.events.wait('message-back', namespace='/custom')[0], ('on-custom',), 'message-back on /custom')
    same(sio.events.wait('message-back')[0], ('on-root',), 'message-back on /')
    time.sleep(0.2)
    same(len(sio.events.get('message-back', '/custom')) + len(sio.events.get('message-back')), 2, 'message-back count')
    same(sio.call('message-with-ack', 'ack-custom', namespace='/custom', timeout=3), 'ack-custom', 'ack on /custom')

    step('/ without auth')
    plain = client()
    connect(plain)
    same(plain.events.wait('auth')[0], ({},), "'auth' on / without auth")
    return "one Engine.IO session carrying /custom and / (auth {token:'abc'} on both), messages and acks per namespace; / without auth -> {}"


def connect_error():
    sio = client(namespaces=('/random',))
    step('connecting /random')
    try:
        connect(sio, namespaces=('/random',))
    except socketio.exceptions.ConnectionError as exc:
        error = str(exc)
    else:
        raise Fail('connect to /random succeeded')
    check('/random' in error, f'ConnectionError: {error}')
    data = sio.events.wait('connect_error', namespace='/random')[0][0]
    message = data.get('message') if isinstance(data, dict) else data
    same(message, 'Invalid namespace', 'connect_error message')
    check(not sio.events.get('connect', '/random'), '/random connected')
    return f"/random refused: connect_error 'Invalid namespace', connect() raised '{error}'"


def rooms_broadcast():
    a, b = client(), client()
    step('connecting A and B')
    connect(a)
    connect(b)

    step('A joins r1')
    same(a.call('join', 'r1', timeout=3), True, 'join ack (A)')
    step('A broadcasts to r1 (B not a member)')
    same(a.call('broadcast', {'room': 'r1', 'msg': {'n': 1}}, timeout=3), 1, 'broadcast ack (sockets reached)')
    same(a.events.wait('message')[0], ({'n': 1},), 'A message')
    b.events.expect_no_more('message', 0, 0.3)

    step('B joins r1, B broadcasts')
    same(b.call('join', 'r1', timeout=3), True, 'join ack (B)')
    same(b.call('broadcast', {'room': 'r1', 'msg': {'n': 2}}, timeout=3), 2, 'broadcast ack after B joined')
    same(a.events.wait('message', 2)[1], ({'n': 2},), 'A second message')
    same(b.events.wait('message')[0], ({'n': 2},), 'B message')

    step('B leaves r1, A broadcasts')
    same(b.call('leave', 'r1', timeout=3), True, 'leave ack (B)')
    same(a.call('broadcast', {'room': 'r1', 'msg': {'n': 3}}, timeout=3), 1, 'broadcast ack after B left')
    same(a.events.wait('message', 3)[2], ({'n': 3},), 'A third message')
    b.events.expect_no_more('message', 1, 0.3)
    a.events.expect_no_more('message', 3, 0)
    return 'join/leave ack true; broadcasts reach exactly the members (acks 1, 2, 1), sender included only as a member'


def server_disconnect():
    sio = client(reconnection=True, reconnection_delay=0.05, reconnection_delay_max=0.1, randomization_factor=0)
    step('connecting')
    connect(sio)
    first = sio.get_sid()
    step('server-disconnect')
    sio.emit('server-disconnect')
    reason = sio.events.wait('disconnect')[0][0]
    same(reason, sio.reason.SERVER_DISCONNECT, 'disconnect reason')
    step('no automatic reconnection')
    time.sleep(0.8)
    same(len(sio.events.get('connect')), 1, 'connect events (no reconnection expected)')
    check(not sio.connected, 'client still connected')
    step('manual reconnection')
    connect(sio)
    check(sio.get_sid() and sio.get_sid() != first, 'same socket id after a manual reconnection')
    round_trip(sio, ['after-manual-reconnect'])
    return f"disconnect reason '{reason}', no automatic reconnection in 0.8 s, manual connect() works with a new id"


def reconnect_after_close():
    sio = client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.3, randomization_factor=0)
    step('connecting')
    connect(sio)
    first, first_eio = sio.get_sid(), sio.eio.sid
    transport = sio.transport()
    same(transport, 'websocket', 'transport before server-close')
    step('server-close')
    sio.emit('server-close')
    reason = sio.events.wait('disconnect')[0][0]
    # python-engineio has no 'transport close': a WebSocket closed by the
    # server is a 'transport error', and the client reconnects. Had the server
    # sent an Engine.IO close packet (`1`) first, the reason would be 'server
    # disconnect' and python-socketio would NOT reconnect (the reference
    # server sends `1` only over polling; over WebSocket it just closes).
    same(reason, sio.reason.TRANSPORT_ERROR, 'disconnect reason after server-close over websocket')
    step('automatic reconnection')
    sio.events.wait('connect', 2, timeout=5)
    same(sio.events.wait('auth', 2)[1], ({},), "'auth' after reconnection")
    check(sio.get_sid() and sio.get_sid() != first, 'same socket id after reconnection')
    check(sio.eio.sid != first_eio, 'same Engine.IO sid after reconnection')
    round_trip(sio, ['after-reconnect', MIXED_ARGS[2]])
    return f"closed on {transport}: reason '{reason}', reconnected with new ids, round trip ok"


# ---------------------------------------------------------------------------
# CLI

SCENARIOS = {
    'polling-upgrade': (polling_upgrade, 10),
    'polling-only': (polling_only, 10),
    'polling-burst': (polling_burst, 10),
    'websocket-only': (websocket_only, 10),
    'binary': (binary, 10),
    'ack-client-to-server': (ack_client_to_server, 10),
    'ack-server-to-client': (ack_server_to_client, 12),
    'namespace': (namespace, 10),
    'connect-error': (connect_error, 10),
    'rooms-broadcast': (rooms_broadcast, 10),
    'server-disconnect': (server_disconnect, 10),
    'reconnect-after-close': (reconnect_after_close, 10),
}


def main(argv):
    name = argv[1] if len(argv) > 1 else None
    if name == '--list':
        print('\n'.join(SCENARIOS))
        return 0
    if name not in SCENARIOS:
        sys.stderr.write('usage: python3 run.py <scenario> | --list\n')
        if name and not name.startswith('-'):
            sys.stderr.write(f"unknown scenario '{name}'\n")
        return 2
    fn, budget = SCENARIOS[name]
    if os.environ.get('RINGWAY_TIMEOUT_MS'):
        budget = int(os.environ['RINGWAY_TIMEOUT_MS']) / 1000
    outcome = {}

    def target():
        try:
            outcome['summary'] = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            outcome['error'] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(budget)
    if worker.is_alive():
        outcome['error'] = Fail(f'scenario timed out after {budget} s')
    for sio in _clients:
        try:
            sio.disconnect()
        except Exception:  # noqa: BLE001
            pass
    if 'error' in outcome:
        exc = outcome['error']
        detail = str(exc) if isinstance(exc, Fail) else f'{type(exc).__name__}: {exc}'
        sys.stderr.write(f"FAIL {name} ({BASE}) during '{_step[0]}': {detail}\n")
        return 1
    print(f"ok {name}: {outcome['summary']}")
    return 0


if __name__ == '__main__':
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
