#!/usr/bin/env python3
"""Bad input, replayed against two servers: what each answers, case by case.

    python3 badinput.py URL_A URL_B [--json]

Each case runs on fresh sessions of both servers (`/socket.io/`, the echo
application of docs/ECHO_APP.md): malformed queries, methods, sids,
concurrent and aborted polls, malformed Engine.IO and Socket.IO packets.
A case's transcript is the status and body of every answer (sids and other
ids replaced by placeholders; a GET still pending after a second is
`pending`). Prints the cases whose transcripts differ (with both), then a
summary line `same N differ M`; `--json` prints every transcript as JSON
instead. Both servers should run with their defaults (the same ping
interval and maxPayload; no case uses EIO=3, which Ringway takes by
default and the reference only with allowEIO3), the namespaces / and
/custom, and no per-IP limits.

Standard library only.
"""
import http.client
import json
import re
import socket
import sys
import threading
import time
from urllib.parse import urlparse

PATH = '/socket.io/'
PENDING = 1.0  # seconds a GET may wait before it counts as pending


class Server:
    def __init__(self, url):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port

    def request(self, method, query, body=b'', headers=None, timeout=PENDING):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        hdrs = {'Content-Type': 'text/plain;charset=UTF-8'} if body else {}
        hdrs.update(headers or {})
        try:
            conn.request(method, PATH + ('?' + query if query else ''), body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        except (socket.timeout, TimeoutError):
            return 'pending', b''
        except (ConnectionError, http.client.HTTPException) as exc:
            return 'error', type(exc).__name__.encode()
        finally:
            conn.close()

    def open(self):
        status, body = self.request('GET', 'EIO=4&transport=polling')
        assert status == 200, (status, body)
        return json.loads(body[1:])['sid']


def normalize(body, sids):
    text = body.decode('utf-8', 'replace') if isinstance(body, bytes) else str(body)
    for i, sid in enumerate(sids):
        text = text.replace(sid, f'<sid{i}>')
    text = re.sub(r'"sid":"[^"]+"', '"sid":"<id>"', text)
    return text


class Case:
    """One case on one server: steps append to the transcript."""

    def __init__(self, server):
        self.s = server
        self.sids = []
        self.log = []

    def session(self):
        sid = self.s.open()
        self.sids.append(sid)
        return sid

    def q(self, sid, extra=''):
        return f'EIO=4&transport=polling&sid={sid}{extra}'

    def note(self, label, result):
        status, body = result
        self.log.append(f'{label}: {status} {normalize(body, self.sids)}')

    def get(self, sid, extra='', label='GET'):
        """A GET, unless one was left pending: the client gave up on that
        one, which is a case of its own ('aborted long-poll')."""
        if self.log and self.log[-1].split(': ', 1)[1].startswith('pending'):
            return
        self.note(label, self.s.request('GET', self.q(sid, extra)))

    def post(self, sid, body, headers=None, label=None):
        data = body if isinstance(body, bytes) else body.encode()
        self.note(label or f'POST {body!r}', self.s.request('POST', self.q(sid), data, headers))

    def raw(self, method, query, body=b'', headers=None, label=None):
        self.note(label or f'{method} ?{query}', self.s.request(method, query, body, headers))

    def pending_get(self, sid, extra=''):
        """A GET in the background; returns a function that records it."""
        out = {}
        t = threading.Thread(
            target=lambda: out.update(r=self.s.request('GET', self.q(sid, extra), timeout=3)))
        t.start()
        time.sleep(0.1)

        def finish(label='pending GET'):
            t.join()
            self.note(label, out['r'])
        return finish


def connected(c):
    sid = c.session()
    c.post(sid, '40')
    c.get(sid)
    return sid


def engine_packet_case(body):
    def run(c):
        sid = c.session()
        c.post(sid, body)
        time.sleep(0.05)
        c.get(sid)
        c.get(sid, label='GET again')
    return run


def socketio_packet_case(*bodies, connect=True):
    def run(c):
        sid = connected(c) if connect else c.session()
        for body in bodies:
            c.post(sid, body)
        time.sleep(0.05)
        c.get(sid)
        c.get(sid, label='GET again')
    return run


def aborted_poll(c):
    sid = c.session()
    s = socket.create_connection((c.s.host, c.s.port))
    s.sendall(f'GET {PATH}?{c.q(sid)} HTTP/1.1\r\nHost: x\r\n\r\n'.encode())
    time.sleep(0.2)
    s.close()
    time.sleep(0.2)
    c.post(sid, '4after')
    c.get(sid)


def concurrent_get(c):
    sid = c.session()
    finish = c.pending_get(sid)
    c.get(sid, label='second GET')
    finish()
    c.get(sid, label='GET after')


def pending_then(body):
    def run(c):
        sid = c.session()
        finish = c.pending_get(sid)
        c.post(sid, body)
        finish()
        time.sleep(0.2)
        c.get(sid, label='GET after')
    return run


def close_then_get(c):
    sid = c.session()
    c.post(sid, '1')
    time.sleep(0.2)
    c.get(sid)


def over_max_payload(c):
    sid = c.session()
    c.post(sid, '4' + 'x' * 1_000_001, label='POST 1 MB + 1')
    c.post(sid, '4still')
    c.get(sid)


def octet_stream(c):
    sid = c.session()
    c.post(sid, '4x', headers={'Content-Type': 'application/octet-stream'}, label='POST octet-stream')
    c.get(sid)


def method_on_session(method):
    def run(c):
        sid = c.session()
        c.raw(method, c.q(sid), label=f'{method} on a session')
        c.post(sid, '4alive')
        c.get(sid)
    return run


def protocol_mismatch(extra):
    def run(c):
        sid = c.session()
        c.raw('GET', f'EIO=4&transport=polling&sid={sid}'.replace('EIO=4', extra), label=f'GET {extra}')
        c.post(sid, '4alive')
        c.get(sid)
    return run


def websocket_without_upgrade(c):
    sid = c.session()
    c.raw('GET', f'EIO=4&transport=websocket&sid={sid}', label='GET transport=websocket, no upgrade')
    c.post(sid, '4alive')
    c.get(sid)


def query_case(method, query, body=b''):
    def run(c):
        c.raw(method, query, body)
    return run


def binary_not_announced(c):
    sid = connected(c)
    c.post(sid, 'bAQID')
    time.sleep(0.05)
    c.get(sid)
    c.get(sid, label='GET again')


CASES = {
    # Queries without a session.
    'no query': query_case('GET', ''),
    'no transport': query_case('GET', 'EIO=4'),
    'unknown transport': query_case('GET', 'EIO=4&transport=foo'),
    'EIO=5': query_case('GET', 'EIO=5&transport=polling'),
    'EIO=abc': query_case('GET', 'EIO=abc&transport=polling'),
    'no EIO': query_case('GET', 'transport=polling'),
    'unknown sid': query_case('GET', 'EIO=4&transport=polling&sid=nope'),
    'unknown sid POST': query_case('POST', 'EIO=4&transport=polling&sid=nope', b'4x'),
    'handshake by POST': query_case('POST', 'EIO=4&transport=polling', b'4x'),
    'handshake by PUT': query_case('PUT', 'EIO=4&transport=polling'),
    'websocket handshake without upgrade': query_case('GET', 'EIO=4&transport=websocket'),
    'empty sid is a handshake': query_case('GET', 'EIO=4&transport=polling&sid='),
    'handshake with unknown transport and sid': query_case('GET', 'EIO=4&transport=foo&sid=nope'),
    'unknown sid with EIO=5': query_case('GET', 'EIO=5&transport=polling&sid=nope'),
    # Methods and queries on a session.
    'PUT on a session': method_on_session('PUT'),
    'DELETE on a session': method_on_session('DELETE'),
    'EIO=3 on a v4 session': protocol_mismatch('EIO=3'),
    'EIO=5 on a session': protocol_mismatch('EIO=5'),
    'transport=websocket without upgrade on a session': websocket_without_upgrade,
    # Polls.
    'concurrent GET': concurrent_get,
    'aborted long-poll': aborted_poll,
    'close packet then GET': close_then_get,
    'pending GET, then close packet': pending_then('1'),
    'pending GET, then malformed packet': pending_then('abc'),
    'pending GET, then bad socket.io packet': pending_then('4abc'),
    'over maxPayload': over_max_payload,
    'octet-stream POST': octet_stream,
    # Engine.IO packets.
    'POST abc': engine_packet_case('abc'),
    'POST empty body': engine_packet_case(''),
    'POST 9': engine_packet_case('9'),
    'POST 0{}': engine_packet_case('0{}'),
    'POST client ping 2': engine_packet_case('2'),
    'POST 2probe': engine_packet_case('2probe'),
    'POST 3 (pong unasked)': engine_packet_case('3'),
    'POST 5 without websocket': engine_packet_case('5'),
    'POST 6': engine_packet_case('6'),
    'POST 0': engine_packet_case('0'),
    'POST 1x': engine_packet_case('1x'),
    'POST 6x': engine_packet_case('6x'),
    'POST leading separator': engine_packet_case('\x1e4hello'),
    'POST empty item': engine_packet_case('4a\x1e\x1e4b'),
    'POST b!!!': engine_packet_case('b!!!'),
    'POST invalid utf-8': engine_packet_case(b'4\xff\xfe'),
    # Socket.IO packets.
    'socket.io: 4abc': socketio_packet_case('4abc', connect=False),
    'socket.io: 4 alone': socketio_packet_case('4', connect=False),
    'socket.io: unterminated event': socketio_packet_case('42["x"'),
    'socket.io: type 9': socketio_packet_case('49', connect=False),
    'socket.io: unknown namespace': socketio_packet_case('40/nope,', connect=False),
    'socket.io: namespace without comma': socketio_packet_case('40/custom', connect=False),
    'socket.io: duplicate CONNECT': socketio_packet_case('40'),
    'socket.io: DISCONNECT without CONNECT': socketio_packet_case('41', connect=False),
    'socket.io: event before CONNECT': socketio_packet_case('42["message","x"]', connect=False),
    'socket.io: numeric event name': socketio_packet_case('42[1]', '42["message","after"]'),
    'socket.io: ack with unknown id': socketio_packet_case('439[]', '42["message","after"]'),
    'socket.io: reserved event name': socketio_packet_case('42["disconnect"]'),
    'socket.io: CONNECT_ERROR from the client': socketio_packet_case('44{"message":"x"}', connect=False),
    'socket.io: CONNECT with a string payload': socketio_packet_case('40"str"', connect=False),
    'socket.io: CONNECT with an array payload': socketio_packet_case('40[1]', connect=False),
    'socket.io: text where an attachment is due': socketio_packet_case(
        '451-["message",{"_placeholder":true,"num":0}]', '42["message","x"]'),
    'socket.io: attachment not announced': binary_not_announced,
    'socket.io: placeholder out of range': socketio_packet_case(
        '451-["message",{"_placeholder":true,"num":5}]', 'bAQID'),
    'socket.io: event object instead of array': socketio_packet_case('42{"a":1}'),
    'socket.io: empty event array': socketio_packet_case('42[]'),
}


def run_all(url):
    server = Server(url)
    out = {}
    for name, case in CASES.items():
        c = Case(server)
        try:
            case(c)
        except Exception as exc:  # noqa: BLE001 - a broken case is a result too
            c.log.append(f'case failed: {exc!r}')
        out[name] = c.log
    return out


def main(argv):
    args = [a for a in argv[1:] if not a.startswith('--')]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    results = {}
    threads = [threading.Thread(target=lambda u=u: results.__setitem__(u, run_all(u))) for u in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = results[args[0]], results[args[1]]
    if '--json' in argv:
        print(json.dumps({'a': a, 'b': b}, indent=1))
        return 0
    differ = [n for n in CASES if a[n] != b[n]]
    for name in differ:
        print(f'## {name}')
        print('  A: ' + '\n     '.join(a[name]))
        print('  B: ' + '\n     '.join(b[name]))
    print(f'same {len(CASES) - len(differ)} differ {len(differ)}: {", ".join(differ)}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
