"""Forged frames at the forwarder host's own addresses, sent from a tenant's namespace.

usage: forge.py IFACE SRC_MAC DST_MAC SOURCES DESTINATIONS EXTRA_PORTS [SPORT]
SOURCES, DESTINATIONS: comma-separated IPv4 addresses (forged sources included);
EXTRA_PORTS: ports probed besides 1-1024; SPORT: also send SYNs to ports 1-1024 from this
source port (the port the host's health probes go to). Prints the number of frames sent.
"""
import sys

from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, IPv6, conf, sendp

iface, smac, dmac, sources, dests, extra = sys.argv[1:7]
probe_port = int(sys.argv[7]) if len(sys.argv) > 7 else None
ports = list(range(1, 1025)) + [int(p) for p in extra.split(",") if p]
sample = ports[::16] + [int(p) for p in extra.split(",") if p]
frames = []
for src in sources.split(","):
    for dst in dests.split(","):
        base = Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=64)
        frames += [base / TCP(sport=40000, dport=p, flags="S") for p in ports]
        if probe_port:
            frames += [base / TCP(sport=probe_port, dport=p, flags="S") for p in range(1, 1025)]
        frames += [base / TCP(sport=40001, dport=p, flags="A", seq=1, ack=1) for p in sample]
        frames += [base / UDP(sport=40002, dport=p) / b"x" for p in sample]
        frames.append(base / ICMP(type=8, id=7, seq=1))
        frames.append(
            Ether(src=smac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=smac, psrc=src, pdst=dst)
        )
frames.append(
    Ether(src=smac, dst="33:33:00:00:00:01") / IPv6(src="fe80::99", dst="ff02::1") / ICMPv6EchoRequest()
)
conf.verb = 0
s = conf.L2socket(iface=iface)
for f in frames:
    s.send(f)
s.close()
print(len(frames))
