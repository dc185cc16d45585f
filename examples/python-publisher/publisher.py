#!/usr/bin/env python3
"""Publishes events into Ringway rooms through the gateway's Push API.

The gRPC stubs are not checked in: they are generated from
proto/proto/ringway/v1/push.proto with grpcio-tools each time the publisher
starts (into a temporary directory, or --stubs-dir), which is what any
other language does with the same .proto file.

    python publisher.py --gateway 127.0.0.1:7200 --token s3cret \\
        --room lobby --event news --json '["hello", {"n": 1}]' --count 3 --seq

One message is sent with Push.Emit; more than one with Push.EmitStream, on
one stream, applied in order (every client sees them in this order). Each
message's result is printed as it comes back:

    message 1: reached 6 sockets on 3 nodes
    ...
    done: sent 3 messages to lobby, reached 18 sockets in all

Exit codes: 0 sent, 1 a call failed (the gRPC status is printed), 2 bad
arguments.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# The repository's .proto files (examples/python-publisher -> proto/proto).
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "proto"))
PUSH_PROTO = os.path.join("ringway", "v1", "push.proto")


def generate_stubs(proto_root, out_dir):
    """Compiles push.proto into out_dir and imports the generated modules.

    Returns (push_pb2, push_pb2_grpc).
    """
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit(
            "publisher: grpcio-tools is not installed "
            "(pip install -r examples/python-publisher/requirements.txt)"
        )
    proto = os.path.join(proto_root, PUSH_PROTO)
    if not os.path.isfile(proto):
        sys.exit(f"publisher: {proto} not found (--proto-dir)")
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            proto,
        ]
    )
    if status != 0:
        sys.exit(f"publisher: protoc failed on {proto} (exit {status})")
    # The generated modules are `ringway.v1.push_pb2` and
    # `ringway.v1.push_pb2_grpc` (namespace packages under out_dir).
    sys.path.insert(0, out_dir)
    importlib.invalidate_caches()
    pb2 = importlib.import_module("ringway.v1.push_pb2")
    pb2_grpc = importlib.import_module("ringway.v1.push_pb2_grpc")
    return pb2, pb2_grpc


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Emit events into Ringway rooms through the Push API (ringway.v1.Push)."
    )
    parser.add_argument(
        "--gateway",
        required=True,
        help="a gateway's Push API address, host:port (its --api-listen); any gateway reaches the whole cluster",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RINGWAY_API_TOKEN"),
        help="bearer token: one of the gateway's --api-token (default: $RINGWAY_API_TOKEN)",
    )
    parser.add_argument(
        "--room",
        required=True,
        action="append",
        help="the room to emit to (repeat for several: a socket in any of them gets the message once)",
    )
    parser.add_argument("--event", required=True, help="the event name")
    parser.add_argument(
        "--json",
        default="[]",
        help="the event's arguments, a JSON array (default: [])",
    )
    parser.add_argument(
        "--count", type=int, default=1, help="how many messages to send (default: 1)"
    )
    parser.add_argument(
        "--seq",
        action="store_true",
        help="append each message's number (1..count) to its arguments",
    )
    parser.add_argument("--namespace", default="/", help="the namespace (default: /)")
    parser.add_argument(
        "--volatile",
        action="store_true",
        help="skip clients whose outgoing queue is not empty",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the final line"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="deadline of the whole call, seconds (default: 30)",
    )
    parser.add_argument(
        "--proto-dir",
        default=DEFAULT_PROTO_ROOT,
        help="where ringway/v1/push.proto is (default: the repository's proto/proto)",
    )
    parser.add_argument(
        "--stubs-dir",
        help="generate the stubs here and keep them (default: a temporary directory, removed at exit)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token is required (or set RINGWAY_API_TOKEN)")
    if args.count < 1:
        parser.error("--count must be at least 1")
    try:
        values = json.loads(args.json)
    except ValueError as err:
        parser.error(f"--json is not JSON: {err}")
    if not isinstance(values, list):
        parser.error("--json must be a JSON array (the event's arguments)")
    args.values = values
    args.gateway = args.gateway.removeprefix("http://")
    return args


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def requests(pb2, args):
    """The EmitRequests, one per message, made as they are sent."""
    target = pb2.Target(rooms=pb2.RoomList(rooms=args.room))
    for n in range(1, args.count + 1):
        values = args.values + [n] if args.seq else args.values
        yield pb2.EmitRequest(
            namespace=args.namespace,
            target=target,
            event=args.event,
            args_json=json.dumps(values, separators=(",", ":")),
            volatile=args.volatile,
        )


def publish(pb2, pb2_grpc, args):
    import grpc

    metadata = [("authorization", f"Bearer {args.token}")]
    with grpc.insecure_channel(args.gateway) as channel:
        push = pb2_grpc.PushStub(channel)
        try:
            if args.count == 1:
                call = "Emit"
                request = next(requests(pb2, args))
                replies = [push.Emit(request, metadata=metadata, timeout=args.timeout)]
            else:
                call = "EmitStream"
                replies = push.EmitStream(
                    requests(pb2, args), metadata=metadata, timeout=args.timeout
                )
            sent = 0
            reached = 0
            for reply in replies:
                sent += 1
                reached += reply.sockets
                if not args.quiet:
                    print(
                        f"message {sent}: reached {plural(reply.sockets, 'socket')}"
                        f" on {plural(reply.nodes, 'node')}",
                        flush=True,
                    )
        except grpc.RpcError as err:
            print(
                f"publisher: {call} failed: {err.code().name}: {err.details()}",
                file=sys.stderr,
            )
            return 1
    rooms = ", ".join(args.room)
    print(
        f"done: sent {plural(sent, 'message')} to {rooms},"
        f" reached {plural(reached, 'socket')} in all",
        flush=True,
    )
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.stubs_dir:
        os.makedirs(args.stubs_dir, exist_ok=True)
        pb2, pb2_grpc = generate_stubs(args.proto_dir, args.stubs_dir)
        return publish(pb2, pb2_grpc, args)
    out_dir = tempfile.mkdtemp(prefix="ringway-stubs-")
    try:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, out_dir)
        return publish(pb2, pb2_grpc, args)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
