//! The kernel's endpoint and watched lookups agree with a reference
//! longest-prefix match for well over 100,000 addresses: random ones, and
//! every prefix's first and last address and their neighbours, over feeds
//! with nested prefixes of different services, in IPv4 and IPv6.
//!
//! IPv4 goes through the IPv4 table (a multibit trie built in userspace);
//! IPv6 through the hint and the kernel's LPM tries. Each address is the
//! destination of one frame from a watched source, run through the real XDP
//! program; the flow it creates carries the service the kernel found.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use classifier_tests::{Random, frames::FrameSpec, netns::VethLink, require_root};
use classifier_user::{
    drain,
    feeds::{Endpoint, EndpointFeed, WatchedSet},
    loader::{AttachMode, Capacities, Sensor},
    testrun::run_frame,
};
use ipnet::{IpNet, Ipv4Net};

const SERVICES: u64 = 6;

/// A reference longest-prefix match: one hash probe per prefix length,
/// longest first. Independent of the kernel's structures on purpose.
struct ReferenceLpm {
    /// (prefix length, network as u128) → service name.
    prefixes: HashMap<(u8, u128), String>,
    width: u8,
}

impl ReferenceLpm {
    fn new(width: u8) -> Self {
        Self {
            prefixes: HashMap::new(),
            width,
        }
    }

    fn insert(&mut self, network: u128, len: u8, service: &str) {
        self.prefixes
            .insert((len, mask(network, len, self.width)), service.to_string());
    }

    fn lookup(&self, address: u128) -> Option<&str> {
        (0..=self.width).rev().find_map(|len| {
            self.prefixes
                .get(&(len, mask(address, len, self.width)))
                .map(String::as_str)
        })
    }
}

fn mask(address: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let width_bits = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host_bits = (1u128 << u32::from(width - len)) - 1;
    address & width_bits & !host_bits
}

fn last_of(network: u128, len: u8, width: u8) -> u128 {
    let host_bits = u32::from(width - len);
    if host_bits == 128 {
        u128::MAX
    } else {
        network | ((1u128 << host_bits) - 1)
    }
}

/// Whether two prefixes overlap (one contains the other).
fn overlaps(a: (u128, u8), b: (u128, u8), width: u8) -> bool {
    let shorter = a.1.min(b.1);
    mask(a.0, shorter, width) == mask(b.0, shorter, width)
}

struct Case {
    feed: Vec<Endpoint>,
    reference: ReferenceLpm,
    /// Destinations to probe: prefix edges and their neighbours, random
    /// addresses.
    probes: BTreeSet<u128>,
}

