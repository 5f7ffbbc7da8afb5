//! Restarting the daemon — gracefully, with kill -9, or with a rebuilt program — neither
//! detaches the data path nor loses a flow: the link and the maps are pinned.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use privatelink_tests::{
    lab::{ENI, Lab, LabOptions},
    netns::unique_name,
};

fn lab() -> Lab {
    let prefix = unique_name("plr");
    let pin = format!("/sys/fs/bpf/privatelink-test-{prefix}");
    Lab::up(&LabOptions::new(&prefix, pin)).expect("lab up")
}

/// One keep-alive HTTP exchange on `s`; returns the body.
fn get(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: endpoint\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
        assert!(!line.is_empty(), "connection closed");
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// The id of the XDP program attached to the forwarder's consumer-side interface.
fn xdp_prog_id(lab: &Lab) -> String {
    let out = lab.fwd.ip(&["link", "show", "fc0"]).unwrap();
    out.split("prog/xdp id ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no XDP program on fc0: {out}"))
        .to_string()
}

#[test]
fn an_open_connection_survives_kill_9_and_restart() {
    let mut lab = lab();
    let consumer = lab.consumer.name.clone();
    // The client side lives on a thread inside the consumer's namespace.
    let (to_client, from_test) = std::sync::mpsc::channel::<()>();
    let (to_test, from_client) = std::sync::mpsc::channel::<String>();
    let client = std::thread::spawn(move || {
        privatelink_tests::netns::enter_thread(&consumer).unwrap();
        let mut s = TcpStream::connect((ENI, 80)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        while from_test.recv().is_ok() {
            to_test.send(get(&mut s)).unwrap();
        }
    });
    to_client.send(()).unwrap();
    let first = from_client.recv().unwrap();
    let flows_before = lab.flow_lines().unwrap();
    let prog_before = xdp_prog_id(&lab);

    lab.stop_daemon(libc::SIGKILL).unwrap();
    // With no daemon at all, a new connection still goes through: its first packets take
    // the tail-called path programs, whose array stays pinned.
    let fresh = String::from_utf8(lab.curl(&format!("http://{ENI}/")).unwrap()).unwrap();
    assert!(
        fresh.contains("ECS2") || fresh.contains("ECS3"),
        "a backend answers a new connection without a daemon: {fresh}"
    );
    let took = lab.resume_daemon().unwrap();
    // The new daemon swapped its own program into the pinned link: an upgrade in place.
    assert_ne!(xdp_prog_id(&lab), prog_before, "program replaced");
    to_client.send(()).unwrap();
    assert_eq!(
        from_client.recv().unwrap(),
        first,
        "same backend on the same connection"
    );
    let flows_after = lab.flow_lines().unwrap();
    for f in &flows_before {
        assert!(flows_after.contains(f), "flow {f} lost across the restart");
    }

    let prog_between = xdp_prog_id(&lab);
    lab.restart_daemon(libc::SIGTERM).unwrap();
    to_client.send(()).unwrap();
    assert_eq!(from_client.recv().unwrap(), first);
    // Path arrays are pinned per entry program and retired once their program is gone:
    // the current one's is there, the first program's is not (the one just replaced may
    // linger until the kernel has freed its program).
    let pins: Vec<String> = std::fs::read_dir(lab.pin_dir.join("paths"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let now = xdp_prog_id(&lab);
    assert!(
        pins.contains(&now),
        "no path pin for program {now}: {pins:?}"
    );
    assert!(
        !pins.contains(&prog_before),
        "program {prog_before}'s paths still pinned: {pins:?}"
    );
    assert!(
        pins.iter().all(|p| *p == now || *p == prog_between),
        "stale path pins: {pins:?}"
    );
    drop(to_client);
    client.join().unwrap();
    eprintln!("daemon restart to ready: {took:?}");
}

#[test]
fn http_load_sees_no_failure_while_the_daemon_restarts() {
    let mut lab = lab();
    let wrk = lab
        .consumer
        .command("wrk")
        .args(["-t1", "-c8", "-d6s", &format!("http://{ENI}/")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.restart_daemon(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.restart_daemon(libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    lab.restart_daemon(libc::SIGKILL).unwrap();
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {text}"));
    assert!(requests > 1000, "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    eprintln!("{requests} requests through three daemon restarts, none failed");
}

/// Changing other endpoints through the API (create, accept, delete, 40 times) while a
/// load runs through ep-a: not one of ep-a's requests fails.
#[test]
fn changes_to_other_endpoints_do_not_disturb_a_running_one() {
    let lab = lab();
    let wrk = lab
        .consumer
        .command("wrk")
        .args(["-t1", "-c8", "-d5s", &format!("http://{ENI}/")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut changes = 0;
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(4) && changes < 120 {
        let i = changes / 3;
        let id = format!("ep-x{i}");
        let eni = format!("vsw-a1:10.10.1.{}", 150 + i % 100);
        match changes % 3 {
            0 => lab.cli(
                "consumer",
                &[
                    "endpoint",
                    "create",
                    &id,
                    "--vpc",
                    "vpc-a",
                    "--service",
                    "epsrv-b",
                    "--zone",
                    &eni,
                ],
            ),
            1 => lab.cli("provider", &["connection", "accept", "epsrv-b", &id]),
            _ => lab.cli("consumer", &["endpoint", "delete", &id]),
        }
        .unwrap();
        changes += 1;
    }
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(changes >= 30, "only {changes} changes made");
    assert!(
        !text.contains("Socket errors") && !text.contains("Non-2xx"),
        "{text}"
    );
    eprintln!("{changes} API changes to other endpoints during the load; {text}");
}

/// kill -9 at arbitrary moments while endpoints are being created: after the restart the
/// store opens and every acknowledged change is there.
#[test]
fn kill_9_mid_write_loses_no_acknowledged_change() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use privatelink_user::client::Client;
    let mut lab = lab();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..3u64 {
        let url = lab.api.clone().unwrap();
        let token = lab.tokens.consumer.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let c = Client::new(&url, Some(token));
            let mut done = Vec::new();
            for i in 0..200u64 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("ep-k{round}x{i}");
                let eni = format!("10.10.1.{}", 10 + round * 60 + i % 60);
                let body = serde_json::json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b",
                    "zones": [{"vswitch": "vsw-a1", "eni": eni}]});
                match c.post("/v1/endpoints", &body) {
                    Ok(_) => done.push(id.clone()),
                    Err(_) => break, // the daemon is gone
                }
                // Delete most again so ENIs can be reused; keep every 10th.
                if i % 10 != 0 {
                    // Acknowledged or not, a delete makes the endpoint's presence unknown
                    // to us (it may have committed just before the kill).
                    done.pop();
                    if c.delete(&format!("/v1/endpoints/{id}")).is_err() {
                        break;
                    }
                }
            }
            done
        });
        std::thread::sleep(Duration::from_millis(150 + round * 170));
        lab.restart_daemon(libc::SIGKILL).unwrap();
        stop.store(true, Ordering::Relaxed);
        acknowledged.extend(writer.join().unwrap());
        let c = Client::new(
            lab.api.as_deref().unwrap(),
            Some(lab.tokens.consumer.clone()),
        );
        let listed = c.get("/v1/endpoints").unwrap();
        let ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
        for id in &acknowledged {
            assert!(
                ids.contains(&id.as_str()),
                "round {round}: acknowledged {id} lost ({ids:?})"
            );
        }
    }
    assert!(
        acknowledged.len() >= 3,
        "too few writes before the kills: {acknowledged:?}"
    );
    assert!(
        lab.reachable(&format!("http://{ENI}/")),
        "the lab still forwards"
    );
}
