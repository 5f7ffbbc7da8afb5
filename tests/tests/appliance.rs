//! The GWLB test appliance against GENEVE packets built by scapy (an independent
//! implementation of RFC 8926): valid packets come back byte for byte, a drop rule holds,
//! malformed ones are counted by reason and never returned.

use std::{net::UdpSocket, process::Command, time::Duration};

use privatelink_tests::lab::{bin, wait_for};

/// GENEVE payloads from scapy, as hex lines.
fn scapy_packets() -> Vec<Vec<u8>> {
    let script = r#"
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.all import IP, TCP, UDP, raw
def opts(cookie, with_cookie=True):
    o = [GeneveOptions(classid=0x0108, type=1, data=b'\x11'*8),
         GeneveOptions(classid=0x0108, type=2, data=b'\x22'*8)]
    if with_cookie:
        o.append(GeneveOptions(classid=0x0108, type=3, data=cookie))
    return o
inner_web = IP(src='10.10.2.1', dst='10.10.9.9')/TCP(sport=40000, dport=80, flags='S')
inner_ssh = IP(src='10.10.2.1', dst='10.10.9.9')/TCP(sport=40001, dport=22, flags='S')
inner_dns = IP(src='10.10.2.1', dst='10.10.9.9')/UDP(sport=5353, dport=53)/b'q'
pkts = [
    GENEVE(proto=0x0800, options=opts(b'\xaa\xaa\xaa\xaa'))/inner_web,
    GENEVE(proto=0x0800, options=opts(b'\xbb\xbb\xbb\xbb'))/inner_ssh,
    GENEVE(version=1, proto=0x0800, options=opts(b'\xcc\xcc\xcc\xcc'))/inner_web,
    GENEVE(proto=0x0800, options=opts(b'', False))/inner_web,
    GENEVE(proto=0x0800, options=opts(b'\xdd\xdd\xdd\xdd'))/inner_dns,
]
for p in pkts:
    print(raw(p).hex())
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .expect("python3 with scapy");
    assert!(
        out.status.success(),
        "scapy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn appliance_returns_valid_geneve_and_counts_the_rest() {
    let pkts = scapy_packets();
    assert_eq!(pkts.len(), 5);
    let me = UdpSocket::bind("127.0.0.1:0").unwrap();
    me.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let reply_port = me.local_addr().unwrap().port();
    let listen = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // a free port
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // a free port
    let dir = std::env::temp_dir().join(format!("privatelink-appliance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("stats.json");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let child = Command::new(bin("pl-appliance").unwrap())
        .args([
            "--listen",
            &listen.to_string(),
            "--reply-port",
            &reply_port.to_string(),
            "--drop",
            "tcp:22",
            "--health",
            &health.to_string(),
            "--stats-file",
        ])
        .arg(&stats)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child, dir);
    // Wait until it answers: send the first valid packet until it comes back.
    let mut buf = [0u8; 2048];
    wait_for(Duration::from_secs(10), "the appliance to answer", || {
        me.send_to(&pkts[0], listen).unwrap();
        matches!(me.recv_from(&mut buf), Ok((n, _)) if buf[..n] == pkts[0][..])
    })
    .unwrap();

    for p in &pkts {
        me.send_to(p, listen).unwrap();
    }
    let mut back = Vec::new();
    while let Ok((n, _)) = me.recv_from(&mut buf) {
        back.push(buf[..n].to_vec());
    }
    assert_eq!(
        back,
        vec![pkts[0].clone(), pkts[4].clone()],
        "only the valid, allowed packets return, unchanged"
    );

    wait_for(Duration::from_secs(5), "the counters", || {
        std::fs::read_to_string(&stats)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| {
                v["dropped_by_rule"] == 1
                    && v["malformed"]["version"] == 1
                    && v["malformed"]["missing_option"] == 1
            })
    })
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let received = v["received"].as_u64().unwrap();
    let returned = v["returned"].as_u64().unwrap();
    assert_eq!(received - returned, 3, "{v}");
    assert_eq!(v["cookies"]["dddddddd"]["10.10.2.1>10.10.9.9"], 1, "{v}");
    assert_eq!(v["cookies"]["bbbbbbbb"]["10.10.2.1>10.10.9.9"], 1, "{v}");

    // Health checks: any connection to the health port gets a 200.
    let mut c = std::net::TcpStream::connect(health).unwrap();
    std::io::Write::write_all(&mut c, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut c, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
}
