//! The traffic generator (`classifier generate`, and `cargo xtask demo`):
//! a mix shaped like the 2024 study, deterministic under a seed, written
//! with AF_PACKET onto an interface or into a pcap file.
//!
//! The mix: 31 watched hosts in the watched range hold conversations with
//! endpoints of every service in the endpoint feed, Hotspot Shield,
//! ExpressVPN and PIA holding 63.2, 16.1 and 10.6 % of them and Psiphon
//! 5.1 %; the rest is spread over the other services (at least one each).
//! Each conversation has packets in both directions (so two flows in the
//! report: outbound and inbound), some are VLAN-tagged. Psiphon is
//! generated as it really looks: the packets of a real capture (TLS to a
//! Cloudflare address whose certificate names psiphon3.net; see
//! data/README.md), the client rewritten into the watched range. No
//! address list names that server, so those flows stay unattributed.
//! Around them, a large majority of ordinary traffic between unwatched
//! addresses, and a sprinkle of malformed frames.
//!
//! Endpoint addresses are drawn from the feed and kept only when the
//! feed's longest-prefix match gives the intended service (a prefix nested
//! in another service's would not).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use etherparse::{
    EtherType, Ethernet2Header, Ipv4Header, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
    VlanId,
};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{
    cli::GenerateArgs,
    feeds::{EndpointFeed, WatchedSet},
};

/// The study's shares of the watched hosts' conversations.
pub const STUDY_SHARES: [(&str, f64); 3] = [
    ("hotspot-shield", 0.632),
    ("expressvpn", 0.161),
    ("pia", 0.106),
];
/// Psiphon's share: generated from the real capture, never attributed.
pub const PSIPHON_SHARE: f64 = 0.051;
pub const WATCHED_HOSTS: usize = 31;

/// The Psiphon capture (LINKTYPE_RAW; see data/README.md for provenance).
static PSIPHON_PCAP: &[u8] = include_bytes!("../../data/pcap/psiphon3.pcap");
const PSIPHON_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 103);

const SENSOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DEMO_VLAN: u16 = 100;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "{conversations} conversations cannot give each of the {services} other services one (use at least {needed})"
    )]
    TooFew {
        conversations: usize,
        services: usize,
        needed: usize,
    },
    #[error(
        "the endpoint feed has no IPv4 address that matches {0} (its prefixes are all nested in another service's)"
    )]
    NoEndpoint(String),
    #[error("no watched IPv4 prefix to put the {WATCHED_HOSTS} watched hosts in")]
    NoWatchedRange,
    #[error("the bundled Psiphon capture is unreadable: {0}")]
    Psiphon(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How much to generate.
#[derive(Debug, Clone)]
pub struct MixOptions {
    pub seed: u64,
    /// Conversations of the watched hosts (each gives two flows).
    pub conversations: usize,
    /// Ordinary (unwatched) frames per watched frame.
    pub background_ratio: f64,
}

impl Default for MixOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            conversations: 1000,
            background_ratio: 4.0,
        }
    }
}

/// What a service should show in the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub conversations: u64,
    /// Outbound plus inbound flows: twice the conversations.
    pub flows: u64,
    pub packets_outbound: u64,
    pub packets_inbound: u64,
    pub bytes: u64,
    pub unique_sources: u64,
}

/// What was generated, for comparing with the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub frames: u64,
    pub bytes: u64,
    pub watched_hosts: u64,
    /// Attributable services: what the report's service rows must say.
    pub services: BTreeMap<String, ServicePlan>,
    /// Psiphon: watched traffic no address list names.
    pub psiphon: ServicePlan,
    pub psiphon_server: String,
    pub background_frames: u64,
    pub malformed_frames: u64,
    pub vlan_frames: u64,
}

impl Plan {
    /// Each attributable service's share of the attributed flows.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let total: u64 = self.services.values().map(|s| s.flows).sum();
        self.services
            .iter()
            .map(|(name, plan)| (name.clone(), plan.flows as f64 / total.max(1) as f64))
            .collect()
    }
}

/// A generated mix: frames in time order with their offsets from the start.
#[derive(Debug, Clone)]
pub struct Mix {
    pub frames: Vec<Vec<u8>>,
    /// Offset of each frame from the start, as a fraction of the duration.
    pub times: Vec<f64>,
    pub plan: Plan,
}

