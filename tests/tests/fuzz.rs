//! Differential fuzzing: random and mutated frames run through the real XDP
//! program with BPF_PROG_TEST_RUN and through an independent userspace
//! oracle (`classifier_tests::oracle`, built on etherparse and README.md's
//! rules); what the program counted for each frame must be what the oracle
//! says, and every verdict must be XDP_PASS.
//!
//! Frames come from a seeded generator: valid frames over both IP families
//! and non-IP EtherTypes, 0–3 VLAN tags, IPv4 options and fragments, IPv6
//! extension chains of 0–8 headers (hop-by-hop, routing, destination
//! options, AH, fragment), TCP (with options), UDP, ICMP, ICMPv6, ESP, GRE
//! and random protocol numbers, addresses watched, endpoints, near misses or
//! anywhere (so matches happen in both directions, and addresses that are
//! both watched and an endpoint occur). Each valid frame is also cut short
//! (at every offset for one frame in eight, else around every header
//! boundary), cut short with its IP length shrunk to match, padded, given
//! wrong IPv4 total lengths, IHLs and IPv6 payload lengths, and has bytes of
//! its headers flipped. Frames shorter than an Ethernet header (14 bytes)
//! are never made: the kernel refuses to test-run them, so
//! `ethernet_truncated` is not exercised.
//!
//! One sensor counts every frame (watched set and test feed, one flow-cache
//! slot so flows land in the LRU table, the thread pinned to one CPU so the
//! cache and the inserts are deterministic). After each frame its totals,
//! and for matched frames its per-service counters and the oracle's flow
//! entry (read before and after), must have moved exactly as the oracle
//! says. Every 8,192 frames everything it holds, all flows included, must
//! equal the oracle's sum (left out when a frame disagreed since the last
//! time: the program may then hold a flow the oracle knows nothing of). The
//! sensor is loaded afresh before its flow table could evict.
//!
//! `FUZZ_FRAMES` (default 100,000) and `FUZZ_SEED` override the fixed run;
//! `cargo xtask fuzz` runs a longer one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    fmt::Write as _,
    net::IpAddr,
    os::fd::AsRawFd,
    time::Instant,
};

use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FAMILY_V6, FlowKey, FlowSlot, FlowValue,
    MALFORMED_REASON_NAMES, MALFORMED_REASONS, MAP_FLOW_CACHE, MAP_FLOWS, MAP_SERVICES, MAP_TOTALS,
    ServiceCounters, Totals, same_flow,
};
use classifier_tests::{
    Random, TEST_FEED, TEST_WATCHED,
    frames::{ETH_HEADER, IPV4_HEADER, IPV6_HEADER, TPID_8021AD, TPID_8021Q},
    load_test_sensor,
    oracle::{Family, Flow, Oracle, Outcome, Verdict},
    pin_to_cpu, require_root,
};
use classifier_user::{
    drain,
    loader::{Capacities, Sensor},
    report::{direction_name, key_address},
    testrun::{MIN_TEST_FRAME, program_fd, run_frame},
};
use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6FragmentHeader,
    Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};
use ipnet::IpNet;

const XDP_PASS: u32 = 2;
const DEFAULT_FRAMES: u64 = 100_000;
const DEFAULT_SEED: u64 = 0x5eed_c1a5_51f1;
/// The sensor's flow table, and the flows it may hold before it is loaded
/// afresh (so nothing is ever evicted).
const FLOW_CAPACITY: u32 = 1 << 16;
const MAX_FLOWS: usize = 40_000;
/// Frames between two comparisons of everything the sensor holds.
const CHECK_EVERYTHING_EVERY: u64 = 8_192;
/// Disagreements shown in full.
const SHOWN: usize = 20;

/// Watched prefixes inside endpoint prefixes (of delta and beta): an
/// address that is both watched and an endpoint.
const WATCHED_ENDPOINTS: [&str; 2] = ["203.0.113.64/26", "2001:db8:e0:1:8000::/65"];

fn watched_prefixes() -> Vec<&'static str> {
    TEST_WATCHED
        .iter()
        .chain(&WATCHED_ENDPOINTS)
        .copied()
        .collect()
}

fn load_sensor() -> Sensor {
    let capacities = Capacities {
        flows: FLOW_CAPACITY,
        flow_cache_slots: 1,
        ..Capacities::default()
    };
    load_test_sensor(&watched_prefixes(), capacities)
}

/// The highest-numbered CPU this thread may run on (benchmarks pin
/// themselves to CPU 0).
fn last_allowed_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is an empty set, which
    // sched_getaffinity fills; CPU_ISSET reads it within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .unwrap_or(0)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
    })
}

#[test]
fn the_program_counts_every_fuzzed_frame_as_the_oracle_says() {
    if !require_root() {
        return;
    }
    let wanted = env_u64("FUZZ_FRAMES", DEFAULT_FRAMES);
    let seed = env_u64("FUZZ_SEED", DEFAULT_SEED);
    let cpu = last_allowed_cpu();
    pin_to_cpu(cpu).expect("pin the test to one CPU");

    let started = Instant::now();
    let mut fuzz = Fuzz::new(Oracle::new(&watched_prefixes(), TEST_FEED));
    let mut generator = Generator::new(seed);
    while fuzz.report.frames < wanted {
        fuzz.run(&generator.next_case());
    }
    fuzz.check_everything();
    let seconds = started.elapsed().as_secs_f64();

    let report = &fuzz.report;
    println!("{}", report.summary(seed, cpu, seconds));
    assert!(
        report.disagreements == 0,
        "{} of {} frames disagreed with the oracle (seed {seed}); see above",
        report.disagreements,
        report.frames
    );
}

// ---- the sensor's maps ---------------------------------------------------------

/// The counter maps of a loaded sensor, opened by id through its program
/// (the loader keeps its own handles): reading a few entries after every
/// frame is much cheaper than draining everything.
struct Maps {
    totals: PerCpuArray<MapData, Totals>,
    services: PerCpuArray<MapData, ServiceCounters>,
    flows: PerCpuHashMap<MapData, FlowKey, FlowValue>,
    cache: PerCpuArray<MapData, FlowSlot>,
    /// Service ids 0..=this.
    last_service: u32,
}

