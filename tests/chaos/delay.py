"""Delays the packets of an NFQUEUE queue: each accepted after DELAY ms
plus or minus a uniform JITTER ms (so, as with netem's jitter, packets
also reorder). A stand-in for `tc netem delay` on kernels without
sch_netem: the chaos suite puts `iptables -j NFQUEUE --queue-bypass` on a
host's eth0 and runs this in the host's namespace.

usage: delay.py QUEUE DELAY_MS JITTER_MS SECONDS
Exits after SECONDS (every run is bounded), accepting what it holds.
"""
import heapq
import random
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST = 1


def attr(kind, payload):
    length = 4 + len(payload)
    pad = (4 - length % 4) % 4
    return struct.pack("=HH", length, kind) + payload + b"\0" * pad


def message(msg, queue, attrs, seq=0):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def packet_ids(data):
    """Packet ids of the NFQNL_MSG_PACKET messages in one recv."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20
            end = offset + length
            while at + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                if atype & 0x3FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, at + 4)[0]
                at += (alen + 3) & ~3
        offset += (length + 3) & ~3


def main():
    queue, delay, jitter, seconds = (int(x) for x in sys.argv[1:5])
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    cmd = struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_CMD, cmd)))
    params = struct.pack("!IB", 0, NFQNL_COPY_META) + b"\0\0\0"
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_PARAMS, params[:5])))
    s.send(message(NFQNL_MSG_CONFIG, queue, attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 8192))))
    print("ready", flush=True)
    held = []
    stop = time.monotonic() + seconds

    def accept(pid):
        verdict = struct.pack("!II", NF_ACCEPT, pid)
        s.send(message(NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, verdict)))

    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            accept(heapq.heappop(held)[1])
        if now >= stop:
            for _, pid in held:
                accept(pid)
            return
        wait = min(stop - now, held[0][0] - now if held else 0.05)
        ready, _, _ = select.select([s], [], [], max(wait, 0))
        if ready:
            data = s.recv(1 << 16)
            for pid in packet_ids(data):
                ms = delay + random.uniform(-jitter, jitter)
                heapq.heappush(held, (time.monotonic() + max(ms, 0) / 1000.0, pid))


main()
