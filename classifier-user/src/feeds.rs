//! Feeds: parse and validate the watched prefixes and the endpoint feed into
//! typed sets. A bad file is refused whole, naming file, line and problem;
//! duplicates and overlaps are kept and reported as warnings with counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The watched range when none is given: North Korea's only APNIC
/// delegation (see data/README.md).
pub const DEFAULT_WATCHED: &str = "175.45.176.0/22";

/// The bundled endpoint feed (see data/README.md for its provenance).
pub const BUNDLED_ENDPOINTS: &str = include_str!("../../data/vpn-endpoints.csv");
pub const BUNDLED_ENDPOINTS_NAME: &str = "bundled:data/vpn-endpoints.csv";

/// Longest service name; names are lowercase slugs.
pub const MAX_SERVICE_NAME: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}: line {line}: {problem}")]
    Line {
        origin: String,
        line: u64,
        problem: LineProblem,
    },
    #[error("{origin}: {problem}")]
    File { origin: String, problem: String },
    #[error("--watch {value}: {problem}")]
    WatchArgument { value: String, problem: LineProblem },
    #[error(
        "--pseudonymize-key: {listed_at}the endpoint {endpoint} ({service}) overlaps the watched \
         {watched}: its addresses would appear as endpoints without pseudonyms; \
         take it out of the feed or the watched set"
    )]
    WatchedEndpoint {
        /// `file: line N: `, or empty when the feed's file has changed
        /// since it was loaded.
        listed_at: String,
        endpoint: IpNet,
        service: String,
        watched: IpNet,
    },
}

/// Refuses, for pseudonymized output, an endpoint prefix that overlaps a
/// watched one: an address in both would be reported as an endpoint, where
/// only watched addresses get pseudonyms. The error names the file and line
/// that listed the endpoint.
pub fn refuse_watched_endpoints(
    watched: &WatchedSet,
    feed: &EndpointFeed,
) -> Result<(), FeedError> {
    for net in watched.all() {
        if let Some(endpoint) = feed.first_overlapping(net) {
            let listed_at = feed
                .where_listed(endpoint.net)
                .map(|(origin, line)| format!("{origin}: line {line}: "))
                .unwrap_or_default();
            return Err(FeedError::WatchedEndpoint {
                listed_at,
                endpoint: endpoint.net,
                service: endpoint.service.clone(),
                watched: net,
            });
        }
    }
    Ok(())
}

/// What is wrong with one line of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    BadCidr(String),
    HostBitsSet {
        given: String,
        network: String,
    },
    UnknownFamily(String),
    MissingField(&'static str),
    BadNetmask {
        address: String,
        netmask: String,
    },
    MisplacedNetmask(String),
    /// After a bare address, a word that is neither a netmask nor a label.
    NotANetmask {
        address: String,
        word: String,
        ipv6: bool,
    },
    BadServiceName(String),
    Csv(String),
    /// A byte that is not UTF-8 (`byte`, at `column` from 1).
    NotUtf8 {
        byte: u8,
        column: usize,
    },
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCidr(text) => write!(f, "bad CIDR {text:?}"),
            Self::HostBitsSet { given, network } => {
                write!(f, "host bits set in {given} (did you mean {network}?)")
            }
            Self::UnknownFamily(text) => {
                write!(
                    f,
                    "unknown address family in {text:?} (neither IPv4 nor IPv6)"
                )
            }
            Self::MissingField(name) => write!(f, "missing {name}"),
            Self::BadNetmask { address, netmask } => write!(
                f,
                "bad netmask {netmask} after {address} (its one bits must be contiguous)"
            ),
            Self::MisplacedNetmask(text) => write!(
                f,
                "a netmask only follows a bare IPv4 address (175.45.176.0 255.255.252.0), not {text:?}"
            ),
            Self::NotANetmask {
                address,
                word,
                ipv6: false,
            } => write!(
                f,
                "{word:?} after {address} is neither a dotted netmask nor a label (a prefix is written {address}/LEN or {address} 255.255.252.0; a range is not read)"
            ),
            Self::NotANetmask {
                address,
                word,
                ipv6: true,
            } => write!(
                f,
                "{word:?} after {address} is not a label (a prefix is written {address}/LEN; a range is not read)"
            ),
            Self::NotUtf8 { byte, column } => write!(
                f,
                "byte 0x{byte:02X}, the line's byte {column}, is not UTF-8 (save the file as UTF-8)"
            ),
            Self::BadServiceName(name) => write!(
                f,
                "bad service name {name:?} (use a lowercase slug of a-z, 0-9 and '-', at most {MAX_SERVICE_NAME} characters)"
            ),
            Self::Csv(message) => write!(f, "{message}"),
        }
    }
}

/// Parses one prefix. A bare address is a host prefix (/32 or /128).
pub fn parse_prefix(text: &str) -> Result<IpNet, LineProblem> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LineProblem::MissingField("cidr"));
    }
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address = IpAddr::from_str(address).map_err(|_| {
        if address.contains(':') || address.contains('.') {
            LineProblem::BadCidr(text.to_string())
        } else {
            LineProblem::UnknownFamily(text.to_string())
        }
    })?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        None => max,
        Some(length) => length
            .parse::<u8>()
            .ok()
            .filter(|length| *length <= max)
            .ok_or_else(|| LineProblem::BadCidr(text.to_string()))?,
    };
    let net = IpNet::new(address, length).map_err(|_| LineProblem::BadCidr(text.to_string()))?;
    let net = normalize_ipv4_mapped(net);
    if net.trunc() != net {
        return Err(LineProblem::HostBitsSet {
            given: text.to_string(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// An IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/n`, n ≥ 96) as the IPv4
/// prefix it stands for (`a.b.c.d/(n - 96)`): the sensor sees such
/// addresses as IPv4. Every other prefix is returned unchanged.
pub fn normalize_ipv4_mapped(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match v6.addr().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4)
        }
        _ => net,
    }
}

/// Checks that a service name is a lowercase slug (`a-z`, `0-9`, `-`, at
/// most [`MAX_SERVICE_NAME`] characters).
pub fn check_service_name(name: &str) -> Result<(), LineProblem> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(LineProblem::BadServiceName(name.to_string()))
    }
}

