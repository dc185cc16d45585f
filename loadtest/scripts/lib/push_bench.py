"""What the Push API benchmarks share (bench-api-pages.sh,
bench-user-push.sh): a stub of a gateway's Push API, generated from the
repository's push.proto by examples/python-publisher, and timing of calls
with the gateway's CPU read from /proc."""

import os
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "python-publisher"))

import grpc  # noqa: E402
from publisher import DEFAULT_PROTO_ROOT, generate_stubs  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def push_stub(addr, token):
    """(push_pb2, a Push stub on addr, the call metadata with token)."""
    pb, push_grpc = generate_stubs(DEFAULT_PROTO_ROOT, tempfile.mkdtemp())
    stub = push_grpc.PushStub(grpc.insecure_channel(addr))
    return pb, stub, [("authorization", f"Bearer {token}")]


def cpu_seconds(pid):
    """User and system CPU of a process so far, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def timed(pid, calls, call, warmup=20):
    """Runs call() `warmup` times, then `calls` times: (ms per call, the
    process' CPU ms per call, the last reply)."""
    for _ in range(warmup):
        call()
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    reply = None
    for _ in range(calls):
        reply = call()
    t, c = time.perf_counter() - t0, cpu_seconds(pid) - c0
    return t / calls * 1e3, c / calls * 1e3, reply
