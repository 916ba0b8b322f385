//! `classifier run --xdp-dispatcher` beside xdp-filter (Debian xdp-tools)
//! on one interface, through libxdp's dispatcher: we run first and count
//! every packet exactly, the filter still drops what its rule says, and
//! either can leave without taking the other along.
//!
//! libxdp's dispatcher is made of extension (freplace) programs. A kernel
//! that refuses them (lockdown or a sandbox; the machines this project is
//! built on do) makes libxdp itself fall back to one program per interface;
//! then the test checks that libxdp saw the same refusal, and that
//! `--xdp-dispatcher` says so, exits non-zero and leaves the filter and
//! the interface as they were.

use std::process::Command;

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, TestMount, services, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};

/// Runs an xdp-tools command in the sensor namespace with libxdp's pins on
/// the test's own BPF filesystem; its output (stdout and stderr).
fn xdp_tool(link: &VethLink, libxdp_bpffs: &str, command: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &link.sensor.name, "env", libxdp_bpffs])
        .args(command)
        .output()
        .expect("run an xdp-tools command (Debian xdp-tools; `cargo xtask test` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?}: {text}");
    text
}

/// xdp-filter's count of dropped packets.
fn filter_drops(link: &VethLink, libxdp_bpffs: &str) -> u64 {
    let status = xdp_tool(link, libxdp_bpffs, &["xdp-filter", "status"]);
    status
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("XDP_DROP")).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no XDP_DROP line in: {status}"))
}

/// `classifier run --xdp-dispatcher` that must fail: exit 1, no pins left;
/// its error output.
fn refused(
    link: &VethLink,
    libxdp_bpffs: &std::path::Path,
    feed: &std::path::Path,
    pins: &std::path::Path,
) -> String {
    let output = link
        .sensor
        .command(&classifier_binary())
        .env("LIBXDP_BPFFS", libxdp_bpffs)
        .args(["run", "--iface", &link.sensor_iface, "--xdp-dispatcher"])
        .args(["--metrics-addr", "off", "--stats-socket", "off"])
        .args(["--endpoints", text(feed), "--pin-path", text(pins)])
        .args(["--watch", "175.45.176.0/22"])
        .output()
        .expect("run classifier");
    let error = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        !pins.join(&link.sensor_iface).join("META").exists(),
        "no pins left behind"
    );
    error
}

/// Frames from an allowed and a filtered watched source, both to an
/// endpoint of the test feed's service `alpha`.
fn send(link: &VethLink, allowed: usize, filtered: usize) {
    let mut frames = Vec::new();
    frames.extend((0..allowed).map(|_| FrameSpec::udp("175.45.176.1", "198.51.100.10", 1, 443)));
    frames.extend((0..filtered).map(|_| FrameSpec::udp("175.45.176.9", "198.51.100.10", 2, 443)));
    let frames: Vec<Vec<u8>> = frames.iter().map(FrameSpec::build).collect();
    link.send(&frames).expect("send");
}