/// Where a feed came from, for reports and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedOrigin {
    pub name: String,
    pub sha256: String,
    /// Prefixes the file lists, per service and family (before duplicates
    /// across files are merged).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefixes: BTreeMap<String, FamilyCounts>,
    /// When the daemon loaded it into the kernel (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
}

impl FeedOrigin {
    /// Adds to `replaced` the feeds of `old` a reload replaced: those whose
    /// file or contents `new` does not have (a feed reloaded unchanged is
    /// not replaced), each once; drops from it those `new` brings back.
    pub fn note_replaced(replaced: &mut Vec<FeedOrigin>, old: Vec<FeedOrigin>, new: &[FeedOrigin]) {
        let same = |a: &FeedOrigin, b: &FeedOrigin| a.name == b.name && a.sha256 == b.sha256;
        // One loaded again (A, B, then A) is in force, not replaced.
        replaced.retain(|feed| !new.iter().any(|kept| same(kept, feed)));
        for feed in old {
            if !new
                .iter()
                .chain(replaced.iter())
                .any(|kept| same(kept, &feed))
            {
                replaced.push(feed);
            }
        }
    }
}

/// Prefix counts of one service in one feed file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FamilyCounts {
    pub ipv4: u64,
    pub ipv6: u64,
}

/// Reads a feed file as text, as it is (its SHA-256 is the file's); the
/// error names the file, and for bytes that are not UTF-8 the line and
/// column.
pub fn read_file(path: &Path) -> Result<String, FeedError> {
    let origin = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| FeedError::Read {
        origin: origin(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|error| {
        let bytes = error.as_bytes();
        let valid = &bytes[..error.utf8_error().valid_up_to()];
        // Lines as `feed_lines` counts them: `\n`, `\r\n` or a bare `\r`.
        let breaks = |at: usize, byte: &u8| {
            *byte == b'\n' || (*byte == b'\r' && bytes.get(at + 1) != Some(&b'\n'))
        };
        let line_start = valid
            .iter()
            .enumerate()
            .rposition(|(at, byte)| breaks(at, byte))
            .map_or(0, |at| at + 1);
        FeedError::Line {
            origin: origin(),
            line: valid
                .iter()
                .enumerate()
                .filter(|(at, byte)| breaks(*at, byte))
                .count() as u64
                + 1,
            problem: LineProblem::NotUtf8 {
                byte: bytes[valid.len()],
                column: valid.len() - line_start + 1,
            },
        }
    })
}

/// `text` with its lines (as [`feed_lines`] splits them: `\n`, `\r\n` or a
/// bare `\r`, as classic Mac line breaks and some spreadsheet exports
/// write) ended by `\n`, for the csv crate, which numbers lines by `\n`;
/// borrowed when it has no `\r`.
pub fn with_newlines(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\r') {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(split_lines(text).collect::<Vec<_>>().join("\n"))
}

/// The lines of a feed's text, numbered as an editor shows them: a leading
/// byte-order mark dropped, lines ending in `\n`, `\r\n` or a bare `\r`.
pub fn feed_lines(text: &str) -> impl Iterator<Item = &str> {
    split_lines(without_bom(text))
}

/// `text` without a leading byte-order mark (which editors saving "UTF-8
/// with BOM" write); the csv crate drops it itself.
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

// ---- watched set ---------------------------------------------------------------

/// The watched prefixes, per family, deduplicated and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchedSet {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

impl WatchedSet {
    /// From `--watch` values and `--watch-file` paths; the default range when
    /// both are empty. A watch file without a prefix is refused.
    pub fn from_arguments(values: &[String], files: &[PathBuf]) -> Result<Self, FeedError> {
        let mut prefixes = Vec::new();
        for value in values {
            let net = parse_prefix(value).map_err(|problem| FeedError::WatchArgument {
                value: value.clone(),
                problem,
            })?;
            prefixes.push(net);
        }
        for path in files {
            let origin = path.display().to_string();
            let listed = parse_prefix_list(&origin, &read_file(path)?)?;
            if listed.is_empty() {
                // Emptied or cut short: watching nothing would count nothing.
                return Err(FeedError::File {
                    origin,
                    problem: "no prefixes (only blank lines or comments): nothing would be watched"
                        .into(),
                });
            }
            prefixes.extend(listed);
        }
        if values.is_empty() && files.is_empty() {
            prefixes.push(parse_prefix(DEFAULT_WATCHED).expect("the default range is valid"));
        }
        Ok(Self::from_prefixes(prefixes))
    }

    pub fn from_prefixes(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = BTreeSet::new();
        let mut v6 = BTreeSet::new();
        for net in prefixes {
            match net {
                IpNet::V4(net) => v4.insert(net),
                IpNet::V6(net) => v6.insert(net),
            };
        }
        Self {
            v4: v4.into_iter().collect(),
            v6: v6.into_iter().collect(),
        }
    }

    /// IPv4 prefixes, then IPv6.
    pub fn all(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.v4.iter().map(|net| IpNet::V4(*net));
        v4.chain(self.v6.iter().map(|net| IpNet::V6(*net)))
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A list of prefixes, one per line: `#` starts a comment, blank lines are
/// skipped, an IPv4 address followed by a dotted netmask
/// (`175.45.176.0 255.255.252.0`) is that prefix, and anything else after
/// the first comma or blank is ignored (so the `cidr,label,source` CSV
/// shape works too, its header line included).
pub fn parse_prefix_list(origin: &str, text: &str) -> Result<Vec<IpNet>, FeedError> {
    let lines = parse_prefix_list_lines(origin, text)?;
    Ok(lines.into_iter().map(|(_, net)| net).collect())
}

/// [`parse_prefix_list`], each prefix with its line number (from 1).
pub fn parse_prefix_list_lines(origin: &str, text: &str) -> Result<Vec<(u64, IpNet)>, FeedError> {
    let mut prefixes = Vec::new();
    for (index, line) in feed_lines(text).enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let field = content
            .split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if prefixes.is_empty() && field.eq_ignore_ascii_case("cidr") {
            continue;
        }
        let line = index as u64 + 1;
        let net = parse_list_entry(content, field).map_err(|problem| FeedError::Line {
            origin: origin.to_string(),
            line,
            problem,
        })?;
        prefixes.push((line, net));
    }
    Ok(prefixes)
}

/// One list line's prefix: `field` (its first field) alone, or with the
/// dotted netmask that follows it after blanks.
fn parse_list_entry(content: &str, field: &str) -> Result<IpNet, LineProblem> {
    let rest = &content[field.len()..];
    let next_word = rest
        .starts_with(char::is_whitespace)
        .then(|| rest.split_whitespace().next())
        .flatten()
        .and_then(|word| word.split(',').next())
        .filter(|word| !word.is_empty());
    let Some(netmask) = next_word.and_then(|word| word.parse::<Ipv4Addr>().ok()) else {
        // `175.45.176.0 22`, `… /22`, `… - 175.45.179.255` or a netmask
        // cut short would otherwise be one address and a label (a label
        // such as a date, `2024-05-01`, is still one).
        if let (Some(word), Ok(address)) = (next_word, field.parse::<IpAddr>())
            && (word == "-"
                || word
                    .chars()
                    .all(|c| c.is_ascii_digit() || "./:".contains(c)))
        {
            return Err(LineProblem::NotANetmask {
                address: field.to_string(),
                word: word.to_string(),
                ipv6: address.is_ipv6(),
            });
        }
        return parse_prefix(field);
    };
    let given = || format!("{field} {netmask}");
    let Ok(address) = field.parse::<Ipv4Addr>() else {
        return Err(LineProblem::MisplacedNetmask(given()));
    };
    let net = Ipv4Net::with_netmask(address, netmask).map_err(|_| LineProblem::BadNetmask {
        address: address.to_string(),
        netmask: netmask.to_string(),
    })?;
    if net.trunc() != net {
        return Err(LineProblem::HostBitsSet {
            given: given(),
            network: net.trunc().to_string(),
        });
    }
    Ok(IpNet::V4(net))
}

// ---- endpoint feed ---------------------------------------------------------------

/// One endpoint prefix and the service it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub net: IpNet,
    pub service: String,
}

/// What loading a feed noticed but accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedWarnings {
    /// The same prefix listed again for the same service (kept once).
    pub duplicates: usize,
    /// The same prefix listed for two services: the first one listed wins.
    pub conflicts: usize,
    /// Prefixes inside a shorter prefix of the feed (the longest prefix
    /// wins at lookup).
    pub nested: usize,
    /// Of `nested`, those inside a prefix of another service.
    pub nested_other_service: usize,
}

