//! Hot reload on a live veth pair: `classifier reload` swaps a new feed in
//! while traffic flows (totals exact across the swap, the program stays
//! attached), and a bad feed is refused whole while the old one serves on;
//! per-flow capture turns carry on across a reload, and the pinned `META`
//! never goes missing while reloads rewrite it.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use classifier_tests::{
    TEST_FEED, classifier_binary,
    daemon::{Daemon, TestMount, services, snapshot_files, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};
use serde_json::Value;

fn service_packets(report: &Value, name: &str) -> u64 {
    services(report)
        .get(name)
        .and_then(|row| row["packets"].as_u64())
        .unwrap_or(0)
}

fn stats(pins: &Path) -> Value {
    let output = Command::new(classifier_binary())
        .args(["stats", "--json", "--pin-path", text(pins)])
        .output()
        .expect("stats");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("stats JSON")
}

#[test]
fn a_reload_swaps_feeds_without_a_gap_and_a_bad_feed_leaves_the_old_one() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("reload");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("reload").expect("namespaces and veth");
    let mut daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--pin-path",
            text(&pins.path),
            "--metrics-addr",
            "127.0.0.1:9477",
            "--sensor-name",
            "reload-sensor",
            "--snapshot-dir",
            text(&dir.join("snapshots")),
        ],
    );

    // A `stats --watch` started before the reload follows the program
    // across it (the new service and the reload count, not the old META).
    let mut watcher = Command::new(classifier_binary())
        .args([
            "stats",
            "--json",
            "--watch",
            "0.2",
            "--pin-path",
            text(&pins.path),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("stats --watch");
    let watched_lines = {
        let stdout = watcher.stdout.take().expect("piped");
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        })
    };

    // Traffic to alpha and to 203.0.113.5 (delta now, epsilon after the
    // reload) flows in a loop while the feed is swapped.
    let to_alpha = FrameSpec::udp("175.45.176.1", "198.51.100.10", 40000, 443).build();
    let to_moved = FrameSpec::udp("175.45.176.2", "203.0.113.5", 40001, 443).build();
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let reload_output = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                link.send(&[to_alpha.clone(), to_moved.clone()])
                    .expect("send");
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(700));
        let moved = TEST_FEED.replace("203.0.113.0/24,delta,", "203.0.113.0/24,epsilon,");
        std::fs::write(&feed, moved).expect("new feed");
        let output = Command::new(classifier_binary())
            .args(["reload", "--pin-path", text(&pins.path)])
            .output()
            .expect("classifier reload");
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::SeqCst);
        output
    });
    let said = String::from_utf8_lossy(&reload_output.stdout);
    assert!(
        reload_output.status.success() && said.starts_with("reloaded:"),
        "{reload_output:?}"
    );
    daemon.wait_for("feeds reloaded");
    let rounds = rounds.load(Ordering::SeqCst);
    assert!(rounds > 10, "{rounds} rounds");

    // A bad feed is refused whole; the old (reloaded) one keeps serving.
    std::fs::write(&feed, format!("{TEST_FEED}198.51.100.77/24,zeta,\n")).expect("bad feed");
    let output = Command::new(classifier_binary())
        .args(["reload", "--pin-path", text(&pins.path)])
        .output()
        .expect("classifier reload");
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("reload refused") && error.contains("host bits set"),
        "{error}"
    );
    daemon.wait_for("feed reload refused");
    std::thread::sleep(Duration::from_millis(300));
    let before = stats(&pins.path);
    // Read from the pins by another process: the daemon's name, not the host's.
    assert_eq!(before["sensor"], "reload-sensor");
    link.send(&vec![to_moved.clone(); 25]).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&pins.path);
    assert_eq!(
        service_packets(&after, "epsilon") - service_packets(&before, "epsilon"),
        25,
        "the reloaded feed still serves after a refused one"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = watcher.kill();
    let _ = watcher.wait();
    let lines = watched_lines.join().expect("stats --watch lines");
    let last: Value = serde_json::from_str(lines.last().expect("a line")).expect("JSON line");
    assert!(
        service_packets(&last, "epsilon") >= service_packets(&after, "epsilon"),
        "stats --watch after the reload: {last}"
    );
    let body = link.sensor.http_get("127.0.0.1:9477", "/metrics");
    assert!(body.contains("classifier_feed_reloads_total 1"), "{body}");
    assert!(
        body.contains("classifier_feed_reload_failures_total 1"),
        "{body}"
    );

    let (report, _) = daemon.stop(libc::SIGTERM);
    // The feed the reload replaced named endpoints in part of the run: the
    // report lists it, then the one in force (the refused one neither).
    let feeds = report["feeds"].as_array().expect("feeds");
    assert_eq!(feeds.len(), 2, "{feeds:?}");
    assert_eq!(feeds[0]["name"], feeds[1]["name"]);
    assert_ne!(feeds[0]["sha256"], feeds[1]["sha256"]);
    assert!(feeds[0]["loaded_at"].as_str() < feeds[1]["loaded_at"].as_str());
    // So does the hourly snapshot the reload fell in.
    let snapshot_feeds: Vec<Value> = snapshot_files(&dir.join("snapshots"))
        .iter()
        .map(|file| {
            let snapshot: Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
            snapshot["feeds"].clone()
        })
        .collect();
    assert!(
        snapshot_feeds
            .iter()
            .any(|listed| listed.as_array() == Some(feeds)),
        "{snapshot_feeds:?}"
    );
    // Exact across the swap: every frame counted once, by one program.
    let frames = rounds * 2 + 25;
    assert_eq!(report["totals"]["packets"].as_u64(), Some(frames));
    assert_eq!(report["totals"]["matched"].as_u64(), Some(frames));
    assert_eq!(service_packets(&report, "alpha"), rounds);
    let delta = service_packets(&report, "delta");
    let epsilon = service_packets(&report, "epsilon");
    assert_eq!(delta + epsilon, rounds + 25);
    assert!(
        delta > 0 && epsilon > 25,
        "delta {delta}, epsilon {epsilon}"
    );
    // The moved flow's packets stay with the service they counted for:
    // one flow row under each (the split is the drain just before the swap,
    // so it may differ from the counters' by what came between).
    let mut moved: Vec<(String, u64)> = report["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|flow| flow["endpoint"] == "203.0.113.5")
        .map(|flow| {
            (
                flow["service"].as_str().expect("service").to_string(),
                flow["packets"].as_u64().expect("packets"),
            )
        })
        .collect();
    moved.sort();
    let names: Vec<&str> = moved.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["delta", "epsilon"], "{moved:?}");
    assert!(moved.iter().all(|(_, packets)| *packets > 0), "{moved:?}");
    assert_eq!(moved[0].1 + moved[1].1, delta + epsilon, "{moved:?}");
    for name in ["delta", "epsilon"] {
        assert_eq!(services(&report)[name]["flows"], 1, "{name}");
    }
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn per_flow_capture_turns_carry_on_across_a_reload() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("reload-capture");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let captures = dir.join("captures");
    let link = VethLink::create("rlcap").expect("namespaces and veth");
    let mut daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--pin-path",
            text(&pins.path),
            "--capture-dir",
            text(&captures),
            "--capture-per-flow",
            "1",
        ],
    );
    // Three matched flows (each direction is a flow), sent three times:
    // before the reload, again, and after it. Only their first packets
    // are captured: the new program counts turns in the same table.
    let flows = [
        FrameSpec::udp("175.45.176.1", "198.51.100.10", 40000, 443).build(),
        FrameSpec::udp("198.51.100.10", "175.45.176.1", 443, 40000).build(),
        FrameSpec::udp("2001:db8:aa::9", "2001:db8:e0:1::10", 40001, 51820).build(),
    ];
    link.send(&flows).expect("send");
    link.send(&flows).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let output = Command::new(classifier_binary())
        .args(["reload", "--pin-path", text(&pins.path)])
        .output()
        .expect("classifier reload");
    assert!(output.status.success(), "{output:?}");
    daemon.wait_for("feeds reloaded");
    link.send(&flows).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let (report, _) = daemon.stop(libc::SIGTERM);

    let totals = &report["totals"];
    assert_eq!(totals["matched"], 9, "{totals}");
    assert_eq!(totals["captured"], 3, "{totals}");
    assert_eq!(totals["capture_drops"], 0, "{totals}");
    assert_eq!(totals["capture_throttled"], 0, "{totals}");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn meta_never_goes_missing_while_reloads_rewrite_it() {
    const VERSIONS: u64 = 100;
    if !require_root() {
        return;
    }
    let dir = temp_dir("reload-meta");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("rlmeta").expect("namespaces and veth");
    let mut daemon = Daemon::start(&link, &feed, &["--pin-path", text(&pins.path)]);
    let meta = pins.path.join(&link.sensor_iface).join("META");
    assert!(meta.exists(), "{}", meta.display());
    // A bad feed: each SIGHUP is refused fast and recorded in a new META.
    std::fs::write(&feed, format!("{TEST_FEED}198.51.100.77/24,zeta,\n")).expect("bad feed");

    // Reloads are refused until the poller has seen 100 versions of META
    // (each rewrite pins a new map, a new inode); not one poll may miss it.
    let stop = AtomicBool::new(false);
    let versions = AtomicU64::new(0);
    let (misses, polls) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let (mut misses, mut polls) = (0u64, 0u64);
            let mut inodes = BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                match std::fs::symlink_metadata(&meta) {
                    Ok(found) => {
                        inodes.insert(found.ino());
                        versions.store(inodes.len() as u64, Ordering::SeqCst);
                    }
                    Err(_) => misses += 1,
                }
                polls += 1;
            }
            (misses, polls)
        });
        let pid = i32::try_from(daemon.pid()).expect("pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while versions.load(Ordering::SeqCst) < VERSIONS && std::time::Instant::now() < deadline {
            // SAFETY: signalling our own child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::SeqCst);
        poller.join().expect("poller")
    });
    let versions = versions.load(Ordering::SeqCst);
    assert!(versions >= VERSIONS, "{versions} versions of META");
    assert_eq!(
        misses, 0,
        "META was missing {misses} times in {polls} polls"
    );
    daemon.wait_for("feed reload refused");
    // The last SIGHUPs' reloads are over; nothing but the pins a sensor
    // leaves: no temporary name remains.
    std::thread::sleep(Duration::from_millis(500));
    let mut names: Vec<String> = std::fs::read_dir(meta.parent().expect("set folder"))
        .expect("set folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let link_pin = format!("link-{}", link.sensor_iface);
    assert_eq!(names, ["META", link_pin.as_str(), "maps", "program"]);
    let _ = daemon.stop(libc::SIGTERM);
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}