/// splitmix64: small, fast, and the same everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The feed's longest-prefix match for IPv4 addresses.
struct FeedLookup {
    prefixes: HashMap<Ipv4Net, String>,
    lengths: Vec<u8>,
}

impl FeedLookup {
    fn new(feed: &EndpointFeed) -> Self {
        let mut prefixes = HashMap::new();
        let mut lengths = BTreeSet::new();
        for endpoint in &feed.endpoints {
            if let IpNet::V4(net) = endpoint.net {
                prefixes.insert(net, endpoint.service.clone());
                lengths.insert(net.prefix_len());
            }
        }
        Self {
            prefixes,
            lengths: lengths.into_iter().rev().collect(),
        }
    }

    fn service(&self, address: Ipv4Addr) -> Option<&str> {
        self.lengths.iter().find_map(|len| {
            let net = Ipv4Net::new(address, *len).ok()?.trunc();
            self.prefixes.get(&net).map(String::as_str)
        })
    }
}

/// Conversations per service: the study's shares, Psiphon's, and the rest
/// spread over the other services of the feed (every one at least once).
fn allocate(
    services: &[String],
    conversations: usize,
) -> Result<(Vec<(String, usize)>, usize), GenerateError> {
    let (mut allocation, psiphon, rest) = study_allocation(services, conversations);
    let others: Vec<&String> = services
        .iter()
        .filter(|s| !STUDY_SHARES.iter().any(|(name, _)| name == s))
        .collect();
    if rest < others.len() {
        // The study's shares grow with the total too: the least total
        // whose rest gives each other service one.
        let needed = (conversations + 1..)
            .find(|&total| study_allocation(services, total).2 >= others.len())
            .unwrap_or(usize::MAX);
        return Err(GenerateError::TooFew {
            conversations,
            services: others.len(),
            needed,
        });
    }
    for (index, name) in others.iter().enumerate() {
        let count = rest / others.len() + usize::from(index < rest % others.len());
        allocation.push(((*name).clone(), count));
    }
    Ok((allocation, psiphon))
}

/// The study's services' conversations (those the feed has), Psiphon's,
/// and what is left for the other services.
fn study_allocation(
    services: &[String],
    conversations: usize,
) -> (Vec<(String, usize)>, usize, usize) {
    let mut allocation = Vec::new();
    let mut given = 0;
    for (name, share) in STUDY_SHARES {
        if services.iter().any(|s| s == name) {
            let count = (conversations as f64 * share).round() as usize;
            allocation.push((name.to_string(), count));
            given += count;
        }
    }
    let psiphon = (conversations as f64 * PSIPHON_SHARE).round() as usize;
    given += psiphon;
    (allocation, psiphon, conversations.saturating_sub(given))
}

fn udp_or_tcp_frame(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    ports: (u16, u16),
    tcp: bool,
    vlan: bool,
    payload: &[u8],
) -> Vec<u8> {
    let (source_mac, destination_mac) = (PEER_MAC, SENSOR_MAC);
    let ethernet = PacketBuilder::ethernet2(source_mac, destination_mac);
    let mut frame = Vec::with_capacity(payload.len() + 64);
    let ip = if vlan {
        ethernet
            .single_vlan(VlanId::try_new(DEMO_VLAN).unwrap_or(VlanId::ZERO))
            .ipv4(source.octets(), destination.octets(), 64)
    } else {
        ethernet.ipv4(source.octets(), destination.octets(), 64)
    };
    // Writing into a Vec cannot fail; a payload too big for one packet is
    // never generated.
    let _ = if tcp {
        ip.tcp(ports.0, ports.1, 1, 64_240)
            .ack(1)
            .write(&mut frame, payload)
    } else {
        ip.udp(ports.0, ports.1).write(&mut frame, payload)
    };
    frame
}

