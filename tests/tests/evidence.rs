//! Evidence captures read back by tshark (Debian): `classifier run
//! --capture-dir` while matched, unmatched and unwatched frames go through
//! the veth; every pcapng file it wrote opens in tshark, holds exactly the
//! first packets of each matched flow (per `--capture-per-flow`), each cut
//! to `--capture-bytes` and commented with its service and direction, and
//! nothing else; files rotate with the snapshots; the report counts what
//! was captured.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use classifier_tests::{
    daemon::{Daemon, TestMount, snapshot_files, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};

/// One packet as tshark shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shown {
    comment: String,
    source: String,
    destination: String,
    length: u64,
    captured: u64,
}

fn tshark(file: &std::path::Path) -> Vec<Shown> {
    let output = Command::new("tshark")
        .args(["-r", text(file), "-T", "fields", "-E", "separator=|"])
        .args(["-e", "frame.comment", "-e", "ip.src", "-e", "ipv6.src"])
        .args([
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "frame.len",
            "-e",
            "frame.cap_len",
        ])
        .output()
        .expect("tshark (Debian package tshark; the test set-up installs it)");
    assert!(
        output.status.success(),
        "tshark -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 7, "{line}");
            let either = |a: &str, b: &str| if a.is_empty() { b } else { a }.to_string();
            Shown {
                comment: fields[0].to_string(),
                source: either(fields[1], fields[2]),
                destination: either(fields[3], fields[4]),
                length: fields[5].parse().expect("frame.len"),
                captured: fields[6].parse().expect("frame.cap_len"),
            }
        })
        .collect()
}

