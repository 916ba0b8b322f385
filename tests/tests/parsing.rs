//! Every parse path and every malformed case, run through the real XDP
//! object with BPF_PROG_TEST_RUN: one row per frame, exact counters,
//! service, direction, port and XDP_PASS.

use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FlowKey, MALFORMED_IPV4_BAD_HEADER, MALFORMED_IPV4_TRUNCATED,
    MALFORMED_IPV6_BAD_HEADER, MALFORMED_IPV6_EXT_TOO_DEEP, MALFORMED_IPV6_EXT_TRUNCATED,
    MALFORMED_IPV6_TRUNCATED, MALFORMED_L4_TRUNCATED, MALFORMED_REASON_NAMES,
    MALFORMED_VLAN_TOO_DEEP, MALFORMED_VLAN_TRUNCATED,
};
use classifier_tests::{
    TEST_WATCHED,
    frames::{
        ETH_HEADER, Ext, FrameSpec, IPV4_HEADER, IPV6_HEADER, TPID_8021AD, TPID_8021Q, Transport,
        VLAN_TAG, arp, patched, truncated,
    },
    load_test_sensor, require_root,
};
use classifier_user::{
    drain,
    flow_clock::FlowClock,
    loader::{Capacities, Sensor},
    report::{direction_name, key_address},
    testrun::run_frame,
};

const XDP_PASS: u32 = 2;

const W4: &str = "175.45.177.10";
const W4_OTHER: &str = "175.45.179.254";
const ALPHA4: &str = "198.51.100.10";
const BETA4: &str = "198.51.100.130";
const GAMMA4: &str = "198.51.100.200";
const DELTA4: &str = "203.0.113.7";
const PLAIN4: &str = "192.0.2.1";
const PLAIN4_B: &str = "192.0.2.99";
const W6: &str = "2001:db8:aa::10";
const ALPHA6: &str = "2001:db8:e0::5";
const BETA6: &str = "2001:db8:e0:1::5";
const PLAIN6: &str = "2001:db8:ff::1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Match {
    service: &'static str,
    direction: u8,
    watched: &'static str,
    endpoint: &'static str,
    protocol: u8,
    port: u16,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Parsed, no watched address.
    Unwatched(Family),
    /// Parsed, a watched address, the other end not an endpoint.
    WatchedOnly(Family),
    Matched(Family, Match),
    Malformed(Family, usize),
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn udp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> FrameSpec {
    FrameSpec::udp(src, dst, src_port, dst_port)
}

fn out(service: &'static str, endpoint: &'static str, protocol: u8, port: u16) -> Match {
    Match {
        service,
        direction: DIR_OUTBOUND,
        watched: W4,
        endpoint,
        protocol,
        port,
    }
}

fn out6(service: &'static str, endpoint: &'static str, protocol: u8, port: u16) -> Match {
    Match {
        watched: W6,
        ..out(service, endpoint, protocol, port)
    }
}

/// `spec` with a `len`-byte transport payload that begins with `head`.
fn with_payload(spec: FrameSpec, head: &[u8], len: usize) -> Vec<u8> {
    let frame = spec.payload(len).build();
    let start = frame.len() - len;
    patched(frame, start, head)
}