/// The Psiphon capture's packets: (from the client?, IPv4 packet).
fn psiphon_packets() -> Result<Vec<(bool, Vec<u8>)>, GenerateError> {
    let mut reader = pcap_file::pcap::PcapReader::new(PSIPHON_PCAP)
        .map_err(|error| GenerateError::Psiphon(error.to_string()))?;
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|error| GenerateError::Psiphon(error.to_string()))?;
        let data = packet.data.into_owned();
        let from_client = data.get(12..16) == Some(&PSIPHON_CLIENT.octets()[..]);
        packets.push((from_client, data));
    }
    Ok(packets)
}

/// One Psiphon packet with the client replaced by `client` (address and
/// port), checksums recomputed, in an Ethernet frame.
fn rewrite_psiphon(packet: &[u8], client: Ipv4Addr, client_port: u16) -> Option<Vec<u8>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let etherparse::NetSlice::Ipv4(ipv4) = sliced.net? else {
        return None;
    };
    let mut ip: Ipv4Header = ipv4.header().to_header();
    let TransportSlice::Tcp(tcp_slice) = sliced.transport? else {
        return None;
    };
    let mut tcp: TcpHeader = tcp_slice.to_header();
    let payload = tcp_slice.payload();
    if ip.source == PSIPHON_CLIENT.octets() {
        ip.source = client.octets();
        tcp.source_port = client_port;
    } else {
        ip.destination = client.octets();
        tcp.destination_port = client_port;
    }
    ip.header_checksum = ip.calc_header_checksum();
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, payload).ok()?;
    let mut frame = Vec::with_capacity(packet.len() + 14);
    Ethernet2Header {
        source: PEER_MAC,
        destination: SENSOR_MAC,
        ether_type: EtherType::IPV4,
    }
    .write(&mut frame)
    .ok()?;
    ip.write(&mut frame).ok()?;
    tcp.write(&mut frame).ok()?;
    frame.extend_from_slice(payload);
    Some(frame)
}

/// A malformed frame (the program counts it by reason, never classifies it).
fn malformed(rng: &mut Rng, source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
    let frame = udp_or_tcp_frame(source, destination, (1024, 53), false, false, &[0; 20]);
    match rng.below(3) {
        // Cut inside the IPv4 header.
        0 => frame[..14 + 12].to_vec(),
        // IHL below 5.
        1 => {
            let mut frame = frame;
            frame[14] = 0x44;
            frame
        }
        // Cut inside the UDP header (total length still claims all of it).
        _ => frame[..14 + 20 + 4].to_vec(),
    }
}

fn random_unwatched(rng: &mut Rng, watched: &WatchedSet) -> Ipv4Addr {
    loop {
        // 1.0.0.0 .. 223.255.255.255, not watched.
        let address = Ipv4Addr::from(0x0100_0000 + rng.below(0xdeff_ffff) as u32);
        if !watched.v4.iter().any(|net| net.contains(&address)) {
            return address;
        }
    }
}

