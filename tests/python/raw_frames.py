"""Sends, from a node's network namespace, frames that a pod's inbound gate must not take
for harmless: an IPv6 TCP SYN (plain, and behind a destination-options extension header),
a non-first IPv4 fragment of a TCP packet, and an IPv4 TCP packet cut short inside its
header. They go out of the node-side veth of the pod that
owns --to (found with `ip route get`), where Weft's tc program sees them. Prints
{"dev": ..., "sent": 4, "dropped_on_send": N}. Frames are built by hand (RFC 791, RFC 8200, RFC 9293); no
checksum is needed: the gate never reaches the stack's checks."""

import argparse
import errno
import ipaddress
import json
import socket
import struct
import subprocess


def ethernet(ethertype):
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype)


def ipv4(dst, payload, fragment=0):
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, fragment, 64, 6, 0,
        socket.inet_aton("10.99.0.77"), socket.inet_aton(dst))
    return header + payload


def syn(dport):
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", required=True, help="the pod's IPv4 address")
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    route = subprocess.run(["ip", "route", "get", args.to], capture_output=True, text=True,
                           check=True).stdout.split()
    dev = route[route.index("dev") + 1]
    v6 = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64,
                     ipaddress.IPv6Address("2001:db8::1").packed,
                     ipaddress.IPv6Address("2001:db8::2").packed) + syn(args.port)
    # The same SYN behind a destination-options extension header (next header 60, which
    # names TCP; 8 bytes of padding options).
    v6_ext = struct.pack("!IHBB16s16s", 6 << 28, 28, 60, 64,
                         ipaddress.IPv6Address("2001:db8::1").packed,
                         ipaddress.IPv6Address("2001:db8::2").packed) \
        + struct.pack("!BB6s", 6, 0, b"\x01\x04\x00\x00\x00\x00") + syn(args.port)
    frames = [
        ethernet(0x86DD) + v6,
        ethernet(0x86DD) + v6_ext,
        # Offset 1 (8 bytes): the TCP header is in another fragment.
        ethernet(0x0800) + ipv4(args.to, b"\x00" * 8, fragment=1),
        # A TCP header of 4 bytes: no flags to read.
        ethernet(0x0800) + ipv4(args.to, syn(args.port)[:4]),
    ]
    # A frame the tc program drops comes back as ENOBUFS (the transmit path's NET_XMIT_DROP).
    dropped = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((dev, 0))
        for frame in frames:
            try:
                sock.send(frame)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                dropped += 1
    print(json.dumps({"dev": dev, "sent": len(frames), "dropped_on_send": dropped}))


if __name__ == "__main__":
    main()
