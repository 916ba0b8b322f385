//! `classifier run` on a live veth pair in namespaces the test creates:
//! frames written with AF_PACKET from the peer side, SIGTERM, and the JSON
//! report checked for exact per-service packets, bytes and unique sources.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use classifier_tests::{
    TEST_FEED, TEST_WATCHED, classifier_binary,
    frames::{FrameSpec, TPID_8021Q, arp, truncated},
    netns::{Namespace, VethLink},
    require_root,
};
use serde_json::Value;

/// A running `classifier run`, killed on drop if a test fails before it ends.
struct Daemon {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Daemon {
    fn start(link: &VethLink, feed: &Path, extra: &[&str]) -> Self {
        let mut command = link.sensor.command(&classifier_binary());
        command
            .args([
                "run",
                "--iface",
                &link.sensor_iface,
                "--report-format",
                "json",
            ])
            .args(["--interval", "100ms", "--endpoints"])
            .arg(feed)
            .args(TEST_WATCHED.iter().flat_map(|w| ["--watch", w]))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start classifier");
        let stderr = child.stderr.take().expect("piped");
        let (sender, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("classifier: {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            stderr_lines,
            stderr_seen: Vec::new(),
        };
        daemon.wait_for("counting;");
        daemon
    }

    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "classifier never said {text:?}; it said:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// `signal` (SIGTERM or SIGINT), then the JSON report it prints.
    fn stop(mut self, signal: i32) -> Value {
        // Frames are processed in the receiving veth's NAPI poll; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)
            .expect("read report");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "classifier exited with {status}");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("report is not JSON ({error}):\n{stdout}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_feed(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("endpoints.csv");
    std::fs::write(&path, TEST_FEED).expect("write feed");
    path
}

fn temp_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("classifier-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn services(report: &Value) -> BTreeMap<String, Value> {
    report["services"]
        .as_array()
        .expect("services array")
        .iter()
        .map(|row| {
            (
                row["service"].as_str().expect("name").to_string(),
                row.clone(),
            )
        })
        .collect()
}

#[test]
fn live_veth_counts_every_frame_exactly() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("e2e");
    let feed = write_feed(&dir);
    let link = VethLink::create("e2e").expect("namespaces and veth");
    let daemon = Daemon::start(&link, &feed, &[]);

    // Four watched hosts (one IPv6); alpha gets 3 flows from 2 hosts, beta 3
    // flows (one inbound, one IPv6) from 2 hosts, gamma 1 flow; plus
    // unwatched, non-IP and malformed frames.
    let mut frames = Vec::new();
    let mut expect_bytes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut add = |frames: &mut Vec<Vec<u8>>,
                   service: Option<&'static str>,
                   frame: Vec<u8>,
                   copies: usize| {
        if let Some(service) = service {
            *expect_bytes.entry(service).or_default() += frame.len() * copies;
        }
        for _ in 0..copies {
            frames.push(frame.clone());
        }
    };
    add(
        &mut frames,
        Some("alpha"),
        FrameSpec::udp("175.45.176.1", "198.51.100.10", 40000, 443).build(),
        20,
    );
    add(
        &mut frames,
        Some("alpha"),
        FrameSpec::udp("175.45.176.1", "198.51.100.11", 40000, 443)
            .payload(200)
            .build(),
        5,
    );
    add(
        &mut frames,
        Some("alpha"),
        FrameSpec::udp("175.45.176.2", "198.51.100.10", 40001, 443)
            .vlans(&[TPID_8021Q])
            .build(),
        7,
    );
    add(
        &mut frames,
        Some("beta"),
        FrameSpec::udp("175.45.176.3", "198.51.100.130", 40002, 1194).build(),
        11,
    );
    add(
        &mut frames,
        Some("beta"),
        FrameSpec::udp("198.51.100.130", "175.45.176.3", 1194, 40002)
            .payload(900)
            .build(),
        13,
    );
    add(
        &mut frames,
        Some("beta"),
        FrameSpec::udp("2001:db8:aa::5", "2001:db8:e0:1::9", 40003, 51820).build(),
        4,
    );
    add(
        &mut frames,
        Some("gamma"),
        FrameSpec::udp("175.45.176.2", "198.51.100.200", 40004, 443).build(),
        3,
    );
    add(
        &mut frames,
        None,
        FrameSpec::udp("192.0.2.1", "198.51.100.10", 1, 443).build(),
        50,
    );
    add(
        &mut frames,
        None,
        FrameSpec::udp("175.45.176.1", "192.0.2.1", 1, 443).build(),
        6,
    );
    add(&mut frames, None, arp(), 3);
    add(
        &mut frames,
        None,
        truncated(
            FrameSpec::udp("175.45.176.1", "198.51.100.10", 1, 2).build(),
            30,
        ),
        2,
    );
    link.send(&frames).expect("send frames");
    let total_bytes: usize = frames.iter().map(Vec::len).sum();

    let report = daemon.stop(libc::SIGTERM);
    assert_eq!(report["schema"], "classifier.report.v1");
    assert_eq!(report["interfaces"][0], link.sensor_iface.as_str());
    let totals = &report["totals"];
    assert_eq!(totals["packets"], frames.len());
    assert_eq!(totals["bytes"], total_bytes);
    assert_eq!(totals["ipv4"], frames.len() - 4 - 3);
    assert_eq!(totals["ipv6"], 4);
    assert_eq!(totals["other"], 3);
    assert_eq!(totals["malformed"], 2);
    assert_eq!(report["malformed"]["ipv4_truncated"], 2);
    assert_eq!(totals["watched"], 20 + 5 + 7 + 11 + 13 + 4 + 3 + 6);
    assert_eq!(totals["matched"], 20 + 5 + 7 + 11 + 13 + 4 + 3);

    let services = services(&report);
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["alpha", "beta", "gamma"]
    );
    let expect = [
        ("alpha", 32, 32, 0, 3, 2),
        ("beta", 28, 15, 13, 3, 2),
        ("gamma", 3, 3, 0, 1, 1),
    ];
    for (name, packets, outbound, inbound, flows, sources) in expect {
        let row = &services[name];
        assert_eq!(row["packets"], packets, "{name} packets");
        assert_eq!(row["packets_outbound"], outbound, "{name} outbound");
        assert_eq!(row["packets_inbound"], inbound, "{name} inbound");
        assert_eq!(row["bytes"], expect_bytes[name], "{name} bytes");
        assert_eq!(row["flows"], flows, "{name} flows");
        assert_eq!(row["unique_sources"], sources, "{name} unique sources");
        let share = row["share"].as_f64().expect("share");
        assert!(
            (share - f64::from(flows) / 7.0).abs() < 1e-9,
            "{name} share {share}"
        );
    }
    let flows = report["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 7);
    let beta_in = flows
        .iter()
        .find(|f| f["service"] == "beta" && f["direction"] == "inbound")
        .expect("beta inbound flow");
    assert_eq!(beta_in["watched"], "175.45.176.3");
    assert_eq!(beta_in["endpoint"], "198.51.100.130");
    assert_eq!(beta_in["port"], 1194);
    assert_eq!(beta_in["packets"], 13);
    assert_eq!(report["flow_table"]["evictions"], 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn attach_failure_names_the_interface_and_exits_non_zero() {
    if !require_root() {
        return;
    }
    let namespace =
        Namespace::create(&classifier_tests::netns::test_name("attach")).expect("namespace");
    // Loopback has no native XDP support.
    let output = namespace
        .command(&classifier_binary())
        .args(["run", "--iface", "lo", "--xdp-mode", "native"])
        .output()
        .expect("run classifier");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("classifier: interface lo: cannot attach XDP: native mode failed"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn generic_mode_is_a_stated_fallback_and_sigint_stops_cleanly() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("generic");
    let feed = write_feed(&dir);
    let link = VethLink::create("gen").expect("namespaces and veth");
    let daemon = Daemon::start(&link, &feed, &["--xdp-mode", "generic"]);
    assert!(
        daemon
            .stderr_seen
            .iter()
            .any(|l| l.contains("in generic mode"))
    );
    link.send(&[FrameSpec::udp("175.45.176.9", "203.0.113.1", 5, 6).build()])
        .expect("send");
    // Ctrl-C stops it the same way.
    let report = daemon.stop(libc::SIGINT);
    assert_eq!(services(&report)["delta"]["packets"], 1);
    let _ = std::fs::remove_dir_all(dir);
}
