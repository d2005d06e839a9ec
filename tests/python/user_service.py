#!/usr/bin/env python3
"""A grpcio backend for the seeds' user service: answers every method of
user.UserService (GetUser, ListUsers, DeleteUser, ...) with a JSON document that tells
who answered and which trace headers arrived, so that a test can see that a call reached
the backend and how it was traced. Messages are raw bytes: no generated code is needed.

Prints {"listen":"IP:PORT","pod":".."} on stdout once bound; then serves until killed.
"""

import argparse
import json
import os
import socket
import sys
from concurrent import futures

import grpc

SERVICE = "user.UserService"
HEALTH = "grpc.health.v1.Health"
TRACE_HEADERS = ("traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "b3")


class Handler(grpc.GenericRpcHandler):
    def __init__(self, pod, service=SERVICE):
        self.pod = pod
        self.name = service

    def check(self, request, context):
        """grpc.health.v1.Health/Check by hand: HealthCheckRequest is field 1, the service
        name; HealthCheckResponse {status: SERVING} is field 1, varint 1."""
        name = request[2:2 + request[1]].decode() if request[:1] == b"\x0a" else ""
        if name not in ("", self.name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {name!r}")
        return b"\x08\x01"

    def service(self, details):
        service, _, method = details.method.lstrip("/").partition("/")
        if service == HEALTH and method == "Check":
            return grpc.unary_unary_rpc_method_handler(self.check)
        if service != self.name:
            return None

        def answer(request, context):
            metadata = dict(context.invocation_metadata())
            reply = {
                "pod": self.pod,
                "method": method,
                "request_bytes": len(request),
                "trace": {k: metadata[k] for k in TRACE_HEADERS if k in metadata},
            }
            return json.dumps(reply, sort_keys=True).encode()

        return grpc.unary_unary_rpc_method_handler(answer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="IP:PORT (port 0: any)")
    parser.add_argument("--pod", default=os.environ.get("POD_NAME") or socket.gethostname())
    parser.add_argument("--service", default=SERVICE,
                        help="the gRPC service it answers (the seed's policy names mypackage.MyService)")
    args = parser.parse_args()
    host, sep, _ = args.listen.rpartition(":")
    if not sep or not host:
        parser.error(f"--listen {args.listen!r} is not IP:PORT")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Handler(args.pod, args.service),))
    port = server.add_insecure_port(args.listen)
    if port == 0:
        print(f"user_service: bind {args.listen} failed", file=sys.stderr)
        return 1
    server.start()
    print(json.dumps({"listen": f"{host}:{port}", "pod": args.pod}), flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