/// Generates the mix for `feed` and `watched` (the first IPv4 watched
/// prefix holds the watched hosts).
pub fn mix(
    feed: &EndpointFeed,
    watched: &WatchedSet,
    options: &MixOptions,
) -> Result<Mix, GenerateError> {
    let mut rng = Rng(options.seed);
    let range = *watched.v4.first().ok_or(GenerateError::NoWatchedRange)?;
    let mut hosts = BTreeSet::new();
    let usable = u64::from(range.hosts().count().max(1) as u32);
    while hosts.len() < WATCHED_HOSTS.min(usable as usize) {
        let offset = rng.below(usable) as u32;
        hosts.insert(Ipv4Addr::from(
            u32::from(range.network()) + offset + u32::from(usable > 2),
        ));
    }
    let hosts: Vec<Ipv4Addr> = hosts.into_iter().collect();
    let lookup = FeedLookup::new(feed);
    let (allocation, psiphon_conversations) = allocate(&feed.services(), options.conversations)?;

    let mut timed: Vec<(f64, Vec<u8>)> = Vec::new();
    let mut plan = Plan {
        seed: options.seed,
        watched_hosts: hosts.len() as u64,
        ..Plan::default()
    };
    let mut sources: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut conversation = 0usize;
    let mut next_host = |rng: &mut Rng| {
        // Every host talks at least once, then at random.
        let host = if conversation < hosts.len() {
            hosts[conversation]
        } else {
            hosts[rng.below(hosts.len() as u64) as usize]
        };
        conversation += 1;
        host
    };
    let mut watched_frames = 0u64;

    for (service, count) in &allocation {
        let candidates: Vec<Ipv4Net> = feed
            .endpoints
            .iter()
            .filter(|e| e.service == *service)
            .filter_map(|e| match e.net {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => None,
            })
            .collect();
        for _ in 0..*count {
            let endpoint = pick_endpoint(&mut rng, &candidates, &lookup, service)?;
            let host = next_host(&mut rng);
            let tcp = rng.below(2) == 0;
            let port = [443, 443, 1194, 51820, 500, 8443][rng.below(6) as usize];
            let client_port = rng.range(1024, 65_535) as u16;
            let vlan = rng.below(10) == 0;
            let start = rng.unit() * 0.9;
            let entry = plan.services.entry(service.clone()).or_default();
            entry.conversations += 1;
            entry.flows += 2;
            sources.entry(service.clone()).or_default().insert(host);
            let outbound = rng.range(2, 8);
            let inbound = rng.range(1, 8);
            for index in 0..outbound + inbound {
                let out = index < outbound;
                let payload = vec![0x5a; rng.range(0, 1200) as usize];
                let frame = if out {
                    udp_or_tcp_frame(host, endpoint, (client_port, port), tcp, vlan, &payload)
                } else {
                    udp_or_tcp_frame(endpoint, host, (port, client_port), tcp, vlan, &payload)
                };
                if out {
                    entry.packets_outbound += 1;
                } else {
                    entry.packets_inbound += 1;
                }
                entry.bytes += frame.len() as u64;
                plan.vlan_frames += u64::from(vlan);
                timed.push((start + index as f64 * 0.005, frame));
                watched_frames += 1;
            }
        }
    }

    let psiphon = psiphon_packets()?;
    let server = psiphon
        .iter()
        .find(|(from_client, _)| *from_client)
        .and_then(|(_, packet)| packet.get(16..20))
        .map(|octets| Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]));
    plan.psiphon_server = server.map(|s| s.to_string()).unwrap_or_default();
    let mut psiphon_sources = BTreeSet::new();
    for _ in 0..psiphon_conversations {
        let host = next_host(&mut rng);
        psiphon_sources.insert(host);
        let client_port = rng.range(1024, 65_535) as u16;
        let start = rng.unit() * 0.9;
        plan.psiphon.conversations += 1;
        plan.psiphon.flows += 2;
        for (index, (from_client, packet)) in psiphon.iter().enumerate() {
            let frame = rewrite_psiphon(packet, host, client_port).ok_or_else(|| {
                GenerateError::Psiphon(format!("packet {} is not IPv4/TCP", index + 1))
            })?;
            if *from_client {
                plan.psiphon.packets_outbound += 1;
            } else {
                plan.psiphon.packets_inbound += 1;
            }
            plan.psiphon.bytes += frame.len() as u64;
            timed.push((start + index as f64 * 0.001, frame));
            watched_frames += 1;
        }
    }
    plan.psiphon.unique_sources = psiphon_sources.len() as u64;
    for (service, hosts) in sources {
        if let Some(entry) = plan.services.get_mut(&service) {
            entry.unique_sources = hosts.len() as u64;
        }
    }

    let background = (watched_frames as f64 * options.background_ratio).round() as u64;
    for _ in 0..background {
        let source = random_unwatched(&mut rng, watched);
        let destination = random_unwatched(&mut rng, watched);
        let frame = if rng.below(200) == 0 {
            plan.malformed_frames += 1;
            malformed(&mut rng, source, destination)
        } else {
            let vlan = rng.below(20) == 0;
            plan.vlan_frames += u64::from(vlan);
            let payload = vec![0x11; rng.range(0, 1400) as usize];
            let ports = (
                rng.range(1024, 65_535) as u16,
                [80, 443, 53, 123][rng.below(4) as usize],
            );
            udp_or_tcp_frame(
                source,
                destination,
                ports,
                rng.below(3) != 0,
                vlan,
                &payload,
            )
        };
        timed.push((rng.unit(), frame));
    }
    plan.background_frames = background;

    // Time order; ties keep generation order (a stable sort).
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let top = timed.last().map_or(1.0, |(t, _)| t.max(1.0));
    plan.frames = timed.len() as u64;
    plan.bytes = timed.iter().map(|(_, f)| f.len() as u64).sum();
    let (times, frames) = timed.into_iter().map(|(t, f)| (t / top, f)).unzip();
    Ok(Mix {
        frames,
        times,
        plan,
    })
}

