"""Dissects Ethernet frames carrying IPv6, bare or inside GENEVE (RFC 8926, protocol
0x86DD) over IPv4, with scapy (an implementation independent of privatelink's): one hex
frame per line on stdin, one JSON object per line on stdout.

Checksums are verified the way a receiver would: the ones' complement sum over the
covered bytes, the IPv6 pseudo-header included for TCP, UDP and ICMPv6, must come out as
zero (scapy's `in6_chksum` computes it over the bytes as they are).
"""
import json
import sys

from scapy.all import IP, UDP, Ether, IPv6, raw
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet6 import in6_chksum
from scapy.utils import checksum

# As in dissect.py: each option ends where its length says.
GeneveOptions.extract_padding = lambda self, s: (b"", s)

EXT_HEADERS = (0, 43, 60)


def upper_layer(ip6):
    """The upper-layer protocol and its bytes, past the skipped extension headers."""
    body = raw(ip6.payload)[: ip6.plen]
    nh = ip6.nh
    while nh in EXT_HEADERS and len(body) >= 8:
        n = (body[1] + 1) * 8
        nh, body = body[0], body[n:]
    return nh, body


def l4(ip6):
    nh, body = upper_layer(ip6)
    ok = len(body) >= 4 and in6_chksum(nh, ip6, body) == 0
    out = {"nh": nh, "l4_csum_ok": ok, "l4_len": len(body)}
    if nh in (6, 17) and len(body) >= 8:
        out["sport"] = int.from_bytes(body[0:2], "big")
        out["dport"] = int.from_bytes(body[2:4], "big")
    if nh == 58 and len(body) >= 8:
        out["icmp6"] = {"type": body[0], "code": body[1],
                        "word": int.from_bytes(body[4:8], "big"),
                        "rest": body[8:].hex()}
    return out


def ipv6(ip6):
    d = {"version": ip6.version, "tc": ip6.tc, "fl": ip6.fl, "plen": ip6.plen,
         "nh": ip6.nh, "hlim": ip6.hlim, "src": ip6.src, "dst": ip6.dst,
         "raw": raw(ip6)[: 40 + ip6.plen].hex()}
    d.update(l4(ip6))
    return d


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    f = Ether(bytes.fromhex(line))
    o = {"eth": {"src": f.src, "dst": f.dst, "type": f.type}, "len": len(raw(f))}
    if IPv6 in f and IP not in f:
        o["ipv6"] = ipv6(f[IPv6])
    if IP in f:
        ip = f[IP]
        hdr = raw(ip)[: ip.ihl * 4]
        o["ip"] = {"version": ip.version, "ihl": ip.ihl, "len": ip.len,
                   "flags": int(ip.flags), "frag": ip.frag, "ttl": ip.ttl,
                   "proto": ip.proto, "src": ip.src, "dst": ip.dst,
                   "csum_ok": checksum(hdr) == 0}
        if UDP in f:
            u = f[UDP]
            o["udp"] = {"sport": u.sport, "dport": u.dport, "len": u.len,
                        "chksum": u.chksum}
        if GENEVE in f:
            g = f[GENEVE]
            o["geneve"] = {
                "version": g.version, "optionlen": g.optionlen, "oam": g.oam,
                "critical": g.critical, "proto": g.proto, "vni": g.vni,
                "options": [{"class": x.classid, "type": x.type, "length": x.length,
                             "data": bytes(x.data).hex()} for x in g.options],
            }
            if isinstance(g.payload, IPv6):
                o["inner"] = ipv6(g.payload)
    print(json.dumps(o))
