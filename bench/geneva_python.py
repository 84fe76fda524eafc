#!/usr/bin/python3
"""Geneva's own engine, offline, for scale (bench/geneva.lua gives nfqlua's).

What Geneva's engine does per outbound packet, without the queue and the
socket: IP(payload) (scapy's parse of the queued bytes, as out_callback
does), Strategy.act_on_packet, and bytes() of each packet it returns (what
its L3 socket sends). python-netfilterqueue is not in Debian, so the kernel
side is left out: these figures are an upper bound for Geneva's engine.

    /usr/bin/python3 bench/geneva_python.py /tmp/geneva [PACKETS]
"""
import os
import sys
import time

GENEVA = sys.argv[1] if len(sys.argv) > 1 else "/tmp/geneva"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
sys.argv = sys.argv[:2]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spec", "fixtures", "geneva"))
import make_fixtures as m  # noqa: E402  (its stubs and Geneva's modules, for GENEVA in sys.argv[1])

STRATEGIES = [
    r"[TCP:flags:PA]-duplicate(tamper{TCP:dataofs:replace:10}(tamper{IP:ttl:replace:10},),)-|",
    r"[TCP:flags:PA]-fragment{tcp:8:True}(,fragment{tcp:4:True})-|",
]
segment = bytes(m.INPUTS[3][1])
for dna in STRATEGIES:
    strategy = m.actions.utils.parse(dna, m.log)
    start = time.perf_counter()
    for _ in range(N):
        packet = m.layers.packet.Packet(m.IP(segment))
        for out in strategy.act_on_packet(packet, m.log, direction="out"):
            bytes(out)
    elapsed = time.perf_counter() - start
    print("%s\t%d packets/s" % (dna, N / elapsed))
