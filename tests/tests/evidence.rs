//! Evidence captures read back by tshark (Debian): `classifier run
//! --capture-dir` while matched, unmatched and unwatched frames go through
//! the veth; every pcapng file it wrote opens in tshark, holds exactly the
//! first packets of each matched flow (per `--capture-per-flow`), each cut
//! to `--capture-bytes` and commented with its service and direction, and
//! nothing else; files rotate with the snapshots; the report counts what
//! was captured.

use std::{process::Command, time::Duration};

use classifier_tests::{
    daemon::{Daemon, temp_dir, write_feed},
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
