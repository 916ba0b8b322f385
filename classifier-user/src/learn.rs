//! Learning endpoints the lists miss. The XDP program hands over DNS
//! responses sent to watched hosts (`LearnRecord`s through a ring buffer);
//! an answer (A, AAAA, through CNAME chains) for a name the domain feed
//! covers teaches that the address serves that service, for the answer's
//! TTL bounded by `--learn-ttl`. Learned addresses go into the kernel's
//! `LEARNED` map, which the program consults when no feed names the other
//! end (so a feed entry always wins), and come out again when they expire.
//! Addresses in shared-hosting or CDN ranges are never learned: domain
//! fronting would paint a whole CDN as a VPN.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, RingBuf};
use classifier_common::{
    ENDPOINT_HINT_LEARNED, ENDPOINT_HINT_VERDICTS, EndpointHint, FAMILY_V4, FlowKey, LEARN_BYTES,
    LEARN_DNS, LEARN_TCP, LearnRecord, MAP_ENDPOINT_HINTS, MAP_LEARN_EVENTS, MAP_LEARNED,
    MAP_VERDICTS, endpoint_hint_index,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{feeds::sha256_hex, loader::ServiceTable};

/// The bundled domain feed and its provenance (data/PROVENANCE.md).
pub const BUNDLED_DOMAINS: &str = include_str!("../../data/vpn-domains.csv");
pub const BUNDLED_DOMAINS_NAME: &str = "bundled:data/vpn-domains.csv";
/// The bundled shared-hosting and CDN ranges (data/PROVENANCE.md).
pub const BUNDLED_SHARED_HOSTING: &str = include_str!("../../data/shared-hosting.csv");
pub const BUNDLED_SHARED_HOSTING_NAME: &str = "bundled:data/shared-hosting.csv";
/// `--learn-ttl` by default: a learned address is kept at most this long.
pub const DEFAULT_LEARN_TTL: Duration = Duration::from_secs(24 * 3600);
/// CNAME links followed from the question at most (a loop ends there).
const MAX_CNAME_HOPS: usize = 8;
/// Bytes of one TCP direction kept for TLS at most (a certificate chain).
const MAX_STREAM_BYTES: usize = 32 * 1024;
/// TCP directions followed at once at most; more are dropped, oldest first
/// is not tracked: the table is cleared and counted.
const MAX_STREAMS: usize = 4096;
/// TCP directions remembered as read at most; past it they are forgotten
/// (a forgotten one is read again from its next segment).
const MAX_FINISHED: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("{file}: line {line}: {problem}")]
    Line {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
    #[error("{0}")]
    Map(String),
    /// A feed parser's error, which names its file itself.
    #[error(transparent)]
    Feed(#[from] crate::feeds::FeedError),
}

/// Each file's name and text.
fn read_sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>, LearnError> {
    paths
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            match crate::feeds::read_file(path) {
                Ok(text) => Ok((file, text)),
                Err(crate::feeds::FeedError::Line { line, problem, .. }) => Err(LearnError::Line {
                    file,
                    line: line as usize,
                    problem: problem.to_string(),
                }),
                Err(crate::feeds::FeedError::Read { source, .. }) => Err(LearnError::File {
                    file,
                    problem: format!("cannot read: {source}"),
                }),
                Err(error) => Err(LearnError::File {
                    file,
                    problem: error.to_string(),
                }),
            }
        })
        .collect()
}

// ---- the domain feed ------------------------------------------------------

/// `domain,service` rows: a domain covers itself and every name below it.
#[derive(Debug, Clone, Default)]
pub struct DomainFeed {
    /// Domain → service.
    domains: HashMap<String, String>,
    /// Where the rows came from: name and SHA-256 of each file.
    pub origins: Vec<(String, String)>,
}

/// A domain as feeds and answers give it: lowercase, without a trailing
/// dot; `None` if it is not a host name (labels of letters, digits, `-`
/// and `_`, 1–63 bytes each, 253 in all, at least two labels).
fn normalise_domain(text: &str) -> Option<String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let valid = name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(name)
}

impl DomainFeed {
    /// The bundled feed.
    pub fn bundled() -> Self {
        Self::from_sources(&[(BUNDLED_DOMAINS_NAME.into(), BUNDLED_DOMAINS.into())])
            .expect("the bundled domain feed is valid")
    }

    /// The files at `paths`, or the bundled feed when there are none.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, LearnError> {
        if paths.is_empty() {
            return Ok(Self::bundled());
        }
        Self::from_sources(&read_sources(paths)?)
    }

    /// Parses `(name, text)` feeds: a header naming `domain` and `service`
    /// columns, `#` comments and blank lines allowed; a leading `*.` or `.`
    /// is dropped (a domain covers its subdomains anyway). A bad row, or a
    /// domain listed for two services, refuses the whole feed.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, LearnError> {
        let mut feed = Self::default();
        // Domain → (file, line) that listed it first.
        let mut listed: HashMap<String, (String, usize)> = HashMap::new();
        for (file, text) in sources {
            let mut columns = None;
            for (index, raw) in crate::feeds::feed_lines(text).enumerate() {
                let line = index + 1;
                let problem = |problem: String| LearnError::Line {
                    file: file.clone(),
                    line,
                    problem,
                };
                let content = raw.split('#').next().unwrap_or("").trim();
                if content.is_empty() {
                    continue;
                }
                let fields: Vec<&str> = content.split(',').map(str::trim).collect();
                let Some((domain_column, service_column)) = columns else {
                    let position =
                        |name: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(name));
                    match (position("domain"), position("service")) {
                        (Some(domain), Some(service)) => columns = Some((domain, service)),
                        _ => {
                            return Err(problem(
                                "the header must name `domain` and `service` columns".into(),
                            ));
                        }
                    }
                    continue;
                };
                let raw_domain = fields.get(domain_column).copied().unwrap_or("");
                let service = fields.get(service_column).copied().unwrap_or("");
                if service.is_empty() {
                    return Err(problem("no service".into()));
                }
                crate::feeds::check_service_name(service)
                    .map_err(|bad| problem(bad.to_string()))?;
                let stripped = raw_domain.trim_start_matches("*.").trim_start_matches('.');
                let Some(domain) = normalise_domain(stripped) else {
                    return Err(problem(format!("{raw_domain:?} is not a domain name")));
                };
                match feed.domains.get(&domain) {
                    Some(existing) if existing != service => {
                        let (first_file, first_line) = &listed[&domain];
                        return Err(problem(format!(
                            "{domain} is listed for {existing} ({first_file}: line {first_line}) and for {service}"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        listed.insert(domain.clone(), (file.clone(), line));
                        feed.domains.insert(domain, service.to_string());
                    }
                }
            }
            if columns.is_none() {
                return Err(LearnError::File {
                    file: file.clone(),
                    problem: "no header naming `domain` and `service` columns".into(),
                });
            }
            feed.origins
                .push((file.clone(), sha256_hex(text.as_bytes())));
        }
        Ok(feed)
    }

    /// The service and the feed's domain that cover `name`, the longest
    /// domain first.
    pub fn service_for(&self, name: &str) -> Option<(&str, &str)> {
        let name = normalise_domain(name)?;
        let mut suffix = name.as_str();
        loop {
            if let Some((domain, service)) = self.domains.get_key_value(suffix) {
                return Some((service.as_str(), domain.as_str()));
            }
            suffix = suffix.split_once('.')?.1;
        }
    }

    /// The services the feed names, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut services: Vec<String> = self.domains.values().cloned().collect();
        services.sort();
        services.dedup();
        services
    }

    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

