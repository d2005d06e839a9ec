#!/usr/bin/env python3
"""A grpcio client that makes N unary calls to one method path over one channel, with raw
bytes for messages, and reports what came back. Prints one JSON line:
{"calls":N,"by_status":{"OK":n,"PERMISSION_DENIED":m,..},"details":[..],
 "replies":[..],"rate_limit_headers":k}
where `replies` holds the decoded JSON answers of the successful calls (see
user_service.py), `details` the distinct error messages, and `rate_limit_headers` the
number of failed calls whose metadata carried `x-local-rate-limit: true`.
"""

import argparse
import json
import sys

import grpc


def header(text):
    key, sep, value = text.partition("=")
    if not sep or not key or key != key.lower():
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (lowercase key)")
    return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="IP:PORT")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--header", action="append", default=[], type=header)
    parser.add_argument("--timeout-ms", type=int, default=5000)
    args = parser.parse_args()

    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    by_status, details, replies, limited = {}, set(), [], 0
    with grpc.insecure_channel(args.target, options=options) as channel:
        call = channel.unary_unary(args.method)
        for _ in range(args.calls):
            try:
                answer = call(b"{}", metadata=args.header, timeout=args.timeout_ms / 1000)
                by_status["OK"] = by_status.get("OK", 0) + 1
                try:
                    replies.append(json.loads(answer))
                except ValueError:
                    replies.append({"raw": answer.hex()})
            except grpc.RpcError as e:
                name = e.code().name
                by_status[name] = by_status.get(name, 0) + 1
                details.add(e.details() or "")
                metadata = dict(e.initial_metadata() or ()) | dict(e.trailing_metadata() or ())
                if metadata.get("x-local-rate-limit") == "true":
                    limited += 1
    print(json.dumps({"calls": args.calls, "by_status": by_status, "details": sorted(details),
                      "replies": replies, "rate_limit_headers": limited}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