/// A 28-byte IKEv2 IKE_SA_INIT header whose length field says `length`.
fn ike_header(length: u32) -> [u8; 28] {
    let mut header = [0u8; 28];
    header[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    header[16] = 33; // next payload: SA
    header[17] = 0x20; // version 2.0
    header[18] = 34; // IKE_SA_INIT
    header[19] = 0x08; // initiator
    header[24..].copy_from_slice(&length.to_be_bytes());
    header
}

fn case(name: &'static str, frame: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        frame,
        expect,
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one row per case reads best as one table"
)]
fn cases() -> Vec<Case> {
    use Expect::{Malformed, Matched, Unwatched, WatchedOnly};
    use Family::{Other, V4, V6};
    let ip4 = ETH_HEADER;
    let ip6 = ETH_HEADER;
    let tcp = |src, dst, sp, dp| {
        FrameSpec::new(
            src,
            dst,
            Transport::Tcp {
                src: sp,
                dst: dp,
                syn: true,
                ack: true,
            },
        )
    };
    let raw = |src, dst, protocol| FrameSpec::new(src, dst, Transport::Raw { protocol });
    let icmp = |src, dst| FrameSpec::new(src, dst, Transport::Icmp);
    let padded = {
        let mut frame = udp(W4, ALPHA4, 40000, 443).payload(0).build();
        frame.extend([0; 18]);
        frame
    };
    let mut with_options = udp(W4, ALPHA4, 40000, 8443);
    with_options.ipv4_options = vec![1, 1, 1, 0, 1, 1, 1, 0]; // NOPs and an end marker
    let mut first_fragment = udp(W4, ALPHA4, 40000, 53);
    first_fragment.ipv4_more_fragments = true;
    let mut later_fragment = udp(W4, ALPHA4, 40000, 53);
    later_fragment.ipv4_fragment_offset = 100;
    let deep = |n: usize| {
        let kinds = [Ext::HopByHop, Ext::DestinationOptions, Ext::Routing];
        let chain: Vec<Ext> = (0..n)
            .map(|i| if i == 0 { kinds[0] } else { kinds[1 + i % 2] })
            .collect();
        udp(W6, ALPHA6, 40000, 4500).exts(&chain).build()
    };
    let total_len =
        |frame: Vec<u8>, at: usize, len: u16| patched(frame, at + 2, &len.to_be_bytes());
    let payload_len =
        |frame: Vec<u8>, at: usize, len: u16| patched(frame, at + 4, &len.to_be_bytes());

    vec![
        // ---- classification ----
        case(
            "v4 udp watched -> alpha",
            udp(W4, ALPHA4, 40000, 443).build(),
            Matched(V4, out("alpha", ALPHA4, 17, 443)),
        ),
        case(
            "v4 tcp beta -> watched (inbound)",
            tcp(BETA4, W4, 443, 50000).build(),
            Matched(
                V4,
                Match {
                    direction: DIR_INBOUND,
                    ..out("beta", BETA4, 6, 443)
                },
            ),
        ),
        case(
            "v4 /32 inside /25 inside /24: longest wins",
            udp(W4, GAMMA4, 40000, 1194).build(),
            Matched(V4, out("gamma", GAMMA4, 17, 1194)),
        ),
        case(
            "v4 second watched host -> delta",
            udp(W4_OTHER, DELTA4, 1, 2).build(),
            Matched(
                V4,
                Match {
                    watched: W4_OTHER,
                    ..out("delta", DELTA4, 17, 2)
                },
            ),
        ),
        case(
            "v4 watched -> non-endpoint",
            udp(W4, PLAIN4, 40000, 443).build(),
            WatchedOnly(V4),
        ),
        case(
            "v4 non-endpoint -> watched",
            udp(PLAIN4, W4, 443, 40000).build(),
            WatchedOnly(V4),
        ),
        case(
            "v4 unwatched -> endpoint",
            udp(PLAIN4, ALPHA4, 40000, 443).build(),
            Unwatched(V4),
        ),
        case(
            "v4 unwatched both ends",
            udp(PLAIN4, PLAIN4_B, 1, 2).build(),
            Unwatched(V4),
        ),
        case(
            "v4 icmp watched -> alpha: port 0",
            icmp(W4, ALPHA4).build(),
            Matched(V4, out("alpha", ALPHA4, 1, 0)),
        ),
        case(
            "v4 esp (50) watched -> alpha: port 0",
            raw(W4, ALPHA4, 50).build(),
            Matched(V4, out("alpha", ALPHA4, 50, 0)),
        ),
        case(
            "v4 gre (47) alpha -> watched: port 0",
            raw(ALPHA4, W4, 47).build(),
            Matched(
                V4,
                Match {
                    direction: DIR_INBOUND,
                    ..out("alpha", ALPHA4, 47, 0)
                },
            ),
        ),
        case(
            "v4 options skipped",
            with_options.build(),
            Matched(V4, out("alpha", ALPHA4, 17, 8443)),
        ),
        case(
            "v4 first fragment carries ports",
            first_fragment.build(),
            Matched(V4, out("alpha", ALPHA4, 17, 53)),
        ),
        case(
            "v4 later fragment: port 0",
            later_fragment.build(),
            Matched(V4, out("alpha", ALPHA4, 17, 0)),
        ),
        case(
            "v4 ethernet padding beyond total length",
            padded,
            Matched(V4, out("alpha", ALPHA4, 17, 443)),
        ),
        case(
            "802.1Q tag",
            udp(W4, ALPHA4, 40000, 443).vlans(&[TPID_8021Q]).build(),
            Matched(V4, out("alpha", ALPHA4, 17, 443)),
        ),
        case(
            "802.1ad tag",
            udp(W4, BETA4, 40000, 443).vlans(&[TPID_8021AD]).build(),
            Matched(V4, out("beta", BETA4, 17, 443)),
        ),
        case(
            "QinQ (802.1ad + 802.1Q)",
            udp(W4, ALPHA4, 40000, 443)
                .vlans(&[TPID_8021AD, TPID_8021Q])
                .build(),
            Matched(V4, out("alpha", ALPHA4, 17, 443)),
        ),
        case(
            "QinQ IPv6",
            udp(W6, ALPHA6, 40000, 443)
                .vlans(&[TPID_8021AD, TPID_8021Q])
                .build(),
            Matched(V6, out6("alpha", ALPHA6, 17, 443)),
        ),
        case(
            "v6 udp watched -> alpha",
            udp(W6, ALPHA6, 40000, 51820).build(),
            Matched(V6, out6("alpha", ALPHA6, 17, 51820)),
        ),
        case(
            "v6 /64 inside /48: longest wins",
            tcp(BETA6, W6, 443, 50000).build(),
            Matched(
                V6,
                Match {
                    direction: DIR_INBOUND,
                    ..out6("beta", BETA6, 6, 443)
                },
            ),
        ),
        case(
            "v6 icmpv6 watched -> alpha",
            icmp(W6, ALPHA6).build(),
            Matched(V6, out6("alpha", ALPHA6, 58, 0)),
        ),
        case(
            "v6 watched -> non-endpoint",
            udp(W6, PLAIN6, 1, 2).build(),
            WatchedOnly(V6),
        ),
        case(
            "v6 unwatched",
            udp(PLAIN6, ALPHA6, 1, 2).build(),
            Unwatched(V6),
        ),
        case(
            "v6 hop-by-hop, routing, destination options, fragment",
            udp(W6, ALPHA6, 40000, 443)
                .exts(&[
                    Ext::HopByHop,
                    Ext::Routing,
                    Ext::DestinationOptions,
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                ])
                .build(),
            Matched(V6, out6("alpha", ALPHA6, 17, 443)),
        ),
        case(
            "v6 later fragment: port 0",
            udp(W6, ALPHA6, 40000, 443)
                .exts(&[Ext::Fragment {
                    offset: 185,
                    more: true,
                }])
                .build(),
            Matched(V6, out6("alpha", ALPHA6, 17, 0)),
        ),
        case(
            "v6 only fragment, offset 0, last",
            udp(W6, ALPHA6, 40000, 443)
                .exts(&[Ext::Fragment {
                    offset: 0,
                    more: false,
                }])
                .build(),
            Matched(V6, out6("alpha", ALPHA6, 17, 443)),
        ),
        case(
            "v6 six extension headers (the limit)",
            deep(6),
            Matched(V6, out6("alpha", ALPHA6, 17, 4500)),
        ),
        case(
            "v6 esp (50) after hop-by-hop",
            raw(W6, ALPHA6, 50).exts(&[Ext::HopByHop]).build(),
            Matched(V6, out6("alpha", ALPHA6, 50, 0)),
        ),
        case("ARP is other", arp(), Unwatched(Other)),
        // ---- malformed: counted by reason, never classified ----
        case(
            "VLAN tag cut short",
            truncated(
                udp(W4, ALPHA4, 1, 2).vlans(&[TPID_8021Q]).build(),
                ETH_HEADER + 2,
            ),
            Malformed(Other, MALFORMED_VLAN_TRUNCATED),
        ),
        case(
            "three VLAN tags",
            udp(W4, ALPHA4, 1, 2)
                .vlans(&[TPID_8021AD, TPID_8021Q, TPID_8021Q])
                .build(),
            Malformed(Other, MALFORMED_VLAN_TOO_DEEP),
        ),
        case(
            "v4 header cut short",
            truncated(udp(W4, ALPHA4, 1, 2).build(), ip4 + 10),
            Malformed(V4, MALFORMED_IPV4_TRUNCATED),
        ),
        case(
            "v4 version 5",
            patched(udp(W4, ALPHA4, 1, 2).build(), ip4, &[0x55]),
            Malformed(V4, MALFORMED_IPV4_BAD_HEADER),
        ),
        case(
            "v4 header length 16 bytes",
            patched(udp(W4, ALPHA4, 1, 2).build(), ip4, &[0x44]),
            Malformed(V4, MALFORMED_IPV4_BAD_HEADER),
        ),
        case(
            "v4 total length below header length",
            total_len(udp(W4, ALPHA4, 1, 2).build(), ip4, 16),
            Malformed(V4, MALFORMED_IPV4_BAD_HEADER),
        ),
        case(
            "v4 total length beyond the frame",
            total_len(udp(W4, ALPHA4, 1, 2).build(), ip4, 1000),
            Malformed(V4, MALFORMED_IPV4_TRUNCATED),
        ),
        case(
            "v4 60-byte header beyond the frame",
            total_len(
                patched(udp(W4, ALPHA4, 1, 2).build(), ip4, &[0x4f]),
                ip4,
                60,
            ),
            Malformed(V4, MALFORMED_IPV4_TRUNCATED),
        ),
        case(
            "v4 udp header cut short",
            total_len(
                truncated(
                    udp(W4, ALPHA4, 1, 2).payload(0).build(),
                    ip4 + IPV4_HEADER + 4,
                ),
                ip4,
                24,
            ),
            Malformed(V4, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v4 udp header beyond total length (frame padded)",
            total_len(udp(W4, ALPHA4, 1, 2).payload(0).build(), ip4, 24),
            Malformed(V4, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v4 tcp header cut short",
            total_len(
                truncated(
                    tcp(W4, ALPHA4, 1, 2).payload(0).build(),
                    ip4 + IPV4_HEADER + 12,
                ),
                ip4,
                32,
            ),
            Malformed(V4, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v4 tcp options (data offset 15) past the packet's end",
            patched(
                tcp(W4, ALPHA4, 40000, 443).payload(16).build(),
                ip4 + IPV4_HEADER + 12,
                &[0xf0],
            ),
            Malformed(V4, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v4 tcp options (data offset 15) within the packet",
            patched(
                tcp(W4, ALPHA4, 40000, 443).payload(40).build(),
                ip4 + IPV4_HEADER + 12,
                &[0xf0],
            ),
            Matched(V4, out("alpha", ALPHA4, 6, 443)),
        ),
        case(
            "v4 tcp data offset 2: the fixed 20 bytes are the header",
            patched(
                tcp(W4, ALPHA4, 40000, 443).payload(0).build(),
                ip4 + IPV4_HEADER + 12,
                &[0x20],
            ),
            Matched(V4, out("alpha", ALPHA4, 6, 443)),
        ),
        // ---- VPN protocols, the other end in no feed ----
        case(
            "v4 udp wireguard initiation (type 1, 148 bytes) to a non-endpoint",
            with_payload(udp(W4, PLAIN4, 40001, 51820), &[1, 0, 0, 0], 148),
            Matched(V4, out("wireguard", PLAIN4, 17, 51820)),
        ),
        case(
            "v4 udp wireguard response (type 2, 92 bytes) from a non-endpoint",
            with_payload(udp(PLAIN4, W4, 51821, 40002), &[2, 0, 0, 0], 92),
            Matched(
                V4,
                Match {
                    direction: DIR_INBOUND,
                    ..out("wireguard", PLAIN4, 17, 51821)
                },
            ),
        ),
        case(
            "v4 udp wireguard transport data (type 4, 96 bytes)",
            with_payload(udp(W4, PLAIN4, 40012, 51820), &[4, 0, 0, 0], 96),
            Matched(V4, out("wireguard", PLAIN4, 17, 51820)),
        ),
        case(
            "v4 udp type 4 in 100 bytes (not a multiple of 16): not wireguard",
            with_payload(udp(W4, PLAIN4, 40013, 51823), &[4, 0, 0, 0], 100),
            WatchedOnly(V4),
        ),
        case(
            "v4 udp type 1 in 147 bytes: not wireguard",
            with_payload(udp(W4, PLAIN4, 40003, 51822), &[1, 0, 0, 0], 147),
            WatchedOnly(V4),
        ),
        case(
            "v4 udp wireguard initiation to a feed endpoint: the feed wins",
            with_payload(udp(W4, DELTA4, 40004, 51820), &[1, 0, 0, 0], 148),
            Matched(V4, out("delta", DELTA4, 17, 51820)),
        ),
        case(
            "v4 udp openvpn hard reset (client v2) on any port",
            with_payload(udp(W4, PLAIN4, 40005, 1194), &[0x38], 42),
            Matched(V4, out("openvpn", PLAIN4, 17, 1194)),
        ),
        case(
            "v4 udp openvpn opcode in 13 bytes: too short for a reset",
            with_payload(udp(W4, PLAIN4, 40006, 1194), &[0x38], 13),
            WatchedOnly(V4),
        ),
        case(
            "v4 tcp openvpn hard reset behind its length",
            with_payload(tcp(W4, PLAIN4, 40007, 443), &[0, 40, 0x38], 42),
            Matched(V4, out("openvpn", PLAIN4, 6, 443)),
        ),
        case(
            "v4 tcp openvpn reset whose length field disagrees",
            with_payload(tcp(W4, PLAIN4, 40008, 443), &[0, 41, 0x38], 42),
            WatchedOnly(V4),
        ),
        case(
            "v4 udp ikev2 sa_init on 500",
            with_payload(udp(W4, PLAIN4, 500, 500), &ike_header(40), 40),
            Matched(V4, out("ipsec", PLAIN4, 17, 500)),
        ),
        case(
            "v4 udp ike whose length field disagrees: not ipsec",
            with_payload(udp(W4, PLAIN4, 501, 500), &ike_header(41), 40),
            WatchedOnly(V4),
        ),
        case(
            "v4 udp 4500 esp in udp",
            with_payload(udp(W4, PLAIN4, 4500, 4500), &[0, 0, 0, 7, 0, 0, 0, 1], 32),
            Matched(V4, out("ipsec", PLAIN4, 17, 4500)),
        ),
        case(
            "v4 udp 4500 non-esp marker then ike",
            with_payload(
                udp(W4, PLAIN4, 4501, 4500),
                &[&[0u8, 0, 0, 0][..], &ike_header(40)[..]].concat(),
                44,
            ),
            Matched(V4, out("ipsec", PLAIN4, 17, 4500)),
        ),
        case(
            "v4 udp l2tp v2 control on 1701",
            with_payload(udp(W4, PLAIN4, 1701, 1701), &[0xc8, 0x02], 20),
            Matched(V4, out("l2tp", PLAIN4, 17, 1701)),
        ),
        case(
            "v4 tcp pptp control on 1723 (magic cookie)",
            with_payload(
                tcp(W4, PLAIN4, 40009, 1723),
                &[0, 156, 0, 1, 0x1a, 0x2b, 0x3c, 0x4d],
                156,
            ),
            Matched(V4, out("pptp", PLAIN4, 6, 1723)),
        ),
        case(
            "v4 gre v1 carrying ppp: pptp's data",
            with_payload(raw(W4, PLAIN4, 47), &[0x30, 0x81, 0x88, 0x0b], 16),
            Matched(V4, out("pptp", PLAIN4, 47, 0)),
        ),
        case(
            "v4 gre v0",
            with_payload(raw(W4, PLAIN4, 47), &[0, 0, 0x08, 0x00], 24),
            Matched(V4, out("gre", PLAIN4, 47, 0)),
        ),
        case(
            "v4 esp",
            raw(W4, PLAIN4, 50).build(),
            Matched(V4, out("ipsec", PLAIN4, 50, 0)),
        ),
        case(
            "v4 esp, a later fragment: not judged",
            FrameSpec {
                ipv4_fragment_offset: 100,
                ..raw(W4, PLAIN4, 50)
            }
            .build(),
            WatchedOnly(V4),
        ),
        case(
            "v4 udp from a non-watched host: never judged",
            with_payload(udp(PLAIN4_B, PLAIN4, 40010, 51820), &[1, 0, 0, 0], 148),
            Unwatched(V4),
        ),
        case(
            "v6 udp wireguard initiation to a non-endpoint",
            with_payload(udp(W6, PLAIN6, 40011, 51820), &[1, 0, 0, 0], 148),
            Matched(V6, out6("wireguard", PLAIN6, 17, 51820)),
        ),
        case(
            "v6 esp",
            raw(W6, PLAIN6, 50).build(),
            Matched(V6, out6("ipsec", PLAIN6, 50, 0)),
        ),
        case(
            "v4 icmp header cut short",
            total_len(
                truncated(icmp(W4, ALPHA4).payload(0).build(), ip4 + IPV4_HEADER + 2),
                ip4,
                22,
            ),
            Malformed(V4, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v4 under QinQ cut short",
            truncated(
                udp(W4, ALPHA4, 1, 2)
                    .vlans(&[TPID_8021AD, TPID_8021Q])
                    .build(),
                ETH_HEADER + 2 * VLAN_TAG + 8,
            ),
            Malformed(V4, MALFORMED_IPV4_TRUNCATED),
        ),
        case(
            "v6 tcp options (data offset 6) past the packet's end",
            patched(
                tcp(W6, ALPHA6, 40000, 443).payload(2).build(),
                ip6 + IPV6_HEADER + 12,
                &[0x60],
            ),
            Malformed(V6, MALFORMED_L4_TRUNCATED),
        ),
        case(
            "v6 tcp options (data offset 6) within the packet",
            patched(
                tcp(W6, ALPHA6, 40000, 443).payload(4).build(),
                ip6 + IPV6_HEADER + 12,
                &[0x60],
            ),
            Matched(V6, out6("alpha", ALPHA6, 6, 443)),
        ),
        case(
            "v6 header cut short",
            truncated(udp(W6, ALPHA6, 1, 2).build(), ip6 + 30),
            Malformed(V6, MALFORMED_IPV6_TRUNCATED),
        ),
        case(
            "v6 version 4",
            patched(udp(W6, ALPHA6, 1, 2).build(), ip6, &[0x40]),
            Malformed(V6, MALFORMED_IPV6_BAD_HEADER),
        ),
        case(
            "v6 payload length beyond the frame",
            payload_len(udp(W6, ALPHA6, 1, 2).build(), ip6, 1000),
            Malformed(V6, MALFORMED_IPV6_TRUNCATED),
        ),
        case(
            "v6 extension header cut short",
            payload_len(
                truncated(
                    udp(W6, ALPHA6, 1, 2).exts(&[Ext::HopByHop]).build(),
                    ip6 + IPV6_HEADER + 4,
                ),
                ip6,
                4,
            ),
            Malformed(V6, MALFORMED_IPV6_EXT_TRUNCATED),
        ),
        case(
            "v6 seven extension headers",
            deep(7),
            Malformed(V6, MALFORMED_IPV6_EXT_TOO_DEEP),
        ),
        case(
            "v6 udp header cut short",
            payload_len(
                truncated(
                    udp(W6, ALPHA6, 1, 2).payload(0).build(),
                    ip6 + IPV6_HEADER + 4,
                ),
                ip6,
                4,
            ),
            Malformed(V6, MALFORMED_L4_TRUNCATED),
        ),
    ]
}

fn load_sensor() -> Sensor {
    load_sensor_watching(&TEST_WATCHED)
}

fn load_sensor_watching(prefixes: &[&str]) -> Sensor {
    load_test_sensor(prefixes, Capacities::default())
}

/// Every difference between what the kernel counted for `case` and what it
/// should have, as text.
fn check(case: &Case) -> Vec<String> {
    check_with(&load_sensor(), case.expect, case)
}

/// [`check`] against `sensor`, expecting `expect`.
fn check_with(sensor: &Sensor, expect: Expect, case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    match run_frame(sensor, &case.frame) {
        Ok(XDP_PASS) => {}
        Ok(verdict) => problems.push(format!("verdict {verdict}, want XDP_PASS")),
        Err(error) => return vec![error.to_string()],
    }
    let reading = drain::read(sensor).expect("maps drain");
    let t = reading.totals;
    let mut want = |what: &str, got: u64, wanted: u64| {
        if got != wanted {
            problems.push(format!("{what} = {got}, want {wanted}"));
        }
    };
    let (family, malformed, watched, matched) = match expect {
        Expect::Unwatched(family) => (family, None, 0, None),
        Expect::WatchedOnly(family) => (family, None, 1, None),
        Expect::Matched(family, m) => (family, None, 1, Some(m)),
        Expect::Malformed(family, reason) => (family, Some(reason), 0, None),
    };
    let len = case.frame.len() as u64;
    want("packets", t.packets(), 1);
    want("bytes", t.bytes, len);
    want("ipv4", t.ipv4, u64::from(family == Family::V4));
    want("ipv6", t.ipv6, u64::from(family == Family::V6));
    want("other", t.other, u64::from(family == Family::Other));
    for (reason, name) in MALFORMED_REASON_NAMES.iter().enumerate() {
        want(
            &format!("malformed {name}"),
            t.malformed[reason],
            u64::from(malformed == Some(reason)),
        );
    }
    want("watched", t.watched, watched);
    want("matched", t.matched, u64::from(matched.is_some()));
    want("flow inserts", t.flow_inserts, u64::from(matched.is_some()));

    for (id, counters) in reading.services.iter().enumerate() {
        let name = sensor
            .services
            .name(u32::try_from(id).expect("small"))
            .unwrap_or("-");
        for direction in [DIR_OUTBOUND, DIR_INBOUND] {
            let expected = matched.filter(|m| m.service == name && m.direction == direction);
            let d = usize::from(direction);
            want(
                &format!("{name} {} packets", direction_name(direction)),
                counters.packets[d],
                u64::from(expected.is_some()),
            );
            want(
                &format!("{name} {} bytes", direction_name(direction)),
                counters.bytes[d],
                if expected.is_some() { len } else { 0 },
            );
        }
    }

    let flows: Vec<String> = reading
        .all_flows()
        .map(|(key, sample)| describe(key, sample.packets, sample.bytes, sensor, sample.service))
        .collect();
    let expected_flows: Vec<String> = matched
        .map(|m| {
            format!(
                "{} {} proto {} port {} {} {} packets 1 bytes {len}",
                m.watched,
                m.endpoint,
                m.protocol,
                m.port,
                direction_name(m.direction),
                m.service
            )
        })
        .into_iter()
        .collect();
    if flows != expected_flows {
        problems.push(format!("flows {flows:?}, want {expected_flows:?}"));
    }
    problems
}

fn describe(key: &FlowKey, packets: u64, bytes: u64, sensor: &Sensor, service: u16) -> String {
    format!(
        "{} {} proto {} port {} {} {} packets {packets} bytes {bytes}",
        key_address(key.family, key.watched),
        key_address(key.family, key.endpoint),
        key.protocol,
        key.port,
        direction_name(key.direction),
        sensor.services.name(u32::from(service)).unwrap_or("?"),
    )
}

/// Runs `check` on every case; fails listing every case with problems.
fn assert_every_case(check: impl Fn(&Case) -> Vec<String>) {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let problems = check(case);
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_parse_path_and_malformed_case_counts_exactly() {
    if !require_root() {
        return;
    }
    assert_every_case(check);
}

/// The same frames with nothing watched: every frame is then unwatched, so
/// untagged IPv4 and IPv6 ones take the fast paths, which must count the
/// family and every malformed reason exactly as the full parser does.
#[test]
fn the_fast_paths_count_every_case_as_the_full_parser_does() {
    if !require_root() {
        return;
    }
    assert_every_case(|case| {
        let sensor = load_sensor_watching(&["10.255.255.0/24", "fd00:ffff::/32"]);
        let expect = match case.expect {
            Expect::WatchedOnly(family) | Expect::Matched(family, _) => Expect::Unwatched(family),
            other => other,
        };
        check_with(&sensor, expect, case)
    });
}

/// A watched frame that is untagged IPv4 with a 20-byte header is counted
/// from the reading the fast path made of its headers (`plain_ipv4_packet`
/// in the program); the same frame behind a VLAN tag takes the full
/// parser. Every such case must count alike both ways: the same totals,
/// per-service counters and flow records, but for the tag's 4 bytes.
#[test]
fn plain_ipv4_frames_count_as_the_full_parser_counts_them_tagged() {
    if !require_root() {
        return;
    }
    let plain = cases()
        .into_iter()
        .filter(|case| case.frame.get(12..15) == Some(&[0x08, 0x00, 0x45][..]));
    let mut compared = 0;
    let mut failures = Vec::new();
    for case in plain {
        let untagged = counted(&case.frame, 0);
        let tagged = counted(&vlan_tagged(&case.frame), VLAN_TAG as u64);
        if untagged != tagged {
            failures.push(format!(
                "{}:
    untagged {untagged:?}
    tagged   {tagged:?}",
                case.name
            ));
        }
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} plain IPv4 cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `frame` with an 802.1Q tag after its MAC addresses.
fn vlan_tagged(frame: &[u8]) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend(TPID_8021Q.to_be_bytes());
    tagged.extend([0x00, 0x07]);
    tagged.extend(&frame[12..]);
    tagged
}

/// What a fresh sensor counts of one `frame`, its frame bytes less `extra`
/// a packet: totals, per-service counters, and each flow's key and record
/// (its timestamps aside).
fn counted(frame: &[u8], extra: u64) -> String {
    let sensor = load_sensor();
    assert_eq!(run_frame(&sensor, frame).expect("test run"), XDP_PASS);
    let mut reading = drain::read(&sensor).expect("maps drain");
    reading.totals.bytes -= extra * reading.totals.packets();
    for counters in &mut reading.services {
        for direction in 0..counters.packets.len() {
            counters.bytes[direction] -= extra * counters.packets[direction];
        }
    }
    let flows: Vec<String> = reading
        .all_flows()
        .map(|(key, flow)| {
            format!(
                "{key:?} packets {} bytes {} ip_bytes {} service {} tcp_flags {:#x} origin {}",
                flow.packets,
                flow.bytes - extra * flow.packets,
                flow.ip_bytes,
                flow.service,
                flow.tcp_flags,
                flow.origin
            )
        })
        .collect();
    let services: Vec<String> = reading
        .services
        .iter()
        .enumerate()
        .filter(|(_, counters)| counters.packets.iter().any(|&packets| packets > 0))
        .map(|(id, counters)| format!("service {id} {counters:?}"))
        .collect();
    format!("{:?} {services:?} {flows:?}", reading.totals)
}

#[test]
fn counts_accumulate_over_many_frames_and_flows() {
    if !require_root() {
        return;
    }
    let sensor = load_sensor();
    let frames = [
        udp(W4, ALPHA4, 40000, 443).build(),
        udp(W4, ALPHA4, 40000, 443).build(),
        udp(ALPHA4, W4, 443, 40000).build(),
        udp(W4_OTHER, ALPHA4, 40001, 443).build(),
        udp(W4, GAMMA4, 40000, 1194).build(),
        udp(PLAIN4, ALPHA4, 1, 443).build(),
    ];
    for _ in 0..10 {
        for frame in &frames {
            assert_eq!(run_frame(&sensor, frame).expect("test run"), XDP_PASS);
        }
    }
    let reading = drain::read(&sensor).expect("drain");
    assert_eq!(reading.totals.packets(), 60);
    assert_eq!(reading.totals.watched, 50);
    assert_eq!(reading.totals.matched, 50);
    let alpha = sensor.services.id("alpha").expect("alpha") as usize;
    let gamma = sensor.services.id("gamma").expect("gamma") as usize;
    assert_eq!(reading.services[alpha].packets, [30, 10]);
    assert_eq!(reading.services[gamma].packets, [10, 0]);
    // Four flows: W4->alpha:443 out, alpha:443->W4 in, W4_OTHER->alpha, W4->gamma.
    let mut ledger = drain::Ledger::default();
    ledger.absorb(reading, FlowClock::UNIX_NS);
    assert_eq!(ledger.flows.len(), 4);
    assert!(
        ledger
            .flows
            .values()
            .all(|flow| flow.packets == 10 || flow.packets == 20)
    );
}

/// A verdict holds for the whole flow: packets with no signature of their
/// own (here type 4 of a length no WireGuard data has) count as WireGuard
/// once the flow's handshake was seen, in both directions; such a packet
/// before the handshake, and on another flow, stays unmatched.
#[test]
fn a_flow_its_handshake_named_counts_whole() {
    if !require_root() {
        return;
    }
    let sensor = load_sensor();
    let data = |src, dst, sp, dp| with_payload(FrameSpec::udp(src, dst, sp, dp), &[4, 0, 0, 0], 70);
    let frames = [
        data(W4, PLAIN4, 40100, 51820),
        with_payload(FrameSpec::udp(W4, PLAIN4, 40100, 51820), &[1, 0, 0, 0], 148),
        data(W4, PLAIN4, 40100, 51820),
        data(PLAIN4, W4, 51820, 40100),
        data(W4, PLAIN4, 40100, 51821),
    ];
    for frame in &frames {
        assert_eq!(run_frame(&sensor, frame).expect("test run"), XDP_PASS);
    }
    let reading = drain::read(&sensor).expect("maps drain");
    assert_eq!(reading.totals.watched, 5);
    assert_eq!(reading.totals.matched, 3);
    let wireguard = sensor.services.id("wireguard").expect("a protocol service") as usize;
    assert_eq!(reading.services[wireguard].packets, [2, 1]);
    let flows: Vec<String> = reading
        .all_flows()
        .map(|(key, sample)| describe(key, sample.packets, sample.bytes, &sensor, sample.service))
        .collect();
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert!(
        flows
            .iter()
            .all(|flow| flow.contains("port 51820") && flow.contains("wireguard"))
    );
}