// ---- shared hosting -------------------------------------------------------

/// Ranges of shared hosting and CDNs, never learned.
#[derive(Debug, Clone, Default)]
pub struct SharedHosting {
    ranges: Vec<(IpNet, String)>,
}

impl SharedHosting {
    pub fn bundled() -> Self {
        Self::from_sources(&[(
            BUNDLED_SHARED_HOSTING_NAME.into(),
            BUNDLED_SHARED_HOSTING.into(),
        )])
        .expect("the bundled shared-hosting list is valid")
    }

    /// The files at `paths`, or the bundled list when there are none.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, LearnError> {
        if paths.is_empty() {
            return Ok(Self::bundled());
        }
        Self::from_sources(&read_sources(paths)?)
    }

    /// `cidr,name` lists, as `feeds check --shared-hosting` reads them.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, LearnError> {
        let mut ranges = Vec::new();
        for (name, text) in sources {
            ranges.extend(crate::feedcheck::parse_shared_hosting(name, text)?);
        }
        Ok(Self { ranges })
    }

    /// The network `address` belongs to, if it is shared.
    pub fn owner(&self, address: IpAddr) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(net, _)| net.contains(&address))
            .map(|(_, name)| name.as_str())
    }
}

// ---- DNS ------------------------------------------------------------------

/// What one DNS response teaches: the addresses it gives for a name the
/// domain feed covers (the question or a name on its CNAME chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLesson {
    pub question: String,
    pub service: String,
    /// The feed's domain that matched.
    pub domain: String,
    /// Address and TTL (seconds).
    pub addresses: Vec<(IpAddr, u32)>,
}

/// Why a message taught nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsOutcome {
    /// Not a DNS message (or cut short).
    Unparsed,
    /// A DNS message for no name the feed covers, or without addresses.
    Irrelevant,
}

/// Reads a DNS response (`message` is the UDP payload, or the TCP payload
/// with its 2-byte length) and what it teaches.
pub fn dns_lesson(message: &[u8], tcp: bool, feed: &DomainFeed) -> Result<DnsLesson, DnsOutcome> {
    let message = if tcp {
        let length = message
            .get(..2)
            .map(|bytes| usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
            .ok_or(DnsOutcome::Unparsed)?;
        message.get(2..2 + length).ok_or(DnsOutcome::Unparsed)?
    } else {
        message
    };
    let packet = simple_dns::Packet::parse(message).map_err(|_| DnsOutcome::Unparsed)?;
    // A query, or an error response (NXDOMAIN, SERVFAIL…), answers nothing.
    if !packet.has_flags(simple_dns::PacketFlag::RESPONSE)
        || packet.rcode() != simple_dns::RCODE::NoError
    {
        return Err(DnsOutcome::Irrelevant);
    }
    let question = packet
        .questions
        .first()
        .map(|question| question.qname.to_string().to_ascii_lowercase())
        .ok_or(DnsOutcome::Irrelevant)?;
    // The chain of names from the question through CNAMEs, loops cut.
    let mut chain = vec![question.clone()];
    for _ in 0..MAX_CNAME_HOPS {
        let last = chain.last().expect("never empty").clone();
        let next = packet
            .answers
            .iter()
            .find_map(|record| match &record.rdata {
                simple_dns::rdata::RData::CNAME(target)
                    if record.name.to_string().eq_ignore_ascii_case(&last) =>
                {
                    Some(target.0.to_string().to_ascii_lowercase())
                }
                _ => None,
            });
        match next {
            Some(next) if !chain.contains(&next) => chain.push(next),
            _ => break,
        }
    }
    let (service, domain) = chain
        .iter()
        .find_map(|name| feed.service_for(name))
        .ok_or(DnsOutcome::Irrelevant)?;
    let addresses: Vec<(IpAddr, u32)> = packet
        .answers
        .iter()
        .filter(|record| chain.contains(&record.name.to_string().to_ascii_lowercase()))
        .filter_map(|record| match &record.rdata {
            simple_dns::rdata::RData::A(a) => {
                Some((IpAddr::V4(Ipv4Addr::from(a.address)), record.ttl))
            }
            simple_dns::rdata::RData::AAAA(aaaa) => {
                Some((IpAddr::V6(Ipv6Addr::from(aaaa.address)), record.ttl))
            }
            _ => None,
        })
        .collect();
    if addresses.is_empty() {
        return Err(DnsOutcome::Irrelevant);
    }
    Ok(DnsLesson {
        question,
        service: service.to_string(),
        domain: domain.to_string(),
        addresses,
    })
}

// ---- TLS --------------------------------------------------------------------

/// Where a TLS name came from.
pub const FROM_SERVER_NAME: &str = "tls server name";
pub const FROM_CERTIFICATE: &str = "certificate";

/// What the start of one TCP direction shows, so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsNames {
    /// Names found (the ClientHello's server name, or the server
    /// certificate's subject common name and alternative names) and where.
    Found(Vec<String>, &'static str),
    /// Not enough bytes yet.
    NeedMore,
    /// Not TLS, or past the handshake without names: stop following it.
    Nothing,
}

/// Whether `payload` starts with a TLS handshake record (content type 22,
/// version 3.x) holding a ClientHello or ServerHello: a new connection.
fn starts_tls_handshake(payload: &[u8]) -> bool {
    matches!(payload, [0x16, 0x03, 0x00..=0x04, _, _, 0x01 | 0x02, ..])
}

/// Reads TLS records from the start of a direction's byte stream.
pub fn tls_names(stream: &[u8]) -> TlsNames {
    use tls_parser::{TlsMessage, TlsMessageHandshake};
    let mut rest = stream;
    while !rest.is_empty() {
        let record = match tls_parser::parse_tls_plaintext(rest) {
            Ok((after, record)) => {
                rest = after;
                record
            }
            Err(tls_parser::Err::Incomplete(_)) => return TlsNames::NeedMore,
            Err(_) => return TlsNames::Nothing,
        };
        for message in &record.msg {
            match message {
                TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) => {
                    let names = hello
                        .ext
                        .and_then(|ext| tls_parser::parse_tls_extensions(ext).ok())
                        .map(|(_, extensions)| {
                            extensions
                                .iter()
                                .filter_map(|extension| match extension {
                                    tls_parser::TlsExtension::SNI(names) => Some(names),
                                    _ => None,
                                })
                                .flatten()
                                .filter_map(|(_, name)| std::str::from_utf8(name).ok())
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    if names.is_empty() {
                        return TlsNames::Nothing;
                    }
                    return TlsNames::Found(names, FROM_SERVER_NAME);
                }
                TlsMessage::Handshake(TlsMessageHandshake::Certificate(contents)) => {
                    let Some(first) = contents.cert_chain.first() else {
                        return TlsNames::Nothing;
                    };
                    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(first.data)
                    else {
                        return TlsNames::Nothing;
                    };
                    let mut names: Vec<String> = certificate
                        .subject()
                        .iter_common_name()
                        .filter_map(|name| name.as_str().ok())
                        .map(str::to_string)
                        .collect();
                    if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
                        for name in &alternative.value.general_names {
                            if let x509_parser::extensions::GeneralName::DNSName(name) = name {
                                names.push((*name).to_string());
                            }
                        }
                    }
                    return TlsNames::Found(names, FROM_CERTIFICATE);
                }
                // Encrypted from here on (TLS 1.3 hides the certificate).
                TlsMessage::ApplicationData(_) | TlsMessage::ChangeCipherSpec => {
                    return TlsNames::Nothing;
                }
                _ => {}
            }
        }
    }
    TlsNames::NeedMore
}

// ---- the learner ----------------------------------------------------------

/// One learned endpoint and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedEndpoint {
    pub address: IpAddr,
    pub service: String,
    /// The feed's domain that matched, and the name the watched host asked.
    pub domain: String,
    pub name: String,
    /// The watched host whose DNS answer or TLS flow taught it (a
    /// pseudonym in pseudonymized reports) and the resolver that answered
    /// (the endpoint itself for TLS).
    pub watched: IpAddr,
    pub resolver: IpAddr,
    /// "dns", "tls server name" or "certificate".
    #[serde(default = "from_dns")]
    pub how: String,
    /// RFC 3339.
    pub learned_at: String,
    pub expires_at: String,
    #[serde(skip)]
    pub expires_at_unix_ns: i64,
}

