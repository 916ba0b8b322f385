//! Learning endpoints from DNS answers, on the real program: crafted DNS
//! responses sent to a watched host (through CNAME chains, with TTLs, to
//! a CDN address, hostile and cut messages) in a capture replayed by
//! `classifier pcap`, then traffic to the answered addresses: learned ones
//! count for the domain's service until they expire, a CDN address never,
//! and a feed entry wins over what was learned.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use classifier_tests::{
    TEST_FEED,
    daemon::{services, temp_dir},
    frames::{FrameSpec, patched},
    path_str as text, pcap_report, require_root, run_classifier,
};
use serde_json::Value;
use simple_dns::{
    CLASS, Name, Packet, QCLASS, QTYPE, Question, ResourceRecord, TYPE,
    rdata::{A, AAAA, CNAME, RData},
};

const WATCHED: &str = "175.45.176.5";
const RESOLVER: &str = "192.0.2.53";

enum Answer<'a> {
    A(&'a str, [u8; 4], u32),
    Aaaa(&'a str, Ipv6Addr, u32),
    Cname(&'a str, &'a str),
}

fn dns_reply(question: &str, answers: &[Answer<'_>]) -> Vec<u8> {
    let mut packet = Packet::new_reply(9);
    packet.questions.push(Question::new(
        Name::new_unchecked(question),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    for answer in answers {
        let (name, ttl, rdata) = match answer {
            Answer::A(name, address, ttl) => {
                (*name, *ttl, RData::A(A::from(Ipv4Addr::from(*address))))
            }
            Answer::Aaaa(name, address, ttl) => (*name, *ttl, RData::AAAA(AAAA::from(*address))),
            Answer::Cname(name, target) => {
                (*name, 300, RData::CNAME(CNAME(Name::new_unchecked(target))))
            }
        };
        packet.answers.push(ResourceRecord::new(
            Name::new_unchecked(name),
            CLASS::IN,
            ttl,
            rdata,
        ));
    }
    packet
        .build_bytes_vec_compressed()
        .expect("a valid message")
}

/// A UDP frame from `src:sport` to `dst:dport` carrying `payload`.
fn udp_with(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let frame = FrameSpec::udp(src, dst, sport, dport)
        .payload(payload.len())
        .build();
    let start = frame.len() - payload.len();
    patched(frame, start, payload)
}

fn traffic(dst: &str) -> Vec<u8> {
    FrameSpec::udp(WATCHED, dst, 40000, 443).build()
}

fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) {
    use pcap_file::{
        DataLink, TsResolution,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(std::fs::File::create(path).expect("pcap"), header)
        .expect("pcap header");
    // 2026-11-26T00:00:00Z, then the frames' seconds.
    let base = 1_795_651_200u64;
    for (second, frame) in frames {
        let time = Duration::from_secs(base + second);
        writer
            .write_packet(&PcapPacket::new(time, frame.len() as u32, frame))
            .expect("write");
    }
}

#[test]
fn dns_answers_to_watched_hosts_teach_endpoints_until_they_expire() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("learn-dns");
    let feed = dir.join("feed.csv");
    std::fs::write(&feed, TEST_FEED).expect("feed");
    let domains = dir.join("domains.csv");
    std::fs::write(
        &domains,
        "domain,service\nhotspotshield.com,hotspot-shield\npsiphon3.net,psiphon\n",
    )
    .expect("domains");
    let cdn = dir.join("cdn.csv");
    std::fs::write(&cdn, "cidr,name\n198.18.0.0/15,some-cdn\n").expect("cdn");

    let hss = dns_reply(
        "www.hotspotshield.com",
        &[
            Answer::Cname("www.hotspotshield.com", "edge.provider.example"),
            Answer::A("edge.provider.example", [192, 0, 2, 77], 300),
            Answer::A("edge.provider.example", [198, 18, 0, 1], 300),
            Answer::Aaaa(
                "edge.provider.example",
                "2001:db8:77::1".parse().unwrap(),
                300,
            ),
        ],
    );
    let psiphon = dns_reply(
        "innocent.example",
        &[
            Answer::Cname("innocent.example", "front.psiphon3.net"),
            Answer::A("front.psiphon3.net", [192, 0, 2, 88], 5),
        ],
    );
    // An answer for an address the feed lists for delta.
    let in_feed = dns_reply(
        "api.hotspotshield.com",
        &[Answer::A("api.hotspotshield.com", [203, 0, 113, 7], 300)],
    );
    let mut pointer_loop = vec![0, 9, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    pointer_loop.extend([0xc0, 12, 0, 1, 0, 1]);
    let frames = vec![
        // Sent to a host nobody watches: never handed over.
        (0, udp_with(RESOLVER, "192.0.2.200", 53, 5353, &hss)),
        (0, traffic("192.0.2.77")),
        (1, udp_with(RESOLVER, WATCHED, 53, 40001, &hss)),
        (2, traffic("192.0.2.77")),
        (2, traffic("192.0.2.77")),
        (2, traffic("192.0.2.77")),
        (2, traffic("198.18.0.1")),
        (3, udp_with(RESOLVER, WATCHED, 53, 40002, &psiphon)),
        (4, traffic("192.0.2.88")),
        (5, udp_with(RESOLVER, WATCHED, 53, 40003, &in_feed)),
        (6, traffic("203.0.113.7")),
        (7, udp_with(RESOLVER, WATCHED, 53, 40004, &pointer_loop)),
        (
            7,
            udp_with(RESOLVER, WATCHED, 53, 40005, &hss[..hss.len() / 2]),
        ),
        // The psiphon answer's 5 s are over.
        (20, traffic("192.0.2.88")),
    ];
    let capture = dir.join("dns.pcap");
    write_pcap(&capture, &frames);

    let report = pcap_report(&[
        text(&capture),
        "--endpoints",
        text(&feed),
        "--domains",
        text(&domains),
        "--learn-exclude",
        text(&cdn),
    ]);
    let rows = services(&report);
    assert_eq!(rows["hotspot-shield"]["packets"], 3, "{report}");
    assert_eq!(rows["psiphon"]["packets"], 1, "{report}");
    assert_eq!(rows["delta"]["packets"], 1, "the feed wins: {report}");
    // Flows owed to learning vs. the feed.
    assert_eq!(rows["hotspot-shield"]["flows_learned"], 1);
    assert_eq!(rows["psiphon"]["flows_learned"], 1);
    assert_eq!(rows["delta"]["flows_learned"], 0);
    // Watched: every frame to or from the watched host; matched: the 5 above.
    assert_eq!(report["totals"]["watched"], 13);
    assert_eq!(report["totals"]["matched"], 5);

    let learning = &report["learning"];
    let stats = &learning["stats"];
    assert_eq!(stats["dns_responses"], 5, "{learning}");
    assert_eq!(stats["dns_unparsed"], 2, "{learning}");
    assert_eq!(stats["dns_matched"], 3, "{learning}");
    assert_eq!(stats["learned"], 4, "{learning}");
    assert_eq!(stats["skipped_shared_hosting"], 1, "{learning}");
    assert_eq!(stats["expired"], 1, "{learning}");
    let endpoints = learning["endpoints"].as_array().expect("endpoints");
    let learned: Vec<(&str, &str, &str)> = endpoints
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap(),
                e["service"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        learned,
        [
            ("192.0.2.77", "hotspot-shield", "www.hotspotshield.com"),
            ("203.0.113.7", "hotspot-shield", "api.hotspotshield.com"),
            ("2001:db8:77::1", "hotspot-shield", "www.hotspotshield.com"),
        ],
        "{learning}"
    );
    assert!(
        endpoints
            .iter()
            .all(|e| e["watched"] == WATCHED && e["resolver"] == RESOLVER)
    );
    // Learned at 00:00:01 with a 300 s TTL.
    assert_eq!(endpoints[0]["expires_at"], "2026-11-26T00:05:01Z");

    // --no-learn: the same capture teaches nothing.
    let output = run_classifier(&[
        "pcap",
        text(&capture),
        "--format",
        "json",
        "--endpoints",
        text(&feed),
        "--no-learn",
    ]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["totals"]["matched"], 1, "only the feed's delta");
    assert!(report.get("learning").is_none());
    let _ = std::fs::remove_dir_all(dir);
}

/// A resolver inside the watched range (a campus's, a country's) answers
/// the watched host that asked: the answer is read as one to a watched
/// host, and its address is learned.
#[test]
fn answers_from_a_watched_resolver_teach_too() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("learn-watched-resolver");
    let domains = dir.join("domains.csv");
    std::fs::write(
        &domains,
        "domain,service\nhotspotshield.com,hotspot-shield\n",
    )
    .expect("domains");
    let answer = dns_reply(
        "api.hotspotshield.com",
        &[Answer::A("api.hotspotshield.com", [192, 0, 2, 99], 300)],
    );
    let resolver = "175.45.176.1";
    let capture = dir.join("watched-resolver.pcap");
    write_pcap(
        &capture,
        &[
            (0, udp_with(resolver, WATCHED, 53, 40001, &answer)),
            (1, traffic("192.0.2.99")),
        ],
    );
    let report = pcap_report(&[text(&capture), "--domains", text(&domains)]);
    let learning = &report["learning"];
    assert_eq!(learning["stats"]["dns_responses"], 1, "{learning}");
    assert_eq!(learning["stats"]["learned"], 1, "{learning}");
    let endpoint = &learning["endpoints"][0];
    assert_eq!(endpoint["address"], "192.0.2.99");
    assert_eq!(endpoint["watched"], WATCHED);
    assert_eq!(endpoint["resolver"], resolver);
    assert_eq!(
        services(&report)["hotspot-shield"]["packets"],
        1,
        "{report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The program hands over at most `--learn-rate` packets a second (of the
/// capture's clock when replaying); the rest are counted, never silent.
#[test]
fn handing_over_is_bounded_per_second() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("learn-rate");
    let answer = dns_reply(
        "www.hotspotshield.com",
        &[Answer::A("www.hotspotshield.com", [192, 0, 2, 77], 600)],
    );
    let mut frames = Vec::new();
    for (second, count) in [(0, 10), (1, 3), (2, 5)] {
        for port in 0..count {
            frames.push((
                second,
                udp_with(RESOLVER, WATCHED, 53, 40000 + port, &answer),
            ));
        }
    }
    let capture = dir.join("answers.pcap");
    write_pcap(&capture, &frames);
    let report = |extra: &[&str]| -> Value {
        let mut args = vec!["pcap", text(&capture), "--format", "json"];
        args.extend_from_slice(extra);
        let output = run_classifier(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON report")
    };
    // 4 a second: 4 of the first second's 10, all 3 of the next, 4 of 5.
    let learning = report(&["--learn-rate", "4"])["learning"].clone();
    assert_eq!(learning["handed_over"], 4 + 3 + 4, "{learning}");
    assert_eq!(learning["throttled"], 6 + 1, "{learning}");
    assert_eq!(learning["ring_drops"], 0, "{learning}");
    assert_eq!(learning["stats"]["dns_responses"], 11, "{learning}");
    assert_eq!(learning["endpoints"][0]["address"], "192.0.2.77");
    // The default rate takes them all; 0 hands nothing over.
    let learning = report(&[])["learning"].clone();
    assert_eq!(learning["handed_over"], 18, "{learning}");
    assert_eq!(learning["throttled"], 0, "{learning}");
    let learning = report(&["--learn-rate", "0"])["learning"].clone();
    assert_eq!(learning["handed_over"], 0, "{learning}");
    assert_eq!(learning["throttled"], 18, "{learning}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The same on a live link: the daemon reads the answer at its next drain
/// and the kernel counts the learned endpoint's traffic from then on; the
/// exit report and the snapshot list it with its provenance.
#[test]
fn the_daemon_learns_from_an_answer_on_the_link() {
    use classifier_tests::{daemon::Daemon, netns::VethLink};
    if !require_root() {
        return;
    }
    let dir = temp_dir("learn-live");
    let feed = classifier_tests::daemon::write_feed(&dir);
    let domains = dir.join("domains.csv");
    std::fs::write(
        &domains,
        "domain,service\nhotspotshield.com,hotspot-shield\n",
    )
    .expect("domains");
    let snapshots = dir.join("snapshots");
    let pins = classifier_tests::daemon::TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("learnlive").expect("namespaces and veth");
    let daemon_args = [
        "--domains",
        text(&domains),
        "--pin-path",
        text(&pins.path),
        "--snapshot-dir",
        text(&snapshots),
    ];
    let daemon = Daemon::start(
        &link,
        &feed,
        &[&daemon_args[..], &["--keep-attached"]].concat(),
    );
    let answer = dns_reply(
        "www.hotspotshield.com",
        &[Answer::A("www.hotspotshield.com", [192, 0, 2, 77], 600)],
    );
    // Before the answer: watched, not matched.
    link.send(&[traffic("192.0.2.77")]).expect("send");
    link.send(&[udp_with(RESOLVER, WATCHED, 53, 40001, &answer)])
        .expect("send");
    std::thread::sleep(Duration::from_millis(500));
    link.send(&[traffic("192.0.2.77"), traffic("192.0.2.77")])
        .expect("send");
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(
        services(&report)["hotspot-shield"]["packets"],
        2,
        "{report}"
    );
    let learning = &report["learning"];
    assert_eq!(learning["handed_over"], 1, "{learning}");
    assert_eq!(learning["ring_drops"], 0);
    assert_eq!(learning["endpoints"][0]["address"], "192.0.2.77");
    assert_eq!(learning["endpoints"][0]["watched"], WATCHED);
    let written: Vec<Value> = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("classifier-")
        })
        .map(|entry| {
            serde_json::from_slice(&std::fs::read(entry.path()).expect("read")).expect("JSON")
        })
        .collect();
    assert!(
        written
            .iter()
            .any(|snapshot| snapshot["learning"]["endpoints"][0]["address"] == "192.0.2.77"),
        "a snapshot lists the learned endpoint"
    );

    // The program stayed attached with the endpoint learned. A daemon
    // that adopts it with --no-learn says the program still counts it.
    let without_learning = Daemon::start(
        &link,
        &feed,
        &[
            "--no-learn",
            "--pin-path",
            text(&pins.path),
            "--keep-attached",
        ],
    );
    assert!(
        without_learning.said(
            "--no-learn: the adopted program holds 1 learned endpoint(s) and counts them until it is detached"
        ),
        "{:?}",
        without_learning.stderr_seen
    );
    let _ = without_learning.stop(libc::SIGTERM);

    // A daemon that adopts it learning takes the endpoint over and lets it
    // expire (its TTL is unknown: --learn-ttl from the takeover), so it
    // counts until then. It is started watching the endpoint's range too,
    // but the adopted program counts with the set it was loaded with until
    // a reload: the endpoint is still one.
    let adopter = Daemon::start(
        &link,
        &feed,
        &[
            &daemon_args[..],
            &["--learn-ttl", "2s", "--watch", "192.0.2.0/24"],
        ]
        .concat(),
    );
    assert!(
        adopter.said("took over 1 learned endpoint(s) from the adopted program: kept 2s at most"),
        "{:?}",
        adopter.stderr_seen
    );
    link.send(&[traffic("192.0.2.77"), traffic("192.0.2.77")])
        .expect("send");
    std::thread::sleep(Duration::from_millis(3500));
    link.send(&vec![traffic("192.0.2.77"); 3]).expect("send");
    let (report, _) = adopter.stop(libc::SIGTERM);
    assert_eq!(
        services(&report)["hotspot-shield"]["packets"],
        2,
        "{report}"
    );
    let learning = &report["learning"];
    assert_eq!(learning["stats"]["inherited"], 1, "{learning}");
    assert_eq!(learning["stats"]["expired"], 1, "{learning}");
    assert_eq!(
        learning["endpoints"],
        Value::Array(Vec::new()),
        "{learning}"
    );
    assert_eq!(report["totals"]["watched"], 5, "{report}");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// The program hands over the first `LEARN_TCP_SEGMENTS` payload segments
/// of each direction of a TCP flow whose other end no feed names, and no
/// more; a flow whose probe slot another flow has taken since starts again
/// (README, "TLS"). Run on one CPU: each CPU keeps its own slots.
#[test]
fn tcp_flows_hand_over_their_first_segments_in_each_direction() {
    use classifier_common::{
        FAMILY_V4, FlowKey, LEARN_TCP_SEGMENTS, TCP_PROBE_SLOTS, flow_check, flow_slot,
    };
    use classifier_tests::frames::Transport;
    use classifier_user::{drain, loader::Capacities, testrun::run_frame};
    if !require_root() {
        return;
    }
    classifier_tests::pin_to_cpu(0).expect("pin to CPU 0");
    let sensor =
        classifier_tests::load_test_sensor(&[&format!("{WATCHED}/32")], Capacities::default());
    let segment = |src: &str, dst: &str, src_port: u16, dst_port: u16| {
        let transport = Transport::Tcp {
            src: src_port,
            dst: dst_port,
            syn: false,
            ack: true,
        };
        FrameSpec::new(src, dst, transport).payload(100).build()
    };
    let send = |frame: &[u8]| run_frame(&sensor, frame).expect("test run");
    let records = || {
        drain::read(&sensor)
            .expect("maps drain")
            .totals
            .learn_records
    };
    let server = Ipv4Addr::new(192, 0, 2, 80);
    let probe_slot = |server: Ipv4Addr, port: u16| {
        let mapped = |address: Ipv4Addr| address.to_ipv6_mapped().octets();
        let key = FlowKey {
            watched: mapped(WATCHED.parse().expect("valid")),
            endpoint: mapped(server),
            port,
            family: FAMILY_V4,
            protocol: 6,
            direction: 0,
            _pad: [0; 3],
        };
        let check = flow_check(&key);
        (flow_slot(check, TCP_PROBE_SLOTS - 1), check)
    };

    let outbound = segment(WATCHED, &server.to_string(), 40000, 443);
    let inbound = segment(&server.to_string(), WATCHED, 443, 40000);
    for _ in 0..LEARN_TCP_SEGMENTS + 2 {
        send(&outbound);
        send(&inbound);
    }
    let limit = u64::from(LEARN_TCP_SEGMENTS);
    assert_eq!(records(), 2 * limit, "each direction's first segments");

    // Another flow whose key lands in the same slot takes it over.
    let (slot, check) = probe_slot(server, 443);
    let (other, other_port) = (1..=254)
        .flat_map(|last| (1..=u16::MAX).map(move |port| (Ipv4Addr::new(192, 0, 2, last), port)))
        .find(|&(address, port)| {
            let (other_slot, other_check) = probe_slot(address, port);
            other_slot == slot && other_check != check
        })
        .expect("a key in the same slot");
    send(&segment(WATCHED, &other.to_string(), 40000, other_port));
    assert_eq!(records(), 2 * limit + 1, "the other flow's first segment");
    send(&outbound);
    assert_eq!(records(), 2 * limit + 2, "the first flow starts again");
}