/// The endpoint feed: unique prefixes with their service, and service ids.
#[derive(Debug, Clone, Default)]
pub struct EndpointFeed {
    pub endpoints: Vec<Endpoint>,
    pub origins: Vec<FeedOrigin>,
    pub warnings: FeedWarnings,
}

impl EndpointFeed {
    /// From `--endpoints` paths, or the bundled feed when there are none.
    pub fn from_arguments(files: &[PathBuf]) -> Result<Self, FeedError> {
        if files.is_empty() {
            return Self::from_sources(&[(
                BUNDLED_ENDPOINTS_NAME.to_string(),
                BUNDLED_ENDPOINTS.to_string(),
            )]);
        }
        let mut sources = Vec::new();
        for path in files {
            sources.push((path.display().to_string(), read_file(path)?));
        }
        Self::from_sources(&sources)
    }

    /// From (origin name, CSV text) pairs, merged in order.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, FeedError> {
        let mut rows = Vec::new();
        let mut origins = Vec::new();
        for (origin, text) in sources {
            let parsed = parse_endpoint_csv(origin, text)?;
            let mut prefixes: BTreeMap<String, FamilyCounts> = BTreeMap::new();
            for endpoint in &parsed {
                let counts = prefixes.entry(endpoint.service.clone()).or_default();
                if endpoint.net.addr().is_ipv4() {
                    counts.ipv4 += 1;
                } else {
                    counts.ipv6 += 1;
                }
            }
            rows.extend(parsed);
            origins.push(FeedOrigin {
                name: origin.clone(),
                sha256: sha256_hex(text.as_bytes()),
                prefixes,
                loaded_at: None,
            });
        }
        let mut feed = Self::from_endpoints(rows);
        feed.origins = origins;
        Ok(feed)
    }

    /// Deduplicates and counts overlaps; the first service listed for a
    /// prefix keeps it.
    pub fn from_endpoints(rows: impl IntoIterator<Item = Endpoint>) -> Self {
        let mut warnings = FeedWarnings::default();
        let mut by_prefix: BTreeMap<IpNet, String> = BTreeMap::new();
        // Every (prefix, service) listed: a service that lost a prefix and
        // lists it again has lost it once, and listed it twice.
        let mut listed: BTreeSet<(IpNet, String)> = BTreeSet::new();
        for row in rows {
            if !listed.insert((row.net, row.service.clone())) {
                warnings.duplicates += 1;
                continue;
            }
            match by_prefix.get(&row.net) {
                Some(_) => warnings.conflicts += 1,
                None => {
                    by_prefix.insert(row.net, row.service);
                }
            }
        }
        let endpoints: Vec<Endpoint> = by_prefix
            .into_iter()
            .map(|(net, service)| Endpoint { net, service })
            .collect();
        count_nested(&endpoints, &mut warnings);
        Self {
            endpoints,
            origins: Vec::new(),
            warnings,
        }
    }

    /// Service names in id order: id `n` is `services()[n - 1]`.
    pub fn services(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self.endpoints.iter().map(|e| e.service.as_str()).collect();
        names.into_iter().map(str::to_string).collect()
    }

    /// An endpoint prefix that contains `net` or lies inside it, if any.
    /// `endpoints` is sorted (family, network address, length), so the
    /// prefixes inside `net` start where `net` would be, and the ones
    /// containing it are found by their exact value, one length at a time.
    pub fn first_overlapping(&self, net: IpNet) -> Option<&Endpoint> {
        let net = net.trunc();
        let containing = (0..=net.prefix_len()).find_map(|length| {
            let shorter = IpNet::new(net.addr(), length).ok()?.trunc();
            let at = self
                .endpoints
                .binary_search_by(|e| e.net.cmp(&shorter))
                .ok()?;
            Some(&self.endpoints[at])
        });
        let inside = || {
            let at = self.endpoints.partition_point(|e| e.net < net);
            self.endpoints.get(at).filter(|e| net.contains(&e.net))
        };
        containing.or_else(inside)
    }

    /// The file and line that first listed `net` (the listing that won it),
    /// read again from the feed's files in order: the feed keeps no line
    /// numbers, to keep a million-prefix feed small. `None` when a file up
    /// to that one has changed since it was loaded, or cannot be read
    /// again (an earlier file may have been the one).
    pub fn where_listed(&self, net: IpNet) -> Option<(String, u64)> {
        for origin in &self.origins {
            let text = if origin.name == BUNDLED_ENDPOINTS_NAME {
                BUNDLED_ENDPOINTS.to_string()
            } else {
                std::fs::read_to_string(&origin.name).ok()?
            };
            if sha256_hex(text.as_bytes()) != origin.sha256 {
                return None;
            }
            let rows = parse_endpoint_rows(&origin.name, &text).ok()?;
            if let Some(row) = rows.iter().find(|row| row.endpoint.net == net) {
                return Some((origin.name.clone(), row.line));
            }
        }
        None
    }

    pub fn count(&self, v4: bool) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.net.addr().is_ipv4() == v4)
            .count()
    }
}