fn from_dns() -> String {
    "dns".into()
}

/// Counts of what learning did: cumulative in the learner and the exit
/// report, over its interval in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnStats {
    /// DNS responses to watched hosts read.
    pub dns_responses: u64,
    /// Not DNS, cut short or malformed.
    pub dns_unparsed: u64,
    /// Responses for a name the domain feed covers, with addresses.
    pub dns_matched: u64,
    /// Addresses learned (new), and learned again (TTL renewed).
    pub learned: u64,
    pub renewed: u64,
    /// Addresses not learned: in shared hosting or a CDN; the table full.
    pub skipped_shared_hosting: u64,
    pub skipped_capacity: u64,
    pub expired: u64,
    /// TCP segments read, flows whose TLS named a listed domain (each gets
    /// its service as a verdict), and directions given up on.
    #[serde(default)]
    pub tcp_segments: u64,
    #[serde(default)]
    pub tls_flows_named: u64,
    #[serde(default)]
    pub streams_dropped: u64,
    /// Endpoints taken over from a previous daemon's program (adopted),
    /// kept --learn-ttl from the takeover at most.
    #[serde(default)]
    pub inherited: u64,
    /// Addresses not learned because they are watched: residents, not
    /// services (and never to appear as endpoints under pseudonyms).
    #[serde(default)]
    pub skipped_watched: u64,
}

impl LearnStats {
    /// Each count less `earlier`'s: what was done since then.
    pub fn since(&self, earlier: &LearnStats) -> LearnStats {
        self.zip_with(earlier, u64::saturating_sub)
    }

    /// Each count plus `other`'s (merging snapshots' intervals); `None`
    /// when one would pass 2^64-1.
    pub fn checked_plus(&self, other: &LearnStats) -> Option<LearnStats> {
        let overflowed = std::cell::Cell::new(false);
        let sum = self.zip_with(other, |a, b| {
            a.checked_add(b).unwrap_or_else(|| {
                overflowed.set(true);
                u64::MAX
            })
        });
        (!overflowed.get()).then_some(sum)
    }

    fn zip_with(&self, other: &LearnStats, f: impl Fn(u64, u64) -> u64) -> LearnStats {
        LearnStats {
            dns_responses: f(self.dns_responses, other.dns_responses),
            dns_unparsed: f(self.dns_unparsed, other.dns_unparsed),
            dns_matched: f(self.dns_matched, other.dns_matched),
            learned: f(self.learned, other.learned),
            renewed: f(self.renewed, other.renewed),
            skipped_shared_hosting: f(self.skipped_shared_hosting, other.skipped_shared_hosting),
            skipped_capacity: f(self.skipped_capacity, other.skipped_capacity),
            expired: f(self.expired, other.expired),
            tcp_segments: f(self.tcp_segments, other.tcp_segments),
            tls_flows_named: f(self.tls_flows_named, other.tls_flows_named),
            streams_dropped: f(self.streams_dropped, other.streams_dropped),
            inherited: f(self.inherited, other.inherited),
            skipped_watched: f(self.skipped_watched, other.skipped_watched),
        }
    }
}

/// A change the kernel's `LEARNED` map must take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        address: IpAddr,
        service: String,
    },
    Remove {
        address: IpAddr,
    },
    /// The flow (key with direction 0) counts under `service` from now on.
    Verdict {
        key: FlowKey,
        service: String,
    },
}

/// One TCP direction being read: the flow key (direction 0) and direction.
type StreamKey = ([u8; 16], [u8; 16], u16, u8, u8);

#[derive(Debug)]
pub struct Learner {
    pub domains: DomainFeed,
    pub shared: SharedHosting,
    pub ttl: Duration,
    pub capacity: usize,
    entries: HashMap<IpAddr, LearnedEndpoint>,
    /// No entry expires before this (a lower bound): `expire`, called for
    /// every frame of a capture, skips its scan until then.
    next_expiry_unix_ns: i64,
    /// TCP directions whose start is being read, and flows already named.
    streams: HashMap<StreamKey, Vec<u8>>,
    finished: std::collections::HashSet<StreamKey>,
    /// The watched prefixes: addresses in them are never learned.
    watched: Vec<ipnet::IpNet>,
    pub stats: LearnStats,
}

