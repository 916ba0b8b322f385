//! Another XDP program on the interface: `classifier run` refuses to take
//! its place, naming it, and leaves nothing behind; with `--replace` it
//! removes it and counts. Both ways a program can be attached: through
//! netlink (xdp-filter from Debian's xdp-tools, as operators run it) and
//! through a bpf_link (held by this test).

use std::{os::fd::AsFd as _, sync::mpsc, time::Duration};

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, TestMount, services, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};

/// `ip -d link show` of the sensor's interface: the XDP program it runs.
fn shown(link: &VethLink) -> String {
    let output = std::process::Command::new("ip")
        .args([
            "-n",
            &link.sensor.name,
            "-d",
            "link",
            "show",
            &link.sensor_iface,
        ])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `classifier run` without `--replace`: must fail, naming the program.
fn refused(link: &VethLink, feed: &std::path::Path, pins: &std::path::Path) -> String {
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
        .args(["--endpoints", text(feed), "--pin-path", text(pins)])
        .args(["--watch", "175.45.176.0/22"])
        .output()
        .expect("run classifier");
    let error = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!("interface {}: XDP program", link.sensor_iface))
            && error.contains("is already attached")
            && error.contains("--replace"),
        "{error}"
    );
    assert!(
        !pins.join(&link.sensor_iface).join("META").exists(),
        "no pins left behind"
    );
    error
}

/// With `--replace` the daemon removes the other program, attaches, counts
/// exactly, and on SIGTERM leaves the interface without any program.
fn replaced(link: &VethLink, feed: &std::path::Path, pins: &std::path::Path, removed: &str) {
    let daemon = Daemon::start(link, feed, &["--replace", "--pin-path", text(pins)]);
    assert!(
        daemon.said(&format!("--replace: removing {removed}")),
        "{:?}",
        daemon.stderr_seen
    );
    let now = shown(link);
    assert!(now.contains("name classifier"), "ours attached: {now}");
    link.send(&[FrameSpec::udp("175.45.176.1", "198.51.100.10", 1, 443).build()])
        .expect("send");
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 1);
    let after = shown(link);
    assert!(
        !after.contains("prog/xdp"),
        "nothing attached after: {after}"
    );
}

#[test]
fn a_program_attached_through_netlink_is_named_and_only_replaced_when_asked() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("attach-netlink");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("attnl").expect("namespaces and veth");
    link.sensor
        .exec_quiet(&["xdp-filter", "load", &link.sensor_iface, "--mode", "skb"])
        .expect("xdp-filter (Debian xdp-tools; `cargo xtask bench` installs it) loads");
    assert!(shown(&link).contains("xdpfilt_alw_all"));

    let error = refused(&link, &feed, &pins.path);
    assert!(
        error.contains("XDP program \"xdpfilt_alw_all\"") && error.contains("generic mode"),
        "{error}"
    );
    assert!(
        shown(&link).contains("xdpfilt_alw_all"),
        "the filter still runs after the refusal"
    );

    replaced(&link, &feed, &pins.path, "XDP program \"xdpfilt_alw_all\"");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_attached_through_a_bpf_link_is_named_and_only_replaced_when_asked() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("attach-link");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("attlnk").expect("namespaces and veth");

    // A thread in the sensor namespace attaches an XDP_PASS program with a
    // bpf_link and holds it until the test is done with it.
    let (attached, wait_attached) = mpsc::channel();
    let (release, wait_release) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let held_link = &link;
        scope.spawn(move || {
            held_link
                .sensor
                .enter_on_this_thread()
                .expect("enter the namespace");
            let program = classifier_user::testrun::load_constant_xdp(2).expect("load XDP_PASS");
            let if_index = classifier_user::loader::interface_index(&held_link.sensor_iface)
                .expect("interface");
            let held = classifier_user::testrun::attach_xdp_link(program.as_fd(), if_index)
                .expect("attach with a bpf_link");
            attached.send(()).expect("tell the test");
            let _ = wait_release.recv_timeout(Duration::from_secs(120));
            drop(held);
        });
        wait_attached
            .recv_timeout(Duration::from_secs(30))
            .expect("the holder attached");
        assert!(shown(&link).contains("prog/xdp"));

        let error = refused(&link, &feed, &pins.path);
        assert!(
            error.contains("XDP program id ") && error.contains("native mode"),
            "{error}"
        );
        assert!(
            shown(&link).contains("prog/xdp"),
            "still attached after the refusal"
        );

        replaced(&link, &feed, &pins.path, "XDP program id ");
        release.send(()).expect("release the holder");
    });
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// A VLAN interface's name has a dot (`eth0.100`), which the BPF
/// filesystem refuses in pin names: the pins spell it with a colon, and the
/// program is pinned, counts, and is adopted by the next daemon.
#[test]
fn an_interface_whose_name_has_a_dot_is_pinned_and_adopted() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("dotted");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let mut link = VethLink::create("dotted").expect("namespaces and veth");
    let dotted = format!("{}.5", link.sensor_iface);
    link.rename_sensor_iface(&dotted).expect("rename");
    let args = ["--pin-path", text(&pins.path)];
    let frame = FrameSpec::udp("175.45.176.1", "198.51.100.10", 40000, 443).build();

    let first = Daemon::start(&link, &feed, &[&args[..], &["--keep-attached"]].concat());
    link.send(&vec![frame.clone(); 5]).expect("send");
    let (report, _) = first.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 5, "{report}");
    let set = pins.path.join(dotted.replace('.', ":"));
    assert!(set.join("META").exists(), "pins kept in {}", set.display());
    assert!(
        set.join(format!("link-{}", dotted.replace('.', ":")))
            .exists()
    );
    // `stats` finds the set by the interface's own name too.
    let by_name = pins.path.join(&dotted);
    let output = std::process::Command::new(classifier_binary())
        .args(["stats", "--json", "--pin-path", text(&by_name)])
        .output()
        .expect("classifier stats");
    assert!(output.status.success(), "{output:?}");
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(stats["totals"]["matched"], 5, "{stats}");

    // Counted while no daemon runs, then by the daemon that adopts it.
    link.send(&vec![frame.clone(); 5]).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let second = Daemon::start(&link, &feed, &args);
    assert!(
        second.said(&format!("adopting the program attached to {dotted} since ")),
        "{:?}",
        second.stderr_seen
    );
    link.send(&vec![frame; 5]).expect("send");
    let (report, _) = second.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 15, "{report}");
    assert!(!set.exists(), "pins removed after a plain SIGTERM");

    // `--keep-attached`, but the pins removed by hand: nothing keeps the
    // program attached, and the daemon says so instead of claiming it left
    // it attached.
    let third = Daemon::start(&link, &feed, &[&args[..], &["--keep-attached"]].concat());
    std::fs::remove_dir_all(&set).expect("remove the pins by hand");
    let (_, log) = third.stop(libc::SIGTERM);
    assert!(
        log.iter().any(|line| line.contains(&format!(
            "--keep-attached, but the pins under {} are gone (removed by hand?): nothing keeps the program attached, so it detaches when this daemon exits",
            set.display()
        ))),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|line| line.contains("leaving the program attached"))
    );
    assert!(!shown(&link).contains("prog/xdp"), "{}", shown(&link));
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}