/// Counts prefixes nested in a shorter one. `endpoints` is sorted by
/// `IpNet`'s order: by family, network address, then prefix length, so a
/// containing prefix always comes before what it contains.
fn count_nested(endpoints: &[Endpoint], warnings: &mut FeedWarnings) {
    let mut open: Vec<&Endpoint> = Vec::new();
    for endpoint in endpoints {
        while let Some(top) = open.last() {
            if top.net.contains(&endpoint.net) {
                break;
            }
            open.pop();
        }
        if let Some(parent) = open.last() {
            warnings.nested += 1;
            if parent.service != endpoint.service {
                warnings.nested_other_service += 1;
            }
        }
        open.push(endpoint);
    }
}

/// A CSV feed whose header names a `cidr` and a `service` column (others are
/// ignored). Lines starting with `#` are comments.
pub fn parse_endpoint_csv(origin: &str, text: &str) -> Result<Vec<Endpoint>, FeedError> {
    let rows = parse_endpoint_rows(origin, text)?;
    Ok(rows.into_iter().map(|row| row.endpoint).collect())
}

/// One row of a feed file and the line it is on (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub line: u64,
    pub endpoint: Endpoint,
}

/// [`parse_endpoint_csv`], each row with its line number.
pub fn parse_endpoint_rows(origin: &str, text: &str) -> Result<Vec<FeedRow>, FeedError> {
    let text = with_newlines(text);
    let text = text.as_ref();
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|error| FeedError::File {
        origin: origin.to_string(),
        problem: format!("cannot read the header: {error}"),
    })?;
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let missing = |name: &str| FeedError::File {
        origin: origin.to_string(),
        problem: format!("the header has no {name:?} column (it needs \"cidr\" and \"service\")"),
    };
    let cidr_column = column("cidr").ok_or_else(|| missing("cidr"))?;
    let service_column = column("service").ok_or_else(|| missing("service"))?;

    let mut rows = Vec::new();
    let mut lines = LineCounter::new(text);
    for record in reader.records() {
        let record = record.map_err(|error| FeedError::Line {
            origin: origin.to_string(),
            line: lines.line_of(error.position()),
            problem: LineProblem::Csv(error.to_string()),
        })?;
        let line = lines.line_of(record.position());
        // Blank but for spaces, or a comment after spaces: skipped, as
        // plain lists skip them (the csv crate skips only `#` in column 1
        // and empty lines).
        if record.iter().all(str::is_empty) || record.get(0).is_some_and(|f| f.starts_with('#')) {
            continue;
        }
        let fail = |problem| FeedError::Line {
            origin: origin.to_string(),
            line,
            problem,
        };
        let cidr = record
            .get(cidr_column)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| fail(LineProblem::MissingField("cidr")))?;
        let service = record
            .get(service_column)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| fail(LineProblem::MissingField("service")))?;
        let net = parse_prefix(cidr).map_err(fail)?;
        check_service_name(service).map_err(fail)?;
        rows.push(FeedRow {
            line,
            endpoint: Endpoint {
                net,
                service: service.to_string(),
            },
        });
    }
    Ok(rows)
}

