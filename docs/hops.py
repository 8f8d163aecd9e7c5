#!/usr/bin/env python3
"""Per-hop timings of sequential goamqp request/response round trips, from a loopback capture.

    tcpdump -i lo -s 0 -w /tmp/rt.pcap 'tcp port 5672' &
    target/release/warren bench demo echo '{"data":"hello"}' --inflight 1 --duration 4
    kill %1
    python3 docs/hops.py /tmp/rt.pcap demo

Reads the capture (Python's standard library only), reassembles each TCP direction, parses the
AMQP frames in it and times each one by the packet that carried its first byte. For every
request to SERVICE it finds: the client's basic.publish to SERVICE.direct.exchange.request, the
broker's basic.deliver of it to the server, the server's basic.publish of the answer to
SERVICE.headers.exchange.response, the broker's basic.deliver of the answer to the client, and
the server's next basic.ack (and the broker's confirm, when the server publishes in confirm
mode). Prints the median and 90th percentile of each hop in µs. Meant for
one request in flight (`--inflight 1`): with more, hops of different requests interleave.
"""
import statistics
import struct
import sys
from collections import defaultdict

ETHERNET, LINUX_SLL, LINUX_SLL2 = 1, 113, 276
LINK_HEADER = {ETHERNET: 14, LINUX_SLL: 16, LINUX_SLL2: 20}


def tcp_payloads(path):
    """(time, source port, destination port, sequence number, payload) of each TCP segment."""
    with open(path, "rb") as capture:
        header = capture.read(24)
        nanoseconds = header[:4] == b"\x4d\x3c\xb2\xa1"
        link = struct.unpack("<I", header[20:24])[0]
        skip = LINK_HEADER.get(link, 0)
        while len(record := capture.read(16)) == 16:
            seconds, fraction, length, _ = struct.unpack("<IIII", record)
            packet = capture.read(length)[skip:]
            if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
                continue  # not IPv4 TCP
            tcp = packet[(packet[0] & 15) * 4:]
            source, destination, sequence = struct.unpack(">HHI", tcp[:8])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                yield seconds + fraction / (1e9 if nanoseconds else 1e6), source, destination, sequence, payload


def amqp_frames(path):
    """(time, (source port, destination port), frame type, payload) of each AMQP frame, timed
    by the packet that carried its first byte."""
    pending = defaultdict(bytearray)  # per direction: bytes not yet parsed
    consumed = defaultdict(int)  # per direction: stream offset of pending[0]
    arrivals = defaultdict(list)  # per direction: (stream offset of a packet's first byte, time)
    next_sequence = {}
    for time, source, destination, sequence, payload in tcp_payloads(path):
        direction = (source, destination)
        if direction in next_sequence and (sequence - next_sequence[direction]) % 2**32 > 2**31:
            continue  # a retransmission
        next_sequence[direction] = (sequence + len(payload)) % 2**32
        data = pending[direction]
        arrivals[direction].append((consumed[direction] + len(data), time))
        data.extend(payload)
        position = 0
        while True:
            if data[position:position + 4] == b"AMQP":
                position += 8  # the protocol header
                continue
            if len(data) - position < 7:
                break
            kind, _channel, size = struct.unpack(">BHI", data[position:position + 7])
            if len(data) - position < 8 + size:
                break
            offset = consumed[direction] + position
            started = max(t for (o, t) in arrivals[direction] if o <= offset)
            yield started, direction, kind, bytes(data[position + 7:position + 7 + size])
            position += 8 + size
        del data[:position]
        consumed[direction] += position
        older = [a for a in arrivals[direction] if a[0] <= consumed[direction]]
        arrivals[direction] = older[-1:] + [a for a in arrivals[direction] if a[0] > consumed[direction]]


def short_string(payload, at):
    length = payload[at]
    return payload[at + 1:at + 1 + length].decode(errors="replace"), at + 1 + length


def events(path, service):
    """(time, what) of the frames that mark a hop; "an ack" is one the server sends, "a
    confirm" one the broker sends the server."""
    requests, responses = f"{service}.direct.exchange.request", f"{service}.headers.exchange.response"
    server_port = None
    for time, (source, destination), kind, payload in amqp_frames(path):
        if kind != 1 or len(payload) < 4:
            continue
        class_id, method_id = struct.unpack(">HH", payload[:4])
        if class_id != 60:
            continue
        if method_id == 40:  # basic.publish: reserved short, exchange, routing key
            exchange, _ = short_string(payload, 6)
            what = {requests: "client publishes", responses: "server publishes"}.get(exchange)
        elif method_id == 60:  # basic.deliver: consumer tag, delivery tag, redelivered, exchange
            _, at = short_string(payload, 4)
            exchange, _ = short_string(payload, at + 9)
            what = {requests: "server gets it", responses: "client gets it"}.get(exchange)
            if what == "server gets it":
                server_port = destination
        elif method_id == 80 and source == server_port:
            what = "an ack"
        elif method_id == 80 and destination == server_port:
            what = "a confirm"  # the broker's publisher confirm (servers in confirm mode)
        else:
            what = None
        if what:
            yield time, what


def main():
    path, service = sys.argv[1], sys.argv[2]
    order = ["client publishes", "server gets it", "server publishes", "client gets it"]
    hops = defaultdict(list)
    trip = {}
    for time, what in events(path, service):
        if what == "client publishes":
            if all(step in trip for step in order):
                for a, b in zip(order, order[1:]):
                    hops[f"{a} → {b}"].append(trip[b] - trip[a])
                hops["client gets it → next request"].append(time - trip["client gets it"])
                hops["round trip on the wire"].append(trip["client gets it"] - trip["client publishes"])
                for step, name in (("confirmed", "a confirm"), ("acked", "an ack")):
                    if step in trip:
                        hops[f"server publishes → {name}"].append(trip[step] - trip["server publishes"])
            trip = {"client publishes": time}
        elif what in order and what not in trip:
            trip[what] = time
        elif what in ("an ack", "a confirm") and "server publishes" in trip:
            trip.setdefault("acked" if what == "an ack" else "confirmed", time)
    if not hops:
        sys.exit(f"no round trip of service {service} in {path}")
    for name, values in hops.items():
        values.sort()
        p50, p90 = statistics.median(values) * 1e6, values[int(len(values) * 0.9)] * 1e6
        print(f"{name:38} n={len(values):6}  p50 {p50:7.1f} µs  p90 {p90:7.1f} µs")


if __name__ == "__main__":
    main()
