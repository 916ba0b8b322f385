//! IPFIX export read back by an independent implementation: nfcapd
//! (Debian `nfdump`) listens on loopback inside the sensor's namespace,
//! `classifier run --ipfix` exports to it while frames go through the
//! veth, and `nfdump` reads what nfcapd stored: packets and IP bytes per
//! flow equal exactly what was sent, IPv4 and IPv6, directions kept, and
//! watched traffic to no endpoint is not exported.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

use classifier_tests::{
    daemon::{Daemon, services, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};

const COLLECTOR: &str = "127.0.0.1:4739";

/// nfcapd listening on the sensor namespace's loopback, storing into
/// `dir`; [`Self::stop`] makes it write its file.
struct Nfcapd(std::process::Child);

impl Nfcapd {
    fn start(link: &VethLink, dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("nfcapd folder");
        let child = link
            .sensor
            .command(std::path::Path::new("nfcapd"))
            .args([
                "-b",
                "127.0.0.1",
                "-p",
                "4739",
                "-w",
                text(dir),
                "-t",
                "3600",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nfcapd (Debian package nfdump; the test set-up installs it)");
        std::thread::sleep(Duration::from_millis(500));
        Self(child)
    }

    /// After the daemon's last export: SIGTERM, and nfcapd writes its file.
    fn stop(mut self) {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (source, destination) → (packets, IP bytes) as nfdump prints them.
fn nfdump_flows(dir: &std::path::Path) -> BTreeMap<(String, String), (u64, u64)> {
    let output = Command::new("nfdump")
        .args(["-R", text(dir), "-N", "-o", "csv"])
        .output()
        .expect("nfdump (Debian package nfdump; the test set-up installs it)");
    assert!(output.status.success(), "nfdump: {output:?}");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a CSV header").split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|field| *field == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let (sa, da, packets, bytes) = (column("sa"), column("da"), column("ipkt"), column("ibyt"));
    let mut flows = BTreeMap::new();
    for line in lines.filter(|line| line.contains(',')) {
        let fields: Vec<&str> = line.split(',').collect();
        // Flow lines start with a date; the summary after them does not.
        let is_flow = fields.len() == header.len()
            && fields[0].len() > 4
            && fields[0][..4].chars().all(|c| c.is_ascii_digit());
        if !is_flow {
            continue;
        }
        let entry = flows
            .entry((fields[sa].to_string(), fields[da].to_string()))
            .or_insert((0, 0));
        entry.0 += fields[packets].trim().parse::<u64>().expect("packets");
        entry.1 += fields[bytes].trim().parse::<u64>().expect("bytes");
    }
    flows
}

#[test]
fn flows_exported_over_ipfix_are_what_was_sent() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("ipfix");
    let feed = write_feed(&dir);
    let stored = dir.join("nfcapd");
    let link = VethLink::create("ipfix").expect("namespaces and veth");
    let collector = Nfcapd::start(&link, &stored);
    let pins = classifier_tests::daemon::TestMount::bpf(&dir.join("bpf"));
    let exporting = [
        "--ipfix",
        COLLECTOR,
        "--ipfix-interval",
        "1s",
        "--pin-path",
        text(&pins.path),
    ];
    let daemon = Daemon::start(
        &link,
        &feed,
        &[&exporting[..], &["--keep-attached"]].concat(),
    );

    // IP bytes per frame: header and payload, without Ethernet or VLAN
    // tags (which the frame bytes of reports include).
    let mut sent: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut frames = Vec::new();
    let mut add = |spec: FrameSpec, src: &str, dst: &str, ip_len: u64| {
        frames.push(spec.build());
        let entry = sent
            .entry((src.to_string(), dst.to_string()))
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 += ip_len;
    };
    let (v4_host, v4_server) = ("175.45.176.9", "198.51.100.10");
    let (v6_host, v6_server) = ("2001:db8:aa::9", "2001:db8:e0::10");
    for payload in [16, 100, 200, 300, 1000] {
        add(
            FrameSpec::udp(v4_host, v4_server, 40000, 443).payload(payload),
            v4_host,
            v4_server,
            20 + 8 + payload as u64,
        );
    }
    // VLAN-tagged: the same flow, the same IP bytes.
    add(
        FrameSpec::udp(v4_host, v4_server, 40000, 443)
            .payload(64)
            .vlans(&[0x8100]),
        v4_host,
        v4_server,
        20 + 8 + 64,
    );
    for payload in [30, 700, 1200] {
        add(
            FrameSpec::udp(v4_server, v4_host, 443, 40000).payload(payload),
            v4_server,
            v4_host,
            20 + 8 + payload as u64,
        );
    }
    for payload in [50, 500, 1100, 10] {
        add(
            FrameSpec::udp(v6_host, v6_server, 40001, 51820).payload(payload),
            v6_host,
            v6_server,
            40 + 8 + payload as u64,
        );
    }
    // Watched, but to no endpoint: never exported.
    frames.push(FrameSpec::udp(v4_host, "192.0.2.1", 40000, 443).build());

    // Two rounds: the second export carries only what was added since.
    // Then the daemon stops with the program left attached, and the next
    // daemon, which adopts it, exports only what comes after: the
    // collector gets each packet once.
    let (first, second) = frames.split_at(frames.len() / 2);
    let (second, third) = second.split_at(second.len() / 2);
    link.send(first).expect("send");
    std::thread::sleep(Duration::from_millis(2500));
    link.send(second).expect("send");
    let (report, log) = daemon.stop(libc::SIGTERM);
    assert!(
        log.iter().any(|line| line.contains("observation domain")),
        "{log:?}"
    );
    let adopter = Daemon::start(&link, &feed, &exporting);
    assert!(adopter.said("adopting the program"));
    link.send(third).expect("send");
    let (adopted_report, _) = adopter.stop(libc::SIGTERM);
    collector.stop();

    let exported = nfdump_flows(&stored);
    assert_eq!(exported, sent, "nfdump's flows vs what was sent");
    // The report counts the same packets (frame bytes, there): the
    // adopter's counts since the program was attached.
    assert!(services(&report)["alpha"]["packets"].as_u64() < Some(13));
    assert_eq!(services(&adopted_report)["alpha"]["packets"], 13);
    drop(pins);

    // With --pseudonymize-key the watched addresses exported are
    // pseudonyms (240.0.0.0/4, 100::/64), the endpoints as they are.
    let key = dir.join("key");
    std::fs::write(&key, [7u8; 32]).expect("key");
    let stored = dir.join("nfcapd-pseudonyms");
    let collector = Nfcapd::start(&link, &stored);
    let daemon = Daemon::start(
        &link,
        &feed,
        &["--ipfix", COLLECTOR, "--pseudonymize-key", text(&key)],
    );
    link.send(&frames).expect("send");
    // SIGTERM exports the last (here: the only) deltas.
    daemon.stop(libc::SIGTERM);
    collector.stop();
    let exported = nfdump_flows(&stored);
    assert_eq!(exported.len(), sent.len(), "{exported:?}");
    for ((source, destination), counts) in &exported {
        let (watched, endpoint) = if [v4_server, v6_server].contains(&source.as_str()) {
            (destination, source)
        } else {
            (source, destination)
        };
        assert!(
            watched.starts_with("24") || watched.starts_with("25") || watched.starts_with("100:"),
            "{watched} is no pseudonym"
        );
        assert!([v4_server, v6_server].contains(&endpoint.as_str()));
        let original = if endpoint == v4_server {
            v4_host
        } else {
            v6_host
        };
        let key = if source == endpoint {
            (endpoint.clone(), original.to_string())
        } else {
            (original.to_string(), endpoint.clone())
        };
        assert_eq!(Some(counts), sent.get(&key), "{key:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A TCP collector that hangs: a listener on `address` inside the
/// namespace whose accept queue one never-accepted connection fills, so
/// the SYN of any further connect is dropped and the connect waits.
struct HangingCollector {
    _listener: std::net::TcpListener,
    _queued: std::net::TcpStream,
}

impl HangingCollector {
    fn start(link: &VethLink, address: &'static str) -> Self {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    link.sensor
                        .enter_on_this_thread()
                        .expect("enter the namespace");
                    let listener = std::net::TcpListener::bind(address).expect("listen");
                    // listen(2) again sets the backlog: 0 holds one connection.
                    // SAFETY: a valid listening socket.
                    let set = unsafe { libc::listen(listener.as_raw_fd(), 0) };
                    assert_eq!(set, 0, "listen backlog");
                    let queued = std::net::TcpStream::connect(address).expect("fill the queue");
                    let refused = std::net::TcpStream::connect_timeout(
                        &address.parse().expect("address"),
                        Duration::from_millis(300),
                    );
                    assert!(refused.is_err(), "a second connect should hang");
                    Self {
                        _listener: listener,
                        _queued: queued,
                    }
                })
                .join()
                .expect("collector thread")
        })
    }
}

#[test]
fn a_hanging_collector_neither_stalls_the_daemon_nor_the_other_collectors() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("ipfix-hang");
    let feed = write_feed(&dir);
    let stored = dir.join("nfcapd");
    let link = VethLink::create("ipfixhang").expect("namespaces and veth");
    let collector = Nfcapd::start(&link, &stored);
    let hanging = HangingCollector::start(&link, "127.0.0.1:4740");
    let metrics = "127.0.0.1:9477";
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--ipfix",
            COLLECTOR,
            "--ipfix",
            "tcp://127.0.0.1:4740",
            "--ipfix-interval",
            "1s",
            "--metrics-addr",
            metrics,
        ],
    );
    let frames: Vec<Vec<u8>> = [16, 100, 200]
        .into_iter()
        .map(|payload| {
            FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443)
                .payload(payload)
                .build()
        })
        .collect();
    link.send(&frames).expect("send");
    // Over several export intervals, each one waiting on the hanging
    // collector's connect, the metrics are answered at once.
    let mut slowest = Duration::ZERO;
    let mut body = String::new();
    for _ in 0..10 {
        let asked = std::time::Instant::now();
        body = link.sensor.http_get(metrics, "/metrics");
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a scrape took {slowest:?}"
    );
    let failures: u64 = body
        .lines()
        .find_map(|line| line.strip_prefix("classifier_ipfix_send_failures_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the send failures metric");
    assert!(failures >= 1, "{body}");
    daemon.stop(libc::SIGTERM);
    collector.stop();
    drop(hanging);
    // The collector that answers got every packet, once.
    let exported = nfdump_flows(&stored);
    let flow = ("175.45.176.9".to_string(), "198.51.100.10".to_string());
    assert_eq!(
        exported.get(&flow).map(|counts| counts.0),
        Some(3),
        "{exported:?}"
    );
    assert_eq!(exported.len(), 1, "{exported:?}");
    let _ = std::fs::remove_dir_all(dir);
}