#[test]
fn beside_xdp_filter_in_libxdps_dispatcher() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("dispatcher");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let libxdp = TestMount::bpf(&dir.join("libxdp"));
    let libxdp_bpffs = format!("LIBXDP_BPFFS={}", text(&libxdp.path));
    let bpffs = libxdp_bpffs.as_str();
    let link = VethLink::create("disp").expect("namespaces and veth");
    let iface = link.sensor_iface.as_str();

    xdp_tool(&link, bpffs, &["xdp-filter", "load", iface]);
    xdp_tool(
        &link,
        bpffs,
        &["xdp-filter", "ip", "175.45.176.9", "--mode", "src"],
    );
    let status = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
    assert!(status.contains("xdpfilt_alw_all"), "{status}");

    if !status.contains("xdp_dispatcher") {
        // libxdp could not build a dispatcher here: neither can we.
        eprintln!(
            "this kernel refuses extension programs (libxdp fell back to one program); checking the refusals only:\n{status}"
        );
        // The filter runs without a dispatcher: refused at once, named.
        let error = refused(&link, &libxdp.path, &feed, &pins.path);
        assert!(
            error.contains("XDP program \"xdpfilt_alw_all\"")
                && error.contains("without libxdp's dispatcher"),
            "{error}"
        );
        let after = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
        assert_eq!(after, status, "the filter runs on, untouched");
        let drops = filter_drops(&link, bpffs);
        send(&link, 1, 2);
        assert_eq!(filter_drops(&link, bpffs) - drops, 2, "and still drops");

        // An empty interface: the kernel refuses our extension.
        xdp_tool(&link, bpffs, &["xdp-filter", "unload", iface]);
        let error = refused(&link, &libxdp.path, &feed, &pins.path);
        assert!(
            error.contains("refuses to load our program as an extension")
                && error.contains("without --xdp-dispatcher"),
            "{error}"
        );
        let after = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
        assert!(
            after.contains("<No XDP program loaded!>"),
            "nothing left attached: {after}"
        );
        return;
    }

    // Both in one dispatcher, ours first.
    let wrapper = ["env", bpffs];
    let pin_path = ["--pin-path", text(&pins.path), "--xdp-dispatcher"];
    let mut args = vec!["--endpoints", text(&feed), "--watch", "175.45.176.0/22"];
    args.extend_from_slice(&pin_path);
    let daemon = Daemon::start_wrapped(&link, &wrapper, &args);
    let status = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
    let ours = status.find("classifier").expect("ours in the dispatcher");
    let filter = status.find("xdpfilt_alw_all").expect("the filter stays");
    assert!(ours < filter, "ours runs first: {status}");

    let drops = filter_drops(&link, bpffs);
    send(&link, 3, 2);
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(
        services(&report)["alpha"]["packets"],
        5,
        "every packet counted, also those the filter drops after us"
    );
    assert_eq!(filter_drops(&link, bpffs) - drops, 2);
    let status = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
    assert!(
        !status.contains("classifier") && status.contains("xdpfilt_alw_all"),
        "stopping took only ours out: {status}"
    );
    send(&link, 1, 1);
    assert_eq!(filter_drops(&link, bpffs) - drops, 3, "the filter runs on");

    // The other way round: the filter leaves, we count on.
    let daemon = Daemon::start_wrapped(&link, &wrapper, &args);
    xdp_tool(&link, bpffs, &["xdp-filter", "unload", iface]);
    let status = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
    assert!(
        status.contains("classifier") && !status.contains("xdpfilt_alw_all"),
        "unloading the filter left ours: {status}"
    );
    send(&link, 2, 2);
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 4);
    let status = xdp_tool(&link, bpffs, &["xdp-loader", "status", iface]);
    assert!(
        !status.contains("classifier") && !status.contains("xdp_dispatcher"),
        "the last one out removes the dispatcher: {status}"
    );
    drop(pins);
    drop(libxdp);
    let _ = std::fs::remove_dir_all(dir);
}

/// The dispatcher we load is one libxdp takes for its own: the
/// configuration's layout is the installed object's (its BTF), and the
/// loaded program passes libxdp's checks (`check_dispatcher_version`): the
/// name `xdp_dispatcher`, BTF, one read-only map of one 124-byte value
/// whose first bytes are the magic and version 2.
#[test]
fn the_dispatcher_we_load_passes_libxdps_checks() {
    use aya::maps::{Array, Map, MapData, MapInfo};
    use classifier_user::dispatcher;

    if !require_root() {
        return;
    }
    let object = dispatcher::object_path().expect("xdp-dispatcher.o (Debian xdp-tools)");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&object)
        .output()
        .expect("bpftool");
    let dump = String::from_utf8_lossy(&output.stdout);
    let mut lines = dump
        .lines()
        .skip_while(|line| !line.contains("STRUCT 'xdp_dispatcher_config'"));
    let header = lines.next().expect("the configuration's struct in the BTF");
    let (size, fields) = dispatcher::config_layout();
    assert!(header.contains(&format!("size={size} vlen=7")), "{header}");
    for ((name, offset), line) in fields.iter().zip(lines) {
        assert!(
            line.contains(&format!("'{name}'"))
                && line.contains(&format!("bits_offset={}", offset * 8)),
            "{name} at byte {offset}: {line}"
        );
    }

    let template = dispatcher::Template::load().expect("load the dispatcher");
    let id = template.id().expect("its id");
    let info = aya::programs::loaded_programs()
        .flatten()
        .find(|info| info.id() == id)
        .expect("loaded");
    assert_eq!(info.name_as_str(), Some(dispatcher::DISPATCHER_NAME));
    assert!(info.btf_id().is_some(), "loaded with its BTF");
    let maps = info.map_ids().expect("map ids").unwrap_or_default();
    assert_eq!(maps.len(), 1, "one map, the configuration");
    let map = MapInfo::from_id(maps[0]).expect("the configuration map");
    assert_eq!(
        (map.key_size(), map.value_size(), map.max_entries()),
        (4, 124, 1)
    );
    const BPF_F_RDONLY_PROG: u32 = 1 << 7;
    assert_ne!(
        map.map_flags() & BPF_F_RDONLY_PROG,
        0,
        "read-only to programs"
    );
    let config: Array<MapData, [u8; 124]> =
        Array::try_from(Map::Array(MapData::from_id(maps[0]).expect("open"))).expect("an array");
    let value = config.get(&0, 0).expect("its value");
    assert_eq!(&value[..3], &[236, 2, 0], "magic, version 2, no members");
}
