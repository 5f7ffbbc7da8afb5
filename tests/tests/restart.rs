//! Restarting the daemon — gracefully, with kill -9, or with a rebuilt program — neither
//! detaches the data path nor loses a flow: the link and the maps are pinned.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use privatelink_tests::{
    lab::{ENI, Lab, LabOptions},
    netns::unique_name,
};
use privatelink_user::client::Client;

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

/// A load through the endpoint, reported by wrk. It runs for up to 90 s and is stopped
/// with SIGINT (wrk then prints its report as at the end of its time): a test stops it
/// once what had to happen under load has happened, so the load outlasts it by design.
struct Load(Child);

impl Load {
    fn start(lab: &Lab) -> Self {
        Self(
            lab.consumer
                .command("wrk")
                .args(["-t1", "-c8", "-d90s", &format!("http://{ENI}/")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Panics unless wrk is still running (its time not over, not failed).
    fn assert_running(&mut self, when: &str) {
        assert!(
            matches!(self.0.try_wait(), Ok(None)),
            "wrk had stopped before {when}: the load did not outlast it"
        );
    }

    /// Stops wrk (SIGINT) and returns its report after checking it: no socket error, no
    /// non-2xx answer, more than `min` requests. Returns the request count and the report.
    fn finish(mut self, min: u64) -> (u64, String) {
        self.assert_running("it was stopped");
        // SAFETY: signalling our own child (`ip netns exec` execs wrk in place).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        let requests: u64 = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request count in {text}"));
        assert!(requests > min, "only {requests} requests: {text}");
        assert!(!text.contains("Socket errors"), "{text}");
        assert!(!text.contains("Non-2xx"), "{text}");
        (requests, text)
    }
}

/// Packets the data path forwarded towards the service (the load is the only traffic).
fn forwarded(lab: &Lab) -> u64 {
    let s = lab.stats().unwrap();
    s.get("forward_to_service").copied().unwrap_or(0)
}

#[test]
fn http_load_sees_no_failure_while_the_daemon_restarts() {
    let mut lab = lab();
    let mut load = Load::start(&lab);
    std::thread::sleep(Duration::from_millis(800));
    let mut took = Vec::new();
    for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGKILL] {
        took.push(lab.restart_daemon(signal).unwrap());
        // The new daemon is ready (program swapped in, maps applied) while wrk still runs.
        load.assert_running(&format!("restart {} was ready", took.len()));
        std::thread::sleep(Duration::from_millis(800));
    }
    // Requests are served after the last restart: the data path forwards wrk's packets.
    let before = forwarded(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let after = forwarded(&lab);
    assert!(
        after > before,
        "nothing forwarded after the last restart ({before} -> {after})"
    );
    let (requests, _) = load.finish(1000);
    eprintln!(
        "{requests} requests through three daemon restarts (ready after {took:?}), none failed"
    );
}

/// Changing other endpoints through the API (create, accept, delete, 40 times each: 120
/// changes) while a load runs through ep-a: not one of ep-a's requests fails.
#[test]
fn changes_to_other_endpoints_do_not_disturb_a_running_one() {
    const CHANGES: usize = 120;
    let lab = lab();
    let mut load = Load::start(&lab);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    for change in 0..CHANGES {
        let i = change / 3;
        let id = format!("ep-x{i}");
        let eni = format!("vsw-a1:10.10.1.{}", 150 + i);
        match change % 3 {
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
        .unwrap_or_else(|e| panic!("change {change} refused: {e:#}"));
    }
    let took = t.elapsed();
    // Every change was made while the load ran.
    load.assert_running(&format!("the {CHANGES}th change"));
    let (requests, text) = load.finish(100);
    eprintln!(
        "{CHANGES} API changes to other endpoints in {took:?} during a load of {requests} requests; {text}"
    );
}

/// How one raw HTTP request to the API ended.
#[derive(Debug)]
enum Outcome {
    /// A status line came back: the daemon answered.
    Answered(u16, String),
    /// connect() failed: nothing reached the daemon.
    NotSent(std::io::Error),
    /// Writing the request failed part way: the daemon cannot have acted on it.
    SendFailed(std::io::Error),
    /// The request was written whole and the connection closed or was reset without a
    /// status line: the daemon died with the request in its hands. It may have committed.
    NoAnswer,
}

/// One request on a connection of its own (`Connection: close`, so the daemon never closes
/// it without an answer while it lives). While the request is written whole and unanswered,
/// `in_flight` holds `seq + 1`.
fn raw_request(
    api: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    seq: u64,
    in_flight: &AtomicU64,
) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&api, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Outcome::NotSent(e),
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(req.as_bytes()).and_then(|()| s.flush()) {
        return Outcome::SendFailed(e);
    }
    in_flight.store(seq + 1, SeqCst);
    let mut buf = Vec::new();
    let res = s.read_to_end(&mut buf);
    in_flight.store(0, SeqCst);
    let text = String::from_utf8_lossy(&buf).into_owned();
    // "HTTP/1.1 201 ": a status line, whatever became of the rest.
    if let Some(code) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
    {
        return Outcome::Answered(code, text);
    }
    match res {
        Ok(_) => Outcome::NoAnswer,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Outcome::NoAnswer
        }
        Err(e) => panic!("{method} {path}: no answer and no close: {e}"),
    }
}

/// What the test knows of an endpoint it wrote.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    /// Creation acknowledged (2xx), no delete since: must be listed, with this address.
    Present(u8),
    /// Delete acknowledged, or never created: must not be listed.
    Absent,
    /// A create (with this address) or a delete whose answer never came: either way.
    Unknown(u8),
}

/// Why the writer stopped.
#[derive(Debug)]
enum Stop {
    /// A request was written whole and got no answer; its sequence number.
    NoAnswer(u64),
    /// The daemon was gone before a request was (entirely) written.
    Gone(String),
}

/// The writer's side of a round: creates endpoints (every fifth one kept) and deletes the
/// others again, on fresh addresses, until the daemon goes away. Any answer but a 2xx, or
/// a connection failure before the test killed the daemon, fails the test.
struct Writer {
    known: BTreeMap<String, Known>,
    free: BTreeSet<u8>,
    next: u64,
}

impl Writer {
    /// One round against `api`; returns why it stopped.
    fn round(
        &mut self,
        api: SocketAddr,
        token: &str,
        done: &AtomicU64,
        in_flight: &AtomicU64,
        killed: &AtomicBool,
    ) -> Stop {
        let gone = |what: String, seq: u64, no_answer: bool| {
            assert!(
                killed.load(SeqCst),
                "the daemon went away before it was killed: {what}"
            );
            if no_answer {
                Stop::NoAnswer(seq)
            } else {
                Stop::Gone(what)
            }
        };
        let mut seq = 0u64;
        for _ in 0..2_000 {
            let n = self.next;
            self.next += 1;
            let id = format!("ep-k{n}");
            let addr = self
                .free
                .pop_first()
                .expect("the vSwitch ran out of addresses");
            let body = serde_json::json!({"id": id, "vpc": "vpc-a", "service": "epsrv-b",
                "zones": [{"vswitch": "vsw-a1", "eni": format!("10.10.1.{addr}")}]});
            seq += 1;
            match raw_request(
                api,
                token,
                "POST",
                "/v1/endpoints",
                Some(&body),
                seq,
                in_flight,
            ) {
                Outcome::Answered(c, _) if (200..300).contains(&c) => {
                    self.known.insert(id.clone(), Known::Present(addr));
                }
                Outcome::Answered(c, text) => panic!("creating {id} at .{addr}: {c}: {text}"),
                Outcome::NotSent(e) => {
                    self.free.insert(addr);
                    return gone(format!("connect: {e}"), seq, false);
                }
                Outcome::SendFailed(e) => {
                    self.free.insert(addr);
                    return gone(format!("send: {e}"), seq, false);
                }
                Outcome::NoAnswer => {
                    self.known.insert(id, Known::Unknown(addr));
                    return gone("no answer to a create".into(), seq, true);
                }
            }
            done.fetch_add(1, SeqCst);
            if n.is_multiple_of(5) {
                continue;
            }
            seq += 1;
            let path = format!("/v1/endpoints/{id}");
            match raw_request(api, token, "DELETE", &path, None, seq, in_flight) {
                Outcome::Answered(c, _) if (200..300).contains(&c) => {
                    self.known.insert(id, Known::Absent);
                    self.free.insert(addr);
                }
                Outcome::Answered(c, text) => panic!("deleting {id}: {c}: {text}"),
                Outcome::NotSent(e) => return gone(format!("connect: {e}"), seq, false),
                Outcome::SendFailed(e) => return gone(format!("send: {e}"), seq, false),
                Outcome::NoAnswer => {
                    self.known.insert(id, Known::Unknown(addr));
                    return gone("no answer to a delete".into(), seq, true);
                }
            }
            done.fetch_add(1, SeqCst);
        }
        panic!("2 000 requests and the daemon was never killed");
    }
}

/// A writer that stopped before the kill failed: its panic is the test's.
fn stopped_early(thread: std::thread::JoinHandle<(Writer, Stop)>) -> ! {
    match thread.join() {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok((_, stop)) => panic!("the writer stopped before the kill: {stop:?}"),
    }
}

/// `kill -9` while endpoints are being created and deleted, at a moment when a request
/// has been written whole and not answered: after the restart the store opens, every
/// acknowledged creation is there (with its address), every acknowledged deletion is
/// not, a change whose answer never came is either, and nothing else appears. Rounds are
/// repeated (at most 10) until a kill has landed on an unanswered request, at least 3.
#[test]
fn kill_9_mid_write_loses_no_acknowledged_change() {
    let mut lab = lab();
    let token = lab.tokens.consumer.clone();
    let list = |lab: &Lab| -> BTreeMap<String, Option<u8>> {
        let c = Client::new(lab.api.as_deref().unwrap(), Some(token.clone()));
        c.get("/v1/endpoints")
            .unwrap_or_else(|e| panic!("listing the consumer's endpoints: {e:#}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let eni = e["zones"][0]["eni"].as_str().and_then(|a| {
                    a.strip_prefix("10.10.1.")
                        .and_then(|last| last.parse::<u8>().ok())
                });
                (e["id"].as_str().unwrap().to_string(), eni)
            })
            .collect()
    };
    let baseline = list(&lab);
    assert!(baseline.contains_key("ep-a"), "{baseline:?}");
    // vsw-a1 is 10.10.1.0/24: .0 and .253-.255 are reserved, .1 is the gateway endpoint's
    // route target and .100 ep-a's ENI. Every other address is used at most once at a time.
    let free: BTreeSet<u8> = (2..=252).filter(|a| *a != 100).collect();
    let mut writer = Writer {
        known: BTreeMap::new(),
        free,
        next: 0,
    };
    let (mut mid_request, mut unknown_committed, mut unknown_not) = (0, 0, 0);
    let mut round = 0u64;
    while round < 3 || (mid_request == 0 && round < 10) {
        let api: SocketAddr = lab.api.as_deref().unwrap()["http://".len()..]
            .parse()
            .unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (token, done, in_flight, killed) = (
                token.clone(),
                done.clone(),
                in_flight.clone(),
                killed.clone(),
            );
            let mut w = std::mem::replace(
                &mut writer,
                Writer {
                    known: BTreeMap::new(),
                    free: BTreeSet::new(),
                    next: 0,
                },
            );
            std::thread::spawn(move || {
                let stop = w.round(api, &token, &done, &in_flight, &killed);
                (w, stop)
            })
        };
        // Let a few requests through (a different number each round), then kill the
        // daemon at a moment when a request is written and unanswered.
        let target = 3 + (round * 7) % 25;
        let t = Instant::now();
        while done.load(SeqCst) < target {
            if thread.is_finished() {
                stopped_early(thread);
            }
            assert!(t.elapsed() < Duration::from_secs(30), "writes too slow");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let awaited = loop {
            let f = in_flight.load(SeqCst);
            if f != 0 {
                break f - 1;
            }
            if thread.is_finished() {
                stopped_early(thread);
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no request in flight"
            );
            std::hint::spin_loop();
        };
        killed.store(true, SeqCst);
        lab.stop_daemon(libc::SIGKILL).unwrap();
        let (w, stop) = thread.join().expect("writer");
        writer = w;
        if matches!(stop, Stop::NoAnswer(s) if s == awaited) {
            mid_request += 1;
        }
        // The store opens again; what it holds is what was acknowledged.
        lab.resume_daemon().unwrap();
        let listed = list(&lab);
        for (id, eni) in &baseline {
            assert_eq!(
                listed.get(id),
                Some(eni),
                "round {round}: lab endpoint {id}"
            );
        }
        for (id, eni) in &listed {
            assert!(
                baseline.contains_key(id) || writer.known.contains_key(id),
                "round {round}: {id} was never written, yet it is listed ({listed:?})"
            );
            if let Some(Known::Absent) = writer.known.get(id) {
                panic!("round {round}: {id}'s deletion was acknowledged, yet it is listed");
            }
            if let Some(Known::Present(a) | Known::Unknown(a)) = writer.known.get(id) {
                assert_eq!(*eni, Some(*a), "round {round}: {id}'s address");
            }
        }
        for (id, k) in writer.known.iter_mut() {
            match *k {
                Known::Present(_) => assert!(
                    listed.contains_key(id),
                    "round {round}: acknowledged {id} lost ({listed:?})"
                ),
                Known::Absent => {}
                // Settled by what the store says, for the next rounds.
                Known::Unknown(a) => {
                    if listed.contains_key(id) {
                        *k = Known::Present(a);
                        unknown_committed += 1;
                    } else {
                        *k = Known::Absent;
                        writer.free.insert(a);
                        unknown_not += 1;
                    }
                }
            }
        }
        let why = match &stop {
            Stop::NoAnswer(s) => format!("request {s} written and unanswered"),
            Stop::Gone(e) => format!("the daemon was gone: {e}"),
        };
        eprintln!(
            "round {round}: {} requests answered, then {why} (request {awaited} was awaited at the kill)",
            done.load(SeqCst)
        );
        round += 1;
    }
    assert!(
        mid_request >= 1,
        "in {round} rounds no kill landed on a request written whole and unanswered"
    );
    let kept = writer
        .known
        .values()
        .filter(|k| matches!(k, Known::Present(_)))
        .count();
    eprintln!(
        "{round} kills, {mid_request} of them with a request unanswered ({unknown_committed} of \
         those committed, {unknown_not} not); {kept} acknowledged endpoints kept, {} deleted",
        writer.known.len() - kept
    );
    assert!(
        lab.reachable(&format!("http://{ENI}/")),
        "the lab still forwards"
    );
}
