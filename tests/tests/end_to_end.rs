//! `classifier run` on a live veth pair in namespaces the test creates:
//! frames written with AF_PACKET from the peer side, SIGTERM, and the JSON
//! report checked for exact per-service packets, bytes and unique sources.

use std::collections::BTreeMap;

use classifier_tests::{
    classifier_binary,
    daemon::{Daemon, services, temp_dir, write_feed},
    frames::{FrameSpec, TPID_8021Q, arp, truncated},
    netns::{Namespace, VethLink},
    require_root,
};

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

    let (report, _) = daemon.stop(libc::SIGTERM);
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
    let (report, _) = daemon.stop(libc::SIGINT);
    assert_eq!(services(&report)["delta"]["packets"], 1);
    let _ = std::fs::remove_dir_all(dir);
}