/// Line numbers (from 1) of CSV records, counted in the text itself: the
/// csv crate's own count is off for the first record after blank lines
/// (BurntSushi/rust-csv#208), and its byte offset points at the start of
/// the blank and comment lines it skipped, so those are skipped here.
/// Records are asked for in order, so each byte is counted once.
struct LineCounter<'a> {
    text: &'a str,
    offset: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            offset: 0,
            line: 1,
        }
    }

    /// The line of the record at `position`; 0 when unknown.
    fn line_of(&mut self, position: Option<&csv::Position>) -> u64 {
        let Some(position) = position else {
            return 0;
        };
        let text = self.text;
        let mut target = usize::try_from(position.byte())
            .unwrap_or(text.len())
            .min(text.len());
        while let Some(rest) = text.get(target..) {
            let end = rest.find('\n').map_or(rest.len(), |end| end + 1);
            let line = &rest[..end];
            let skipped = line.trim_end_matches(['\r', '\n']).is_empty() || line.starts_with('#');
            if end == 0 || !skipped {
                break;
            }
            target += end;
        }
        if target < self.offset {
            self.offset = 0;
            self.line = 1;
        }
        let between = text.as_bytes().get(self.offset..target).unwrap_or_default();
        self.line += between.iter().filter(|&&byte| byte == b'\n').count() as u64;
        self.offset = target;
        self.line
    }
}

