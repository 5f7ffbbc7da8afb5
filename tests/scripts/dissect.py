"""Dissects Ethernet frames with scapy (an implementation independent of privatelink's):
one hex frame per line on stdin, one JSON object per line on stdout.

Checksums are verified the way a receiver would: the ones' complement sum over the
covered bytes (pseudo-header included for TCP/UDP) must come out as zero.
"""
import json
import sys

from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, raw
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import in4_chksum
from scapy.utils import checksum


# scapy 2.5's GeneveOptions keeps the bytes after its own data as payload, so the option
# list would hold one option swallowing the rest: each option ends where its length says.
GeneveOptions.extract_padding = lambda self, s: (b"", s)


def l4(ip):
    out = {}
    body = raw(ip.payload)[: ip.len - ip.ihl * 4]
    # The layer right after this header only (`TCP in ip` would find an inner one too).
    if isinstance(ip.payload, TCP):
        t = ip.payload
        out["tcp"] = {"sport": t.sport, "dport": t.dport, "flags": str(t.flags),
                      "csum_ok": in4_chksum(6, ip, body) == 0}
    elif isinstance(ip.payload, UDP):
        u = ip.payload
        out["udp"] = {"sport": u.sport, "dport": u.dport, "len": u.len, "chksum": u.chksum,
                      "csum_ok": u.chksum == 0 or in4_chksum(17, ip, body) == 0}
    if isinstance(ip.payload, ICMP):
        c = ip.payload
        out["icmp"] = {"type": c.type, "code": c.code, "csum_ok": checksum(body) == 0,
                       "nexthopmtu": c.nexthopmtu if c.type == 3 else None,
                       "id": c.id if c.type in (0, 8) else None,
                       "quote": body[8:].hex()}
    return out


def ipv4(ip):
    hdr = raw(ip)[: ip.ihl * 4]
    d = {"version": ip.version, "ihl": ip.ihl, "tos": ip.tos, "len": ip.len, "id": ip.id,
         "flags": int(ip.flags), "frag": ip.frag, "ttl": ip.ttl, "proto": ip.proto,
         "src": ip.src, "dst": ip.dst, "csum_ok": checksum(hdr) == 0,
         "raw": raw(ip)[: ip.len].hex()}
    d.update(l4(ip))
    return d


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    f = Ether(bytes.fromhex(line))
    o = {"eth": {"src": f.src, "dst": f.dst, "type": f.type}, "len": len(raw(f))}
    if ARP in f:
        a = f[ARP]
        o["arp"] = {"op": a.op, "hwsrc": a.hwsrc, "psrc": a.psrc, "hwdst": a.hwdst,
                    "pdst": a.pdst}
    if IP in f:
        outer = f[IP]
        o["ip"] = ipv4(outer)
        if GENEVE in f:
            g = f[GENEVE]
            o["geneve"] = {
                "version": g.version, "optionlen": g.optionlen, "oam": g.oam,
                "critical": g.critical, "proto": g.proto, "vni": g.vni,
                "options": [{"class": x.classid, "type": x.type, "length": x.length,
                             "data": bytes(x.data).hex()} for x in g.options],
            }
            if isinstance(g.payload, IP):
                o["inner"] = ipv4(g.payload)
    print(json.dumps(o))
