//! The systemd unit in packaging/ passes `systemd-analyze verify`, and the
//! daemon speaks systemd's notify protocol: READY=1 only once attached and
//! pinned, WATCHDOG=1 after drains, STOPPING=1 on the way out.

use std::{os::unix::net::UnixDatagram, path::Path, time::Duration};

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, TestMount, temp_dir, write_feed},
    netns::VethLink,
    require_root,
};

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/classifier.service");
    let text = std::fs::read_to_string(&unit).expect("packaging/classifier.service");
    // Verify checks that ExecStart's program exists: point it at the build.
    let binary = classifier_binary();
    let dir = temp_dir("unit");
    let copy = dir.join("classifier.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/classifier", binary.to_str().expect("UTF-8")),
    )
    .expect("write unit");
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "--keep-attached",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_daemon_notifies_ready_after_pinning_then_feeds_the_watchdog() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("notify");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let link = VethLink::create("notify").expect("namespaces and veth");
    // SAFETY: the test sets these before spawning; the child inherits them.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &socket_path);
        std::env::set_var("WATCHDOG_USEC", "200000");
    }
    let daemon = Daemon::start(
        &link,
        &feed,
        &["--pin-path", pins.path.to_str().expect("UTF-8")],
    );
    // SAFETY: as above; no other thread reads them.
    unsafe {
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
    let mut buffer = [0u8; 512];
    let mut next = || {
        let len = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(
        pins.path.join(&link.sensor_iface).join("META").exists(),
        "READY only once pinned"
    );
    // Drains every 100 ms; the watchdog (200 ms) hears from them.
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    let _ = daemon.stop(libc::SIGTERM);
    let mut last = next();
    while last == "WATCHDOG=1" {
        last = next();
    }
    assert_eq!(last, "STOPPING=1");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}