/// A plain list of one service's prefixes: one per line, `#` comments and
/// blank lines skipped, as [`parse_prefix_list`] reads it. `service` must
/// pass [`check_service_name`].
pub fn parse_service_list(
    origin: &str,
    text: &str,
    service: &str,
) -> Result<Vec<FeedRow>, FeedError> {
    let lines = parse_prefix_list_lines(origin, text)?;
    Ok(lines
        .into_iter()
        .map(|(line, net)| FeedRow {
            line,
            endpoint: Endpoint {
                net,
                service: service.to_string(),
            },
        })
        .collect())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_error(text: &str) -> String {
        parse_endpoint_csv("feed.csv", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn feeds_replaced_by_reloads_are_listed_once_and_not_when_back_in_force() {
        let feed = |sha256: &str, loaded_at: &str| FeedOrigin {
            name: "feed.csv".into(),
            sha256: sha256.into(),
            prefixes: BTreeMap::new(),
            loaded_at: Some(loaded_at.into()),
        };
        let mut replaced = Vec::new();
        // A, then A again unchanged: nothing replaced.
        FeedOrigin::note_replaced(&mut replaced, vec![feed("a", "1")], &[feed("a", "2")]);
        assert!(replaced.is_empty());
        // A, then B, then C: A and B replaced, each once.
        FeedOrigin::note_replaced(&mut replaced, vec![feed("a", "2")], &[feed("b", "3")]);
        FeedOrigin::note_replaced(&mut replaced, vec![feed("b", "3")], &[feed("c", "4")]);
        let shas: Vec<&str> = replaced.iter().map(|f| f.sha256.as_str()).collect();
        assert_eq!(shas, ["a", "b"]);
        // A back in force: no longer replaced, C is.
        FeedOrigin::note_replaced(&mut replaced, vec![feed("c", "4")], &[feed("a", "5")]);
        let shas: Vec<&str> = replaced.iter().map(|f| f.sha256.as_str()).collect();
        assert_eq!(shas, ["b", "c"]);
    }

    #[test]
    fn endpoint_errors_name_file_line_and_problem() {
        let cases = [
            (
                "cidr,service\n10.0.0.0/8,pia\n10.0.0.0/33,pia\n",
                "feed.csv: line 3: bad CIDR \"10.0.0.0/33\"",
            ),
            (
                "cidr,service\n1.2.3.4/24,pia\n",
                "feed.csv: line 2: host bits set in 1.2.3.4/24 (did you mean 1.2.3.0/24?)",
            ),
            (
                "cidr,service\nnot-an-address/8,pia\n",
                "feed.csv: line 2: unknown address family in \"not-an-address/8\"",
            ),
            (
                "cidr,service\n1.2.3.4.5/32,pia\n",
                "feed.csv: line 2: bad CIDR \"1.2.3.4.5/32\"",
            ),
            (
                "cidr,service\n2001:db8::/129,pia\n",
                "feed.csv: line 2: bad CIDR \"2001:db8::/129\"",
            ),
            (
                "cidr,service\n2001:db8::1/64,pia\n",
                "feed.csv: line 2: host bits set in 2001:db8::1/64 (did you mean 2001:db8::/64?)",
            ),
            (
                "cidr,service\n1.2.3.0/24,\n",
                "feed.csv: line 2: missing service",
            ),
            (
                "cidr,service\n1.2.3.0/24\n",
                "feed.csv: line 2: missing service",
            ),
            ("cidr,service\n,pia\n", "feed.csv: line 2: missing cidr"),
            (
                "cidr,service\n1.2.3.0/24,Hot Spot\n",
                "feed.csv: line 2: bad service name \"Hot Spot\"",
            ),
            (
                "address,service\n1.2.3.0/24,pia\n",
                "feed.csv: the header has no \"cidr\" column",
            ),
            (
                "cidr,name\n1.2.3.0/24,pia\n",
                "feed.csv: the header has no \"service\" column",
            ),
            (
                "# comment\ncidr,service\n# another\n1.2.3.0/24,pia\n9.9.9.9/99,pia\n",
                "feed.csv: line 5: bad CIDR",
            ),
        ];
        for (text, expected) in cases {
            let message = feed_error(text);
            assert!(
                message.starts_with(expected),
                "{text:?}: got {message:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn endpoint_csv_accepts_extra_columns_hosts_and_both_families() {
        let rows = parse_endpoint_csv(
            "f",
            "source,cidr,service\nx,1.2.3.0/24,pia\ny,5.6.7.8,expressvpn\nz,2001:db8::/32,mullvad\n",
        )
        .unwrap();
        let nets: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.net, r.service))
            .collect();
        assert_eq!(
            nets,
            [
                "1.2.3.0/24 pia",
                "5.6.7.8/32 expressvpn",
                "2001:db8::/32 mullvad"
            ]
        );
    }

    #[test]
    fn duplicates_conflicts_and_nesting_are_counted() {
        let feed = EndpointFeed::from_sources(&[(
            "f".into(),
            "cidr,service\n10.0.0.0/8,a\n10.0.0.0/8,a\n10.0.0.0/8,b\n10.1.0.0/16,a\n10.1.2.3/32,b\n192.168.0.0/16,c\n"
                .into(),
        )])
        .unwrap();
        assert_eq!(
            feed.warnings,
            FeedWarnings {
                duplicates: 1,
                conflicts: 1,
                nested: 2,
                nested_other_service: 1
            }
        );
        assert_eq!(feed.endpoints.len(), 4);
        assert_eq!(feed.services(), ["a", "b", "c"]);
    }

    #[test]
    fn overlapping_endpoints_are_found_as_a_scan_of_every_pair_finds_them() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let endpoint = |text: &str| Endpoint {
            net: net(text),
            service: "s".into(),
        };
        let feed = EndpointFeed::from_endpoints(
            [
                "10.0.0.0/8",
                "10.1.2.0/24",
                "10.1.2.128/25",
                "11.0.0.1/32",
                "192.168.0.0/16",
                "2001:db8::/32",
                "2001:db8:1::/48",
            ]
            .map(endpoint),
        );
        let scanned = |watched: IpNet| {
            feed.endpoints
                .iter()
                .any(|e| e.net.contains(&watched) || watched.contains(&e.net))
        };
        let probes = [
            "0.0.0.0/0",
            "10.1.2.3/32",
            "10.1.0.0/16",
            "11.0.0.0/24",
            "11.0.0.2/31",
            "11.0.0.0/31",
            "12.0.0.0/8",
            "192.167.255.0/24",
            "192.168.255.255/32",
            "192.169.0.0/16",
            "9.255.255.255/32",
            "2001:db8:1:2::/64",
            "2001:db9::/32",
            "2001::/16",
            "::/0",
            "2002::/16",
        ];
        for probe in probes.map(net) {
            let found = feed.first_overlapping(probe);
            assert_eq!(found.is_some(), scanned(probe), "{probe}");
            if let Some(found) = found {
                assert!(
                    found.net.contains(&probe) || probe.contains(&found.net),
                    "{probe}"
                );
            }
        }
    }

    #[test]
    fn a_watched_endpoint_is_refused_naming_the_file_and_line_that_listed_it() {
        let folder = crate::test_support::TempFolder::new("watched-endpoint");
        let first = folder.file("first.csv");
        let second = folder.file("second.csv");
        std::fs::write(&first, "cidr,service\n10.0.0.0/8,a\n").unwrap();
        std::fs::write(
            &second,
            "cidr,service\n# kp\n\n1.1.1.1,b\n175.45.177.0/24,c\n",
        )
        .unwrap();
        let feed = EndpointFeed::from_arguments(&[first.clone(), second.clone()]).unwrap();
        let watched = WatchedSet::from_arguments(&[], &[]).unwrap();
        let error = refuse_watched_endpoints(&watched, &feed)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "--pseudonymize-key: {}: line 5: the endpoint 175.45.177.0/24 (c) overlaps \
                 the watched 175.45.176.0/22:",
                second.display()
            )),
            "{error}"
        );
        // Changed since it was loaded: the line is no longer known.
        std::fs::write(&second, "cidr,service\n175.45.177.0/24,c\n").unwrap();
        let error = refuse_watched_endpoints(&watched, &feed)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--pseudonymize-key: the endpoint 175.45.177.0/24 (c)"),
            "{error}"
        );
        let elsewhere = WatchedSet::from_arguments(&["172.16.0.0/12".into()], &[]).unwrap();
        assert!(refuse_watched_endpoints(&elsewhere, &feed).is_ok());

        // The first file listed it and has changed since: the second file,
        // which lists it too, is not named in its place.
        std::fs::write(&first, "cidr,service\n175.45.177.0/24,c\n").unwrap();
        std::fs::write(&second, "cidr,service\n175.45.177.0/24,d\n").unwrap();
        let feed = EndpointFeed::from_arguments(&[first.clone(), second.clone()]).unwrap();
        assert_eq!(
            feed.where_listed("175.45.177.0/24".parse().unwrap()),
            Some((first.display().to_string(), 2))
        );
        std::fs::write(&first, "cidr,service\n# edited\n175.45.177.0/24,c\n").unwrap();
        assert_eq!(feed.where_listed("175.45.177.0/24".parse().unwrap()), None);
    }

    #[test]
    fn watched_defaults_and_lists() {
        let default = WatchedSet::from_arguments(&[], &[]).unwrap();
        assert_eq!(default.v4, ["175.45.176.0/22".parse::<Ipv4Net>().unwrap()]);
        assert!(default.v6.is_empty());

        let list = parse_prefix_list(
            "w.txt",
            "# KP\ncidr,label\n175.45.176.0/22,kp\n\n2001:db8::/32 # doc\n",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        let error = parse_prefix_list("w.txt", "175.45.176.0/22\n175.45.176.1/22\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "w.txt: line 2: host bits set in 175.45.176.1/22 (did you mean 175.45.176.0/22?)"
        );
        let error = WatchedSet::from_arguments(&["10.0.0.0/40".into()], &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--watch 10.0.0.0/40: bad CIDR \"10.0.0.0/40\""
        );
    }

    #[test]
    fn an_address_and_netmask_line_is_its_prefix_never_a_host() {
        let list = parse_prefix_list(
            "w.txt",
            "175.45.176.0 255.255.252.0\n10.0.0.0\t255.0.0.0 # tab\n192.0.2.7 255.255.255.255\n",
        )
        .unwrap();
        let expected: Vec<IpNet> = ["175.45.176.0/22", "10.0.0.0/8", "192.0.2.7/32"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        assert_eq!(list, expected);
        // A label after the address is still ignored; one after the
        // netmask too.
        let list = parse_prefix_list("w.txt", "192.0.2.7 office\n").unwrap();
        assert_eq!(list, ["192.0.2.7/32".parse::<IpNet>().unwrap()]);
        let list = parse_prefix_list("w.txt", "192.0.2.7 2024-05-01\n").unwrap();
        assert_eq!(list, ["192.0.2.7/32".parse::<IpNet>().unwrap()]);
        let list = parse_prefix_list("w.txt", "175.45.176.0 255.255.252.0,north-korea\n").unwrap();
        assert_eq!(list, ["175.45.176.0/22".parse::<IpNet>().unwrap()]);
        let refusals = [
            (
                "175.45.176.0 255.0.255.0\n",
                "w.txt: line 1: bad netmask 255.0.255.0 after 175.45.176.0 (its one bits must be contiguous)",
            ),
            (
                "175.45.176.1 255.255.252.0\n",
                "w.txt: line 1: host bits set in 175.45.176.1 255.255.252.0 (did you mean 175.45.176.0/22?)",
            ),
            (
                "175.45.176.0/22 255.255.252.0\n",
                "w.txt: line 1: a netmask only follows a bare IPv4 address (175.45.176.0 255.255.252.0), not \"175.45.176.0/22 255.255.252.0\"",
            ),
            (
                "2001:db8:: 255.255.0.0\n",
                "w.txt: line 1: a netmask only follows a bare IPv4 address (175.45.176.0 255.255.252.0), not \"2001:db8:: 255.255.0.0\"",
            ),
            // None of these may shrink to the one address 175.45.176.0.
            (
                "175.45.176.0 22\n",
                "w.txt: line 1: \"22\" after 175.45.176.0 is neither a dotted netmask nor a label (a prefix is written 175.45.176.0/LEN or 175.45.176.0 255.255.252.0; a range is not read)",
            ),
            (
                "# list\n175.45.176.0 /22\n",
                "w.txt: line 2: \"/22\" after 175.45.176.0 is neither a dotted netmask nor a label (a prefix is written 175.45.176.0/LEN or 175.45.176.0 255.255.252.0; a range is not read)",
            ),
            (
                "175.45.176.0 - 175.45.179.255\n",
                "w.txt: line 1: \"-\" after 175.45.176.0 is neither a dotted netmask nor a label (a prefix is written 175.45.176.0/LEN or 175.45.176.0 255.255.252.0; a range is not read)",
            ),
            (
                "175.45.176.0 255.255.252\n",
                "w.txt: line 1: \"255.255.252\" after 175.45.176.0 is neither a dotted netmask nor a label (a prefix is written 175.45.176.0/LEN or 175.45.176.0 255.255.252.0; a range is not read)",
            ),
            (
                "175.45.176.0 255.255.252.0/22\n",
                "w.txt: line 1: \"255.255.252.0/22\" after 175.45.176.0 is neither a dotted netmask nor a label (a prefix is written 175.45.176.0/LEN or 175.45.176.0 255.255.252.0; a range is not read)",
            ),
            (
                "2001:db8:: 64\n",
                "w.txt: line 1: \"64\" after 2001:db8:: is not a label (a prefix is written 2001:db8::/LEN; a range is not read)",
            ),
            // The bad address is what is named.
            (
                "abc 12\n",
                "w.txt: line 1: unknown address family in \"abc\" (neither IPv4 nor IPv6)",
            ),
        ];
        for (text, expected) in refusals {
            let error = parse_prefix_list("w.txt", text).unwrap_err();
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_prefixes_are_read_as_ipv4() {
        let cases = [
            ("::ffff:198.51.100.7", "198.51.100.7/32"),
            ("::ffff:198.51.100.0/120", "198.51.100.0/24"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
            ("::ffff:c633:6400/120", "198.51.100.0/24"),
            // Not mapped, or shorter than the mapped /96: IPv6 as before.
            ("2001:db8::/32", "2001:db8::/32"),
            ("::/80", "::/80"),
            ("::198.51.100.7", "::c633:6407/128"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_prefix(text).unwrap().to_string(), expected, "{text}");
        }
        assert_eq!(
            parse_prefix("::ffff:198.51.100.7/120").unwrap_err(),
            LineProblem::HostBitsSet {
                given: "::ffff:198.51.100.7/120".into(),
                network: "198.51.100.0/24".into()
            }
        );
        // `run` reads feeds and watched lists with the same rule.
        let rows = parse_endpoint_csv("f", "cidr,service\n::ffff:192.0.2.1,pia\n").unwrap();
        assert_eq!(rows[0].net.to_string(), "192.0.2.1/32");
        let watched = WatchedSet::from_arguments(&["::ffff:175.45.176.0/118".into()], &[]).unwrap();
        assert_eq!(watched.v4, ["175.45.176.0/22".parse::<Ipv4Net>().unwrap()]);
    }

    #[test]
    fn byte_order_marks_spaces_and_indented_comments_are_read_as_editors_mean_them() {
        // "UTF-8 with BOM": the csv crate drops it, plain lists too.
        let list = parse_prefix_list("w.txt", "\u{feff}175.45.176.0/22\n").unwrap();
        assert_eq!(list, ["175.45.176.0/22".parse::<IpNet>().unwrap()]);
        let list = parse_prefix_list("w.txt", "\u{feff}# watched\n10.0.0.0/8\n").unwrap();
        assert_eq!(list, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        let rows = parse_endpoint_rows("f", "\u{feff}cidr,service\n1.2.3.0/24,pia\n").unwrap();
        assert_eq!(rows.len(), 1);
        // A CSV line of spaces, or a comment after spaces, is skipped as
        // in plain lists; the lines after keep their numbers.
        let rows = parse_endpoint_rows(
            "f",
            "cidr,service\n   \n  # old\n1.2.3.0/24,pia\n \t \n5.0.0.0/8,a\n",
        )
        .unwrap();
        let lines: Vec<u64> = rows.iter().map(|row| row.line).collect();
        assert_eq!(lines, [4, 6]);
        assert_eq!(
            feed_error("cidr,service\n  # old\n   \n1.2.3.4/24,pia\n"),
            "feed.csv: line 4: host bits set in 1.2.3.4/24 (did you mean 1.2.3.0/24?)"
        );
    }

    #[test]
    fn bare_carriage_returns_end_lines() {
        let folder = crate::test_support::TempFolder::new("feed-mac-lines");
        let list = folder.file("watched.txt");
        std::fs::write(
            &list,
            "# watched\r175.45.176.0/24\r175.45.177.0/24\r\n10.0.0.0/8",
        )
        .unwrap();
        let prefixes = parse_prefix_list("w", &read_file(&list).unwrap()).unwrap();
        assert_eq!(prefixes.len(), 3, "{prefixes:?}");
        let feed = folder.file("feed.csv");
        std::fs::write(&feed, "cidr,service\r1.2.3.0/24,pia\r5.0.0.1/8,a\r").unwrap();
        let error = parse_endpoint_rows("feed.csv", &read_file(&feed).unwrap()).unwrap_err();
        // The feed's recorded SHA-256 is the file's own.
        std::fs::write(&feed, "cidr,service\r1.2.3.0/24,pia\r").unwrap();
        let loaded = EndpointFeed::from_arguments(std::slice::from_ref(&feed)).unwrap();
        assert_eq!(loaded.endpoints.len(), 1);
        assert_eq!(
            loaded.origins[0].sha256,
            sha256_hex(&std::fs::read(&feed).unwrap())
        );
        assert_eq!(
            error.to_string(),
            "feed.csv: line 3: host bits set in 5.0.0.1/8 (did you mean 5.0.0.0/8?)"
        );
        let latin1 = folder.file("latin1.txt");
        std::fs::write(&latin1, b"1.2.3.0/24\r5.0.0.0/8 caf\xe9\r").unwrap();
        let error = read_file(&latin1).unwrap_err().to_string();
        assert!(
            error.contains(": line 2: byte 0xE9, the line's byte 14,"),
            "{error}"
        );
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_named_with_its_line_and_column() {
        let folder = crate::test_support::TempFolder::new("feed-latin1");
        let path = folder.file("feed.csv");
        std::fs::write(
            &path,
            b"cidr,service,note\n1.2.3.0/24,pia,ok\n5.0.0.0/8,a,caf\xe9\n",
        )
        .unwrap();
        let error = read_file(&path).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}: line 3: byte 0xE9, the line's byte 16, is not UTF-8 (save the file as UTF-8)",
                path.display()
            )
        );
    }

    #[test]
    fn rows_and_plain_lists_keep_their_line_numbers() {
        let rows = parse_endpoint_rows(
            "f",
            "# c\ncidr,service\n\n1.2.3.0/24,pia\n\n\n# x\n\n5.0.0.0/8,a\n# y\n6.0.0.0/8,b\n\r\n7.0.0.0/8,c\n",
        )
        .unwrap();
        let lines: Vec<u64> = rows.iter().map(|row| row.line).collect();
        assert_eq!(lines, [4, 9, 11, 13]);
        // Blank lines before the header, and an error after blank lines.
        let rows = parse_endpoint_rows("f", "\n\ncidr,service\n1.0.0.0/8,a\n").unwrap();
        assert_eq!(rows[0].line, 4);
        assert_eq!(
            feed_error("cidr,service\n\n\n# old\n\n1.2.3.4/24,pia\n"),
            "feed.csv: line 6: host bits set in 1.2.3.4/24 (did you mean 1.2.3.0/24?)"
        );
        let rows = parse_service_list("l", "# pia\n\n1.2.3.0/24\n5.6.7.8 # host\n", "pia").unwrap();
        let lines: Vec<(u64, String)> = rows
            .iter()
            .map(|row| {
                (
                    row.line,
                    format!("{} {}", row.endpoint.net, row.endpoint.service),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                (3, "1.2.3.0/24 pia".to_string()),
                (4, "5.6.7.8/32 pia".to_string())
            ]
        );
    }

    #[test]
    fn bundled_feed_loads_with_its_documented_shape() {
        let feed = EndpointFeed::from_arguments(&[]).unwrap();
        let services = feed.services();
        assert_eq!(services.len(), 26, "{services:?}");
        for service in ["hotspot-shield", "expressvpn", "pia"] {
            assert!(services.iter().any(|s| s == service), "{service} missing");
        }
        assert!(feed.count(true) > 30_000);
        assert!(feed.count(false) > 1_500);
    }
}