fn key_address(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

impl Learner {
    /// The learner `run` and `pcap` use; `None` with `--no-learn`.
    pub fn from_args(args: &crate::cli::LearnArgs) -> Result<Option<Self>, LearnError> {
        if args.no_learn {
            return Ok(None);
        }
        let domains = DomainFeed::from_files(&args.domain_files)?;
        let shared = SharedHosting::from_files(&args.exclude_files)?;
        Ok(Some(Self::new(
            domains,
            shared,
            args.learn_ttl,
            classifier_common::LEARNED_CAPACITY as usize,
        )))
    }

    /// The report's learning section; `totals` are the kernel's counts
    /// for the report's span.
    pub fn report(&self, totals: &classifier_common::Totals) -> crate::report::Learning {
        crate::report::Learning {
            domain_feeds: self.domains.origins.clone(),
            stats: self.stats,
            handed_over: totals.learn_records,
            ring_drops: totals.learn_drops,
            throttled: totals.learn_throttled,
            endpoints: self.endpoints(),
            stats_per_interval: false,
            stats_cover_snapshots: None,
        }
    }

    pub fn new(domains: DomainFeed, shared: SharedHosting, ttl: Duration, capacity: usize) -> Self {
        Self {
            domains,
            shared,
            ttl,
            capacity,
            entries: HashMap::new(),
            next_expiry_unix_ns: i64::MAX,
            streams: HashMap::new(),
            finished: std::collections::HashSet::new(),
            watched: Vec::new(),
            stats: LearnStats::default(),
        }
    }

    /// The watched set now counted (at start and after a reload): its
    /// addresses are never learned as endpoints, and those learned before
    /// it grew are forgotten (the changes remove them from the kernel).
    pub fn set_watched(&mut self, watched: &crate::feeds::WatchedSet) -> Vec<Change> {
        self.watched = watched.all().collect();
        let now_watched: Vec<IpAddr> = self
            .entries
            .keys()
            .copied()
            .filter(|address| self.is_watched(*address))
            .collect();
        now_watched
            .into_iter()
            .map(|address| {
                self.entries.remove(&address);
                self.stats.skipped_watched += 1;
                Change::Remove { address }
            })
            .collect()
    }

    pub(crate) fn is_watched(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.watched.iter().any(|net| net.contains(&address))
    }

    /// What `record` teaches, at `now_unix_ns`: the kernel map changes.
    pub fn absorb(&mut self, record: &LearnRecord, now_unix_ns: i64) -> Vec<Change> {
        if record.kind == LEARN_TCP {
            return self.absorb_tcp(record, now_unix_ns);
        }
        if record.kind != LEARN_DNS {
            return Vec::new();
        }
        self.stats.dns_responses += 1;
        let len = (record.len as usize).min(LEARN_BYTES);
        let lesson = match dns_lesson(&record.payload[..len], record.protocol == 6, &self.domains) {
            Ok(lesson) => lesson,
            Err(DnsOutcome::Unparsed) => {
                self.stats.dns_unparsed += 1;
                return Vec::new();
            }
            Err(DnsOutcome::Irrelevant) => return Vec::new(),
        };
        self.stats.dns_matched += 1;
        let watched = key_address(record.family, record.watched);
        let resolver = key_address(record.family, record.server);
        let mut changes = Vec::new();
        for (address, ttl) in lesson.addresses {
            if self.is_watched(address) {
                self.stats.skipped_watched += 1;
                continue;
            }
            if self.shared.owner(address).is_some() {
                self.stats.skipped_shared_hosting += 1;
                continue;
            }
            let keep = Duration::from_secs(u64::from(ttl)).min(self.ttl);
            let expires_at_unix_ns =
                now_unix_ns.saturating_add(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
            let renewal = self
                .entries
                .get(&address)
                .map(|known| known.service == lesson.service);
            match renewal {
                // Known for the same service: the later expiry holds.
                Some(true) => {
                    let known = self.entries.get_mut(&address).expect("present");
                    if expires_at_unix_ns > known.expires_at_unix_ns {
                        known.expires_at_unix_ns = expires_at_unix_ns;
                        known.expires_at = crate::report::rfc3339(
                            crate::snapshot::unix_ns_to_time(expires_at_unix_ns),
                        );
                    }
                    self.stats.renewed += 1;
                    continue;
                }
                // Known for another service: the latest answer wins.
                Some(false) => {}
                None if self.entries.len() >= self.capacity => {
                    self.stats.skipped_capacity += 1;
                    continue;
                }
                None => {}
            }
            self.stats.learned += 1;
            self.remember(LearnedEndpoint {
                address,
                service: lesson.service.clone(),
                domain: lesson.domain.clone(),
                name: lesson.question.clone(),
                watched,
                resolver,
                how: from_dns(),
                learned_at: crate::report::rfc3339(crate::snapshot::unix_ns_to_time(now_unix_ns)),
                expires_at: crate::report::rfc3339(crate::snapshot::unix_ns_to_time(
                    expires_at_unix_ns,
                )),
                expires_at_unix_ns,
            });
            changes.push(Change::Insert {
                address,
                service: lesson.service.clone(),
            });
        }
        changes
    }

    /// A TCP segment: its direction's bytes so far, read as TLS.
    fn absorb_tcp(&mut self, record: &LearnRecord, now_unix_ns: i64) -> Vec<Change> {
        self.stats.tcp_segments += 1;
        let key: StreamKey = (
            record.watched,
            record.server,
            record.port,
            record.family,
            record.direction,
        );
        let len = (record.len as usize).min(LEARN_BYTES);
        if self.finished.contains(&key) {
            // Flows are keyed by the server's port only: a later
            // connection to the same server and port starts with a new
            // handshake, which is read afresh.
            if !starts_tls_handshake(&record.payload[..len]) {
                return Vec::new();
            }
            self.finished.remove(&key);
        }
        if self.finished.len() >= MAX_FINISHED {
            self.finished.clear();
        }
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&key) {
            self.stats.streams_dropped += self.streams.len() as u64;
            self.streams.clear();
        }
        let stream = self.streams.entry(key).or_default();
        stream.extend_from_slice(&record.payload[..len]);
        let outcome = if stream.len() > MAX_STREAM_BYTES {
            TlsNames::Nothing
        } else {
            tls_names(stream)
        };
        let (names, how) = match outcome {
            TlsNames::NeedMore => return Vec::new(),
            TlsNames::Nothing => {
                self.streams.remove(&key);
                self.finished.insert(key);
                return Vec::new();
            }
            TlsNames::Found(names, how) => {
                self.streams.remove(&key);
                self.finished.insert(key);
                (names, how)
            }
        };
        // A ClientHello names its server only when the watched host sends
        // it, a certificate only when the other end does: a stranger's
        // ClientHello to a watched server names the watched host's own
        // service, and must not make the stranger a learned endpoint.
        let from_watched = record.direction == classifier_common::DIR_OUTBOUND;
        if from_watched != (how == FROM_SERVER_NAME) {
            return Vec::new();
        }
        if self.is_watched(key_address(record.family, record.server)) {
            self.stats.skipped_watched += 1;
            return Vec::new();
        }
        let Some((service, domain, name)) = names.iter().find_map(|name| {
            let bare = name.trim_start_matches("*.");
            self.domains
                .service_for(bare)
                .map(|(service, domain)| (service.to_string(), domain.to_string(), name.clone()))
        }) else {
            return Vec::new();
        };
        self.stats.tls_flows_named += 1;
        let mut flow: FlowKey = bytemuck::Zeroable::zeroed();
        flow.watched = record.watched;
        flow.endpoint = record.server;
        flow.port = record.port;
        flow.family = record.family;
        flow.protocol = record.protocol;
        let mut changes = vec![Change::Verdict {
            key: flow,
            service: service.clone(),
        }];
        // The address too, unless shared: TLS gives no TTL, --learn-ttl holds.
        let address = key_address(record.family, record.server);
        if self.shared.owner(address).is_some() {
            self.stats.skipped_shared_hosting += 1;
        } else if self.entries.contains_key(&address) || self.entries.len() < self.capacity {
            let keep = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
            let expires_at_unix_ns = now_unix_ns.saturating_add(keep);
            self.stats.learned += 1;
            self.remember(LearnedEndpoint {
                address,
                service: service.clone(),
                domain,
                name,
                watched: key_address(record.family, record.watched),
                resolver: address,
                how: how.to_string(),
                learned_at: crate::report::rfc3339(crate::snapshot::unix_ns_to_time(now_unix_ns)),
                expires_at: crate::report::rfc3339(crate::snapshot::unix_ns_to_time(
                    expires_at_unix_ns,
                )),
                expires_at_unix_ns,
            });
            changes.push(Change::Insert { address, service });
        } else {
            self.stats.skipped_capacity += 1;
        }
        changes
    }

    /// Takes over an endpoint a previous daemon learned into the program it
    /// left attached. Its TTL is not known, so it is kept `ttl` from now at
    /// most (then it expires like any other); `how` says "inherited".
    pub fn inherit(&mut self, address: IpAddr, service: &str, now_unix_ns: i64) {
        if self.entries.contains_key(&address) {
            return;
        }
        let keep = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        let expires_at_unix_ns = now_unix_ns.saturating_add(keep);
        let time = |unix_ns| crate::report::rfc3339(crate::snapshot::unix_ns_to_time(unix_ns));
        let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        self.stats.inherited += 1;
        self.remember(LearnedEndpoint {
            address,
            service: service.to_string(),
            domain: String::new(),
            name: String::new(),
            watched: unknown,
            resolver: unknown,
            how: "inherited".into(),
            learned_at: time(now_unix_ns),
            expires_at: time(expires_at_unix_ns),
            expires_at_unix_ns,
        });
    }

    /// Keeps `endpoint` (replacing what was known for its address).
    fn remember(&mut self, endpoint: LearnedEndpoint) {
        self.next_expiry_unix_ns = self.next_expiry_unix_ns.min(endpoint.expires_at_unix_ns);
        self.entries.insert(endpoint.address, endpoint);
    }

    /// Entries whose time is up at `now_unix_ns`, removed.
    pub fn expire(&mut self, now_unix_ns: i64) -> Vec<Change> {
        if now_unix_ns < self.next_expiry_unix_ns {
            return Vec::new();
        }
        let expired: Vec<IpAddr> = self
            .entries
            .values()
            .filter(|entry| entry.expires_at_unix_ns <= now_unix_ns)
            .map(|entry| entry.address)
            .collect();
        for address in &expired {
            self.entries.remove(address);
        }
        self.next_expiry_unix_ns = self
            .entries
            .values()
            .map(|entry| entry.expires_at_unix_ns)
            .min()
            .unwrap_or(i64::MAX);
        self.stats.expired += expired.len() as u64;
        expired
            .into_iter()
            .map(|address| Change::Remove { address })
            .collect()
    }

    /// Endpoints learned and not expired.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every learned endpoint, by service then address.
    pub fn endpoints(&self) -> Vec<LearnedEndpoint> {
        let mut all: Vec<LearnedEndpoint> = self.entries.values().cloned().collect();
        all.sort_by(|a, b| (&a.service, a.address).cmp(&(&b.service, b.address)));
        all
    }

    /// Learned endpoints per service.
    pub fn per_service(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for entry in self.entries.values() {
            *counts.entry(entry.service.clone()).or_insert(0) += 1;
        }
        counts
    }
}

// ---- the kernel side ------------------------------------------------------

/// The program's learning maps: the ring buffer it writes and the map of
/// learned endpoints it reads.
pub struct LearnMaps {
    events: RingBuf<MapData>,
    learned: BpfHashMap<MapData, [u8; 16], u32>,
    verdicts: BpfHashMap<MapData, FlowKey, u32>,
    hints: EndpointHints,
}

/// The program's endpoint hints (`MAP_ENDPOINT_HINTS`), mapped into memory:
/// setting a byte is a store, which cannot undo a byte the program sets at
/// the same time (a whole-value map update could).
struct EndpointHints {
    address: *mut u8,
    /// The learned endpoints (key bytes) the map holds, and how many of
    /// them share each byte of the learned hint (a byte is cleared when
    /// its last one goes).
    learned: std::collections::HashSet<[u8; 16]>,
    learned_per_byte: Vec<u32>,
}

// SAFETY: the mapping is owned by this value alone and only written
// through `&mut self`.
unsafe impl Send for EndpointHints {}

const HINTS_LEN: usize = size_of::<classifier_common::EndpointHints>();

impl EndpointHints {
    fn map(map: &Map) -> Result<Self, LearnError> {
        let failed = |problem: String| LearnError::Map(format!("{MAP_ENDPOINT_HINTS}: {problem}"));
        let Map::Array(data) = map else {
            return Err(failed("not an array".into()));
        };
        // SAFETY: a fresh shared mapping of the map's fd, as long as its one
        // value, both hints (the kernel refuses a longer one); unmapped by
        // drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HINTS_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd())),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(failed(std::io::Error::last_os_error().to_string()));
        }
        Ok(Self::over(address))
    }

    /// Hints in `mapping` (`HINTS_LEN` bytes, unmapped by drop), nothing
    /// learned yet.
    fn over(mapping: *mut libc::c_void) -> Self {
        Self {
            address: mapping.cast(),
            learned: std::collections::HashSet::new(),
            learned_per_byte: vec![0; size_of::<EndpointHint>()],
        }
    }

    fn set(&mut self, which: u32, key: &[u8; 16], value: u8) {
        let offset =
            which as usize * size_of::<EndpointHint>() + endpoint_hint_index(bytemuck::cast(*key));
        // SAFETY: `offset` < HINTS_LEN: `which` is 0 or 1, the index inside
        // one hint; the mapping lives as long as `self`.
        unsafe { std::ptr::write_volatile(self.address.add(offset), value) };
    }

    /// Hints in ordinary memory, for tests of the bookkeeping.
    #[cfg(test)]
    fn in_memory() -> Self {
        // SAFETY: a fresh private anonymous mapping, unmapped by drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HINTS_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED, "anonymous mapping");
        Self::over(address)
    }

    /// The learned hint's byte for `key`.
    #[cfg(test)]
    fn learned_hint(&self, key: &[u8; 16]) -> u8 {
        // SAFETY: inside the mapping, as in `set`.
        unsafe { std::ptr::read_volatile(self.address.add(Self::learned_byte(key))) }
    }

    fn learned_byte(key: &[u8; 16]) -> usize {
        endpoint_hint_index(bytemuck::cast(*key))
    }

    /// Before `key` goes into the learned map.
    fn learned_added(&mut self, key: [u8; 16]) {
        if self.learned.insert(key) {
            self.learned_per_byte[Self::learned_byte(&key)] += 1;
        }
        self.set(ENDPOINT_HINT_LEARNED, &key, 1);
    }

    /// After `key` left the learned map.
    fn learned_removed(&mut self, key: &[u8; 16]) {
        if self.learned.remove(key) {
            let count = &mut self.learned_per_byte[Self::learned_byte(key)];
            *count -= 1;
            if *count == 0 {
                self.set(ENDPOINT_HINT_LEARNED, key, 0);
            }
        }
    }

    /// Before a verdict for a flow with endpoint `key` is stored.
    fn verdict_added(&mut self, key: &[u8; 16]) {
        self.set(ENDPOINT_HINT_VERDICTS, key, 1);
    }
}