impl Maps {
    fn open(sensor: &Sensor) -> Self {
        let mut maps: HashMap<String, Map> = program_map_ids(sensor)
            .into_iter()
            .map(|id| {
                let data = MapData::from_id(id).expect("open the program's map");
                let info = data.info().expect("map info");
                let name = info.name_as_str().unwrap_or_default().to_string();
                (
                    name,
                    Map::from_map_data(data).expect("a map type aya knows"),
                )
            })
            .collect();
        let mut take = |name: &str| {
            maps.remove(name)
                .unwrap_or_else(|| panic!("the program has no map {name}"))
        };
        Self {
            totals: take(MAP_TOTALS).try_into().expect("a per-CPU array"),
            services: take(MAP_SERVICES).try_into().expect("a per-CPU array"),
            flows: take(MAP_FLOWS).try_into().expect("a per-CPU hash"),
            cache: take(MAP_FLOW_CACHE).try_into().expect("a per-CPU array"),
            last_service: u32::try_from(sensor.services.len()).expect("few services"),
        }
    }

    fn tally(&self) -> Tally {
        let values = self.totals.get(&0, 0).expect("read the totals");
        let mut tally = Tally::default();
        for cpu in values.iter() {
            tally.add(&Tally::of(cpu));
        }
        tally
    }

    /// Indexed by service id.
    fn services(&self) -> Vec<ServiceCounters> {
        (0..=self.last_service)
            .map(|id| {
                let values = self.services.get(&id, 0).expect("read a service");
                let mut sum = ServiceCounters {
                    packets: [0; 2],
                    bytes: [0; 2],
                };
                for cpu in values.iter() {
                    for direction in 0..2 {
                        sum.packets[direction] += cpu.packets[direction];
                        sum.bytes[direction] += cpu.bytes[direction];
                    }
                }
                sum
            })
            .collect()
    }

    /// The flow `key` over CPUs, from the LRU table and the cache.
    fn flow(&self, key: &FlowKey, sensor: &Sensor) -> FlowCount {
        let mut values: Vec<FlowValue> = match self.flows.get(key, 0) {
            Ok(per_cpu) => per_cpu.iter().copied().collect(),
            Err(MapError::KeyNotFound) => Vec::new(),
            Err(error) => panic!("cannot read a flow: {error}"),
        };
        let slots = self.cache.get(&0, 0).expect("read the flow cache");
        values.extend(
            slots
                .iter()
                .filter(|slot| slot.check != 0 && same_flow(&slot.key, key))
                .map(|slot| slot.value),
        );
        let mut count = FlowCount::default();
        for value in values.iter().filter(|value| value.packets > 0) {
            count.packets += value.packets;
            count.bytes += value.bytes;
            count.tcp_flags |= value.tcp_flags;
            count.service = service_name(sensor, value.service);
        }
        count
    }
}

