"""The two Whoami messages of lab-apps/proto/demo.proto, encoded by hand.

The Python tests talk to the Rust service with grpcio alone: no protoc, no generated
stubs, no protobuf package, so what goes on the wire is plain to read here. The encoding
follows the protobuf wire format (protobuf.dev, "Encoding"): each field is a varint tag
(field number << 3 | wire type) and a value; this module writes varints (type 0) and
length-delimited fields (type 2), and skips unknown fields of every wire type, so a newer
server's extra fields do not break an older client.
"""

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


class DecodeError(ValueError):
    pass


def _varint(value):
    if value < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data, pos):
    result, shift = 0, 0
    # A varint is at most 10 bytes (64 bits, 7 per byte).
    for _ in range(10):
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise DecodeError("varint longer than 10 bytes")


def _field(number, wire_type):
    return _varint(number << 3 | wire_type)


def _len_field(number, value):
    return _field(number, LEN) + _varint(len(value)) + value


def _skip(data, pos, wire_type, number):
    """The position after an unknown field's value."""
    if wire_type == VARINT:
        return _read_varint(data, pos)[1]
    if wire_type == I64:
        end = pos + 8
    elif wire_type == I32:
        end = pos + 4
    elif wire_type == LEN:
        length, pos = _read_varint(data, pos)
        end = pos + length
    elif wire_type == SGROUP:
        # A group (proto2) runs to the EGROUP tag of the same number.
        while True:
            tag, pos = _read_varint(data, pos)
            inner_number, inner_type = tag >> 3, tag & 7
            if inner_type == EGROUP:
                if inner_number != number:
                    raise DecodeError("group ends with the wrong number")
                return pos
            pos = _skip(data, pos, inner_type, inner_number)
    else:
        raise DecodeError(f"wire type {wire_type} where a value was due")
    if end > len(data):
        raise DecodeError("truncated field")
    return end


def _fields(data):
    """Yields (number, wire type, value) for every field; unknown ones are not decoded,
    only skipped, and their value is None."""
    data = bytes(data)
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise DecodeError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        else:
            value, pos = None, _skip(data, pos, wire_type, number)
        yield number, wire_type, value


def encode_request(request):
    """WhoamiRequest from a dict: caller (1, string), reply_bytes (2, uint32), padding
    (3, bytes). Fields at their default are left out, as proto3 does."""
    out = b""
    caller = request.get("caller", "")
    if caller:
        out += _len_field(1, caller.encode())
    reply_bytes = request.get("reply_bytes", 0)
    if reply_bytes:
        out += _field(2, VARINT) + _varint(reply_bytes)
    padding = request.get("padding", b"")
    if padding:
        out += _len_field(3, padding)
    return out


def decode_request(data):
    request = {"caller": "", "reply_bytes": 0, "padding": b""}
    for number, wire_type, value in _fields(data):
        # A field of the wrong wire type is treated as unknown, as protobuf parsers do.
        if number == 1 and wire_type == LEN:
            request["caller"] = value.decode("utf-8", errors="replace")
        elif number == 2 and wire_type == VARINT:
            request["reply_bytes"] = value & 0xFFFFFFFF
        elif number == 3 and wire_type == LEN:
            request["padding"] = value
    return request


def encode_reply(reply):
    """WhoamiReply from a dict: uuid (1, string), pod (2, string), padding (3, bytes)."""
    out = b""
    for number, key in ((1, "uuid"), (2, "pod")):
        text = reply.get(key, "")
        if text:
            out += _len_field(number, text.encode())
    padding = reply.get("padding", b"")
    if padding:
        out += _len_field(3, padding)
    return out


def decode_reply(data):
    reply = {"uuid": "", "pod": "", "padding": b""}
    for number, wire_type, value in _fields(data):
        if wire_type != LEN:
            continue
        if number == 1:
            reply["uuid"] = value.decode("utf-8", errors="replace")
        elif number == 2:
            reply["pod"] = value.decode("utf-8", errors="replace")
        elif number == 3:
            reply["padding"] = value
    return reply


def status_name(code):
    """A grpc.StatusCode as uuid-client names it: OK, else tonic's CamelCase
    (DEADLINE_EXCEEDED -> DeadlineExceeded)."""
    name = code.name
    if name == "OK":
        return name
    return "".join(word.capitalize() for word in name.split("_"))


def _self_test():
    request = {"caller": "c", "reply_bytes": 300, "padding": b"\0" * 200}
    assert decode_request(encode_request(request)) == request
    reply = {"uuid": "u", "pod": "p", "padding": b""}
    assert decode_reply(encode_reply(reply)) == reply
    # Unknown fields of every wire type before the known ones are skipped.
    unknown = (
        _field(9, VARINT) + _varint(2**63)
        + _field(10, I64) + b"\1" * 8
        + _field(11, I32) + b"\2" * 4
        + _len_field(12, b"xyz")
        + _field(13, SGROUP) + _field(1, VARINT) + _varint(5) + _field(13, EGROUP)
    )
    assert decode_reply(unknown + encode_reply(reply)) == reply
    for bad in (b"\x0a\x05ab", b"\x08", b"\x00\x01", b"\x08" + b"\xff" * 11):
        try:
            decode_reply(bad)
        except DecodeError:
            continue
        raise AssertionError(f"{bad!r} decoded")
    print("demo_pb: ok")


if __name__ == "__main__":
    _self_test()
