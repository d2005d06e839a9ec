#!/usr/bin/env python3
"""A second gRPC implementation as a Whoami backend: grpcio's server (C core), where
uuid-server is tonic. It answers Whoami with its own random UUID, like uuid-server, and
implements no other method (they answer UNIMPLEMENTED).

Prints {"listen":"IP:PORT","uuid":"..","pod":".."} on stdout once bound, so a harness can
bind port 0 and learn the port; then serves until killed.
"""

import argparse
import json
import os
import socket
import sys
import uuid
from concurrent import futures

import grpc

import demo_pb

SERVICE = "weft.demo.Whoami"
MAX_MESSAGE = 16 * 1024 * 1024
MAX_PADDING = MAX_MESSAGE - 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="IP:PORT (port 0: any)")
    parser.add_argument("--pod", default=os.environ.get("POD_NAME") or socket.gethostname())
    args = parser.parse_args()
    host, sep, _ = args.listen.rpartition(":")
    if not sep or not host:
        parser.error(f"--listen {args.listen!r} is not IP:PORT")

    identity = {"uuid": str(uuid.uuid4()), "pod": args.pod}

    def whoami(request, context):
        size = request["reply_bytes"]
        if size > MAX_PADDING:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"reply_bytes {size} is over the limit of {MAX_PADDING}")
        return {**identity, "padding": b"\0" * size}

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Whoami": grpc.unary_unary_rpc_method_handler(
            whoami,
            request_deserializer=demo_pb.decode_request,
            response_serializer=demo_pb.encode_reply,
        ),
    })
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            # grpcio sets SO_REUSEPORT by default, which would let two servers share a
            # port silently; a clash must fail instead.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        port = server.add_insecure_port(args.listen)
    except RuntimeError as e:
        print(f"whoami_server: bind {args.listen}: {e}", file=sys.stderr)
        return 1
    # Older grpcio answers 0 instead of raising.
    if port == 0:
        print(f"whoami_server: bind {args.listen} failed", file=sys.stderr)
        return 1
    server.start()
    ready = {"listen": f"{host}:{port}", **identity}
    print(json.dumps(ready, sort_keys=True, separators=(",", ":")), flush=True)
    print(f"whoami_server: uuid {identity['uuid']} pod {args.pod} listening on {host}:{port}",
          file=sys.stderr, flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
