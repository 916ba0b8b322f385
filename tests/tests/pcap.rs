//! `classifier pcap` on the real kernel: the generator's mix replayed from a
//! pcap gives exactly what the live sensor counts on a veth; real captures
//! (raw IP, pcapng) are read and classified; snapshots follow the capture's
//! clock; bad files are refused with file and frame named.

use std::{collections::BTreeMap, path::Path};

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, TestMount, services, snapshot_files, temp_dir},
    netns::VethLink,
    path_str as text, pcap_report, require_root, run_classifier as classifier,
};
use serde_json::Value;

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
    // Learning off on both sides: the live daemon reads what a flow's
    // certificate teaches asynchronously, so how many of the flow's later
    // packets it attributes depends on timing; the pcap's replay does not.
    let daemon = Daemon::start_bundled(&link, &["--no-learn"]);
    let output = link
        .peer
        .command(&classifier_binary())
        .args(["generate", "--iface", &link.peer_iface])
        .args(MIX)
        .output()
        .expect("generate live");
    assert!(output.status.success(), "{output:?}");
    let (live, _) = daemon.stop(libc::SIGTERM);

    let replayed = pcap_report(&[text(&capture), "--no-learn"]);
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
    let files = snapshot_files(&snapshots);
    // 23 s of capture in 5 s intervals: five or six snapshots.
    assert!((5..=6).contains(&files.len()), "{files:?}");
    let mut packets = 0;
    let mut handed_over = 0;
    let mut learn_stats: BTreeMap<String, u64> = BTreeMap::new();
    let mut previous_end = Value::Null;
    let mut last_learning = Value::Null;
    for file in &files {
        let snapshot: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
        packets += snapshot["totals"]["packets"].as_u64().expect("packets");
        // What learning did in the interval, as live snapshots have it.
        handed_over += snapshot["learning"]["handed_over"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no learning section", file.display()));
        // Its counts are its interval's: they add up to the report's.
        for (name, count) in snapshot["learning"]["stats"].as_object().expect("stats") {
            *learn_stats.entry(name.clone()).or_default() += count.as_u64().expect("a count");
        }
        if !previous_end.is_null() {
            assert_eq!(snapshot["start"], previous_end);
        }
        previous_end = snapshot["end"].clone();
        last_learning = snapshot["learning"].clone();
    }
    assert_eq!(report["totals"]["packets"].as_u64(), Some(packets));
    assert!(handed_over > 0, "the mix's certificates are handed over");
    assert_eq!(
        report["learning"]["handed_over"].as_u64(),
        Some(handed_over)
    );
    assert_eq!(last_learning["endpoints"], report["learning"]["endpoints"]);
    let report_stats: BTreeMap<String, u64> =
        serde_json::from_value(report["learning"]["stats"].clone()).expect("stats");
    assert_eq!(learn_stats, report_stats);
    assert!(report_stats["tls_flows_named"] > 0, "{report_stats:?}");
    // `classifier report` over the snapshots has the same learning section.
    let output = classifier(&["report", text(&snapshots), "--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let merged: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let mut merged_learning = merged["learning"].clone();
    let per_interval = merged_learning
        .as_object_mut()
        .and_then(|learning| learning.remove("stats_per_interval"));
    assert_eq!(per_interval, Some(Value::Bool(true)), "{merged_learning}");
    assert_eq!(merged_learning, report["learning"]);
    // And so does the HTML report.
    let output = classifier(&["report", text(&snapshots), "--format", "html"]);
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8(output.stdout).expect("UTF-8");
    for (field, count) in [
        ("handed_over", handed_over),
        ("tls_flows_named", report_stats["tls_flows_named"]),
        ("tcp_segments", report_stats["tcp_segments"]),
    ] {
        let cell = format!("data-field=\"{field}\">{count}<");
        assert!(page.contains(&cell), "{cell} not in the HTML report");
    }
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

    // The same capture again into the same folder: its snapshots would
    // overlap those there, so it is refused and the folder left as it was.
    let output = classifier(&[
        "pcap",
        text(&capture),
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "5s",
    ]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!(
            "--snapshot-dir {}: its snapshots run to {} ({}), past the capture's first frame at {}: this capture's snapshots would overlap them",
            snapshots.display(),
            report["end"].as_str().expect("end"),
            files.last().expect("a snapshot").file_name().expect("name").to_string_lossy(),
            report["start"].as_str().expect("start"),
        )),
        "{error}"
    );
    assert_eq!(snapshot_files(&snapshots), files);

    // The same frames dealt into two files, given in reverse order: merged
    // in time order, they give the same report and the same snapshots.
    let [holds_first_frame, holds_second_frame] = deal_into_two(&capture, &dir);
    let dealt_snapshots = dir.join("dealt-snapshots");
    // A file named like a snapshot that is none is not linked to.
    std::fs::create_dir(&dealt_snapshots).expect("folder");
    std::fs::write(dealt_snapshots.join("classifier-zzz.json"), "{}").expect("write");
    let dealt = pcap_report(&[
        text(&holds_second_frame),
        text(&holds_first_frame),
        "--snapshot-dir",
        text(&dealt_snapshots),
        "--snapshot-interval",
        "5s",
    ]);
    for field in ["start", "end", "totals", "malformed"] {
        assert_eq!(dealt[field], report[field], "{field}");
    }
    assert_eq!(services(&dealt), services(&report));
    assert_eq!(dealt["flows"], report["flows"]);
    std::fs::remove_file(dealt_snapshots.join("classifier-zzz.json")).expect("remove");
    let dealt_files = snapshot_files(&dealt_snapshots);
    assert_eq!(dealt_files.len(), files.len(), "{dealt_files:?}");
    for (whole, dealt) in files.iter().zip(&dealt_files) {
        let read = |path: &std::path::PathBuf| -> Value {
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
        };
        let (whole, dealt) = (read(whole), read(dealt));
        for field in ["start", "end", "totals", "flows"] {
            assert_eq!(dealt[field], whole[field], "{field}");
        }
        assert_eq!(
            dealt["snapshot"]["previous"]["file"],
            whole["snapshot"]["previous"]["file"]
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The capture's frames dealt alternately into two pcaps in `dir`: the
/// first, third, … frame into the first, the second, fourth, … into the
/// second.
fn deal_into_two(capture: &Path, dir: &Path) -> [std::path::PathBuf; 2] {
    use pcap_file::{
        DataLink, TsResolution,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    let paths = [dir.join("frames-1-3-5.pcap"), dir.join("frames-2-4-6.pcap")];
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writers = paths.clone().map(|path| {
        PcapWriter::with_header(std::fs::File::create(path).expect("create"), header)
            .expect("pcap header")
    });
    let reader = classifier_user::capture::CaptureReader::open(capture).expect("the capture opens");
    for (index, frame) in reader.enumerate() {
        let frame = frame.expect("a frame");
        let time = std::time::Duration::from_nanos(u64::try_from(frame.timestamp_ns).unwrap_or(0));
        writers[index % 2]
            .write_packet(&PcapPacket::new(time, frame.original_len, &frame.data))
            .expect("write a packet");
    }
    paths
}

/// A fleet: the same capture seen by two sensors (`--sensor-name`), their
/// snapshot folders merged by `classifier report`: packets add up, each
/// watched source counts once, and `--by-sensor` shows each sensor's own.
#[test]
fn two_sensors_merge_into_one_view_with_sources_counted_once() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("pcap-fleet");
    let capture = dir.join("mix.pcap");
    let output = classifier(&[
        "generate",
        "--pcap",
        text(&capture),
        "--conversations",
        "500",
        "--duration",
        "4s",
    ]);
    assert!(output.status.success(), "{output:?}");
    let mut single = Value::Null;
    for sensor in ["edge-a", "edge-b"] {
        single = pcap_report(&[
            text(&capture),
            "--sensor-name",
            sensor,
            "--snapshot-dir",
            text(&dir.join(sensor)),
        ]);
        assert_eq!(single["sensor"], sensor);
    }
    let output = classifier(&[
        "report",
        text(&dir.join("edge-a")),
        text(&dir.join("edge-b")),
        "--by-sensor",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let merged: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(merged["sensor"], "edge-a,edge-b");
    assert_eq!(
        merged["totals"]["matched"].as_u64(),
        single["totals"]["matched"].as_u64().map(|m| 2 * m)
    );
    let (merged_rows, single_rows) = (services(&merged), services(&single));
    assert_eq!(merged_rows.len(), single_rows.len());
    for (name, row) in &single_rows {
        assert_eq!(
            merged_rows[name]["unique_sources"], row["unique_sources"],
            "{name}: a source seen by both sensors counts once"
        );
        assert_eq!(merged_rows[name]["flows"], row["flows"], "{name}");
        assert_eq!(
            merged_rows[name]["packets"].as_u64(),
            row["packets"].as_u64().map(|p| 2 * p),
            "{name}"
        );
    }
    let by_sensor = merged["by_sensor"].as_array().expect("by_sensor");
    assert_eq!(by_sensor.len(), 2);
    for (report, sensor) in by_sensor.iter().zip(["edge-a", "edge-b"]) {
        assert_eq!(report["sensor"], sensor);
        assert_eq!(report["totals"], single["totals"]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn real_captures_are_read_and_classified() {
    if !require_root() {
        return;
    }
    // Raw IP (no Ethernet header): the bundled Psiphon capture, its client
    // rewritten into the default watched range. The server is a Cloudflare
    // address no list names; its TLS 1.2 certificate names psiphon3.net,
    // which the bundled domain feed lists: the flow counts as Psiphon from
    // the certificate on (the 12 packets before it, TCP and TLS handshakes,
    // stay unattributed), and Cloudflare is not learned as a Psiphon
    // endpoint.
    let dir = temp_dir("pcap-real");
    let psiphon = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/pcap/psiphon3.pcap");
    let (watched, _) = into_watched_range(&psiphon, &dir);
    let report = pcap_report(&[text(&watched)]);
    let totals = &report["totals"];
    assert_eq!(totals["packets"], 62);
    assert_eq!(totals["ipv4"], 62);
    assert_eq!(totals["watched"], 62);
    assert_eq!(totals["matched"], 50);
    assert_eq!(services(&report)["psiphon"]["flows"], 2);
    assert_eq!(services(&report)["psiphon"]["flows_learned"], 2);
    assert_eq!(services(&report)["psiphon"]["unique_sources"], 1);
    let learning = &report["learning"];
    assert_eq!(learning["stats"]["tls_flows_named"], 1, "{learning}");
    assert_eq!(learning["stats"]["skipped_shared_hosting"], 1, "{learning}");
    assert_eq!(learning["endpoints"], serde_json::json!([]));
    let report = pcap_report(&[text(&watched), "--no-learn"]);
    assert_eq!(report["totals"]["matched"], 0);

    // The capture itself, raw IP, read as it is: its client watched by
    // flag. 12,834 file bytes = 24 (header) + 62 × 16 (records) + the
    // packets; each packet gains a 14-byte synthetic Ethernet header.
    let report = pcap_report(&[text(&psiphon), "--watch", "192.168.0.103/32"]);
    let totals = &report["totals"];
    assert_eq!(totals["bytes"], 12_834 - 24 - 62 * 16 + 62 * 14);
    assert_eq!(totals["matched"], 50);
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
    let _ = std::fs::remove_dir_all(dir);
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
    // As tcpdump stopped mid-write leaves it: its whole frames count, as
    // those of a file that ends before the cut record, and a warning names
    // the record.
    let output = classifier(&["pcap", "--format", "json", text(&cut)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{error}");
    assert!(
        error.contains(&format!(
            "{}: the file ends inside a record (20 bytes of it, as when a capture is stopped mid-write); the 2 frames before it are counted, that record is not",
            cut.display()
        )),
        "{error}"
    );
    let two_frames = dir.join("two-frames.pcap");
    std::fs::write(&two_frames, &bytes[..second]).expect("write");
    let without_interfaces = |mut report: Value| {
        report["interfaces"] = Value::Null;
        report
    };
    let cut_report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(cut_report["totals"]["packets"], 2, "{cut_report}");
    assert_eq!(
        without_interfaces(cut_report),
        without_interfaces(pcap_report(&[text(&two_frames)]))
    );
    // A file whose unreadable end is longer than any record: corrupt.
    let long_claim = dir.join("long-claim.pcap");
    let mut changed = bytes[..second].to_vec();
    changed[first + 8..first + 12].copy_from_slice(&400_000u32.to_le_bytes());
    changed.resize(first + 16 + 300_000, 0);
    std::fs::write(&long_claim, &changed).expect("write");
    let output = classifier(&["pcap", text(&long_claim)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!(
            "{}: frame 2: corrupt record: the record at byte {first} claims 400016 bytes, more than one of the largest snap length, and the file ends 300016 bytes into it",
            long_claim.display()
        )),
        "{error}"
    );

    // A full disk: the snapshots cannot be written, which exits 1, but
    // the replay's report is printed whole.
    let disk = TestMount::tmpfs(&dir.join("disk"), 64 * 1024);
    let full_snapshots = disk.path.join("snapshots");
    std::fs::create_dir(&full_snapshots).expect("snapshot folder");
    let mut filler = std::fs::File::create(disk.path.join("filler")).expect("filler");
    while std::io::Write::write_all(&mut filler, &[0; 4096]).is_ok() {}
    drop(filler);
    let output = classifier(&[
        "pcap",
        "--format",
        "json",
        text(&psiphon),
        "--snapshot-dir",
        text(&full_snapshots),
    ]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("1 snapshot(s) not written")
            && error.contains(
                "1 snapshot(s) could not be written (see the errors above); the report on stdout holds every count"
            ),
        "{error}"
    );
    let full_disk_report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        full_disk_report["totals"],
        pcap_report(&[text(&psiphon)])["totals"]
    );
    drop(disk);

    // The second frame 200,000 s after the first: with 1-second snapshots
    // that would be 200,000 idle files, so it is refused (a corrupt stamp).
    let jump = dir.join("jump.pcap");
    let mut changed = bytes.clone();
    let first_seconds = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    changed[first..first + 4].copy_from_slice(&(first_seconds + 200_000).to_le_bytes());
    std::fs::write(&jump, &changed).expect("write");
    let jump_snapshots = dir.join("jump-snapshots");
    let output = classifier(&[
        "pcap",
        text(&jump),
        "--snapshot-dir",
        text(&jump_snapshots),
        "--snapshot-interval",
        "1s",
    ]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!("{}: frame 2: its time ", jump.display()))
            && error.contains("2.3 days after the frame before; --snapshot-dir would write"),
        "{error}"
    );
    assert!(snapshot_files(&jump_snapshots).len() <= 1);

    // A pcapng frame stamped at the last nanosecond an i64 holds (in
    // 2262): no snapshot boundary follows it, so cutting up to it would
    // never end (it wrote snapshot files until the disk filled).
    let last = dir.join("last-nanosecond.pcapng");
    write_last_nanosecond_pcapng(&last, &bytes[first + 16..second]);
    let last_snapshots = dir.join("last-snapshots");
    let output = classifier(&["pcap", text(&last), "--snapshot-dir", text(&last_snapshots)]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!(
            "{}: frame 1: its time 2262-04-11T23:47:16.854775807Z leaves no room for a snapshot boundary after it",
            last.display()
        )),
        "{error}"
    );
    assert!(snapshot_files(&last_snapshots).len() <= 1);

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

    // A flow table larger than the kernel makes: the flag is named.
    let output = classifier(&["pcap", text(&psiphon), "--flow-capacity", "4294967295"]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(
            "--flow-capacity 4294967295: the kernel cannot make a flow table that large (about "
        ) && error.contains(" MiB of kernel memory on this machine): "),
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

#[test]
fn frames_longer_than_a_test_run_takes_whole_are_classified_and_counted_whole() {
    if !require_root() {
        return;
    }
    use classifier_tests::frames::FrameSpec;
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    // BPF_PROG_TEST_RUN hands a program only the first 3,520 bytes or so
    // of a frame (the rest in fragments it is not told of): jumbo frames
    // and the GRO/TSO super-packets a host's tcpdump records were counted
    // as truncated IP packets of that length.
    let dir = temp_dir("pcap-jumbo");
    let feed = classifier_tests::daemon::write_feed(&dir);
    let frames: Vec<Vec<u8>> = [
        FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).payload(1000),
        FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).payload(5000),
        FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).payload(8958),
        FrameSpec::udp("198.51.100.10", "175.45.176.9", 443, 40000).payload(65_000),
        FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443)
            .payload(9000)
            .vlans(&[0x8100]),
        FrameSpec::udp("2001:db8:aa::9", "2001:db8:e0::10", 40001, 443).payload(9000),
        // Unwatched, and longer than the watched fast path looks.
        FrameSpec::udp("192.0.2.1", "198.51.100.10", 40000, 443).payload(7000),
    ]
    .iter()
    .map(FrameSpec::build)
    .collect();
    let capture = dir.join("jumbo.pcap");
    let mut writer =
        PcapWriter::new(std::fs::File::create(&capture).expect("create")).expect("pcap header");
    for (index, frame) in frames.iter().enumerate() {
        writer
            .write_packet(&PcapPacket::new(
                std::time::Duration::from_secs(1_700_000_000 + index as u64),
                frame.len() as u32,
                frame,
            ))
            .expect("a frame");
    }
    drop(writer);
    let mut args = vec!["--endpoints", text(&feed)];
    for prefix in classifier_tests::TEST_WATCHED {
        args.extend(["--watch", prefix]);
    }
    args.push(text(&capture));
    let report = pcap_report(&args);
    let totals = &report["totals"];
    let all: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(totals["packets"], 7, "{totals}");
    assert_eq!(totals["bytes"], all as u64, "{totals}");
    assert_eq!(totals["malformed"], 0, "{}", report["malformed"]);
    assert_eq!(totals["watched"], 6, "{totals}");
    assert_eq!(totals["matched"], 6, "{totals}");
    let alpha = &services(&report)["alpha"];
    assert_eq!(alpha["packets"], 6);
    assert_eq!(alpha["bytes"], (all - frames[6].len()) as u64);

    // Recognised by their signatures after the cut: WireGuard data (a
    // length that is a multiple of 16) followed by a 4-byte trailer, and
    // an IKE message of 3,500 bytes (its length field equal to its
    // payload). Both were missed: the trailer made the cut take a length
    // that is no multiple of 16 off the packet, and the IKE length field
    // kept the whole message's.
    use classifier_tests::frames::patched;
    let mut wireguard = patched(
        FrameSpec::udp("175.45.176.9", "192.0.2.9", 5000, 51820)
            .payload(4000)
            .build(),
        42,
        &[4, 0, 0, 0],
    );
    wireguard.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let ike = FrameSpec::udp("175.45.176.9", "192.0.2.9", 500, 500)
        .payload(3500)
        .build();
    let ike = patched(
        patched(ike, 42 + 17, &[0x20, 35]),
        42 + 24,
        &3500u32.to_be_bytes(),
    );
    let signatures = dir.join("signatures.pcap");
    let mut writer =
        PcapWriter::new(std::fs::File::create(&signatures).expect("create")).expect("pcap header");
    for (index, frame) in [&wireguard, &ike].into_iter().enumerate() {
        writer
            .write_packet(&PcapPacket::new(
                std::time::Duration::from_secs(1_700_000_000 + index as u64),
                frame.len() as u32,
                frame,
            ))
            .expect("a frame");
    }
    drop(writer);
    let report = pcap_report(&["--no-learn", text(&signatures)]);
    assert_eq!(report["totals"]["matched"], 2, "{}", report["totals"]);
    let named = services(&report);
    assert_eq!(named["wireguard"]["packets"], 1, "{named:?}");
    assert_eq!(named["ipsec"]["packets"], 1, "{named:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Frames too short for their link header (a snap length under 14 bytes
/// on Ethernet, under the 16- or 20-byte cooked header on Linux cooked
/// captures) are counted as `other` and `ethernet_truncated`, as the
/// program counts a runt on the wire, and the replay goes on.
#[test]
fn frames_shorter_than_their_link_header_are_counted_and_the_replay_goes_on() {
    if !require_root() {
        return;
    }
    use classifier_tests::frames::FrameSpec;
    use pcap_file::{
        DataLink,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    let dir = temp_dir("pcap-runts");
    let feed = classifier_tests::daemon::write_feed(&dir);
    let matched = FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).build();
    let write = |name: &str, datalink: DataLink, frames: &[Vec<u8>]| {
        let path = dir.join(name);
        let header = PcapHeader {
            datalink,
            ..PcapHeader::default()
        };
        let mut writer =
            PcapWriter::with_header(std::fs::File::create(&path).expect("create"), header)
                .expect("pcap header");
        for (index, frame) in frames.iter().enumerate() {
            writer
                .write_packet(&PcapPacket::new(
                    std::time::Duration::from_secs(1_700_000_000 + index as u64),
                    frame.len().max(60) as u32,
                    frame,
                ))
                .expect("a frame");
        }
        path
    };
    let report = |capture: &Path| {
        let mut args = vec!["--endpoints", text(&feed)];
        for prefix in classifier_tests::TEST_WATCHED {
            args.extend(["--watch", prefix]);
        }
        args.push(text(capture));
        pcap_report(&args)
    };

    let ethernet = write(
        "ethernet.pcap",
        DataLink::ETHERNET,
        &[matched[..10].to_vec(), matched.clone()],
    );
    let counted = report(&ethernet);
    let totals = &counted["totals"];
    assert_eq!(totals["packets"], 2, "{totals}");
    assert_eq!(totals["other"], 1, "{totals}");
    assert_eq!(totals["matched"], 1, "{totals}");
    assert_eq!(totals["bytes"], (matched.len() + 10) as u64, "{totals}");
    assert_eq!(
        counted["malformed"]["ethernet_truncated"], 1,
        "{}",
        counted["malformed"]
    );

    // SLL: packet type, ARPHRD, address length, 8-byte address, protocol;
    // then the IP packet. 10 and 15 bytes hold no whole cooked header.
    let mut cooked = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0, 1, 0, 0x08, 0x00];
    cooked.extend_from_slice(&matched[14..]);
    let sll = write(
        "cooked.pcap",
        DataLink::LINUX_SLL,
        &[cooked[..10].to_vec(), cooked.clone(), cooked[..15].to_vec()],
    );
    let counted = report(&sll);
    let totals = &counted["totals"];
    assert_eq!(totals["packets"], 3, "{totals}");
    assert_eq!(totals["other"], 2, "{totals}");
    assert_eq!(totals["matched"], 1, "{totals}");
    // Nothing of an Ethernet frame was captured in the two short ones.
    assert_eq!(totals["bytes"], matched.len() as u64, "{totals}");
    assert_eq!(
        counted["malformed"]["ethernet_truncated"], 2,
        "{}",
        counted["malformed"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_going_back_in_time_reports_from_its_earliest_frame_to_its_latest() {
    if !require_root() {
        return;
    }
    use classifier_tests::frames::FrameSpec;
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    let dir = temp_dir("pcap-back-in-time");
    let feed = classifier_tests::daemon::write_feed(&dir);
    let later = FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).build();
    let earlier = FrameSpec::udp("175.45.176.10", "198.51.100.10", 40000, 443).build();
    // 2023-11-14 at 11:30, 09:30 (another flow) and 11:45 UTC, in that order.
    let capture = dir.join("back.pcap");
    let mut writer =
        PcapWriter::new(std::fs::File::create(&capture).expect("create")).expect("pcap header");
    for (seconds, frame) in [
        (1_699_961_400, &later),
        (1_699_954_200, &earlier),
        (1_699_962_300, &later),
    ] {
        writer
            .write_packet(&PcapPacket::new(
                std::time::Duration::from_secs(seconds),
                frame.len() as u32,
                frame,
            ))
            .expect("a frame");
    }
    drop(writer);
    let snapshots = dir.join("snapshots");
    let report = pcap_report(&[
        "--endpoints",
        text(&feed),
        "--watch",
        "175.45.176.0/22",
        "--snapshot-dir",
        text(&snapshots),
        text(&capture),
    ]);
    assert_eq!(report["totals"]["packets"], 3, "{}", report["totals"]);
    assert_eq!(report["start"], "2023-11-14T09:30:00Z");
    assert_eq!(report["end"], "2023-11-14T11:45:00Z");
    // The flows' times lie within the report's (the earlier flow's before
    // the first frame read).
    let flows = report["flows"].as_array().expect("flows");
    let times: Vec<(&Value, &Value, &Value)> = flows
        .iter()
        .map(|flow| (&flow["watched"], &flow["first_seen"], &flow["last_seen"]))
        .collect();
    assert_eq!(
        times,
        [
            (
                &Value::from("175.45.176.10"),
                &Value::from("2023-11-14T09:30:00Z"),
                &Value::from("2023-11-14T09:30:00Z")
            ),
            (
                &Value::from("175.45.176.9"),
                &Value::from("2023-11-14T11:30:00Z"),
                &Value::from("2023-11-14T11:45:00Z")
            ),
        ]
    );
    let alpha = &services(&report)["alpha"];
    assert_eq!(alpha["first_seen"], report["start"], "{alpha}");
    assert_eq!(alpha["last_seen"], report["end"], "{alpha}");
    // Snapshots keep their intervals: from the first frame read, and the
    // frame going back counts in the interval being cut.
    let files = snapshot_files(&snapshots);
    assert_eq!(files.len(), 1, "{files:?}");
    let snapshot: Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("JSON");
    assert_eq!(snapshot["start"], "2023-11-14T11:30:00Z");
    assert_eq!(snapshot["end"], "2023-11-14T11:45:00Z");
    assert_eq!(snapshot["totals"]["packets"], 3);
    let _ = std::fs::remove_dir_all(dir);
}

/// A pcapng of one Ethernet `frame` at the time i64::MAX nanoseconds
/// (`if_tsresol` 9).
fn write_last_nanosecond_pcapng(path: &Path, frame: &[u8]) {
    use pcap_file::{
        DataLink,
        pcapng::{
            PcapNgWriter,
            blocks::{
                enhanced_packet::EnhancedPacketBlock,
                interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            },
        },
    };
    let file = std::fs::File::create(path).expect("create");
    let mut writer = PcapNgWriter::new(file).expect("pcapng header");
    writer
        .write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .expect("interface");
    writer
        .write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: std::time::Duration::from_nanos(i64::MAX as u64),
            original_len: frame.len() as u32,
            data: std::borrow::Cow::Borrowed(frame),
            options: vec![],
        })
        .expect("frame");
}

/// Captures of nDPI's test suite copied into `tests/data/` (its README).
fn shared_capture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// Where a frame's IPv4 header starts (after Ethernet and VLAN tags).
fn ipv4_header(frame: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        match frame.get(at..at + 2)? {
            [0x81, 0x00] | [0x88, 0xa8] => at += 4,
            [0x08, 0x00] => return Some(at + 2),
            _ => return None,
        }
    }
}

/// The capture with every private IPv4 address (RFC 1918, loopback: the
/// captures' clients) rewritten into the default watched range
/// 175.45.176.0/22, written as a pcap in `dir`; its frames, rewritten.
fn into_watched_range(capture: &Path, dir: &Path) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    use pcap_file::{
        DataLink, TsResolution,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    let watched = |address: [u8; 4]| -> Option<[u8; 4]> {
        let private = matches!(address, [10 | 127, ..] | [192, 168, ..])
            || (address[0] == 172 && address[1] & 0xf0 == 16);
        private.then(|| {
            // A stable spot in the /22 for each private address.
            let spot = address
                .iter()
                .fold(7u32, |h, &b| h.wrapping_mul(31) + u32::from(b))
                % 1024;
            let [_, _, high, low] = (0xaf2d_b000u32 | spot).to_be_bytes();
            [175, 45, high, low]
        })
    };
    let reader = classifier_user::capture::CaptureReader::open(capture).expect("the capture opens");
    let name = capture
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("capture");
    let path = dir.join(format!("{name}.watched.pcap"));
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(
        std::fs::File::create(&path).expect("create the pcap"),
        header,
    )
    .expect("pcap header");
    let mut frames = Vec::new();
    for frame in reader {
        let frame = frame.expect("a frame");
        let mut data = frame.data.clone();
        if let Some(ip) = ipv4_header(&data) {
            for field in [ip + 12, ip + 16] {
                if let Some(bytes) = data.get(field..field + 4) {
                    let address: [u8; 4] = bytes.try_into().expect("4 bytes");
                    if let Some(new) = watched(address) {
                        data[field..field + 4].copy_from_slice(&new);
                    }
                }
            }
        }
        let time = std::time::Duration::from_nanos(u64::try_from(frame.timestamp_ns).unwrap_or(0));
        writer
            .write_packet(&PcapPacket::new(time, frame.original_len, &data))
            .expect("write a packet");
        frames.push(data);
    }
    (path, frames)
}

/// Frames to or from `address`.
fn frames_with(frames: &[Vec<u8>], address: [u8; 4]) -> u64 {
    frames
        .iter()
        .filter(|frame| {
            ipv4_header(frame).is_some_and(|ip| {
                frame.get(ip + 12..ip + 16) == Some(&address[..])
                    || frame.get(ip + 16..ip + 20) == Some(&address[..])
            })
        })
        .count() as u64
}

#[test]
fn vpn_protocols_are_recognised_in_real_captures_without_a_list() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("pcap-protocols");
    // A feed that names none of the captures' servers.
    let no_servers = dir.join("no-servers.csv");
    std::fs::write(&no_servers, "cidr,service\n192.0.2.0/24,nothing-here\n").expect("feed");
    let no_servers = text(&no_servers);

    // ProtonVPN's WireGuard tunnel (its server is in no list).
    let (file, frames) = into_watched_range(&shared_capture("protonvpn.pcap"), &dir);
    let report = pcap_report(&[text(&file)]);
    let wireguard = &services(&report)["wireguard"];
    assert_eq!(
        wireguard["packets"],
        frames_with(&frames, [217, 23, 3, 76]),
        "{report}"
    );
    assert_eq!(wireguard["unique_sources"], 1);
    // Its API flow's ClientHello names vpn-api.proton.me, a domain the
    // bundled feed lists: the flow counts for ProtonVPN after it (the TCP
    // handshake and the ClientHello itself, 4 packets, before).
    assert_eq!(
        services(&report)["protonvpn"]["packets"],
        frames_with(&frames, [185, 159, 159, 148]) - 4,
        "{report}"
    );
    assert_eq!(report["learning"]["stats"]["tls_flows_named"], 1);

    // Mullvad's WireGuard: the bundled feed lists the server, and a feed
    // match wins over the protocol; without it, the protocol names it.
    let (file, frames) = into_watched_range(&shared_capture("mullvad_wireguard.pcap"), &dir);
    let all = frames.len() as u64;
    let report = pcap_report(&[text(&file)]);
    assert_eq!(services(&report)["mullvad"]["packets"], all);
    assert!(!services(&report).contains_key("wireguard"));
    let report = pcap_report(&[text(&file), "--endpoints", no_servers]);
    assert_eq!(services(&report)["wireguard"]["packets"], all);
    // A protocol's flows are not owed to learning.
    assert_eq!(services(&report)["wireguard"]["flows_learned"], 0);

    // TunnelBear's WireGuard tunnel, its server in the bundled feed; its
    // API flows to Cloudflare name api.tunnelbear.com (or
    // api.polargrizzly.com) in their ClientHellos: those flows count for
    // TunnelBear too, and no Cloudflare address is learned.
    let (file, frames) = into_watched_range(&shared_capture("tunnelbear.pcap"), &dir);
    let report = pcap_report(&[text(&file)]);
    let tunnelbear = services(&report)["tunnelbear"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        tunnelbear > frames_with(&frames, [142, 93, 78, 79]),
        "{report}"
    );
    let learning = &report["learning"];
    assert!(
        learning["stats"]["tls_flows_named"].as_u64() >= Some(1),
        "{learning}"
    );
    assert!(
        learning["stats"]["skipped_shared_hosting"].as_u64() >= Some(1),
        "{learning}"
    );
    assert!(
        learning["endpoints"]
            .as_array()
            .is_some_and(|learned| learned
                .iter()
                .all(|e| !e["address"].as_str().unwrap_or("").starts_with("104."))),
        "{learning}"
    );
    // Without the feed: TunnelBear's handshake messages are 204 and 100
    // bytes, not WireGuard's 148 and 92, so the flow is recognised from its
    // first transport data packet on (the third of its 12).
    let report = pcap_report(&[text(&file), "--endpoints", no_servers]);
    assert_eq!(
        services(&report)["wireguard"]["packets"],
        frames_with(&frames, [142, 93, 78, 79]) - 2
    );

    // IKE on UDP 500 and NAT-T/ESP on 4500: every frame of the capture.
    let (file, frames) = into_watched_range(&shared_capture("ipsec_isakmp_esp.pcap"), &dir);
    let report = pcap_report(&[text(&file)]);
    assert_eq!(report["totals"]["packets"], frames.len() as u64);
    assert_eq!(services(&report)["ipsec"]["packets"], frames.len() as u64);

    // OpenVPN over UDP and TCP on several ports; one server is NordVPN's
    // and the bundled feed names it.
    let (file, frames) = into_watched_range(&shared_capture("openvpn.pcap"), &dir);
    let report = pcap_report(&[text(&file)]);
    let nordvpn = frames_with(&frames, [217, 138, 197, 43]);
    assert_eq!(services(&report)["nordvpn"]["packets"], nordvpn);
    let openvpn = &services(&report)["openvpn"];
    assert!(openvpn["flows"].as_u64() >= Some(10), "{openvpn}");
    // Frames before a session's first hard reset (TCP handshakes) and
    // sessions the capture joined late stay unmatched.
    let unmatched = report["totals"]["watched"].as_u64().unwrap_or(0)
        - report["totals"]["matched"].as_u64().unwrap_or(0);
    assert!(
        openvpn["packets"].as_u64() > Some(4 * unmatched),
        "{openvpn} vs {unmatched} unmatched"
    );
    let _ = std::fs::remove_dir_all(dir);
}
