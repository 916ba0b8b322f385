//! What the bench runs: random feeds, watched sets, and the frames of each
//! case (warm cases and stream-mode streams).

use classifier_tests::{
    Random,
    frames::{FrameSpec, TPID_8021AD, TPID_8021Q, Transport, patched},
};
use classifier_user::feeds::{Endpoint, EndpointFeed, WatchedSet};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::Options;

/// `v4` random IPv4 prefixes of lengths /8–/32 and `v6` random IPv6 /32–/128
/// prefixes, 26 services, none inside the watched ranges; plus one known
/// /32 (`203.0.113.77`) and /128 the match frames go to.
pub fn random_feed(v4: usize, v6: usize, seed: u64) -> EndpointFeed {
    let mut random = Random(seed);
    let mut endpoints = Vec::with_capacity(v4 + v6 + 2);
    let service = |random: &mut Random| format!("svc{:02}", random.below(26));
    while endpoints.len() < v4 {
        let length = 8 + u8::try_from(random.below(25)).expect("small");
        let address = Ipv4Addr::from(u32::try_from(random.below(1 << 32)).expect("32 bits"));
        let first = address.octets()[0];
        if first == 175 || first == 203 || first >= 224 {
            continue;
        }
        let net = Ipv4Net::new(address, length).expect("valid length").trunc();
        endpoints.push(Endpoint {
            net: IpNet::V4(net),
            service: service(&mut random),
        });
    }
    for _ in 0..v6 {
        let length = 32 + u8::try_from(random.below(97)).expect("small");
        let address = (0x2a00_u128 << 112)
            | (u128::from(random.next_u64()) << 48)
            | u128::from(random.next_u64() >> 16);
        let net = Ipv6Net::new(Ipv6Addr::from(address), length)
            .expect("valid length")
            .trunc();
        endpoints.push(Endpoint {
            net: IpNet::V6(net),
            service: service(&mut random),
        });
    }
    endpoints.push(Endpoint {
        net: "203.0.113.77/32".parse().expect("valid"),
        service: "target".into(),
    });
    endpoints.push(Endpoint {
        net: "2001:db8:e0::77/128".parse().expect("valid"),
        service: "target".into(),
    });
    EndpointFeed::from_endpoints(endpoints)
}

/// The first watched prefix of [`watched`], which the frames' watched
/// IPv4 address is in.
pub const WATCHED_V4: &str = "175.45.176.0/22";
/// The IPv4 endpoint the match frames go to ([`random_feed`] lists it).
pub const ENDPOINT_V4: &str = "203.0.113.77";

pub fn watched(count: usize) -> WatchedSet {
    let mut prefixes = vec![WATCHED_V4.to_string(), "2001:db8:aa::/48".to_string()];
    prefixes.extend((1..count).map(|i| format!("100.{}.{}.0/24", 64 + i / 256, i % 256)));
    WatchedSet::from_arguments(&prefixes, &[]).expect("valid watched set")
}

/// `spec` built with its payload padded so the frame is `size` bytes (or
/// its headers alone, when they are longer).
fn built_at(spec: FrameSpec, size: usize) -> Vec<u8> {
    let base = spec.clone().payload(0).build().len();
    spec.payload(size.saturating_sub(base)).build()
}

/// The watched → non-endpoint case whose frame is a TCP segment with
/// payload (the learning code counts such segments).
pub const WATCHED_TCP_CASE: &str = "b watched -> non-endpoint, a TCP segment with payload";

/// The frame of the case named `name`, at a given size.
pub fn case_frame(size: usize, name: &str) -> anyhow::Result<Vec<u8>> {
    cases(size)
        .into_iter()
        .find(|(case, _)| *case == name)
        .map(|(_, frame)| frame)
        .ok_or_else(|| anyhow::anyhow!("no case {name}"))
}