/// A feed of `count` random prefixes of lengths `lengths`, with every fifth
/// one also given a nested child of another service, none overlapping the
/// `reserved` prefixes (the watched ones, so a watched address is never
/// also an endpoint and every probe is seen from the watched source).
fn nested_feed(
    random: &mut Random,
    width: u8,
    lengths: (u8, u8),
    count: usize,
    random_probes: usize,
    reserved: &[(u128, u8)],
) -> Case {
    let to_ip = |address: u128| -> IpAddr {
        if width == 32 {
            IpAddr::V4(Ipv4Addr::from(address as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(address))
        }
    };
    let random_address = |random: &mut Random| -> u128 {
        let wide = (u128::from(random.next_u64()) << 64) | u128::from(random.next_u64());
        if width == 32 { wide >> 96 } else { wide }
    };
    let mut reference = ReferenceLpm::new(width);
    let mut feed = Vec::new();
    let mut probes = BTreeSet::new();
    let mut add = |network: u128, len: u8, service: String, feed: &mut Vec<Endpoint>| {
        let network = mask(network, len, width);
        if reference.prefixes.contains_key(&(len, network))
            || reserved
                .iter()
                .any(|&watched| overlaps(watched, (network, len), width))
        {
            return false;
        }
        reference.insert(network, len, &service);
        let last = last_of(network, len, width);
        probes.extend([network, last]);
        probes.extend(network.checked_sub(1));
        probes.extend(
            last.checked_add(1)
                .filter(|next| *next <= mask(u128::MAX, width, width)),
        );
        feed.push(Endpoint {
            net: IpNet::new(to_ip(network), len).expect("valid prefix"),
            service,
        });
        true
    };
    while feed.len() < count {
        let span = u64::from(lengths.1 - lengths.0 + 1);
        let len = lengths.0 + random.below(span) as u8;
        let network = random_address(random);
        let service = random.below(SERVICES);
        if !add(network, len, format!("svc{service}"), &mut feed) {
            continue;
        }
        if feed.len() % 5 == 0 && len < width {
            // A child somewhere inside, of the next service.
            let child_len = len + 1 + random.below(u64::from(width - len)) as u8;
            let child = network | (random_address(random) & !mask(u128::MAX, len, width));
            let child_service = format!("svc{}", (service + 1) % SERVICES);
            add(child, child_len, child_service, &mut feed);
        }
    }
    let max = mask(u128::MAX, width, width);
    probes.retain(|probe| *probe <= max);
    for _ in 0..random_probes {
        probes.insert(random_address(random));
    }
    Case {
        feed,
        reference,
        probes,
    }
}

/// Runs one frame per probe (watched source → probe) through the program
/// and compares each flow's service with the reference. Returns how many
/// probes were checked.
fn check_probes(
    sensor: &Sensor,
    case: &Case,
    source: &str,
    to_ip: impl Fn(u128) -> String,
) -> usize {
    let mut expected: HashMap<u128, &str> = HashMap::new();
    for &probe in &case.probes {
        let frame = FrameSpec::udp(source, &to_ip(probe), 40000, 443).build();
        assert_eq!(run_frame(sensor, &frame).expect("test run"), 2);
        if let Some(service) = case.reference.lookup(probe) {
            expected.insert(probe, service);
        }
    }
    let reading = drain::read(sensor).expect("drain");
    assert_eq!(reading.totals.flow_insert_failures, 0);
    assert_eq!(reading.totals.watched, case.probes.len() as u64);
    let mut found: HashMap<u128, &str> = HashMap::new();
    for (key, sample) in reading.all_flows() {
        let endpoint = u128::from_be_bytes(key.endpoint);
        let endpoint = if key.family == classifier_common::FAMILY_V4 {
            endpoint & 0xffff_ffff
        } else {
            endpoint
        };
        let name = sensor
            .services
            .name(u32::from(sample.service))
            .expect("a known service id");
        assert!(
            found.insert(endpoint, name).is_none(),
            "two flows for {}",
            to_ip(endpoint)
        );
    }
    let mut wrong = Vec::new();
    for &probe in &case.probes {
        let want = expected.get(&probe).copied();
        let got = found.get(&probe).copied();
        if want != got {
            wrong.push(format!(
                "{}: kernel {got:?}, reference {want:?}",
                to_ip(probe)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} probes disagree, e.g. {:?}",
        wrong.len(),
        case.probes.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(reading.totals.matched, expected.len() as u64);
    case.probes.len()
}

/// Test runs are cheap only while the program is attached somewhere: a
/// test run of a detached XDP program swaps it into the kernel's XDP
/// dispatcher and out again, which waits for RCU (milliseconds per run).
/// So the sensor attaches to a veth of a namespace this test creates.
fn attach_in_test_namespace(sensor: &mut Sensor, test: &str) -> VethLink {
    let link = VethLink::create(test).expect("veth pair in test namespaces");
    link.sensor
        .enter_on_this_thread()
        .expect("enter the sensor namespace");
    sensor
        .attach(&link.sensor_iface, AttachMode::Auto)
        .expect("attach to the test veth");
    link
}

fn capacities(probes: usize) -> Capacities {
    Capacities {
        // Room for every probe's flow with the LRU table far from full.
        flows: (probes * 4) as u32,
        ..Capacities::default()
    }
}

#[test]
fn ipv4_table_agrees_with_a_reference_longest_prefix_match() {
    if !require_root() {
        return;
    }
    let watched_source = "175.45.176.7";
    let reserved = [(u128::from(0xaf2d_b000_u32), 22)];
    let mut random = Random(4);
    let case = nested_feed(&mut random, 32, (8, 32), 25_000, 25_000, &reserved);
    assert!(case.probes.len() >= 100_000, "{} probes", case.probes.len());
    let watched = WatchedSet::from_arguments(&["175.45.176.0/22".into()], &[]).expect("watched");
    let feed = EndpointFeed::from_endpoints(case.feed.iter().cloned());
    let mut sensor = Sensor::load(&watched, &feed, capacities(case.probes.len())).expect("loads");
    let _link = attach_in_test_namespace(&mut sensor, "lookup4");
    let checked = check_probes(&sensor, &case, watched_source, |address| {
        Ipv4Addr::from(address as u32).to_string()
    });
    assert!(checked >= 100_000);
}

#[test]
fn ipv6_lookup_agrees_with_a_reference_longest_prefix_match() {
    if !require_root() {
        return;
    }
    let watched_source = "2001:db8:aa::7";
    let reserved = [(0x2001_0db8_00aa_u128 << 80, 48)];
    let mut random = Random(6);
    let case = nested_feed(&mut random, 128, (16, 128), 25_000, 25_000, &reserved);
    assert!(case.probes.len() >= 100_000, "{} probes", case.probes.len());
    let watched = WatchedSet::from_arguments(&["2001:db8:aa::/48".into()], &[]).expect("watched");
    let feed = EndpointFeed::from_endpoints(case.feed.iter().cloned());
    let mut sensor = Sensor::load(&watched, &feed, capacities(case.probes.len())).expect("loads");
    let _link = attach_in_test_namespace(&mut sensor, "lookup6");
    let checked = check_probes(&sensor, &case, watched_source, |address| {
        Ipv6Addr::from(address).to_string()
    });
    assert!(checked >= 100_000);
}

#[test]
fn watched_prefix_edges_agree_with_a_reference_longest_prefix_match() {
    if !require_root() {
        return;
    }
    // Watched prefixes of many lengths; sources at their edges and
    // neighbours, all sending to one known endpoint. Prefixes longer than
    // /24 inside a watched /24 and beside one; then /24s in 300 more /16s,
    // more /24 patterns than the prefilter has blocks (the /16s past them
    // leave every address to the IPv4 table), some beside a /28.
    let mut watched_prefixes: Vec<String> = [
        "175.45.176.0/22",
        "10.0.0.0/9",
        "100.64.7.0/24",
        "100.64.7.200/29",
        "100.64.9.128/25",
        "100.64.9.16/30",
        "192.0.2.77/32",
        "172.16.0.0/12",
        "203.0.113.0/27",
    ]
    .map(String::from)
    .to_vec();
    for i in 0..300 {
        let (a, b) = (11 + i / 256, i % 256);
        watched_prefixes.push(format!("{a}.{b}.{b}.0/24"));
        if i % 50 == 0 {
            watched_prefixes.push(format!("{a}.{b}.200.16/28"));
        }
    }
    let watched_nets: Vec<Ipv4Net> = watched_prefixes
        .iter()
        .map(|text| text.parse().expect("valid"))
        .collect();
    let mut reference = ReferenceLpm::new(32);
    let mut sources = BTreeSet::new();
    for net in &watched_nets {
        let first = u32::from(net.network());
        let last = u32::from(net.broadcast());
        reference.insert(u128::from(first), net.prefix_len(), "watched");
        sources.extend([first, last, first.wrapping_sub(1), last.wrapping_add(1)]);
    }
    let endpoint = "198.51.100.10";
    let feed = EndpointFeed::from_endpoints([Endpoint {
        net: "198.51.100.0/24".parse().expect("valid"),
        service: "svc".into(),
    }]);
    let watched = WatchedSet::from_arguments(&watched_prefixes, &[]).expect("watched");
    let mut sensor = Sensor::load(&watched, &feed, Capacities::default()).expect("loads");
    let _link = attach_in_test_namespace(&mut sensor, "lookupw");
    for &source in &sources {
        let frame =
            FrameSpec::udp(&Ipv4Addr::from(source).to_string(), endpoint, 40000, 443).build();
        assert_eq!(run_frame(&sensor, &frame).expect("test run"), 2);
    }
    let reading = drain::read(&sensor).expect("drain");
    let seen: BTreeSet<u32> = reading
        .all_flows()
        .map(|(key, _)| u32::from_be_bytes(key.watched[12..].try_into().expect("4 bytes")))
        .collect();
    let expected: BTreeSet<u32> = sources
        .iter()
        .copied()
        .filter(|source| reference.lookup(u128::from(*source)).is_some())
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(reading.totals.matched, expected.len() as u64);
}
