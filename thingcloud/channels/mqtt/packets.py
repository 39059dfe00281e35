"""The MQTT 3.1.1 packets a device needs, read from and written to a byte stream (OASIS MQTT 3.1.1).

Only what ARTIK devices use (REFERENCE.md §5.3): CONNECT/CONNACK, PUBLISH (QoS 0 and 1 in, QoS 0
out), PUBACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and DISCONNECT. A packet
that breaks the format raises ``Malformed``; the connection that sent it is closed, nothing else.

Why hand-written: the maintained broker (amqtt 0.12.1) sends PUBACK before any application code
runs, and no maintained sans-io MQTT codec is installable here (``mqttproto`` is not on the
registry; ``mqtt-codec`` was last released in 2019). The subset is small and fully specified.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP = 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

# CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
ACCEPTED = 0
UNACCEPTABLE_PROTOCOL = 1
IDENTIFIER_REJECTED = 2
SERVER_UNAVAILABLE = 3
BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80

PINGRESP_PACKET = bytes((PINGRESP << 4, 0))


class Malformed(Exception):
    """The peer broke the packet format: the connection is closed (MQTT 3.1.1 §4.8)."""


@dataclass(frozen=True, slots=True)
class Connect:
    protocol: str
    level: int
    clean_session: bool
    keepalive: int  # seconds; 0 = none
    client_id: str
    username: str | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    retain: bool
    dup: bool


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]


@dataclass(frozen=True, slots=True)
class Control:
    """A packet without content that matters here (PINGREQ, DISCONNECT, PUBACK of the client...)."""

    kind: int


Packet = Connect | Publish | Subscribe | Unsubscribe | Control


# --- reading ------------------------------------------------------------------------------------------


async def read_packet(reader: asyncio.StreamReader, max_length: int) -> Packet:
    """The next packet; ``EOFError`` when the peer closed between packets. Raises ``Malformed``, or
    ``asyncio.IncompleteReadError`` when the stream ends inside a packet."""
    first = await reader.read(1)
    if not first:
        raise EOFError
    length, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    else:
        raise Malformed("remaining length longer than 4 bytes")
    if length > max_length:
        raise Malformed(f"packet of {length} bytes over the limit of {max_length}")
    body = await reader.readexactly(length) if length else b""
    return decode(first[0] >> 4, first[0] & 0x0F, body)


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Malformed("packet too short")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise Malformed("packet too short")
        (value,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def binary(self) -> bytes:
        size = self.u16()
        if self.pos + size > len(self.data):
            raise Malformed("field longer than the packet")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def text(self) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("string is not UTF-8") from None
        if "\x00" in value:
            raise Malformed("string contains U+0000")
        return value

    def rest(self) -> bytes:
        return self.data[self.pos :]

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def decode(kind: int, flags: int, body: bytes) -> Packet:
    cursor = _Cursor(body)
    if kind == CONNECT:
        return _connect(cursor)
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise Malformed("QoS 3")
        topic = cursor.text()
        packet_id = cursor.u16() if qos else None
        if packet_id == 0:
            raise Malformed("packet id 0")
        return Publish(topic, cursor.rest(), qos, packet_id, bool(flags & 1), bool(flags & 8))
    if kind == SUBSCRIBE:
        _flags(flags, 2)
        packet_id = cursor.u16()
        filters: list[tuple[str, int]] = []
        while not cursor.done:
            topic = cursor.text()
            qos = cursor.byte()
            if qos > 2:
                raise Malformed("requested QoS over 2")
            filters.append((topic, qos))
        if not filters:
            raise Malformed("SUBSCRIBE without a topic filter")
        return Subscribe(packet_id, filters)
    if kind == UNSUBSCRIBE:
        _flags(flags, 2)
        packet_id = cursor.u16()
        names: list[str] = []
        while not cursor.done:
            names.append(cursor.text())
        if not names:
            raise Malformed("UNSUBSCRIBE without a topic filter")
        return Unsubscribe(packet_id, names)
    if kind in (PINGREQ, DISCONNECT, PUBACK):
        _flags(flags, 0)
        return Control(kind)
    # CONNACK, SUBACK, ... come from servers; QoS 2 flows are not part of the contract.
    raise Malformed(f"unexpected packet type {kind}")


def _flags(flags: int, expected: int) -> None:
    if flags != expected:
        raise Malformed("reserved flags")


def _connect(cursor: _Cursor) -> Connect:
    protocol = cursor.text()
    level = cursor.byte()
    flags = cursor.byte()
    if flags & 0x01:
        raise Malformed("reserved connect flag")
    keepalive = cursor.u16()
    client_id = cursor.text()
    if flags & 0x04:  # a will: read and ignored (devices have no topic a will could go to)
        cursor.text()
        cursor.binary()
    username = cursor.text() if flags & 0x80 else None
    password = cursor.binary() if flags & 0x40 else None
    return Connect(protocol, level, bool(flags & 0x02), keepalive, client_id, username, password)


# --- writing ------------------------------------------------------------------------------------------


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connack(code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 0, code))


def puback(packet_id: int) -> bytes:
    return struct.pack("!BBH", PUBACK << 4, 2, packet_id)


def suback(packet_id: int, codes: list[int]) -> bytes:
    return (
        bytes((SUBACK << 4, *_remaining_length(2 + len(codes)))) + struct.pack("!H", packet_id) + bytes(codes)
    )


def unsuback(packet_id: int) -> bytes:
    return struct.pack("!BBH", UNSUBACK << 4, 2, packet_id)


def publish(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (what the server sends devices: actions and errors)."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + payload
    return bytes((PUBLISH << 4,)) + _remaining_length(len(body)) + body


def connect(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    """A CONNECT with credentials and a clean session (for the bench's load generator)."""
    body = struct.pack("!H", 4) + b"MQTT" + bytes((4, 0xC2)) + struct.pack("!H", keepalive)
    for value in (client_id, username, password):
        raw = value.encode()
        body += struct.pack("!H", len(raw)) + raw
    return bytes((CONNECT << 4,)) + _remaining_length(len(body)) + body


def publish_qos1(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH from a device (for the bench's load generator)."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + struct.pack("!H", packet_id) + payload
    return bytes((PUBLISH << 4 | 0x02,)) + _remaining_length(len(body)) + body