/// The frames of each case, at a given size.
pub fn cases(size: usize) -> Vec<(&'static str, Vec<u8>)> {
    let sized = |spec: FrameSpec| built_at(spec, size);
    let watched4 = "175.45.177.10";
    let endpoint4 = ENDPOINT_V4;
    vec![
        (
            NON_WATCHED_CASE,
            sized(FrameSpec::udp("192.0.2.1", "198.18.0.1", 40000, 443)),
        ),
        (
            NON_ENDPOINT_CASE,
            sized(FrameSpec::udp(watched4, "198.18.0.1", 40000, 443)),
        ),
        (
            WATCHED_TCP_CASE,
            sized(FrameSpec::new(
                watched4,
                "198.18.0.1",
                Transport::Tcp {
                    src: 40000,
                    dst: 443,
                    syn: false,
                    ack: true,
                },
            )),
        ),
        (
            MATCH_CASE,
            sized(FrameSpec::udp(watched4, endpoint4, 40000, 443)),
        ),
        (
            "d endpoint -> watched",
            sized(FrameSpec::udp(endpoint4, watched4, 443, 40000)),
        ),
        (
            "e VLAN watched -> endpoint",
            sized(FrameSpec::udp(watched4, endpoint4, 40000, 443).vlans(&[TPID_8021Q])),
        ),
        (
            "e QinQ watched -> endpoint",
            sized(
                FrameSpec::udp(watched4, endpoint4, 40000, 443).vlans(&[TPID_8021AD, TPID_8021Q]),
            ),
        ),
        (
            "e IPv6 watched -> endpoint",
            sized(FrameSpec::udp(
                "2001:db8:aa::10",
                "2001:db8:e0::77",
                40000,
                443,
            )),
        ),
        (
            "e IPv6 non-watched",
            sized(FrameSpec::udp(
                "2a00:1450:4001::1",
                "2a03:2880:f000::1",
                40000,
                443,
            )),
        ),
        (
            "e IPv6 non-watched, in the watched /32 (prefilter passes, trie says no)",
            sized(FrameSpec::udp(
                "2001:db8:ff::1",
                "2001:db8:e0::77",
                40000,
                443,
            )),
        ),
        (
            "f malformed (IPv4 version 5)",
            patched(
                sized(FrameSpec::udp(watched4, endpoint4, 1, 2)),
                14,
                &[0x55],
            ),
        ),
    ]
}

/// A 64-byte UDP frame between two random addresses, neither in the
/// watched 175.0.0.0/8.
fn random_unwatched_frame(random: &mut Random) -> Vec<u8> {
    loop {
        let mut address = || Ipv4Addr::from(u32::try_from(random.below(1 << 32)).expect("32 bits"));
        let (src, dst) = (address(), address());
        if src.octets()[0] != 175 && dst.octets()[0] != 175 {
            return built_at(
                FrameSpec::udp(&src.to_string(), &dst.to_string(), 40000, 443),
                64,
            );
        }
    }
}

/// `count` frames of [`random_unwatched_frame`].
pub fn random_unwatched_frames(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut random = Random(seed);
    (0..count)
        .map(|_| random_unwatched_frame(&mut random))
        .collect()
}