/// `struct bpf_prog_info` (linux/bpf.h) up to its map ids.
#[repr(C)]
#[derive(Default)]
struct ProgramInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The ids of the maps the sensor's program uses.
fn program_map_ids(sensor: &Sensor) -> Vec<u32> {
    let fd = program_fd(sensor).expect("the loaded program");
    let mut ids = [0u32; 32];
    let mut info = ProgramInfo {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..ProgramInfo::default()
    };
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_raw_fd()).expect("a descriptor"),
        info_len: size_of::<ProgramInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` is the command's member of bpf_attr, its size given;
    // the kernel writes at most `info_len` bytes to `info` and at most
    // `nr_map_ids` ids to `ids`, both alive until it returns.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>(),
        )
    };
    assert!(
        result == 0,
        "BPF_OBJ_GET_INFO_BY_FD: {}",
        std::io::Error::last_os_error()
    );
    ids[..(info.nr_map_ids as usize).min(ids.len())].to_vec()
}

fn service_name(sensor: &Sensor, id: u16) -> String {
    sensor
        .services
        .name(u32::from(id))
        .unwrap_or("(no service)")
        .to_string()
}

// ---- counting --------------------------------------------------------------

/// The counters of `Totals` that every frame moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    /// ipv4, ipv6, other.
    families: [u64; 3],
    malformed: [u64; MALFORMED_REASONS],
    watched: u64,
    matched: u64,
    flow_inserts: u64,
    flow_insert_failures: u64,
}

const FAMILY_NAMES: [&str; 3] = ["ipv4", "ipv6", "other"];

fn family_index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
        Family::Other => 2,
    }
}

impl Tally {
    fn of(totals: &Totals) -> Self {
        Self {
            bytes: totals.bytes,
            families: [totals.ipv4, totals.ipv6, totals.other],
            malformed: totals.malformed[..MALFORMED_REASONS]
                .try_into()
                .expect("as many reasons"),
            watched: totals.watched,
            matched: totals.matched,
            flow_inserts: totals.flow_inserts,
            flow_insert_failures: totals.flow_insert_failures,
        }
    }

    fn add(&mut self, other: &Self) {
        self.combine(other, u64::wrapping_add);
    }

    /// What grew since `earlier`.
    fn since(mut self, earlier: &Self) -> Self {
        self.combine(earlier, u64::wrapping_sub);
        self
    }

    fn combine(&mut self, other: &Self, op: fn(u64, u64) -> u64) {
        self.bytes = op(self.bytes, other.bytes);
        for (mine, theirs) in self.families.iter_mut().zip(other.families) {
            *mine = op(*mine, theirs);
        }
        for (mine, theirs) in self.malformed.iter_mut().zip(other.malformed) {
            *mine = op(*mine, theirs);
        }
        self.watched = op(self.watched, other.watched);
        self.matched = op(self.matched, other.matched);
        self.flow_inserts = op(self.flow_inserts, other.flow_inserts);
        self.flow_insert_failures = op(self.flow_insert_failures, other.flow_insert_failures);
    }
}

/// A flow entry summed over CPUs (and the cache and the table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FlowCount {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    service: String,
}

/// (service, direction) → [packets, bytes].
type ServiceTraffic = BTreeMap<(String, u8), [u64; 2]>;

/// Everything the sensor holds: as the oracle adds it up, or as drained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counts {
    tally: Tally,
    /// Only entries with traffic.
    services: ServiceTraffic,
    flows: HashMap<FlowKey, FlowCount>,
}

impl Counts {
    fn read(sensor: &Sensor) -> Self {
        let reading = drain::read(sensor).expect("the maps drain");
        let mut counts = Self {
            tally: Tally::of(&reading.totals),
            services: service_traffic(sensor, &[], &reading.services),
            flows: HashMap::new(),
        };
        for (key, sample) in reading.all_flows() {
            let flow = counts.flows.entry(*key).or_default();
            flow.packets += sample.packets;
            flow.bytes += sample.bytes;
            flow.tcp_flags |= sample.tcp_flags;
            flow.service = service_name(sensor, sample.service);
        }
        counts
    }

    fn apply(&mut self, effect: &Effect) {
        self.tally.add(&effect.tally);
        for (service, [packets, bytes]) in &effect.services {
            let traffic = self.services.entry(service.clone()).or_default();
            traffic[0] += packets;
            traffic[1] += bytes;
        }
        if let Some((key, flow)) = &effect.flow {
            self.flows.insert(*key, flow.clone());
        }
    }
}

/// Service counters that grew from `before` (by id; empty: all zero) to
/// `after`, by name.
fn service_traffic(
    sensor: &Sensor,
    before: &[ServiceCounters],
    after: &[ServiceCounters],
) -> ServiceTraffic {
    let mut traffic = ServiceTraffic::new();
    for (id, counters) in after.iter().enumerate() {
        let id = u16::try_from(id).expect("few services");
        for direction in [DIR_OUTBOUND, DIR_INBOUND] {
            let d = usize::from(direction);
            let (was_packets, was_bytes) = before
                .get(usize::from(id))
                .map_or((0, 0), |was| (was.packets[d], was.bytes[d]));
            let grown = [
                counters.packets[d].wrapping_sub(was_packets),
                counters.bytes[d].wrapping_sub(was_bytes),
            ];
            if grown != [0, 0] {
                traffic.insert((service_name(sensor, id), direction), grown);
            }
        }
    }
    traffic
}

/// What one frame did to the sensor's counters: as the oracle predicts it,
/// or as read after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Effect {
    xdp: u32,
    tally: Tally,
    services: ServiceTraffic,
    /// The oracle's flow for a matched frame, and what its entry holds
    /// afterwards.
    flow: Option<(FlowKey, FlowCount)>,
}

impl Effect {
    /// The oracle's `verdict` on a frame of `len` bytes; `flow_before`
    /// reads a flow entry before the frame (is it new, what will it hold).
    fn predicted(
        verdict: &Verdict,
        len: usize,
        flow_before: impl Fn(&FlowKey) -> FlowCount,
    ) -> Self {
        let len = len as u64;
        let mut tally = Tally {
            bytes: len,
            ..Tally::default()
        };
        tally.families[family_index(verdict.family)] = 1;
        let mut services = ServiceTraffic::new();
        let mut flow = None;
        match &verdict.outcome {
            Outcome::Malformed(reason) => tally.malformed[*reason] = 1,
            Outcome::Unwatched => {}
            Outcome::Watched => tally.watched = 1,
            Outcome::Matched(matched) => {
                tally.watched = 1;
                tally.matched = 1;
                services.insert((matched.service.clone(), matched.direction), [1, len]);
                let key = flow_key(matched);
                let mut count = flow_before(&key);
                tally.flow_inserts = u64::from(count.packets == 0);
                count.packets += 1;
                count.bytes += len;
                count.tcp_flags |= matched.tcp_flags;
                count.service.clone_from(&matched.service);
                flow = Some((key, count));
            }
        }
        Self {
            xdp: XDP_PASS,
            tally,
            services,
            flow,
        }
    }

    /// One line: what moved.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.xdp != XDP_PASS {
            parts.push(format!("XDP verdict {}", self.xdp));
        }
        let t = &self.tally;
        let named = FAMILY_NAMES
            .iter()
            .zip(t.families)
            .chain(MALFORMED_REASON_NAMES.iter().zip(t.malformed))
            .chain([
                (&"watched", t.watched),
                (&"matched", t.matched),
                (&"flow insert", t.flow_inserts),
                (&"flow insert failure", t.flow_insert_failures),
            ]);
        for (name, grown) in named {
            match grown {
                0 => {}
                1 => parts.push((*name).to_string()),
                _ => parts.push(format!("{name} {}", grown as i64)),
            }
        }
        for ((service, direction), [packets, bytes]) in &self.services {
            parts.push(format!(
                "{service} {} +{packets} packets +{bytes} bytes",
                direction_name(*direction)
            ));
        }
        if let Some((key, flow)) = &self.flow {
            parts.push(format!(
                "flow {} {} proto {} port {} {} holds {} packets {} bytes flags {:#04x} service {}",
                key_address(key.family, key.watched),
                key_address(key.family, key.endpoint),
                key.protocol,
                key.port,
                direction_name(key.direction),
                flow.packets,
                flow.bytes,
                flow.tcp_flags,
                if flow.service.is_empty() {
                    "-"
                } else {
                    &flow.service
                },
            ));
        }
        parts.push(format!("{} bytes", t.bytes));
        parts.join(", ")
    }

    /// A short name, to group disagreements: the family and the malformed
    /// reason, or whether it was watched or matched.
    fn label(&self) -> String {
        let t = &self.tally;
        let mut label: Vec<String> = Vec::new();
        if self.xdp != XDP_PASS {
            label.push(format!("XDP {}", self.xdp));
        }
        let moved = |counts: &[u64], names: &[&str]| -> Vec<String> {
            names
                .iter()
                .zip(counts)
                .filter(|(_, count)| **count != 0)
                .map(|(name, _)| (*name).to_string())
                .collect()
        };
        label.extend(moved(&t.families, &FAMILY_NAMES));
        let reasons = moved(&t.malformed, &MALFORMED_REASON_NAMES);
        let malformed = !reasons.is_empty();
        label.extend(reasons);
        if t.matched != 0 {
            label.push("matched".into());
        } else if t.watched != 0 {
            label.push("watched".into());
        } else if !malformed {
            label.push("unwatched".into());
        }
        label.join(" ")
    }
}

/// The flow-table key of a matched packet (addresses IPv4-mapped).
fn flow_key(flow: &Flow) -> FlowKey {
    let (family, watched, endpoint) = match (flow.watched, flow.endpoint) {
        (IpAddr::V4(watched), IpAddr::V4(endpoint)) => (
            FAMILY_V4,
            watched.to_ipv6_mapped().octets(),
            endpoint.to_ipv6_mapped().octets(),
        ),
        (IpAddr::V6(watched), IpAddr::V6(endpoint)) => {
            (FAMILY_V6, watched.octets(), endpoint.octets())
        }
        _ => unreachable!("one family per packet"),
    };
    FlowKey {
        watched,
        endpoint,
        port: flow.port,
        family,
        protocol: flow.protocol,
        direction: flow.direction,
        _pad: [0; 3],
    }
}

/// Where everything the sensor holds differs from what the oracle added
/// up, as text.
fn differences(expected: &Counts, observed: &Counts) -> String {
    let mut lines = Vec::new();
    if expected.tally != observed.tally {
        lines.push(format!(
            "totals: oracle {:?}\n      program {:?}",
            expected.tally, observed.tally
        ));
    }
    if expected.services != observed.services {
        lines.push(format!(
            "services: oracle {:?}\n      program {:?}",
            expected.services, observed.services
        ));
    }
    let mut keys: Vec<&FlowKey> = expected.flows.keys().chain(observed.flows.keys()).collect();
    keys.sort_by_key(|key| key_bytes(key));
    keys.dedup();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|key| expected.flows.get(key) != observed.flows.get(key))
        .map(|key| {
            format!(
                "flow {} {} proto {} port {} {}: oracle {:?}, program {:?}",
                key_address(key.family, key.watched),
                key_address(key.family, key.endpoint),
                key.protocol,
                key.port,
                direction_name(key.direction),
                expected.flows.get(key),
                observed.flows.get(key),
            )
        })
        .collect();
    lines.push(format!("{} flows differ", differing.len()));
    lines.extend(differing.into_iter().take(5));
    lines.join("\n      ")
}

/// A flow key's bytes, to order keys.
fn key_bytes(key: &FlowKey) -> [u8; 40] {
    let mut bytes = [0; 40];
    bytes[..16].copy_from_slice(&key.watched);
    bytes[16..32].copy_from_slice(&key.endpoint);
    bytes[32..34].copy_from_slice(&key.port.to_be_bytes());
    bytes[34] = key.family;
    bytes[35] = key.protocol;
    bytes[36] = key.direction;
    bytes
}

// ---- the run -----------------------------------------------------------------

struct Fuzz {
    oracle: Oracle,
    sensor: Sensor,
    maps: Maps,
    /// The sensor's totals and service counters after the last frame.
    tally: Tally,
    services: Vec<ServiceCounters>,
    /// What the sensor should hold now, flows included; `None` after a
    /// disagreement until the next comparison of everything (the program
    /// may have counted a flow the oracle knows nothing of).
    expected: Option<Counts>,
    since_checked: u64,
    /// A second sensor that runs frames again to see their flows.
    probe: Option<Sensor>,
    report: Report,
}

impl Fuzz {
    fn new(oracle: Oracle) -> Self {
        let sensor = load_sensor();
        let maps = Maps::open(&sensor);
        let services = maps.services();
        Self {
            oracle,
            sensor,
            maps,
            tally: Tally::default(),
            services,
            expected: Some(Counts::default()),
            since_checked: 0,
            probe: None,
            report: Report::default(),
        }
    }

    fn run(&mut self, case: &Case) {
        assert!(
            case.frame.len() >= MIN_TEST_FRAME,
            "a frame the kernel runs"
        );
        let verdict = self.oracle.judge(&case.frame);
        self.report.note(case.category, &verdict);
        let predicted = Effect::predicted(&verdict, case.frame.len(), |key| {
            self.maps.flow(key, &self.sensor)
        });

        let xdp = run_frame(&self.sensor, &case.frame).expect("BPF_PROG_TEST_RUN");
        let tally = self.maps.tally();
        let grown = tally.since(&self.tally);
        let services = if grown.matched != 0 || predicted.tally.matched != 0 {
            self.maps.services()
        } else {
            self.services.clone()
        };
        let observed = Effect {
            xdp,
            tally: grown,
            services: service_traffic(&self.sensor, &self.services, &services),
            flow: predicted
                .flow
                .as_ref()
                .map(|(key, _)| (*key, self.maps.flow(key, &self.sensor))),
        };
        self.tally = tally;
        self.services = services;

        if observed == predicted {
            if let Some(expected) = &mut self.expected {
                expected.apply(&predicted);
            }
        } else {
            let probe = &mut self.probe;
            self.report
                .disagree(case, &verdict, &predicted, &observed, || {
                    flows_counted(probe, &case.frame)
                });
            self.expected = None;
        }
        self.since_checked += 1;
        if self.since_checked == CHECK_EVERYTHING_EVERY {
            self.check_everything();
        }
    }

    /// Compares everything the sensor holds with the oracle's sum, unless a
    /// frame disagreed since the last time; loads a fresh sensor when the
    /// flow table is filling up (at most `CHECK_EVERYTHING_EVERY` flows
    /// come between two calls).
    fn check_everything(&mut self) {
        self.since_checked = 0;
        let observed = Counts::read(&self.sensor);
        match &self.expected {
            Some(expected) => {
                self.report.compared += 1;
                if *expected != observed {
                    self.report.disagreements += 1;
                    let text = differences(expected, &observed);
                    self.report.as_a_whole.push(text);
                }
            }
            None => self.report.not_compared += 1,
        }
        self.expected = Some(observed);
        if self
            .expected
            .as_ref()
            .is_some_and(|e| e.flows.len() > MAX_FLOWS)
        {
            self.sensor = load_sensor();
            self.maps = Maps::open(&self.sensor);
            self.tally = Tally::default();
            self.services = self.maps.services();
            self.expected = Some(Counts::default());
            self.report.loads += 1;
        }
    }
}

/// The flows the program counts `frame` in, run on `probe` (loaded on
/// first use) and seen by draining it before and after.
fn flows_counted(probe: &mut Option<Sensor>, frame: &[u8]) -> String {
    let sensor = probe.get_or_insert_with(load_sensor);
    let before = Counts::read(sensor);
    run_frame(sensor, frame).expect("BPF_PROG_TEST_RUN");
    let after = Counts::read(sensor);
    let mut grown: Vec<String> = after
        .flows
        .iter()
        .filter(|(key, flow)| before.flows.get(key).map_or(0, |was| was.packets) < flow.packets)
        .map(|(key, flow)| {
            format!(
                "flow {} {} proto {} port {} {} service {} flags {:#04x}",
                key_address(key.family, key.watched),
                key_address(key.family, key.endpoint),
                key.protocol,
                key.port,
                direction_name(key.direction),
                flow.service,
                flow.tcp_flags
            )
        })
        .collect();
    grown.sort();
    if grown.is_empty() {
        "(no flow)".to_string()
    } else {
        grown.join(", ")
    }
}

// ---- the report ----------------------------------------------------------------

#[derive(Default)]
struct Report {
    frames: u64,
    categories: BTreeMap<Category, u64>,
    verdicts: BTreeMap<String, u64>,
    disagreements: u64,
    shown: Vec<String>,
    /// (oracle's label, program's label) → count, shortest frame's length
    /// and report.
    kinds: BTreeMap<(String, String), (u64, usize, String)>,
    /// Differences only the comparison of everything found.
    as_a_whole: Vec<String>,
    /// Comparisons of everything made, and left out after a disagreement.
    compared: u64,
    not_compared: u64,
    loads: u64,
}

impl Report {
    fn note(&mut self, category: Category, verdict: &Verdict) {
        self.frames += 1;
        *self.categories.entry(category).or_default() += 1;
        *self.verdicts.entry(verdict_label(verdict)).or_default() += 1;
    }

    /// Records a frame that disagreed; `program_flows` says which flows
    /// the program counted it in (called only for frames shown).
    fn disagree(
        &mut self,
        case: &Case,
        verdict: &Verdict,
        predicted: &Effect,
        observed: &Effect,
        program_flows: impl FnOnce() -> String,
    ) {
        self.disagreements += 1;
        let kind = self
            .kinds
            .entry((predicted.label(), observed.label()))
            .or_insert((0, usize::MAX, String::new()));
        kind.0 += 1;
        let shortest = case.frame.len() < kind.1;
        if !shortest && self.shown.len() >= SHOWN {
            return;
        }
        let text = format!(
            "{} ({} bytes): {}\n    oracle:  {verdict:?}\n             {}\n    program: {}\n             {}",
            case.category.name(),
            case.frame.len(),
            hex(&case.frame),
            predicted.describe(),
            observed.describe(),
            program_flows(),
        );
        if shortest {
            kind.1 = case.frame.len();
            kind.2.clone_from(&text);
        }
        if self.shown.len() < SHOWN {
            self.shown.push(text);
        }
    }

    fn summary(&self, seed: u64, cpu: usize, seconds: f64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fuzz: {} frames in {seconds:.1} s ({:.0} frames/s), seed {seed}, CPU {cpu}; \
             everything the sensor holds compared {} times ({} left out after a \
             disagreement); {} fresh sensor loads",
            self.frames,
            self.frames as f64 / seconds,
            self.compared,
            self.not_compared,
            self.loads,
        );
        let _ = writeln!(out, "frames by category:");
        for (category, count) in &self.categories {
            let _ = writeln!(out, "  {count:>9}  {}", category.name());
        }
        let _ = writeln!(out, "oracle verdicts:");
        for (label, count) in &self.verdicts {
            let _ = writeln!(out, "  {count:>9}  {label}");
        }
        let _ = writeln!(out, "disagreements: {}", self.disagreements);
        for (index, text) in self.shown.iter().enumerate() {
            let _ = writeln!(out, "  #{} {text}", index + 1);
        }
        if !self.kinds.is_empty() {
            let _ = writeln!(
                out,
                "disagreements by kind (oracle / program), each with its shortest frame:"
            );
            for ((oracle, program), (count, _, text)) in &self.kinds {
                let _ = writeln!(out, "  {count} × {oracle} / {program}\n    {text}");
            }
        }
        for text in &self.as_a_whole {
            let _ = writeln!(out, "  the sensor's maps as a whole differ:\n      {text}");
        }
        out
    }
}

fn verdict_label(verdict: &Verdict) -> String {
    let family = FAMILY_NAMES[family_index(verdict.family)];
    match &verdict.outcome {
        Outcome::Malformed(reason) => format!("{family} {}", MALFORMED_REASON_NAMES[*reason]),
        Outcome::Unwatched => format!("{family} unwatched"),
        Outcome::Watched => format!("{family} watched"),
        Outcome::Matched(flow) => format!(
            "{family} matched {}{}",
            direction_name(flow.direction),
            if flow.port == 0 { ", port 0" } else { "" }
        ),
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

// ---- frames ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Valid,
    Padded,
    Truncated,
    TruncatedLengthMatched,
    WrongIpLength,
    WrongIhl,
    ByteFlips,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Padded => "valid, Ethernet padding appended",
            Self::Truncated => "truncated",
            Self::TruncatedLengthMatched => "truncated, IP length shrunk to match",
            Self::WrongIpLength => "wrong IPv4 total length or IPv6 payload length",
            Self::WrongIhl => "wrong IPv4 IHL",
            Self::ByteFlips => "header bytes flipped",
        }
    }
}

struct Case {
    category: Category,
    frame: Vec<u8>,
}

/// Where a valid frame's IP header is.
#[derive(Clone, Copy)]
struct IpHeader {
    start: usize,
    v6: bool,
    /// IPv4: the header with options; IPv6: 40.
    len: usize,
}

/// A valid frame and where its headers end.
struct Built {
    frame: Vec<u8>,
    ip: Option<IpHeader>,
    /// Offsets where a header ends, in order; the last is where the
    /// transport header (or the last header there is) ends.
    boundaries: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Role {
    Watched,
    Endpoint,
    /// Near a watched or endpoint prefix but outside it, or anywhere.
    Other,
}

/// Fixed addresses (edges of prefixes) and prefixes to draw from, per role.
struct Pool {
    addresses: Vec<IpAddr>,
    prefixes: Vec<IpNet>,
}

impl Pool {
    fn new(addresses: &[&str], prefixes: &[&str]) -> Self {
        Self {
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("address"))
                .collect(),
            prefixes: prefixes
                .iter()
                .map(|p| p.parse().expect("prefix"))
                .collect(),
        }
    }
}

struct Generator {
    rng: Random,
    queue: VecDeque<Case>,
    /// [v4, v6] × [watched, endpoint, other].
    pools: [[Pool; 3]; 2],
}

const PORTS: [u16; 11] = [0, 53, 80, 123, 443, 500, 1194, 4500, 8443, 51820, 65535];

impl Generator {
    fn new(seed: u64) -> Self {
        let v4 = [
            Pool::new(
                &[
                    "175.45.176.0",
                    "175.45.176.1",
                    "175.45.177.10",
                    "175.45.179.255",
                    "203.0.113.64",
                    "203.0.113.127",
                ],
                &["175.45.176.0/22", "203.0.113.64/26"],
            ),
            Pool::new(
                &[
                    "198.51.100.0",
                    "198.51.100.10",
                    "198.51.100.127",
                    "198.51.100.128",
                    "198.51.100.199",
                    "198.51.100.200",
                    "198.51.100.201",
                    "198.51.100.255",
                    "203.0.113.0",
                    "203.0.113.63",
                    "203.0.113.128",
                    "203.0.113.255",
                ],
                &["198.51.100.0/24", "203.0.113.0/24"],
            ),
            Pool::new(
                &[
                    "175.45.175.255",
                    "175.45.180.0",
                    "175.44.177.10",
                    "198.51.101.0",
                    "203.0.112.255",
                    "192.0.2.1",
                ],
                &["175.45.0.0/16", "198.51.0.0/16", "0.0.0.0/0"],
            ),
        ];
        let v6 = [
            Pool::new(
                &[
                    "2001:db8:aa::",
                    "2001:db8:aa::10",
                    "2001:db8:aa:ffff:ffff:ffff:ffff:ffff",
                    "2001:db8:e0:1:8000::1",
                ],
                &["2001:db8:aa::/48", "2001:db8:e0:1:8000::/65"],
            ),
            Pool::new(
                &[
                    "2001:db8:e0::",
                    "2001:db8:e0::5",
                    "2001:db8:e0:ffff::1",
                    "2001:db8:e0:1::5",
                    "2001:db8:e0:1:7fff:ffff:ffff:ffff",
                    "2001:db8:e0:1:ffff::1",
                ],
                &["2001:db8:e0::/48", "2001:db8:e0:1::/64"],
            ),
            Pool::new(
                &[
                    "2001:db8:ab::1",
                    "2001:db8:a9:ffff:ffff:ffff:ffff:ffff",
                    "2001:db8:ff::1",
                    "2001:db9:aa::1",
                    "fe80::1",
                ],
                &["2001:db8::/32", "::/0"],
            ),
        ];
        Self {
            rng: Random(seed),
            queue: VecDeque::new(),
            pools: [v4, v6],
        }
    }

    fn next_case(&mut self) -> Case {
        if self.queue.is_empty() {
            self.refill();
        }
        self.queue.pop_front().expect("refilled")
    }

    fn below(&mut self, bound: usize) -> usize {
        self.rng.below(bound as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// One valid frame and every variant of it.
    fn refill(&mut self) {
        let built = self.valid_frame();
        let frame = &built.frame;
        let mut cases = vec![(Category::Valid, frame.clone())];
        if self.chance(2) {
            let mut padded = frame.clone();
            let padding = 1 + self.below(46);
            padded.extend(self.bytes(padding));
            cases.push((Category::Padded, padded));
        }

        let cuts: BTreeSet<usize> = if self.chance(8) {
            (ETH_HEADER..frame.len()).collect()
        } else {
            let mut cuts: BTreeSet<usize> = built
                .boundaries
                .iter()
                .flat_map(|&end| [end - 1, end, end + 1])
                .collect();
            for _ in 0..2 {
                cuts.insert(ETH_HEADER + self.below(frame.len() - ETH_HEADER + 1));
            }
            cuts.retain(|&cut| (ETH_HEADER..frame.len()).contains(&cut));
            cuts
        };
        for cut in cuts {
            cases.push((Category::Truncated, frame[..cut].to_vec()));
            if let Some(ip) = built.ip {
                let fixed = if ip.v6 { IPV6_HEADER } else { IPV4_HEADER };
                if cut >= ip.start + fixed {
                    let len = cut - ip.start - if ip.v6 { IPV6_HEADER } else { 0 };
                    let mut shrunk = frame[..cut].to_vec();
                    set_ip_length(&mut shrunk, ip, len);
                    cases.push((Category::TruncatedLengthMatched, shrunk));
                }
            }
        }

        if let Some(ip) = built.ip {
            for _ in 0..3 {
                let mut wrong = frame.clone();
                let len = self.odd_ip_length(&built, ip);
                set_ip_length(&mut wrong, ip, len);
                cases.push((Category::WrongIpLength, wrong));
            }
            if !ip.v6 {
                let mut wrong = frame.clone();
                wrong[ip.start] = 0x40 | self.below(16) as u8;
                cases.push((Category::WrongIhl, wrong));
            }
        }

        let headers_end = built.boundaries.last().copied().unwrap_or(ETH_HEADER);
        for _ in 0..4 {
            let mut flipped = frame.clone();
            let region = (headers_end + 4).min(flipped.len());
            for _ in 0..1 + self.below(3) {
                let at = self.below(region);
                if self.chance(2) {
                    flipped[at] ^= 1 << self.below(8);
                } else {
                    flipped[at] = self.rng.next_u64() as u8;
                }
            }
            cases.push((Category::ByteFlips, flipped));
        }

        self.queue.extend(
            cases
                .into_iter()
                .map(|(category, frame)| Case { category, frame }),
        );
    }

    /// A wrong value for the IP length field: 0, inside the headers,
    /// one off, beyond the frame, the largest, or anything.
    fn odd_ip_length(&mut self, built: &Built, ip: IpHeader) -> usize {
        let fixed = if ip.v6 { IPV6_HEADER } else { 0 };
        let actual = built.frame.len() - ip.start - fixed;
        match self.below(8) {
            0 => 0,
            1 => self.below(ip.len + 1),
            2 => self.below(actual + 1),
            3 => actual.saturating_sub(1),
            4 => actual + 1,
            5 => actual + 1 + self.below(200),
            6 => 0xffff,
            _ => self.below(0x1_0000),
        }
    }

    fn valid_frame(&mut self) -> Built {
        let family = match self.below(20) {
            0..=8 => Some(false),
            9..=17 => Some(true),
            _ => None,
        };
        let ether_type = match family {
            Some(false) => EtherType::IPV4.0,
            Some(true) => EtherType::IPV6.0,
            None => {
                let random = self.rng.next_u64() as u16;
                self.pick(&[0x0806, 0x88cc, 0x9100, 0x8847, random])
            }
        };
        let tags = self.pick(&[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3]);
        let tpids: Vec<u16> = (0..tags)
            .map(|_| {
                self.pick(&[
                    TPID_8021Q,
                    TPID_8021AD,
                    TPID_8021Q,
                    TPID_8021AD,
                    TPID_8021Q,
                    0x9100,
                ])
            })
            .collect();

        let mut frame = Vec::new();
        let mut boundaries = Vec::new();
        let first = tpids.first().copied().unwrap_or(ether_type);
        let source: [u8; 6] = self.bytes(6).try_into().expect("6 bytes");
        Ethernet2Header {
            source,
            destination: [0x02, 0, 0, 0, 0, 0x01],
            ether_type: EtherType(first),
        }
        .write(&mut frame)
        .expect("write to a Vec");
        boundaries.push(frame.len());
        for index in 0..tpids.len() {
            let next = tpids.get(index + 1).copied().unwrap_or(ether_type);
            SingleVlanHeader {
                pcp: VlanPcp::try_new(self.below(8) as u8).expect("3 bits"),
                drop_eligible_indicator: self.chance(2),
                vlan_id: VlanId::try_new(self.below(4096) as u16).expect("12 bits"),
                ether_type: EtherType(next),
            }
            .write(&mut frame)
            .expect("write to a Vec");
            boundaries.push(frame.len());
        }

        let ip = match family {
            Some(false) => Some(self.ipv4(&mut frame, &mut boundaries)),
            Some(true) => Some(self.ipv6(&mut frame, &mut boundaries)),
            None => {
                let len = self.below(47);
                frame.extend(self.bytes(len));
                None
            }
        };
        Built {
            frame,
            ip,
            boundaries,
        }
    }

    fn ipv4(&mut self, frame: &mut Vec<u8>, boundaries: &mut Vec<usize>) -> IpHeader {
        let (src, dst) = self.addresses(false);
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
            unreachable!("IPv4 pools")
        };
        let (protocol, transport, transport_header) = self.transport(false);
        let mut header = Ipv4Header::new(
            u16::try_from(transport.len()).expect("small"),
            64,
            IpNumber(protocol),
            src.octets(),
            dst.octets(),
        )
        .expect("a valid header");
        if self.chance(4) {
            let len = 4 * (1 + self.below(10));
            let options = self.bytes(len);
            header.options = options[..].try_into().expect("up to 40 bytes");
        }
        match self.below(10) {
            0 => header.more_fragments = true,
            1 | 2 => {
                let offset = 1 + self.below(0x1fff) as u16;
                header.fragment_offset = IpFragOffset::try_new(offset).expect("13 bits");
                header.more_fragments = self.chance(2);
            }
            3 => header.dont_fragment = true,
            _ => {}
        }
        header.header_checksum = header.calc_header_checksum();
        let start = frame.len();
        header.write(frame).expect("write to a Vec");
        boundaries.push(frame.len());
        let len = frame.len() - start;
        frame.extend(transport);
        if transport_header > 0 {
            boundaries.push(start + len + transport_header);
        }
        IpHeader {
            start,
            v6: false,
            len,
        }
    }

    fn ipv6(&mut self, frame: &mut Vec<u8>, boundaries: &mut Vec<usize>) -> IpHeader {
        let (src, dst) = self.addresses(true);
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (src, dst) else {
            unreachable!("IPv6 pools")
        };
        let depth = match self.below(10) {
            0..=3 => 0,
            4..=6 => 1 + self.below(3),
            7 | 8 => 4 + self.below(3),
            _ => 7 + self.below(2),
        };
        let kinds: Vec<IpNumber> = (0..depth)
            .map(|_| {
                self.pick(&[
                    IpNumber::IPV6_HEADER_HOP_BY_HOP,
                    IpNumber::IPV6_ROUTE_HEADER,
                    IpNumber::IPV6_DESTINATION_OPTIONS,
                    IpNumber::IPV6_FRAGMENTATION_HEADER,
                    IpNumber::AUTHENTICATION_HEADER,
                ])
            })
            .collect();
        let (protocol, transport, transport_header) = self.transport(true);

        let mut chain = Vec::new();
        let mut ends = Vec::new();
        for (index, kind) in kinds.iter().enumerate() {
            let next = kinds.get(index + 1).copied().unwrap_or(IpNumber(protocol));
            match *kind {
                IpNumber::IPV6_FRAGMENTATION_HEADER => {
                    let offset = if self.chance(4) {
                        1 + self.below(0x1fff) as u16
                    } else {
                        0
                    };
                    let more = self.chance(2);
                    let id = self.rng.next_u64() as u32;
                    let mut header = Ipv6FragmentHeader::new(
                        next,
                        IpFragOffset::try_new(offset).expect("13 bits"),
                        more,
                        id,
                    )
                    .to_bytes();
                    // RFC 8200's layout (etherparse 0.18 writes IPv4's,
                    // see frames.rs): 13 bits of offset, then the M flag.
                    let field = (offset << 3) | u16::from(more);
                    header[2..4].copy_from_slice(&field.to_be_bytes());
                    chain.extend(header);
                }
                IpNumber::AUTHENTICATION_HEADER => {
                    let len = 4 * self.below(4);
                    let icv = self.bytes(len);
                    let spi = self.rng.next_u64() as u32;
                    let header =
                        IpAuthHeader::new(next, spi, 1, &icv).expect("ICV a multiple of 4");
                    chain.extend(header.to_bytes());
                }
                _ => {
                    let len = 6 + 8 * self.below(3);
                    let options = self.bytes(len);
                    let header = Ipv6RawExtHeader::new_raw(next, &options).expect("6 + 8n bytes");
                    chain.extend(header.to_bytes());
                }
            }
            ends.push(chain.len());
        }
        let start = frame.len();
        Ipv6Header {
            traffic_class: self.rng.next_u64() as u8,
            flow_label: Ipv6FlowLabel::try_new(self.below(1 << 20) as u32).expect("20 bits"),
            payload_length: u16::try_from(chain.len() + transport.len()).expect("small"),
            next_header: kinds.first().copied().unwrap_or(IpNumber(protocol)),
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
        }
        .write(frame)
        .expect("write to a Vec");
        let headers = frame.len();
        boundaries.push(headers);
        boundaries.extend(ends.iter().map(|end| headers + end));
        frame.extend(chain);
        let transport_start = frame.len();
        frame.extend(transport);
        if transport_header > 0 {
            boundaries.push(transport_start + transport_header);
        }
        IpHeader {
            start,
            v6: true,
            len: IPV6_HEADER,
        }
    }

    /// A protocol number, its header and payload, and the header's length
    /// (0 for protocols without one).
    fn transport(&mut self, v6: bool) -> (u8, Vec<u8>, usize) {
        let src = self.port();
        let dst = self.port();
        // Now and then a full-size payload, so offsets go far.
        let payload_len = if self.chance(32) {
            100 + self.below(1300)
        } else {
            self.below(33)
        };
        let payload = self.bytes(payload_len);
        let (protocol, mut bytes) = match self.below(100) {
            0..=29 => {
                let header =
                    UdpHeader::without_ipv4_checksum(src, dst, payload.len()).expect("small");
                (IpNumber::UDP.0, header.to_bytes().to_vec())
            }
            30..=59 => {
                let mut header = TcpHeader::new(src, dst, 1, 1024);
                let flags = self.rng.next_u64() as u8;
                let flag = |bit: u8| flags & (1 << bit) != 0;
                header.fin = flag(0);
                header.syn = flag(1);
                header.rst = flag(2);
                header.psh = flag(3);
                header.ack = flag(4);
                header.urg = flag(5);
                header.ece = flag(6);
                header.cwr = flag(7);
                if self.chance(3) {
                    // NOPs and an end-of-options byte.
                    let mut options = vec![1; 4 * (1 + self.below(10))];
                    *options.last_mut().expect("not empty") = 0;
                    header.set_options_raw(&options).expect("up to 40 bytes");
                }
                (IpNumber::TCP.0, header.to_bytes().to_vec())
            }
            60..=71 => {
                let echo = IcmpEchoHeader { id: 1, seq: 2 };
                let (type_u8, code_u8) = (self.rng.next_u64() as u8, self.below(4) as u8);
                if v6 {
                    let kind = if self.chance(2) {
                        Icmpv6Type::EchoRequest(echo)
                    } else {
                        Icmpv6Type::Unknown {
                            type_u8,
                            code_u8,
                            bytes5to8: [0; 4],
                        }
                    };
                    let header = Icmpv6Header::new(kind).to_bytes();
                    (IpNumber::IPV6_ICMP.0, header.to_vec())
                } else {
                    let kind = if self.chance(2) {
                        Icmpv4Type::EchoRequest(echo)
                    } else {
                        Icmpv4Type::Unknown {
                            type_u8,
                            code_u8,
                            bytes5to8: [0; 4],
                        }
                    };
                    let header = Icmpv4Header::new(kind).to_bytes();
                    (IpNumber::ICMP.0, header.to_vec())
                }
            }
            // The other family's ICMP: no header the program knows.
            72..=74 => (if v6 { 1 } else { 58 }, Vec::new()),
            75..=82 => (self.pick(&[47, 50]), Vec::new()),
            _ => (self.rng.next_u64() as u8, Vec::new()),
        };
        let header_len = bytes.len();
        bytes.extend(payload);
        (protocol, bytes, header_len)
    }

    fn port(&mut self) -> u16 {
        if self.chance(4) {
            self.rng.next_u64() as u16
        } else {
            self.pick(&PORTS)
        }
    }

    /// Source and destination: watched and endpoint either way round most
    /// often, else other mixes.
    fn addresses(&mut self, v6: bool) -> (IpAddr, IpAddr) {
        use Role::{Endpoint, Other, Watched};
        let (src, dst) = match self.below(10) {
            0..=2 => (Watched, Endpoint),
            3..=5 => (Endpoint, Watched),
            6 => (Watched, Watched),
            7 => (Watched, Other),
            8 => (Other, Watched),
            _ => self.pick(&[(Other, Endpoint), (Endpoint, Other), (Other, Other)]),
        };
        (self.address(v6, src), self.address(v6, dst))
    }

    fn address(&mut self, v6: bool, role: Role) -> IpAddr {
        let index = match role {
            Role::Watched => 0,
            Role::Endpoint => 1,
            Role::Other => 2,
        };
        let family = usize::from(v6);
        if !self.chance(4) {
            let at = self.below(self.pools[family][index].addresses.len());
            return self.pools[family][index].addresses[at];
        }
        let at = self.below(self.pools[family][index].prefixes.len());
        let prefix = self.pools[family][index].prefixes[at];
        let random = u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64());
        match prefix {
            IpNet::V4(net) => {
                let host = (random as u32) & u32::from(net.hostmask());
                IpAddr::V4((u32::from(net.network()) | host).into())
            }
            IpNet::V6(net) => {
                let host = random & u128::from(net.hostmask());
                IpAddr::V6((u128::from(net.network()) | host).into())
            }
        }
    }
}

/// Writes `len` into the IP header's length field: IPv4's total length,
/// IPv6's payload length.
fn set_ip_length(frame: &mut [u8], ip: IpHeader, len: usize) {
    let at = ip.start + if ip.v6 { 4 } else { 2 };
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
}