fn pick_endpoint(
    rng: &mut Rng,
    candidates: &[Ipv4Net],
    lookup: &FeedLookup,
    service: &str,
) -> Result<Ipv4Addr, GenerateError> {
    for _ in 0..1000 {
        let Some(net) = candidates.get(rng.below(candidates.len() as u64) as usize) else {
            break;
        };
        let size = 1u64 << (32 - net.prefix_len());
        let address = Ipv4Addr::from(u32::from(net.network()) + rng.below(size) as u32);
        if lookup.service(address) == Some(service) {
            return Ok(address);
        }
    }
    Err(GenerateError::NoEndpoint(service.to_string()))
}

/// Writes the frames onto `iface` with AF_PACKET, spread over `duration`
/// (never faster than 32 frames per 2 ms, which a veth's receive ring of
/// 256 frames absorbs without dropping).
pub fn send(iface: &str, mix: &Mix, duration: Duration) -> Result<(), GenerateError> {
    let io_error = |source| GenerateError::Io {
        path: iface.to_string(),
        source,
    };
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io_error(std::io::Error::other("NUL in interface name")))?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io_error(std::io::Error::other("no such interface")));
    }
    // SAFETY: plain socket creation; protocol 0 receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io_error(std::io::Error::last_os_error()));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = index as i32;
    address.sll_halen = 6;
    let started = std::time::Instant::now();
    let mut result = Ok(());
    for (number, (frame, at)) in mix.frames.iter().zip(&mix.times).enumerate() {
        let due = duration.mul_f64(*at);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        // SAFETY: buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent != frame.len() as isize {
            result = Err(io_error(std::io::Error::other(format!(
                "frame {} ({} bytes): {}",
                number + 1,
                frame.len(),
                std::io::Error::last_os_error()
            ))));
            break;
        }
        if number % 32 == 31 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    result
}

/// Writes the frames into a pcap file (Ethernet, nanosecond timestamps),
/// spread over `duration` from `start_unix_ns`.
pub fn write_pcap(
    path: &Path,
    mix: &Mix,
    start_unix_ns: i64,
    duration: Duration,
) -> Result<(), GenerateError> {
    use pcap_file::{
        DataLink, TsResolution,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    let io_error = |source: std::io::Error| GenerateError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io_error)?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), header)
        .map_err(|error| io_error(std::io::Error::other(error)))?;
    for (frame, at) in mix.frames.iter().zip(&mix.times) {
        let offset = duration.mul_f64(*at);
        let time = Duration::from_nanos(
            u64::try_from(i128::from(start_unix_ns) + offset.as_nanos() as i128).unwrap_or(0),
        );
        let packet = PcapPacket::new(time, frame.len() as u32, frame);
        writer
            .write_packet(&packet)
            .map_err(|error| io_error(std::io::Error::other(error)))?;
    }
    Ok(())
}