#[test]
fn matched_packets_are_captured_with_their_service_and_nothing_else() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("evidence");
    let feed = write_feed(&dir);
    let captures = dir.join("captures");
    let link = VethLink::create("evidence").expect("namespaces and veth");
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--capture-dir",
            text(&captures),
            "--capture-bytes",
            "64",
            "--capture-per-flow",
            "3",
            "--snapshot-dir",
            text(&dir.join("snapshots")),
            "--snapshot-interval",
            "1s",
        ],
    );
    let (v4_host, v4_server) = ("175.45.176.9", "198.51.100.10");
    let (v6_host, v6_server) = ("2001:db8:aa::9", "2001:db8:e0:1::10");
    let mut expected = Vec::new();
    let mut frames = Vec::new();
    let mut add = |spec: FrameSpec, src: &str, dst: &str, service: &str, direction: &str, take| {
        let frame = spec.build();
        if take {
            expected.push(Shown {
                comment: format!("classifier: service={service} direction={direction}"),
                source: src.to_string(),
                destination: dst.to_string(),
                length: frame.len() as u64,
                captured: frame.len().min(64) as u64,
            });
        }
        frames.push(frame);
    };
    // Five packets of one flow: its first three are captured.
    for (index, payload) in [16, 100, 200, 300, 400].into_iter().enumerate() {
        add(
            FrameSpec::udp(v4_host, v4_server, 40000, 443).payload(payload),
            v4_host,
            v4_server,
            "alpha",
            "outbound",
            index < 3,
        );
    }
    // Its replies are a flow of their own; a short frame is kept whole.
    for payload in [4, 700] {
        add(
            FrameSpec::udp(v4_server, v4_host, 443, 40000).payload(payload),
            v4_server,
            v4_host,
            "alpha",
            "inbound",
            true,
        );
    }
    for payload in [50, 60] {
        add(
            FrameSpec::udp(v6_host, v6_server, 40001, 51820).payload(payload),
            v6_host,
            v6_server,
            "beta",
            "outbound",
            true,
        );
    }
    // Watched but to no endpoint, and unwatched: never captured.
    frames.push(FrameSpec::udp(v4_host, "192.0.2.1", 40000, 443).build());
    frames.push(FrameSpec::udp("192.0.2.7", v4_server, 40000, 443).build());

    // Two rounds over at least one snapshot boundary: two files or more.
    link.send(&frames[..4]).expect("send");
    std::thread::sleep(Duration::from_millis(1600));
    link.send(&frames[4..]).expect("send");
    let (report, _) = daemon.stop(libc::SIGTERM);

    let mut files: Vec<_> = std::fs::read_dir(&captures)
        .expect("the capture folder")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    assert!(files.iter().all(|file| {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.starts_with("evidence-") && name.ends_with(".pcapng")
    }));
    let mut shown: Vec<Shown> = files.iter().flat_map(|file| tshark(file)).collect();
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected);

    let totals = &report["totals"];
    assert_eq!(totals["captured"], 7, "{totals}");
    assert_eq!(totals["capture_drops"], 0);
    assert_eq!(totals["capture_throttled"], 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits until the kernel's coarse monotonic clock (the one the program's
/// capture budget counts seconds by) has just started a second, so frames
/// sent at once fall in one budget second.
fn wait_for_second_start() {
    loop {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) },
            0
        );
        if now.tv_nsec < 200_000_000 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn packets_over_the_capture_rate_keep_their_flows_turns() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("evidence-rate");
    let feed = write_feed(&dir);
    let captures = dir.join("captures");
    let link = VethLink::create("evrate").expect("namespaces and veth");
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--capture-dir",
            text(&captures),
            "--capture-rate",
            "2",
            "--capture-per-flow",
            "3",
        ],
    );
    let frame = FrameSpec::udp("175.45.176.9", "198.51.100.10", 40000, 443).build();
    // Five packets of one flow in one second: two captured, three over
    // the rate. A second later, the flow's third turn is still its own.
    wait_for_second_start();
    link.send(&vec![frame.clone(); 5]).expect("send");
    std::thread::sleep(Duration::from_millis(1000));
    wait_for_second_start();
    link.send(&vec![frame; 3]).expect("send");
    let (report, _) = daemon.stop(libc::SIGTERM);

    let totals = &report["totals"];
    assert_eq!(totals["matched"], 8, "{totals}");
    assert_eq!(totals["captured"], 3, "{totals}");
    assert_eq!(totals["capture_throttled"], 3, "{totals}");
    assert_eq!(totals["capture_drops"], 0, "{totals}");
    let shown: usize = std::fs::read_dir(&captures)
        .expect("the capture folder")
        .map(|entry| tshark(&entry.expect("entry").path()).len())
        .sum();
    assert_eq!(shown, 3);
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends new flows' packets every few milliseconds until `stop`: each is
/// captured (a flow's first packet), across snapshot boundaries. A flow is
/// a watched host, an endpoint and the endpoint's port: the host changes.
fn send_new_flows(link: &VethLink, stop: &AtomicBool) {
    let mut host = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let frames: Vec<Vec<u8>> = (0..10)
            .map(|_| {
                host = (host + 1) % 1024;
                let watched = format!("175.45.{}.{}", 176 + host / 256, host % 256);
                let port = 1024 + u16::try_from(host).expect("small");
                FrameSpec::udp(&watched, "198.51.100.10", 40000, port)
                    .payload(16)
                    .build()
            })
            .collect();
        link.send(&frames).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn capture_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|entry| entry.expect("entry").path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// With traffic crossing snapshot boundaries, each snapshot's `captured`
/// is exactly the packets of one evidence file: a file closes before the
/// first packet the cut's drain did not count (it closed after the packets
/// captured while the cut was written, which went to the next snapshot).
#[test]
fn each_evidence_file_holds_what_its_snapshot_counts() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("evidence-cuts");
    let feed = write_feed(&dir);
    let captures = dir.join("captures");
    let snapshots = dir.join("snapshots");
    let link = VethLink::create("evcuts").expect("namespaces and veth");
    let args = [
        "--capture-dir",
        text(&captures),
        "--capture-rate",
        "100000",
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "1s",
    ];
    let daemon = Daemon::start(&link, &feed, &args);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| send_new_flows(&link, &stop));
        std::thread::sleep(Duration::from_millis(3500));
        stop.store(true, Ordering::SeqCst);
    });
    let (report, _) = daemon.stop(libc::SIGTERM);
    let counted: Vec<u64> = snapshot_files(&snapshots)
        .iter()
        .map(|file| {
            let snapshot: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
            snapshot["totals"]["captured"].as_u64().expect("captured")
        })
        .filter(|captured| *captured > 0)
        .collect();
    let in_files: Vec<u64> = capture_files(&captures)
        .iter()
        .map(|file| tshark(file).len() as u64)
        .collect();
    assert!(counted.len() >= 3, "{counted:?}");
    assert_eq!(in_files, counted);
    assert_eq!(
        report["totals"]["captured"].as_u64(),
        Some(in_files.iter().sum())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A full disk and a folder moved away while packets are captured: every
/// file stays readable (one cut in the middle of a block was, from there
/// on, not), the folder is made again, and the packets in the files and
/// those the log says were lost add up to the count.
#[test]
fn evidence_files_stay_readable_through_a_full_disk_and_a_moved_folder() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("evidence-disk");
    let feed = write_feed(&dir);
    let disk = TestMount::tmpfs(&dir.join("disk"), 2 * 1024 * 1024);
    let captures = disk.path.join("captures");
    let moved = disk.path.join("moved");
    let link = VethLink::create("evdisk").expect("namespaces and veth");
    // Snapshots rotate the files every second: a moved folder is noticed
    // at the next file.
    let snapshots = dir.join("snapshots");
    let args = [
        "--capture-dir",
        text(&captures),
        "--capture-rate",
        "100000",
        "--snapshot-dir",
        text(&snapshots),
        "--snapshot-interval",
        "1s",
    ];
    let mut daemon = Daemon::start(&link, &feed, &args);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| send_new_flows(&link, &stop));
        std::thread::sleep(Duration::from_millis(800));
        let filler = disk.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        while std::io::Write::write_all(&mut file, &[0; 4096]).is_ok() {}
        drop(file);
        daemon.wait_for("evidence capture: cannot write to ");
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(&filler).expect("free the disk");
        daemon.wait_for("evidence capture: writing again into ");
        std::thread::sleep(Duration::from_millis(500));
        std::fs::rename(&captures, &moved).expect("move the folder away");
        daemon.wait_for(" was gone; created it again");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
    });
    let (report, log) = daemon.stop(libc::SIGTERM);
    let lost: u64 = log
        .iter()
        .filter_map(|line| {
            let (before, _) = line.split_once(" captured packet")?;
            before.rsplit(['(', ' ']).next()?.parse().ok()
        })
        .max()
        .expect("the log says how many were lost");
    assert!(lost > 0, "{log:#?}");
    let files: Vec<_> = capture_files(&moved)
        .into_iter()
        .chain(capture_files(&captures))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    // tshark fails on a file with a torn block.
    let in_files: u64 = files.iter().map(|file| tshark(file).len() as u64).sum();
    assert_eq!(
        report["totals"]["captured"].as_u64(),
        Some(in_files + lost),
        "{} in files, {lost} lost",
        in_files
    );
    drop(disk);
    let _ = std::fs::remove_dir_all(dir);
}