/// Frames for stream mode, one stream per round, each frame 64 bytes:
/// non-watched random addresses; a watched source to random addresses of
/// the feed's IPv4 prefixes (cold table, a new flow almost every frame);
/// one known flow's frame; and a watched source to one known endpoint, a
/// new flow every frame.
pub fn stream_cases(
    options: &Options,
    feed: &EndpointFeed,
) -> Vec<(&'static str, Vec<Vec<Vec<u8>>>)> {
    let rounds = options.stream_rounds();
    let per_round = stream_length(options);
    let v4: Vec<Ipv4Net> = feed
        .endpoints
        .iter()
        .filter_map(|endpoint| match endpoint.net {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        })
        .collect();
    let mut random = Random(7);
    let mut next_flow = 0u32;
    // The known flow first, while the flow cache holds only the warm
    // cases' flows, so that its flow has a cache slot: after the cold
    // match case every slot holds a flow no drain has read, and the known
    // flow would live in the LRU table. The LRU case comes after the cold
    // match case, which leaves it those held slots.
    let mut streams = vec![
        (KNOWN_FLOW_CASE, Vec::new()),
        ("a non-watched (cold: random addresses)", Vec::new()),
        (
            "c watched -> endpoint (cold: random feed addresses)",
            Vec::new(),
        ),
        (NEW_FLOW_TABLE_CASE, Vec::new()),
        (NEW_FLOW_CASE, Vec::new()),
    ];
    // One flow, the same frame in every run (flow numbers far above the
    // new flows').
    let known_flow = new_flow_frame(&mut 0x00ff_0000);
    for _ in 0..rounds {
        let mut cold_a = Vec::with_capacity(per_round);
        let mut cold_c = Vec::with_capacity(per_round);
        let mut new_flows = Vec::with_capacity(per_round);
        let mut drained_new_flows = Vec::with_capacity(NEW_FLOWS_PER_DRAIN);
        for _ in 0..per_round {
            cold_a.push(random_unwatched_frame(&mut random));
            let net = v4[random.below(v4.len() as u64) as usize];
            let host =
                u32::try_from(random.below(1u64 << (32 - net.prefix_len()))).expect("32 bits");
            let endpoint = Ipv4Addr::from(u32::from(net.network()) | host);
            let watched =
                Ipv4Addr::from(0xaf2d_b000 | u32::try_from(random.below(1024)).expect("small"));
            cold_c.push(built_at(
                FrameSpec::udp(&watched.to_string(), &endpoint.to_string(), 40000, 443),
                64,
            ));
            new_flows.push(new_flow_frame(&mut next_flow));
        }
        for _ in 0..NEW_FLOWS_PER_DRAIN.min(per_round) {
            drained_new_flows.push(new_flow_frame(&mut next_flow));
        }
        streams[0].1.push(vec![known_flow.clone(); per_round]);
        streams[1].1.push(cold_a);
        streams[2].1.push(cold_c);
        streams[3].1.push(new_flows);
        streams[4].1.push(drained_new_flows);
    }
    streams
}

/// A watched source to a feed's endpoint, the flow known.
pub const MATCH_CASE: &str = "c watched -> endpoint";
/// An unwatched UDP packet: most of a link's traffic.
pub const NON_WATCHED_CASE: &str = "a non-watched";
/// A watched source's UDP packet to an address no feed names.
pub const NON_ENDPOINT_CASE: &str = "b watched -> non-endpoint";
/// The match frame repeated into a program set up to count every matched
/// packet as a new flow, with every cache slot recyclable: a new flow's
/// first packet with the program's code and data warm.
pub const NEW_FLOW_WARM_CASE: &str = "c new flow every packet, warm (claims a drained slot)";
/// A known flow's packet in stream mode: the same frame in every run, its
/// flow in a cache slot (measured first of the stream cases), so what sets
/// it apart from the warm match rows is what each run finds cold (the
/// program's code and data after the syscall), the part of the new-flow
/// rows that is not the new flow.
pub const KNOWN_FLOW_CASE: &str = "c known flow, the same frame every run (what a run finds cold)";
/// The first packet of a new flow whose cache slot is held by a flow no
/// drain has read: it goes to the LRU table (a lookup miss and an insert
/// that evicts).
pub const NEW_FLOW_TABLE_CASE: &str =
    "c new flow, its cache slot held by an undrained flow (LRU table insert)";
/// The first packet of a new flow arriving as on a sensor whose daemon
/// drains: [`NEW_FLOWS_PER_DRAIN`] of them between drains, into a flow
/// cache of the default size whose slots hold flows the last drain read.
pub const NEW_FLOW_CASE: &str =
    "c new flow, 2,048 new flows per drain, 16,384 cache slots (claims a drained slot)";
/// New flows per round of [`NEW_FLOW_CASE`] (an eighth of the default
/// cache, so most land in a slot no other new flow of the round took).
pub const NEW_FLOWS_PER_DRAIN: usize = 2_048;

/// The next new flow's frame: the flow key is the watched address, the
/// endpoint and its port.
fn new_flow_frame(next_flow: &mut u32) -> Vec<u8> {
    let watched = Ipv4Addr::from(0xaf2d_b000 | (*next_flow >> 16));
    let port = (*next_flow & 0xffff) as u16;
    *next_flow += 1;
    built_at(
        FrameSpec::udp(&watched.to_string(), "203.0.113.77", 40000, port),
        64,
    )
}

/// Frames per stream-mode round.
pub fn stream_length(options: &Options) -> usize {
    if options.quick { 2_000 } else { 100_000 }
}