/// `classifier generate`.
pub fn generate(args: &GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let feed = EndpointFeed::from_arguments(&args.feeds.endpoint_files)?;
    let watched = WatchedSet::from_arguments(&args.feeds.watch, &args.feeds.watch_files)?;
    let options = MixOptions {
        seed: args.seed,
        conversations: args.conversations,
        background_ratio: args.background_ratio,
    };
    let mix = mix(&feed, &watched, &options)?;
    let plan = &mix.plan;
    if let Some(path) = &args.plan {
        let text = serde_json::to_string_pretty(plan)?;
        std::fs::write(path, text + "\n").map_err(|source| GenerateError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    log::info!(
        "{} frames ({} watched conversations of {} hosts, {} ordinary frames, {} malformed, {} VLAN-tagged), seed {}",
        plan.frames,
        plan.services.values().map(|s| s.conversations).sum::<u64>() + plan.psiphon.conversations,
        plan.watched_hosts,
        plan.background_frames,
        plan.malformed_frames,
        plan.vlan_frames,
        plan.seed
    );
    if let Some(path) = &args.pcap {
        let start = crate::snapshot::now_unix_ns();
        write_pcap(path, &mix, start, args.duration)?;
        log::info!("wrote {}", path.display());
    }
    if let Some(iface) = &args.iface {
        send(iface, &mix, args.duration)?;
        log::info!("sent {} frames on {iface}", plan.frames);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> (EndpointFeed, WatchedSet) {
        (
            EndpointFeed::from_arguments(&[]).unwrap(),
            WatchedSet::from_arguments(&[], &[]).unwrap(),
        )
    }

    #[test]
    fn the_mix_follows_the_study_and_is_deterministic() {
        let (feed, watched) = bundled();
        let options = MixOptions {
            background_ratio: 1.0,
            ..MixOptions::default()
        };
        let one = mix(&feed, &watched, &options).unwrap();
        let again = mix(&feed, &watched, &options).unwrap();
        assert_eq!(one.frames, again.frames);
        assert_eq!(one.plan, again.plan);
        let plan = &one.plan;
        assert_eq!(plan.watched_hosts, 31);
        assert_eq!(plan.services["hotspot-shield"].conversations, 632);
        assert_eq!(plan.services["expressvpn"].conversations, 161);
        assert_eq!(plan.services["pia"].conversations, 106);
        assert_eq!(plan.psiphon.conversations, 51);
        assert_eq!(plan.services.len(), feed.services().len());
        let total: u64 = plan.services.values().map(|s| s.conversations).sum();
        assert_eq!(total + plan.psiphon.conversations, 1000);
        assert_eq!(
            plan.psiphon.packets_outbound + plan.psiphon.packets_inbound,
            51 * 62
        );
        assert_eq!(plan.psiphon_server, "104.18.151.190");
        assert!(plan.malformed_frames > 0 && plan.vlan_frames > 0);
        let other = mix(&feed, &watched, &MixOptions { seed: 2, ..options }).unwrap();
        assert_ne!(other.frames, one.frames);
    }

    #[test]
    fn endpoints_are_the_feeds_longest_prefix_match() {
        let (feed, _) = bundled();
        let lookup = FeedLookup::new(&feed);
        let mut rng = Rng(7);
        for service in feed.services() {
            let candidates: Vec<Ipv4Net> = feed
                .endpoints
                .iter()
                .filter(|e| e.service == service)
                .filter_map(|e| match e.net {
                    IpNet::V4(net) => Some(net),
                    IpNet::V6(_) => None,
                })
                .collect();
            let address = pick_endpoint(&mut rng, &candidates, &lookup, &service).unwrap();
            assert_eq!(lookup.service(address), Some(service.as_str()));
        }
    }

    #[test]
    fn too_few_conversations_are_refused_with_the_minimum() {
        let (feed, watched) = bundled();
        let options = MixOptions {
            conversations: 20,
            ..MixOptions::default()
        };
        let error = mix(&feed, &watched, &options).unwrap_err();
        let GenerateError::TooFew { needed, .. } = error else {
            panic!("{error}")
        };
        // The minimum named is the minimum: it is enough, one fewer is not.
        for (conversations, enough) in [(needed, true), (needed - 1, false)] {
            let options = MixOptions {
                conversations,
                ..MixOptions::default()
            };
            assert_eq!(
                mix(&feed, &watched, &options).is_ok(),
                enough,
                "{conversations} conversations"
            );
        }
    }

    #[test]
    fn psiphon_packets_are_rewritten_with_valid_checksums() {
        let packets = psiphon_packets().unwrap();
        assert_eq!(packets.len(), 62);
        let client = Ipv4Addr::new(175, 45, 176, 9);
        for (from_client, packet) in &packets {
            let frame = rewrite_psiphon(packet, client, 50_000).unwrap();
            let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
                panic!("IPv4")
            };
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let watched = if *from_client {
                header.source
            } else {
                header.destination
            };
            assert_eq!(watched, client.octets());
            let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("TCP")
            };
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .unwrap();
            assert_eq!(tcp.checksum(), expected);
        }
    }
}
