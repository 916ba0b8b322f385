//! `classifier pcap` on the real kernel: the generator's mix replayed from a
//! pcap gives exactly what the live sensor counts on a veth; real captures
//! (raw IP, pcapng) are read and classified; snapshots follow the capture's
//! clock; bad files are refused with file and frame named.

use std::path::Path;

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, services, temp_dir},
    netns::VethLink,
    path_str as text, require_root, run_classifier as classifier,
};
use serde_json::Value;

fn pcap_report(args: &[&str]) -> Value {
    let mut all = vec!["pcap", "--format", "json"];
    all.extend_from_slice(args);
    let output = classifier(&all);
    assert!(
        output.status.success(),
        "classifier pcap: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pcap report JSON")
}

/// The generator's arguments both sides use.
const MIX: [&str; 8] = [
    "--seed",
    "3",
    "--conversations",
    "500",
    "--background-ratio",
    "1",
    "--duration",
    "3s",
];

#[test]
fn a_pcap_of_the_mix_counts_exactly_what_the_live_sensor_counts() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("pcap-live");
    let capture = dir.join("mix.pcap");
    let mut generate = vec!["generate", "--pcap", text(&capture)];
    generate.extend_from_slice(&MIX);
    let output = classifier(&generate);
    assert!(output.status.success(), "{output:?}");

    let link = VethLink::create("pcaplive").expect("namespaces and veth");
    let daemon = Daemon::start_bundled(&link, &[]);
    let output = link
        .peer
        .command(&classifier_binary())
        .args(["generate", "--iface", &link.peer_iface])
        .args(MIX)
        .output()
        .expect("generate live");
    assert!(output.status.success(), "{output:?}");
    let (live, _) = daemon.stop(libc::SIGTERM);

    let replayed = pcap_report(&[text(&capture)]);
    assert_eq!(replayed["totals"], live["totals"]);
    assert_eq!(replayed["malformed"], live["malformed"]);
    let (live_services, replayed_services) = (services(&live), services(&replayed));
    assert_eq!(
        live_services.keys().collect::<Vec<_>>(),
        replayed_services.keys().collect::<Vec<_>>()
    );
    for (name, row) in &live_services {
        let other = &replayed_services[name];
        for field in [
            "packets",
            "bytes",
            "packets_outbound",
            "packets_inbound",
            "bytes_outbound",
            "bytes_inbound",
            "flows",
            "unique_sources",
            "share",
        ] {
            assert_eq!(row[field], other[field], "{name} {field}");
        }
    }
    assert_eq!(
        live["flows"].as_array().map(Vec::len),
        replayed["flows"].as_array().map(Vec::len)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn snapshots_of_a_pcap_follow_the_capture_clock() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("pcap-snap");
    let capture = dir.join("mix.pcap");
    let snapshots = dir.join("snapshots");
    let output = classifier(&[
        "generate",
        "--pcap",
        text(&capture),
        "--conversations",
        "500",
        "--duration",
        "23s",
    ]);
    assert!(output.status.success(), "{output:?}");
    let report = pcap_report(&[
        text(&capture),
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "5s",
    ]);
    let mut files: Vec<_> = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("classifier-"))
        })
        .collect();
    files.sort();
    // 23 s of capture in 5 s intervals: five or six snapshots.
    assert!((5..=6).contains(&files.len()), "{files:?}");
    let mut packets = 0;
    let mut previous_end = Value::Null;
    for file in &files {
        let snapshot: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
        packets += snapshot["totals"]["packets"].as_u64().expect("packets");
        if !previous_end.is_null() {
            assert_eq!(snapshot["start"], previous_end);
        }
        previous_end = snapshot["end"].clone();
    }
    assert_eq!(report["totals"]["packets"].as_u64(), Some(packets));
    assert_eq!(
        previous_end, report["end"],
        "the last snapshot ends at the last frame"
    );
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("JSON");
    assert_eq!(
        first["start"], report["start"],
        "the first starts at the first frame"
    );
    let output = classifier(&["report", text(&snapshots), "--verify"]);
    assert!(output.status.success(), "{output:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn real_captures_are_read_and_classified() {
    if !require_root() {
        return;
    }
    // Raw IP (no Ethernet header): the bundled Psiphon capture. Its client
    // is private, so watching it makes the flow watched but unattributed.
    let psiphon = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/pcap/psiphon3.pcap");
    let report = pcap_report(&[text(&psiphon), "--watch", "192.168.0.103/32"]);
    let totals = &report["totals"];
    assert_eq!(totals["packets"], 62);
    assert_eq!(totals["ipv4"], 62);
    // 12,834 file bytes = 24 (header) + 62 × 16 (records) + the packets;
    // each packet gains a 14-byte synthetic Ethernet header.
    assert_eq!(totals["bytes"], 12_834 - 24 - 62 * 16 + 62 * 14);
    assert_eq!(totals["watched"], 62);
    assert_eq!(totals["matched"], 0);
    // Times are the capture's (its first and last packet).
    assert_eq!(report["start"], "2021-02-20T23:51:19.123029Z");
    assert_eq!(report["end"], "2021-02-20T23:51:19.845431Z");

    // pcapng with Ethernet (tests/data/README.md): Windscribe's server is
    // in the bundled feed.
    let windscribe = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/windscribe.pcapng");
    let report = pcap_report(&[text(&windscribe), "--watch", "192.168.12.156/32"]);
    assert_eq!(report["totals"]["packets"], 24);
    let windscribe = &services(&report)["windscribe"];
    assert_eq!(windscribe["flows"], 2, "{windscribe}");
    assert_eq!(windscribe["unique_sources"], 1);
    assert_eq!(windscribe["packets"], 24);
    assert!(windscribe["packets_outbound"].as_u64() > Some(0));
    assert!(windscribe["packets_inbound"].as_u64() > Some(0));
    // Flows are stamped with the frames' own times (the capture clock).
    assert_eq!(windscribe["first_seen"], "2024-07-23T14:30:32.772331274Z");
    assert_eq!(windscribe["last_seen"], "2024-07-23T14:30:33.946014921Z");
}

#[test]
fn bad_captures_are_refused_with_file_and_frame() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("pcap-bad");
    let psiphon = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/pcap/psiphon3.pcap");
    let bytes = std::fs::read(&psiphon).expect("psiphon capture");

    // Cut in the middle of the third record.
    let cut = dir.join("cut.pcap");
    let first = 24 + 16 + u32::from_le_bytes(bytes[24 + 8..24 + 12].try_into().unwrap()) as usize;
    let second =
        first + 16 + u32::from_le_bytes(bytes[first + 8..first + 12].try_into().unwrap()) as usize;
    std::fs::write(&cut, &bytes[..second + 20]).expect("write");
    let output = classifier(&["pcap", text(&cut)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!("{}: frame 3", cut.display())),
        "{error}"
    );

    // Link type 105 (IEEE 802.11).
    let wifi = dir.join("wifi.pcap");
    let mut changed = bytes.clone();
    changed[20..24].copy_from_slice(&105u32.to_le_bytes());
    std::fs::write(&wifi, &changed).expect("write");
    let output = classifier(&["pcap", text(&wifi)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("wifi.pcap") && error.contains("105"),
        "{error}"
    );

    // Not a capture.
    let text_file = dir.join("notes.txt");
    std::fs::write(&text_file, "hello").expect("write");
    let output = classifier(&["pcap", text(&text_file)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(error.contains("neither pcap nor pcapng"), "{error}");
    assert!(output.stdout.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}