impl Drop for EndpointHints {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping the hints were made `over`.
        unsafe { libc::munmap(self.address.cast(), HINTS_LEN) };
    }
}

fn key_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl LearnMaps {
    /// Opens them where `classifier run` pinned them (`DIR/maps`).
    pub fn from_pins(dir: &Path) -> Result<Self, LearnError> {
        let open = |name: &str| crate::pins::open_pinned_map(dir, name).map_err(LearnError::Map);
        Self::from_maps(
            open(MAP_LEARN_EVENTS)?,
            open(MAP_LEARNED)?,
            open(MAP_VERDICTS)?,
            &open(MAP_ENDPOINT_HINTS)?,
        )
    }

    /// Takes the maps over; the hints are brought in line with what the
    /// learned and verdict maps already hold (a daemon adopting a running
    /// program's maps, or maps from before the hints existed).
    pub fn from_maps(
        events: Map,
        learned: Map,
        verdicts: Map,
        hints: &Map,
    ) -> Result<Self, LearnError> {
        let mut maps = Self {
            verdicts: BpfHashMap::try_from(verdicts)
                .map_err(|error| LearnError::Map(format!("{MAP_VERDICTS}: {error}")))?,
            events: RingBuf::try_from(events)
                .map_err(|error| LearnError::Map(format!("{MAP_LEARN_EVENTS}: {error}")))?,
            learned: BpfHashMap::try_from(learned)
                .map_err(|error| LearnError::Map(format!("{MAP_LEARNED}: {error}")))?,
            hints: EndpointHints::map(hints)?,
        };
        let listed = |name: &'static str| move |error| LearnError::Map(format!("{name}: {error}"));
        let learned: Vec<[u8; 16]> = maps
            .learned
            .keys()
            .collect::<Result<_, _>>()
            .map_err(listed(MAP_LEARNED))?;
        for key in learned {
            maps.hints.learned_added(key);
        }
        let verdicts: Vec<FlowKey> = maps
            .verdicts
            .keys()
            .collect::<Result<_, _>>()
            .map_err(listed(MAP_VERDICTS))?;
        for key in verdicts {
            maps.hints.verdict_added(&key.endpoint);
        }
        Ok(maps)
    }

    /// Hands the endpoints the program's map already holds (a previous
    /// daemon learned them and left the program attached) to `learner`, so
    /// they expire; returns how many. An entry of a service the table does
    /// not name is removed.
    pub fn inherit(
        &mut self,
        learner: &mut Learner,
        services: &ServiceTable,
        now_unix_ns: i64,
    ) -> Result<usize, LearnError> {
        let held: Vec<([u8; 16], u32)> = self
            .learned
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|error| LearnError::Map(format!("{MAP_LEARNED}: {error}")))?;
        let mut inherited = 0;
        for (key, id) in held {
            let address = IpAddr::V6(Ipv6Addr::from(key)).to_canonical();
            match services.name(id) {
                // Watched now: a resident, not an endpoint.
                Some(_) if learner.is_watched(address) => {
                    learner.stats.skipped_watched += 1;
                    self.apply(&[Change::Remove { address }], services);
                }
                Some(service) => {
                    learner.inherit(address, service, now_unix_ns);
                    inherited += 1;
                }
                None => self.apply(&[Change::Remove { address }], services),
            }
        }
        Ok(inherited)
    }

    /// Endpoints the program's learned map holds.
    pub fn learned_len(&self) -> usize {
        self.hints.learned.len()
    }

    /// A descriptor of the ring buffer that polls readable when records
    /// wait.
    pub fn ring_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        self.events.as_fd().try_clone_to_owned()
    }

    /// Feeds every waiting record to `learner` and applies what it learned;
    /// returns the records read.
    pub fn pump(
        &mut self,
        learner: &mut Learner,
        services: &ServiceTable,
        now_unix_ns: i64,
    ) -> usize {
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<LearnRecord>() {
                records.push(bytemuck::pod_read_unaligned::<LearnRecord>(
                    &item[..size_of::<LearnRecord>()],
                ));
            }
        }
        let mut changes = learner.expire(now_unix_ns);
        for record in &records {
            changes.extend(learner.absorb(record, now_unix_ns));
        }
        self.apply(&changes, services);
        records.len()
    }

    /// Gives `learner` the watched set now counted and removes from the
    /// kernel what it forgets (endpoints learned in it before).
    pub fn watch(
        &mut self,
        learner: &mut Learner,
        watched: &crate::feeds::WatchedSet,
        services: &ServiceTable,
    ) {
        let changes = learner.set_watched(watched);
        self.apply(&changes, services);
    }

    /// Expires what is due, without reading records.
    pub fn expire(&mut self, learner: &mut Learner, services: &ServiceTable, now_unix_ns: i64) {
        let changes = learner.expire(now_unix_ns);
        self.apply(&changes, services);
    }

    fn apply(&mut self, changes: &[Change], services: &ServiceTable) {
        for change in changes {
            let result = match change {
                Change::Insert { address, service } => match services.id(service) {
                    Some(id) => {
                        self.hints.learned_added(key_bytes(*address));
                        self.learned.insert(key_bytes(*address), id, 0)
                    }
                    None => {
                        log::warn!(
                            "learned {address} for {service}, a service the program was loaded without"
                        );
                        continue;
                    }
                },
                Change::Remove { address } => match self.learned.remove(&key_bytes(*address)) {
                    Err(aya::maps::MapError::KeyNotFound) | Ok(()) => {
                        self.hints.learned_removed(&key_bytes(*address));
                        Ok(())
                    }
                    other => other,
                },
                Change::Verdict { key, service } => match services.id(service) {
                    Some(id) => {
                        self.hints.verdict_added(&key.endpoint);
                        self.verdicts.insert(*key, id, 0)
                    }
                    None => continue,
                },
            };
            if let Err(error) = result {
                log::warn!("cannot update the learned endpoints: {error}");
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use simple_dns::{
        CLASS, Name, Packet, QCLASS, QTYPE, Question, ResourceRecord, TYPE,
        rdata::{A, AAAA, CNAME, RData},
    };

    use super::*;

    /// One answer record of a crafted response.
    pub enum Answer<'a> {
        A(&'a str, Ipv4Addr, u32),
        Aaaa(&'a str, Ipv6Addr, u32),
        Cname(&'a str, &'a str),
    }

    /// A DNS response to `question` (type A) with `answers`.
    pub fn dns_reply(question: &str, answers: &[Answer<'_>]) -> Vec<u8> {
        let mut packet = Packet::new_reply(7);
        packet.questions.push(Question::new(
            Name::new_unchecked(question),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        for answer in answers {
            let record = match answer {
                Answer::A(name, address, ttl) => ResourceRecord::new(
                    Name::new_unchecked(name),
                    CLASS::IN,
                    *ttl,
                    RData::A(A::from(*address)),
                ),
                Answer::Aaaa(name, address, ttl) => ResourceRecord::new(
                    Name::new_unchecked(name),
                    CLASS::IN,
                    *ttl,
                    RData::AAAA(AAAA::from(*address)),
                ),
                Answer::Cname(name, target) => ResourceRecord::new(
                    Name::new_unchecked(name),
                    CLASS::IN,
                    300,
                    RData::CNAME(CNAME(Name::new_unchecked(target))),
                ),
            };
            packet.answers.push(record);
        }
        packet
            .build_bytes_vec_compressed()
            .expect("a valid message")
    }

    fn feed() -> DomainFeed {
        // Saved as "UTF-8 with BOM", as spreadsheets do.
        DomainFeed::from_sources(&[(
            "test.csv".into(),
            "\u{feff}domain,service\nhotspotshield.com,hotspot-shield\n*.psiphon3.net,psiphon\nvpn.example.org,example-vpn\n".into(),
        )])
        .expect("valid")
    }

    fn record(message: &[u8]) -> LearnRecord {
        let mut record: LearnRecord = bytemuck::Zeroable::zeroed();
        record.kind = LEARN_DNS;
        record.family = FAMILY_V4;
        record.protocol = 17;
        record.len = message.len() as u32;
        record.watched = key_bytes("175.45.176.5".parse().unwrap());
        record.server = key_bytes("192.0.2.53".parse().unwrap());
        record.payload[..message.len()].copy_from_slice(message);
        record
    }

    fn learner(capacity: usize) -> Learner {
        let shared = SharedHosting::from_sources(&[(
            "cdn.csv".into(),
            "cidr,name\n104.16.0.0/13,cloudflare\n".into(),
        )])
        .unwrap();
        Learner::new(feed(), shared, Duration::from_secs(3600), capacity)
    }

    #[test]
    fn a_domain_covers_its_subdomains_on_label_boundaries() {
        let feed = feed();
        assert_eq!(
            feed.service_for("api.hotspotshield.com"),
            Some(("hotspot-shield", "hotspotshield.com"))
        );
        assert_eq!(
            feed.service_for("HotspotShield.com."),
            Some(("hotspot-shield", "hotspotshield.com"))
        );
        assert_eq!(feed.service_for("nothotspotshield.com"), None);
        assert_eq!(
            feed.service_for("a.b.psiphon3.net"),
            Some(("psiphon", "psiphon3.net"))
        );
        assert_eq!(feed.service_for("example.org"), None);
        assert_eq!(
            feed.service_for("x.vpn.example.org"),
            Some(("example-vpn", "vpn.example.org"))
        );
        assert_eq!(
            feed.services(),
            ["example-vpn", "hotspot-shield", "psiphon"]
        );
    }

    #[test]
    fn a_bad_domain_feed_is_refused_with_file_and_line() {
        let refused = |text: &str| {
            DomainFeed::from_sources(&[("bad.csv".into(), text.into())])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("domain,service\nexample.com,a\nexa mple.com,b\n"),
            "bad.csv: line 3: \"exa mple.com\" is not a domain name"
        );
        assert_eq!(
            refused("domain,service\n\nexample.com,a\nexample.com,b\n"),
            "bad.csv: line 4: example.com is listed for a (bad.csv: line 3) and for b"
        );
        assert_eq!(
            refused("domain,service\ncom,a\n"),
            "bad.csv: line 2: \"com\" is not a domain name"
        );
        assert_eq!(
            refused("domain,service\nexample.com,\n"),
            "bad.csv: line 2: no service"
        );
        // Service names as the endpoint feed takes them: a slug of at
        // most 32 bytes (IPFIX and the kernel's service table hold that).
        assert_eq!(
            refused("domain,service\nexample.com,Hot Spot\n"),
            "bad.csv: line 2: bad service name \"Hot Spot\" (use a lowercase slug of a-z, 0-9 and '-', at most 32 characters)"
        );
        let long = "é".repeat(17);
        assert_eq!(
            refused(&format!("domain,service\nexample.com,{long}\n")),
            format!(
                "bad.csv: line 2: bad service name \"{long}\" (use a lowercase slug of a-z, 0-9 and '-', at most 32 characters)"
            )
        );
        assert_eq!(
            refused("cidr,service\n1.2.3.0/24,a\n"),
            "bad.csv: line 1: the header must name `domain` and `service` columns"
        );
        assert!(DomainFeed::bundled().len() >= 50);
        for service in ["hotspot-shield", "expressvpn", "pia", "psiphon"] {
            assert!(
                DomainFeed::bundled()
                    .services()
                    .contains(&service.to_string()),
                "{service}"
            );
        }
    }

    #[test]
    fn answers_through_a_cname_chain_teach_their_addresses() {
        let message = dns_reply(
            "www.hotspotshield.com",
            &[
                Answer::Cname("www.hotspotshield.com", "edge.cdn-provider.example"),
                Answer::Cname("edge.cdn-provider.example", "node7.cdn-provider.example"),
                Answer::A(
                    "node7.cdn-provider.example",
                    Ipv4Addr::new(203, 0, 113, 7),
                    120,
                ),
                Answer::Aaaa(
                    "node7.cdn-provider.example",
                    "2001:db8::7".parse().unwrap(),
                    60,
                ),
                // Not on the chain: not learned.
                Answer::A("elsewhere.example", Ipv4Addr::new(203, 0, 113, 99), 120),
            ],
        );
        let lesson = dns_lesson(&message, false, &feed()).expect("a lesson");
        assert_eq!(lesson.service, "hotspot-shield");
        assert_eq!(lesson.domain, "hotspotshield.com");
        assert_eq!(
            lesson.addresses,
            [
                (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 120),
                ("2001:db8::7".parse().unwrap(), 60)
            ]
        );
        // The covered name may be further down the chain.
        let message = dns_reply(
            "innocent.example",
            &[
                Answer::Cname("innocent.example", "front.psiphon3.net"),
                Answer::A("front.psiphon3.net", Ipv4Addr::new(198, 51, 100, 3), 30),
            ],
        );
        assert_eq!(
            dns_lesson(&message, false, &feed()).unwrap().service,
            "psiphon"
        );
        // Over TCP, behind the 2-byte length.
        let mut tcp = (message.len() as u16).to_be_bytes().to_vec();
        tcp.extend(&message);
        assert_eq!(dns_lesson(&tcp, true, &feed()).unwrap().service, "psiphon");
        assert_eq!(
            dns_lesson(&tcp[..tcp.len() - 1], true, &feed()),
            Err(DnsOutcome::Unparsed)
        );
    }

    #[test]
    fn loops_hostile_and_cut_messages_teach_nothing_and_never_hang() {
        // A CNAME loop: followed a few hops, then given up.
        let looping = dns_reply(
            "a.hotspotshield.com",
            &[
                Answer::Cname("a.hotspotshield.com", "b.hotspotshield.com"),
                Answer::Cname("b.hotspotshield.com", "a.hotspotshield.com"),
            ],
        );
        assert_eq!(
            dns_lesson(&looping, false, &feed()),
            Err(DnsOutcome::Irrelevant)
        );
        // A compression pointer to itself in the question name.
        let mut pointer_loop = vec![0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        pointer_loop.extend([0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(
            dns_lesson(&pointer_loop, false, &feed()),
            Err(DnsOutcome::Unparsed)
        );
        // A label claiming 63 bytes the message does not have, and labels
        // adding up past 255 bytes.
        let mut overlong = vec![0, 7, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            overlong.push(63);
            overlong.extend([b'a'; 63]);
        }
        overlong.extend([0, 0, 1, 0, 1]);
        assert_eq!(
            dns_lesson(&overlong, false, &feed()),
            Err(DnsOutcome::Unparsed)
        );
        // Every prefix of a valid answer: never a panic.
        let valid = dns_reply(
            "www.hotspotshield.com",
            &[Answer::A(
                "www.hotspotshield.com",
                Ipv4Addr::new(203, 0, 113, 7),
                120,
            )],
        );
        for end in 0..valid.len() {
            assert!(dns_lesson(&valid[..end], false, &feed()).is_err(), "{end}");
        }
        assert!(dns_lesson(&valid, false, &feed()).is_ok());
        assert_eq!(
            dns_lesson(b"not dns at all", false, &feed()),
            Err(DnsOutcome::Unparsed)
        );
    }

    /// A TLS record holding a ClientHello whose SNI is `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let name = name.as_bytes();
        let sni_entry = [&[0u8][..], &(name.len() as u16).to_be_bytes(), name].concat();
        let sni_list = [&(sni_entry.len() as u16).to_be_bytes()[..], &sni_entry].concat();
        let extension = [
            &[0u8, 0][..],
            &(sni_list.len() as u16).to_be_bytes(),
            &sni_list,
        ]
        .concat();
        let body = [
            &[3u8, 3][..],
            &[7; 32],
            &[0],             // session id
            &[0, 2, 0, 0x2f], // one cipher suite
            &[1, 0],          // no compression
            &(extension.len() as u16).to_be_bytes(),
            &extension,
        ]
        .concat();
        let handshake = [&[1u8][..], &(body.len() as u32).to_be_bytes()[1..], &body].concat();
        [
            &[0x16u8, 3, 1][..],
            &(handshake.len() as u16).to_be_bytes(),
            &handshake,
        ]
        .concat()
    }

    /// A TCP segment of the flow 175.45.176.5 ↔ `server`:443 in
    /// `direction` carrying `payload`.
    fn tcp_record(server: &str, direction: u8, payload: &[u8]) -> LearnRecord {
        let mut record = record(payload);
        record.kind = LEARN_TCP;
        record.protocol = 6;
        record.port = 443;
        record.direction = direction;
        record.server = key_bytes(server.parse().unwrap());
        record
    }

    #[test]
    fn a_client_hello_teaches_only_when_the_watched_host_sends_it() {
        let hello = client_hello("x.psiphon3.net");
        assert_eq!(
            tls_names(&hello),
            TlsNames::Found(vec!["x.psiphon3.net".into()], FROM_SERVER_NAME)
        );
        // A stranger's ClientHello to a watched server: nothing learned.
        let mut learner = learner(8);
        let inbound = tcp_record("62.10.20.30", classifier_common::DIR_INBOUND, &hello);
        assert!(learner.absorb(&inbound, 0).is_empty());
        assert!(learner.endpoints().is_empty());
        // The watched host's own ClientHello names its server.
        let outbound = tcp_record("62.10.20.31", classifier_common::DIR_OUTBOUND, &hello);
        let changes = learner.absorb(&outbound, 0);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(learner.endpoints()[0].address.to_string(), "62.10.20.31");
    }

    #[test]
    fn a_new_handshake_is_read_after_a_direction_given_up_on() {
        // Flows are keyed by the server's port: application data of one
        // connection first, then another connection's ClientHello.
        let mut learner = learner(8);
        let data = tcp_record(
            "62.10.20.32",
            classifier_common::DIR_OUTBOUND,
            &[0x17, 3, 3, 0, 4, 1, 2, 3, 4],
        );
        assert!(learner.absorb(&data, 0).is_empty());
        let hello = tcp_record(
            "62.10.20.32",
            classifier_common::DIR_OUTBOUND,
            &client_hello("psiphon3.net"),
        );
        assert_eq!(learner.absorb(&hello, 0).len(), 2);
        assert_eq!(learner.stats.tls_flows_named, 1);
    }

    #[test]
    fn queries_error_answers_and_watched_addresses_teach_nothing() {
        let mut learner = learner(8);
        let answer = |address| {
            dns_reply(
                "x.hotspotshield.com",
                &[Answer::A("x.hotspotshield.com", address, 300)],
            )
        };
        // QR clear (a query carrying an answer section) and NXDOMAIN.
        let mut query = answer(Ipv4Addr::new(77, 5, 5, 5));
        query[2] &= 0x7f;
        let mut nxdomain = answer(Ipv4Addr::new(77, 6, 6, 6));
        nxdomain[3] = (nxdomain[3] & 0xf0) | 3;
        for message in [&query, &nxdomain] {
            assert!(learner.absorb(&record(message), 0).is_empty());
        }
        assert_eq!(learner.stats.dns_matched, 0);
        // A watched address is a resident, never a learned endpoint, by
        // DNS or by TLS.
        learner.set_watched(&crate::feeds::WatchedSet::from_prefixes([
            "175.45.176.0/22".parse().unwrap(),
        ]));
        assert!(
            learner
                .absorb(&record(&answer(Ipv4Addr::new(175, 45, 176, 32))), 0)
                .is_empty()
        );
        let hello = tcp_record(
            "175.45.176.31",
            classifier_common::DIR_OUTBOUND,
            &client_hello("psiphon3.net"),
        );
        assert!(learner.absorb(&hello, 0).is_empty());
        assert_eq!(learner.stats.skipped_watched, 2);
        assert!(learner.endpoints().is_empty());
        // The same answer for an address outside it teaches.
        assert_eq!(
            learner
                .absorb(&record(&answer(Ipv4Addr::new(77, 7, 7, 7))), 0)
                .len(),
            1
        );
        // A reload that watches it too forgets it.
        let changes = learner.set_watched(&crate::feeds::WatchedSet::from_prefixes([
            "175.45.176.0/22".parse().unwrap(),
            "77.7.7.0/24".parse().unwrap(),
        ]));
        assert_eq!(
            changes,
            [Change::Remove {
                address: IpAddr::V4(Ipv4Addr::new(77, 7, 7, 7))
            }]
        );
        assert!(learner.endpoints().is_empty());
    }

    #[test]
    fn learned_entries_expire_skip_shared_hosting_and_respect_capacity() {
        let mut learner = learner(2);
        let second = 1_000_000_000i64;
        let message = dns_reply(
            "x.hotspotshield.com",
            &[
                Answer::A("x.hotspotshield.com", Ipv4Addr::new(203, 0, 113, 7), 30),
                // Cloudflare: shared, never learned.
                Answer::A("x.hotspotshield.com", Ipv4Addr::new(104, 18, 151, 190), 30),
                Answer::A("x.hotspotshield.com", Ipv4Addr::new(203, 0, 113, 8), 7200),
                // Over capacity (2).
                Answer::A("x.hotspotshield.com", Ipv4Addr::new(203, 0, 113, 9), 30),
            ],
        );
        let changes = learner.absorb(&record(&message), 100 * second);
        assert_eq!(changes.len(), 2);
        assert_eq!(learner.stats.learned, 2);
        assert_eq!(learner.stats.skipped_shared_hosting, 1);
        assert_eq!(learner.stats.skipped_capacity, 1);
        let endpoints = learner.endpoints();
        assert_eq!(
            endpoints[0].watched,
            IpAddr::V4(Ipv4Addr::new(175, 45, 176, 5))
        );
        assert_eq!(
            endpoints[0].resolver,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))
        );
        assert_eq!(endpoints[0].name, "x.hotspotshield.com");
        // The TTL (30 s) and --learn-ttl (1 h, under the 2 h TTL) bound them.
        assert!(learner.expire(129 * second).is_empty());
        assert_eq!(
            learner.expire(130 * second),
            [Change::Remove {
                address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
            }]
        );
        assert!(learner.expire(3699 * second).is_empty());
        assert_eq!(learner.expire(3700 * second).len(), 1);
        assert_eq!(learner.stats.expired, 2);
        // An answer seen again renews rather than learns.
        let again = dns_reply(
            "x.hotspotshield.com",
            &[Answer::A(
                "x.hotspotshield.com",
                Ipv4Addr::new(203, 0, 113, 7),
                30,
            )],
        );
        learner.absorb(&record(&again), 4000 * second);
        learner.absorb(&record(&again), 4010 * second);
        assert_eq!(learner.stats.renewed, 1);
        assert_eq!(learner.endpoints().len(), 1);
        // Unreadable responses are counted.
        learner.absorb(&record(b"\x00\x07garbage"), 4020 * second);
        assert_eq!(learner.stats.dns_unparsed, 1);
    }

    #[test]
    fn a_learned_hint_byte_stays_set_while_any_endpoint_sharing_it_is_learned() {
        // Two endpoints whose learned hint is the same byte.
        let mut seen = std::collections::HashMap::new();
        let (first, second) = (0u32..)
            .map(|n| key_bytes(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))))
            .find_map(|key| {
                seen.insert(EndpointHints::learned_byte(&key), key)
                    .map(|earlier| (earlier, key))
            })
            .expect("a shared byte");
        let mut hints = EndpointHints::in_memory();
        hints.learned_added(first);
        hints.learned_added(second);
        hints.learned_added(second);
        assert_eq!(hints.learned_hint(&first), 1);
        hints.learned_removed(&first);
        assert_eq!(hints.learned_hint(&second), 1, "the other is still learned");
        hints.learned_removed(&first);
        assert_eq!(hints.learned_hint(&second), 1, "removing twice counts once");
        hints.learned_removed(&second);
        assert_eq!(hints.learned_hint(&second), 0, "the last one clears it");
    }
}
