#!/usr/bin/env python3
"""Delays the packets of one NFQUEUE queue by a fixed time: the NAT lab's
stand-in for `netem delay` on kernels built without netem.

    nfq_delay.py QUEUE_NUM DELAY_MS

Speaks nfnetlink_queue directly (no library): binds the queue in metadata
copy mode, and gives each packet its ACCEPT verdict DELAY_MS after it was
queued (in order). Runs until killed.
"""
import heapq
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2

queue, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000.0


def attr(kind, payload):
    a = struct.pack("=HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)


def message(msg_type, attrs, flags=NLM_F_REQUEST):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, 0, 0) + body


s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
for msg in (
    message(NFQNL_MSG_CONFIG, [attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET))],
            NLM_F_REQUEST | NLM_F_ACK),
    message(NFQNL_MSG_CONFIG, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
                               attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 8192))], NLM_F_REQUEST | NLM_F_ACK),
):
    s.send(msg)
    reply = s.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    if kind == NLMSG_ERROR and struct.unpack_from("=i", reply, 16)[0] != 0:
        sys.exit("nfq_delay: the kernel refused the queue config: %d" % struct.unpack_from("=i", reply, 16)[0])
print("nfq_delay: queue %d, %g ms" % (queue, delay * 1000), flush=True)

pending = []  # (due, seq, packet id)
seq = 0
while True:
    timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
    if select.select([s], [], [], timeout)[0]:
        data = s.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = off + 20
                while a + 4 <= off + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        (pid,) = struct.unpack_from("!I", data, a + 4)
                        heapq.heappush(pending, (time.monotonic() + delay, seq, pid))
                        seq += 1
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        _, _, pid = heapq.heappop(pending)
        s.send(message(NFQNL_MSG_VERDICT, [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))]))
