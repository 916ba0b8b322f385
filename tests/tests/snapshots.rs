//! Pinning, live counters, metrics and snapshots of `classifier run` on a
//! live veth pair: traffic across several snapshot boundaries, a SIGTERM
//! with `--keep-attached` and a SIGKILL each followed by a daemon that
//! adopts the program, `stats` and `/metrics` from other processes, a
//! full disk and a removed folder, traffic during cuts, pseudonyms, and a
//! SIGKILL in the middle of a snapshot write. The sum of the snapshots must
//! equal exactly what was sent.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use classifier_tests::{
    TEST_WATCHED, classifier_binary,
    daemon::{Daemon, TestMount, services, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root, run_classifier as classifier,
};
use serde_json::Value;

/// What the tests sent: all frames, and per service.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sent {
    packets: u64,
    bytes: u64,
    services: BTreeMap<String, (u64, u64)>,
}

impl Sent {
    fn add(
        &mut self,
        frames: &mut Vec<Vec<u8>>,
        service: Option<&str>,
        frame: Vec<u8>,
        copies: u64,
    ) {
        let len = frame.len() as u64;
        self.packets += copies;
        self.bytes += len * copies;
        if let Some(service) = service {
            let entry = self.services.entry(service.to_string()).or_default();
            entry.0 += copies;
            entry.1 += len * copies;
        }
        for _ in 0..copies {
            frames.push(frame.clone());
        }
    }

    /// One round of traffic: alpha outbound (IPv4 and IPv6), beta inbound,
    /// and unwatched frames; hosts differ per round.
    fn round(&mut self, round: u8) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let watched = format!("175.45.176.{round}");
        let watched6 = format!("2001:db8:aa::{round}");
        self.add(
            &mut frames,
            Some("alpha"),
            FrameSpec::udp(&watched, "198.51.100.10", 40000, 443).build(),
            3 + u64::from(round),
        );
        self.add(
            &mut frames,
            Some("alpha"),
            FrameSpec::udp(&watched6, "2001:db8:e0::1", 40001, 443).build(),
            2,
        );
        self.add(
            &mut frames,
            Some("beta"),
            FrameSpec::udp("198.51.100.130", &watched, 1194, 40002)
                .payload(300)
                .build(),
            4,
        );
        self.add(
            &mut frames,
            None,
            FrameSpec::udp("192.0.2.1", "198.51.100.10", 1, 443).build(),
            5,
        );
        frames
    }
}

/// The counts a report (or a sum of snapshots) holds, as `Sent`.
fn counted(reports: &[Value]) -> Sent {
    let mut sum = Sent::default();
    for report in reports {
        sum.packets += report["totals"]["packets"].as_u64().expect("packets");
        sum.bytes += report["totals"]["bytes"].as_u64().expect("bytes");
        for (name, row) in services(report) {
            let entry = sum.services.entry(name).or_default();
            entry.0 += row["packets"].as_u64().expect("service packets");
            entry.1 += row["bytes"].as_u64().expect("service bytes");
        }
    }
    sum
}

/// Snapshot files in time order (two partial snapshots can start within
/// one second: `…Z.json` then `…Z-1.json`).
fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let start_of = |path: &PathBuf| {
        let text = std::fs::read_to_string(path).expect("read snapshot");
        let report: Value = serde_json::from_str(&text).expect("snapshot is JSON");
        let start = report["start"].as_str().expect("start").to_string();
        time::OffsetDateTime::parse(&start, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 start")
    };
    let mut files = classifier_tests::daemon::snapshot_files(dir);
    files.sort_by_cached_key(start_of);
    files
}

fn read_snapshots(dir: &Path) -> Vec<Value> {
    snapshot_files(dir)
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read snapshot");
            serde_json::from_str(&text).expect("snapshot is JSON")
        })
        .collect()
}

