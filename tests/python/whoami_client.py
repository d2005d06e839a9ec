#!/usr/bin/env python3
"""A second gRPC implementation as a Whoami client: grpcio (gRPC's C core), where
uuid-client is tonic. A waypoint must serve both alike, and C-core has its own HTTP/2
habits (its own window updates, pings, and header order).

Makes N calls over ONE channel, and so one HTTP/2 connection: the local subchannel pool
keeps this channel from sharing a connection with any other, and retries are off so that
every failure the proxy returns is counted, not hidden. Prints one JSON line:
{"calls":N,"ok":n,"errors":e,"by_uuid":{..},"by_pod":{..},"by_status":{..},"seconds":s}
and exits 0 only if every call succeeded (or --allow-errors).
"""

import argparse
import json
import os
import socket
import sys
import time

import grpc

import demo_pb

METHOD = "/weft.demo.Whoami/Whoami"
MAX_MESSAGE = 16 * 1024 * 1024


def header(text):
    key, sep, value = text.partition("=")
    if not sep or not key or key != key.lower() or key.endswith("-bin"):
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (lowercase ASCII key)")
    return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="IP:PORT")
    parser.add_argument("--calls", required=True, type=int)
    parser.add_argument("--header", action="append", default=[], type=header,
                        help="key=value metadata on every call (repeatable)")
    parser.add_argument("--caller", default=os.environ.get("POD_NAME") or socket.gethostname())
    parser.add_argument("--reply-bytes", type=int, default=0)
    parser.add_argument("--call-timeout-ms", type=int, default=5000,
                        help="the deadline of each call")
    parser.add_argument("--connect-timeout-ms", type=int, default=5000)
    parser.add_argument("--allow-errors", action="store_true")
    args = parser.parse_args()
    if args.calls < 0:
        parser.error("--calls must not be negative")

    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout_ms / 1000)
        except grpc.FutureTimeoutError:
            print(f"whoami_client: {args.target}: not connected within "
                  f"{args.connect_timeout_ms} ms", file=sys.stderr)
            return 1
        whoami = channel.unary_unary(
            METHOD,
            request_serializer=demo_pb.encode_request,
            response_deserializer=demo_pb.decode_reply,
        )
        request = {"caller": args.caller, "reply_bytes": args.reply_bytes}
        report = {"calls": args.calls, "ok": 0, "errors": 0,
                  "by_uuid": {}, "by_pod": {}, "by_status": {}}
        logged = 0
        start = time.monotonic()
        for i in range(args.calls):
            try:
                reply = whoami(request, timeout=args.call_timeout_ms / 1000,
                               metadata=args.header)
                code = grpc.StatusCode.OK
                report["ok"] += 1
                for key, value in (("by_uuid", reply["uuid"]), ("by_pod", reply["pod"])):
                    report[key][value] = report[key].get(value, 0) + 1
            except grpc.RpcError as e:
                code = e.code()
                report["errors"] += 1
                if logged < 5:
                    logged += 1
                    print(f"whoami_client: call {i} failed: {code.name}: {e.details()}",
                          file=sys.stderr)
            name = demo_pb.status_name(code)
            report["by_status"][name] = report["by_status"].get(name, 0) + 1
        report["seconds"] = time.monotonic() - start
    print(json.dumps(report, sort_keys=True, separators=(",", ":")), flush=True)
    return 0 if report["errors"] == 0 or args.allow_errors else 1


if __name__ == "__main__":
    sys.exit(main())
