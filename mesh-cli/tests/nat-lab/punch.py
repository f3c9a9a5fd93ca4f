#!/usr/bin/env python3
"""One side of a UDP hole punch, for the NAT lab's punch study (README.md).

    punch.py LOCAL_PORT PEER_IP PEER_PORT START_AT SECONDS [LOW_TTL_UNTIL]

Binds 0.0.0.0:LOCAL_PORT, waits until the absolute time START_AT (epoch
seconds, so two hosts start together or at a chosen offset), then sends a
datagram to PEER_IP:PEER_PORT every 50 ms for SECONDS, from the socket it
receives on. Until the absolute time LOW_TTL_UNTIL datagrams go out with IP
TTL 2: enough to pass the own NAT router (opening its mapping) and expire
at the next hop, before the peer's NAT.
Prints one JSON line: how many datagrams arrived, from which addresses, and
how long after START_AT the first one arrived.
"""
import json
import socket
import sys
import time

local_port, peer_ip, peer_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
start_at, seconds = float(sys.argv[4]), float(sys.argv[5])
low_ttl_until = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", local_port))
s.setblocking(False)
time.sleep(max(0.0, start_at - time.time()))
received, sources, first = 0, set(), None
seq, next_send, end = 0, time.time(), time.time() + seconds
while time.time() < end:
    now = time.time()
    if now >= next_send:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2 if now < low_ttl_until else 64)
        s.sendto(b"punch %d" % seq, (peer_ip, peer_port))
        seq += 1
        next_send += 0.05
    try:
        while True:
            _, addr = s.recvfrom(2048)
            received += 1
            sources.add("%s:%d" % addr)
            if first is None:
                first = round(time.time() - start_at, 3)
    except (BlockingIOError, ConnectionRefusedError):
        pass
    time.sleep(0.005)
print(json.dumps({"sent": seq, "received": received, "from": sorted(sources), "first_after_s": first}))