#[test]
fn snapshots_add_up_exactly_across_boundaries_a_kept_attachment_and_a_kill() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("snap");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let snapshots = dir.join("snapshots");
    let link = VethLink::create("snap").expect("namespaces and veth");
    let set_pins = pins.path.join(&link.sensor_iface);
    let args = [
        "--pin-path",
        text(&pins.path),
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "2s",
    ];
    let mut sent = Sent::default();

    // First daemon: traffic on both sides of two boundaries, then SIGTERM
    // with --keep-attached: the program stays attached and counting.
    let mut first = Daemon::start(&link, &feed, &[&args[..], &["--keep-attached"]].concat());
    link.send(&sent.round(1)).expect("send");
    first.wait_for("wrote snapshot");
    link.send(&sent.round(2)).expect("send");
    first.wait_for("wrote snapshot");
    link.send(&sent.round(3)).expect("send");
    let (_, log) = first.stop(libc::SIGTERM);
    assert!(
        log.iter()
            .any(|l| l.contains("leaving the program attached"))
    );
    assert!(set_pins.join("META").exists(), "pins kept");
    // Counted by the kernel while no daemon runs.
    link.send(&sent.round(4)).expect("send");

    // Second daemon adopts, sees a boundary, and is killed.
    let mut second = Daemon::start(&link, &feed, &args);
    assert!(
        second.said("adopting the program"),
        "{:?}",
        second.stderr_seen
    );
    assert!(second.said("resuming after snapshot"));
    // Same sizes as the program it adopts: nothing to say about them.
    assert!(!second.said("--flow-capacity"), "{:?}", second.stderr_seen);
    link.send(&sent.round(5)).expect("send");
    second.wait_for("wrote snapshot");
    link.send(&sent.round(6)).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    second.kill();
    link.send(&sent.round(7)).expect("send");
    // The interface is re-created (a driver reload) while no daemon runs:
    // the pinned link is severed with the old one.
    std::thread::sleep(Duration::from_millis(300));
    link.recreate().expect("re-create the veth pair");

    // Third daemon adopts again, attaching the program to the new
    // interface, asking for another flow table (which an adopted program
    // cannot change: it says so), and stops for good: detach, pins removed.
    let third = Daemon::start(
        &link,
        &feed,
        &[&args[..], &["--flow-capacity", "4096"]].concat(),
    );
    assert!(third.said("adopting the program"));
    assert!(
        third.said(&format!(
            "{}: the link pinned at {} no longer attached the program (the interface was removed or re-created since); attached it again in ",
            link.sensor_iface,
            set_pins.join(format!("link-{}", link.sensor_iface)).display()
        )) && third.said(&format!("no reload; attached again to {}", link.sensor_iface)),
        "{:?}",
        third.stderr_seen
    );
    assert!(
        third.said("this run's --flow-capacity 4096 and --flow-cache-slots"),
        "{:?}",
        third.stderr_seen
    );
    link.send(&sent.round(8)).expect("send");
    let (_, log) = third.stop(libc::SIGTERM);
    assert!(log.iter().any(|l| l.contains("detached; final drain")));
    assert!(!set_pins.exists(), "pins removed after a plain SIGTERM");

    // A fourth daemon loads a new program: its counters start from zero,
    // and its first snapshot says so (and how long nothing counted).
    std::thread::sleep(Duration::from_millis(500));
    let fourth = Daemon::start(&link, &feed, &args);
    assert!(!fourth.said("adopting the program"));
    link.send(&sent.round(9)).expect("send");
    let _ = fourth.stop(libc::SIGTERM);

    let files = snapshot_files(&snapshots);
    let reports = read_snapshots(&snapshots);
    assert!(files.len() >= 5, "{files:?}");
    assert_eq!(
        counted(&reports),
        sent,
        "the snapshots add up to what was sent"
    );
    let coverage = |report: &Value| report["snapshot"]["coverage"].clone();
    let restarts: u64 = reports
        .iter()
        .map(|r| coverage(r)["restarts"].as_u64().expect("restarts"))
        .sum();
    assert_eq!(restarts, 3);
    // Only the fourth daemon's first snapshot follows a gap and a reset.
    let resets: Vec<usize> = (0..reports.len())
        .filter(|i| coverage(&reports[*i])["counter_reset"] == true)
        .collect();
    assert_eq!(resets.len(), 1, "{files:?}");
    let reset = resets[0];
    assert!(coverage(&reports[reset])["gap_before_seconds"].as_f64() > Some(0.4));
    for (index, (report, file)) in reports.iter().zip(&files).enumerate() {
        if index != reset {
            assert_eq!(coverage(report)["gap_before_seconds"], 0.0, "{file:?}");
        }
    }
    // Each snapshot starts where the one before ended (but after the gap).
    for (index, pair) in reports.windows(2).enumerate() {
        if index + 1 != reset {
            assert_eq!(pair[0]["end"], pair[1]["start"]);
        }
    }

    // `report` merges them into the same numbers, and the chain holds.
    let output = classifier(&["report", text(&snapshots), "--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let merged: Value = serde_json::from_slice(&output.stdout).expect("report JSON");
    assert_eq!(counted(std::slice::from_ref(&merged)), sent);
    let alpha = &services(&merged)["alpha"];
    // Nine IPv4 and nine IPv6 watched hosts, one flow each.
    assert_eq!(alpha["unique_sources"], 18);
    assert_eq!(alpha["flows"], 18);
    let output = classifier(&["report", text(&snapshots), "--verify"]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && said.contains("chain intact"),
        "{output:?}"
    );

    // An edited snapshot breaks the chain at the file after it.
    let edited = &files[1];
    let original = std::fs::read_to_string(edited).expect("read");
    std::fs::write(edited, original.replacen("\"packets\"", "\"packets\" ", 1)).expect("edit");
    let output = classifier(&["report", text(&snapshots), "--verify"]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let next = files[2].file_name().and_then(|n| n.to_str()).expect("name");
    assert!(said.contains(next), "{said}");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every metric the Grafana dashboard queries (and every label it groups
/// by, but Prometheus' own `instance`) is in the served `/metrics` text:
/// a renamed metric breaks this test, not the dashboard.
fn dashboard_queries_use_served_metrics(body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/classifier.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    assert!(queries.len() > 20, "{queries:?}");
    let served: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let mut used = 0;
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("classifier_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                served.contains(name.as_str()),
                "the dashboard queries {name}, which /metrics does not serve ({query})"
            );
            used += 1;
            rest = &rest[at + name.len()..];
        }
        for (_, after) in query
            .match_indices("by (")
            .map(|(at, _)| query.split_at(at + 4))
        {
            let labels = after.split(')').next().unwrap_or("");
            for label in labels
                .split(',')
                .map(str::trim)
                .filter(|l| *l != "instance")
            {
                assert!(
                    body.contains(&format!("{label}=\"")),
                    "the dashboard groups by {label}, which no served series has ({query})"
                );
            }
        }
    }
    assert!(used >= 25, "{used} metric references");
}

#[test]
fn stats_and_metrics_from_other_processes_match_the_traffic() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("stats");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("stats").expect("namespaces and veth");
    // Snapshots every second, so /metrics serves every series the Grafana
    // dashboard queries (the last snapshot's time appears after the first).
    let snapshots = dir.join("snapshots");
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--pin-path",
            text(&pins.path),
            "--metrics-addr",
            "127.0.0.1:9477",
            "--snapshot-dir",
            text(&snapshots),
            "--snapshot-interval",
            "1s",
        ],
    );
    let mut sent = Sent::default();
    link.send(&sent.round(1)).expect("send");
    link.send(&sent.round(2)).expect("send");
    // Two drain intervals.
    std::thread::sleep(Duration::from_millis(400));

    let output = classifier(&["stats", "--pin-path", text(&pins.path), "--json"]);
    assert!(output.status.success(), "{output:?}");
    let live: Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
    assert_eq!(live["schema"], "classifier.report.v1");
    assert_eq!(counted(std::slice::from_ref(&live)), sent);
    assert_eq!(services(&live)["alpha"]["unique_sources"], 4);

    let output = classifier(&["stats", "--pin-path", text(&pins.path)]);
    let view = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        view.contains("alpha") && view.contains("top watched sources"),
        "{view}"
    );

    // A second daemon on the same pins is refused (it would drain the same
    // program into a second set of snapshots).
    let output = link
        .sensor
        .command(&classifier_binary())
        .args([
            "run",
            "--iface",
            &link.sensor_iface,
            "--metrics-addr",
            "off",
        ])
        .args(["--pin-path", text(&pins.path)])
        .output()
        .expect("second classifier run");
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("another classifier run is using the pins in"),
        "{error}"
    );

    let output = classifier(&["stats", "--pin-path", text(&dir.join("nothing"))]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(error.contains("nothing is pinned at"), "{error}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = link.sensor.http_get("127.0.0.1:9477", "/metrics");
        if response.contains("classifier_last_snapshot_timestamp_seconds")
            || std::time::Instant::now() > deadline
        {
            break response;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (alpha_packets, alpha_bytes) = sent.services["alpha"];
    for line in [
        format!("classifier_packets_total {}", sent.packets),
        format!("classifier_bytes_total {}", sent.bytes),
        format!(
            "classifier_service_packets_total{{service=\"alpha\",direction=\"outbound\"}} {alpha_packets}"
        ),
        format!(
            "classifier_service_bytes_total{{service=\"alpha\",direction=\"outbound\"}} {alpha_bytes}"
        ),
        format!(
            "classifier_service_packets_total{{service=\"beta\",direction=\"inbound\"}} {}",
            sent.services["beta"].0
        ),
        "classifier_build_info{version=".to_string(),
        "classifier_malformed_packets_total{reason=\"ipv4_truncated\"} 0".to_string(),
    ] {
        assert!(body.contains(&line), "missing {line:?} in:\n{body}");
    }
    assert!(!body.contains("175.45.176"), "no address labels");
    dashboard_queries_use_served_metrics(body);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {checked:?}"
    );

    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(counted(&[report]), sent);
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_disk_or_a_removed_folder_delays_snapshots_and_loses_no_count() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("full");
    let feed = write_feed(&dir);
    let disk = TestMount::tmpfs(&dir.join("disk"), 256 * 1024);
    let snapshots = disk.path.join("snapshots");
    let link = VethLink::create("full").expect("namespaces and veth");
    let mut daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--snapshot-dir",
            text(&snapshots),
            "--snapshot-interval",
            "1s",
        ],
    );
    let mut sent = Sent::default();
    link.send(&sent.round(1)).expect("send");
    daemon.wait_for("wrote snapshot");

    // Fill the disk to the last byte: writes fail and are retried.
    let filler = disk.path.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    drop(file);
    link.send(&sent.round(2)).expect("send");
    daemon.wait_for("cannot write a snapshot");
    daemon.wait_for("cannot write a snapshot");
    link.send(&sent.round(3)).expect("send");
    std::fs::remove_file(&filler).expect("free the disk");
    daemon.wait_for("wrote snapshot");

    // The folder goes away (moved by a pipeline): the daemon creates it
    // again and carries on.
    let moved = disk.path.join("moved");
    std::fs::rename(&snapshots, &moved).expect("move the folder away");
    link.send(&sent.round(4)).expect("send");
    daemon.wait_for("created it again");
    daemon.wait_for("wrote snapshot");
    link.send(&sent.round(5)).expect("send");
    // Until a snapshot holds round 5 (a "wrote snapshot" line read now may
    // be one written before it was sent).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut reports = read_snapshots(&moved);
        reports.extend(read_snapshots(&snapshots));
        if counted(&reports) == sent || Instant::now() > deadline {
            assert_eq!(counted(&reports), sent);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The disk full at exit: the last snapshot cannot be written, which is
    // said once, not as a retry; the report still holds every count and
    // the exit status is 1.
    let mut file = std::fs::File::create(&filler).expect("filler");
    while file.write_all(&block).is_ok() {}
    drop(file);
    let (status, report, stderr) = daemon.stop_with_status(libc::SIGTERM);
    assert_eq!(status.code(), Some(1), "{stderr:#?}");
    assert_eq!(counted(&[report]), sent);
    let last_failure = stderr
        .iter()
        .rev()
        .find(|line| line.contains("cannot write a snapshot"))
        .expect("the last snapshot's failure is logged");
    // One, or two if a boundary passed while the disk was being filled.
    let unwritten = last_failure
        .strip_suffix(" snapshot(s) not written")
        .and_then(|line| line.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{last_failure}"));
    assert!(["1", "2"].contains(&unwritten), "{last_failure}");
    assert!(
        stderr.iter().any(|line| line.contains(&format!(
            "{unwritten} snapshot(s) could not be written before exit (see the errors above); the report on stdout still holds every count"
        ))),
        "{stderr:#?}"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    for folder in [&moved, &snapshots] {
        let output = classifier(&["report", text(folder), "--verify"]);
        assert!(output.status.success(), "{output:?}");
    }
    drop(disk);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn snapshots_cut_while_traffic_flows_lose_nothing_and_carry_pseudonyms() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("race");
    let feed = write_feed(&dir);
    let key = dir.join("key");
    std::fs::write(&key, b"a test key of thirty-two bytes!!").expect("key");
    let snapshots = dir.join("snapshots");
    let link = VethLink::create("race").expect("namespaces and veth");
    let mut daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--snapshot-dir",
            text(&snapshots),
            "--snapshot-interval",
            "1s",
            "--interval",
            "10ms",
            "--pseudonymize-key",
            text(&key),
        ],
    );
    // Rounds sent back to back for over three seconds, so drains (every
    // 10 ms) and three or more cuts happen while frames arrive.
    let mut sent = Sent::default();
    let started = std::time::Instant::now();
    let mut round = 1u8;
    while started.elapsed() < Duration::from_millis(3_300) {
        link.send(&sent.round(round)).expect("send");
        round = round % 200 + 1;
    }
    daemon.wait_for("wrote snapshot");
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(counted(std::slice::from_ref(&report)), sent);
    let reports = read_snapshots(&snapshots);
    // At least two cuts while frames arrived (more on a quiet machine).
    assert!(reports.len() >= 3, "{} snapshots", reports.len());
    assert_eq!(counted(&reports), sent);

    // Watched addresses are pseudonyms in the reserved ranges; endpoints
    // stay real; the key is named by its id.
    let key_id = &reports[0]["snapshot"]["pseudonym_key_id"];
    assert_eq!(key_id.as_str().map(str::len), Some(16));
    // The exit report, which has no snapshot section, names it too.
    assert_eq!(&report["pseudonym_key_id"], key_id);
    for report in &reports {
        assert_eq!(&report["snapshot"]["pseudonym_key_id"], key_id);
        assert_eq!(&report["pseudonym_key_id"], key_id);
        for flow in report["flows"].as_array().expect("flows") {
            let watched: std::net::IpAddr = flow["watched"]
                .as_str()
                .expect("watched")
                .parse()
                .expect("an address");
            let reserved = match watched {
                std::net::IpAddr::V4(v4) => v4.octets()[0] >= 240,
                std::net::IpAddr::V6(v6) => v6.segments()[..4] == [0x100, 0, 0, 0],
            };
            assert!(reserved, "{watched} is not a pseudonym");
            let endpoint = flow["endpoint"].as_str().expect("endpoint");
            assert!(endpoint.starts_with("198.51.100.") || endpoint.starts_with("2001:db8:e0"));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_flow_table_keeps_counts_exact_and_shows_evictions_in_metrics_and_snapshots() {
    if !require_root() {
        return;
    }
    // Both bursts from CPU 0 (a veth receives on the sender's CPU), so the
    // later flows meet the earlier ones' cache slot rather than an empty
    // slot on another CPU.
    classifier_tests::pin_to_cpu(0).expect("pin to CPU 0");
    let dir = temp_dir("evict");
    let feed = write_feed(&dir);
    let snapshots = dir.join("snapshots");
    let link = VethLink::create("evict").expect("namespaces and veth");
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--flow-capacity",
            "16",
            "--flow-cache-slots",
            "1",
            "--metrics-addr",
            "127.0.0.1:9477",
            "--snapshot-dir",
            text(&snapshots),
            "--snapshot-interval",
            "1s",
        ],
    );
    // 100 flows (one per watched host) into a table of 16 (and one cache
    // slot per CPU): most are evicted before a drain sees them.
    send_flows(&link, "175.45.177", 100);
    let metric = scrape(&link, "127.0.0.1:9477");
    let evictions = metric("classifier_flow_table_evictions_total");
    assert!(evictions >= 80, "{evictions} evictions");
    assert_eq!(metric("classifier_matched_packets_total"), 100);
    assert_eq!(metric("classifier_flow_table_recycles_total"), 0);

    // Once a drain (one a second) has read the idle flows in the cache
    // slots, new flows take the slots over instead of evicting.
    std::thread::sleep(Duration::from_millis(1500));
    send_flows(&link, "175.45.178", 20);
    let metric = scrape(&link, "127.0.0.1:9477");
    let recycles = metric("classifier_flow_table_recycles_total");
    assert!(recycles >= 1, "{recycles} recycled slots");
    assert_eq!(metric("classifier_matched_packets_total"), 120);
    let evictions = metric("classifier_flow_table_evictions_total");
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(
        services(&report)["alpha"]["packets"],
        120,
        "counts stay exact"
    );
    let reports = read_snapshots(&snapshots);
    let snapshot_evictions: u64 = reports
        .iter()
        .map(|r| r["flow_table"]["evictions"].as_u64().expect("evictions"))
        .sum();
    assert_eq!(
        snapshot_evictions, evictions,
        "the snapshots carry the evictions"
    );
    assert_eq!(counted(&reports).services["alpha"].0, 120);
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends one frame from each of `hosts` watched hosts of `subnet` (a /24's
/// first three octets) to an endpoint of service alpha, and gives the
/// daemon time to count them.
fn send_flows(link: &VethLink, subnet: &str, hosts: u8) {
    let frames: Vec<Vec<u8>> = (0..hosts)
        .map(|host| {
            FrameSpec::udp(&format!("{subnet}.{host}"), "198.51.100.10", 40000, 443).build()
        })
        .collect();
    link.send(&frames).expect("send");
    std::thread::sleep(Duration::from_millis(400));
}

/// The daemon's metrics at `address`, read once: a metric's value by name.
fn scrape(link: &VethLink, address: &str) -> impl Fn(&str) -> u64 {
    let body = link.sensor.http_get(address, "/metrics");
    move |name: &str| -> u64 {
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    }
}

/// The temporary files snapshot writers left in `dir`
/// (`.classifier-….json.tmp-PID`): path, the final name it was to get, and
/// the writer's process id.
fn snapshot_temporaries(dir: &Path) -> Vec<(PathBuf, String, u32)> {
    std::fs::read_dir(dir)
        .expect("snapshot folder")
        .map(|entry| entry.expect("entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let (final_name, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
            if !(final_name.starts_with("classifier-") && final_name.ends_with(".json")) {
                return None;
            }
            let pid = pid.parse().ok()?;
            Some((path.clone(), final_name.to_string(), pid))
        })
        .collect()
}

/// A snapshot temporary in `dir` that holds a whole report, with its
/// final name, writer and text.
fn whole_temporary(dir: &Path) -> Option<(PathBuf, String, u32, String)> {
    snapshot_temporaries(dir)
        .into_iter()
        .find_map(|(path, final_name, writer)| {
            let text = std::fs::read_to_string(&path).ok()?;
            serde_json::from_str::<classifier_user::report::Report>(&text).ok()?;
            Some((path, final_name, writer, text))
        })
}

/// Every file under a final snapshot name parses as a whole report.
fn assert_final_files_whole(dir: &Path) -> usize {
    let files = snapshot_files(dir);
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read snapshot");
        let report: classifier_user::report::Report = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{} is not a whole report: {error}", path.display()));
        assert!(report.snapshot.is_some(), "{}", path.display());
    }
    files.len()
}

#[test]
fn a_kill_during_a_snapshot_write_leaves_no_partial_file_and_the_next_daemon_finishes_it() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("killwrite");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let snapshots = dir.join("snapshots");
    let link = VethLink::create("killw").expect("namespaces and veth");
    let args = [
        "--pin-path",
        text(&pins.path),
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "1s",
    ];
    let mut sent = Sent::default();

    // A first daemon writes snapshots and leaves the program attached.
    let mut first = Daemon::start(&link, &feed, &[&args[..], &["--keep-attached"]].concat());
    link.send(&sent.round(1)).expect("send");
    first.wait_for("wrote snapshot");
    let _ = first.stop(libc::SIGTERM);
    let before = assert_final_files_whole(&snapshots);
    assert!(before >= 2, "{before} snapshots");

    // The second adopts it and, through the test hook, stops in its first
    // snapshot write after the temporary is written and synced and before
    // the rename: killed there.
    let mut with_feed = vec!["--endpoints", text(&feed)];
    with_feed.extend(TEST_WATCHED.iter().flat_map(|w| ["--watch", w]));
    with_feed.extend_from_slice(&args);
    let second = Daemon::start_wrapped(
        &link,
        &["env", "CLASSIFIER_TEST_PAUSE_BEFORE_RENAME_MS=60000"],
        &with_feed,
    );
    assert!(second.said("adopting the program"));
    link.send(&sent.round(2)).expect("send");
    // Killed once the temporary holds the whole snapshot: the writer is
    // then between its write and its rename (held there for a minute).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (temporary, final_name, writer, cut) = loop {
        if let Some(found) = whole_temporary(&snapshots) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no whole snapshot temporary appeared in {}",
            snapshots.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(writer, second.pid(), "{}", temporary.display());
    second.kill();
    assert!(temporary.exists(), "SIGKILL leaves the temporary behind");
    assert!(
        !snapshots.join(&final_name).exists(),
        "{final_name} appeared although the writer died before its rename"
    );
    assert_eq!(assert_final_files_whole(&snapshots), before);
    // Counted by the kernel while no daemon runs.
    link.send(&sent.round(3)).expect("send");

    // The third removes the leftover, writes the snapshot the second had
    // cut (the same bytes under the same name), and carries on.
    let mut third = Daemon::start(&link, &feed, &args);
    assert!(third.said("adopting the program"));
    assert!(
        !temporary.exists(),
        "the leftover temporary is removed at start"
    );
    assert!(third.said(&format!(
        "snapshot {final_name} was cut by the previous daemon but not (fully) written"
    )));
    third.wait_for(&format!("wrote snapshot {final_name}"));
    assert_eq!(
        std::fs::read_to_string(snapshots.join(&final_name)).expect("written now"),
        cut
    );
    link.send(&sent.round(4)).expect("send");
    third.wait_for("wrote snapshot");
    let _ = third.stop(libc::SIGTERM);

    assert!(snapshot_temporaries(&snapshots).is_empty());
    let after = assert_final_files_whole(&snapshots);
    assert!(after > before + 1, "{before} then {after} snapshots");
    let reports = read_snapshots(&snapshots);
    assert_eq!(counted(&reports), sent, "nothing lost, nothing twice");
    // The program kept counting: each snapshot starts where the last ended.
    for pair in reports.windows(2) {
        assert_eq!(pair[0]["end"], pair[1]["start"]);
    }
    let output = classifier(&["report", text(&snapshots), "--verify"]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && said.contains("chain intact"),
        "{output:?}"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}
