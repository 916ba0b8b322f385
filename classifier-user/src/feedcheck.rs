//! `classifier feeds check`: reads the watched set and the endpoint feeds
//! exactly as `classifier run` would (the same parser, the same refusals
//! with file and line), then reports what the loader makes of them: counts
//! per service and family, duplicates, conflicts and nested prefixes with
//! the prefix that wins, and the map capacity they need. It also judges the
//! feed's health, as public lists go stale or collapse: services with no
//! prefixes or far fewer than in an earlier feed, prefixes shared by two
//! services, very broad prefixes, and prefixes inside shared-hosting or CDN
//! ranges. Health findings are warnings; only `--strict` makes them fail.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    io::Write as _,
    ops::Bound,
    path::PathBuf,
};

use classifier_common::MAX_SERVICES;
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use crate::{
    cli::{FeedsCheckArgs, FeedsCommand},
    feeds::{
        self, BUNDLED_ENDPOINTS, BUNDLED_ENDPOINTS_NAME, DEFAULT_WATCHED, Endpoint, EndpointFeed,
        FamilyCounts, FeedError, FeedRow, LineProblem, WatchedSet,
    },
    loader::{LoadError, ServiceTable},
    report::ReportFormat,
    v4_table::V4Table,
};

/// The JSON report's schema name.
pub const SCHEMA: &str = "classifier.feedcheck.v1";

/// Examples the table lists per finding; `--format json` lists them all.
const TABLE_EXAMPLES: usize = 10;

/// Examples a warning names before "…".
const WARNING_EXAMPLES: usize = 3;

/// The loader sizes the watched IPv6 trie for at least this many prefixes.
const WATCHED_V6_MIN_ENTRIES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("--service: {0}")]
    ServiceName(LineProblem),
    #[error("--list and --service pair up in order: {lists} --list but {services} --service")]
    UnpairedLists { lists: usize, services: usize },
    /// What `run` refuses before loading, named after the feeds.
    #[error("{feeds}: {error}")]
    Capacity {
        feeds: String,
        error: Box<LoadError>,
    },
    #[error("cannot write the report: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot render the report as JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{warnings} feed warning(s) and --strict (see the report's warnings)")]
    Strict { warnings: usize },
    #[error(transparent)]
    Domains(#[from] crate::learn::LearnError),
}

/// `classifier feeds …`.
pub fn feeds(command: &FeedsCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        FeedsCommand::Check(args) => Ok(check(args)?),
    }
}

/// `classifier feeds check`: prints the report. An error for any input `run`
/// would refuse (nothing is printed then), and with `--strict` for any
/// warning (after the report).
pub fn check(args: &FeedsCheckArgs) -> Result<(), CheckError> {
    let inputs = CheckInputs::read(args)?;
    let report = FeedCheck::build(&inputs, &Rules::from_args(args))?;
    let text = match args.format {
        ReportFormat::Table => report.render_table(),
        ReportFormat::Json => {
            serde_json::to_string_pretty(&report).map_err(CheckError::Json)? + "\n"
        }
    };
    print_report(&text)?;
    if args.strict && !report.warnings.is_empty() {
        return Err(CheckError::Strict {
            warnings: report.warnings.len(),
        });
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print_report(text: &str) -> Result<(), CheckError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.map_err(CheckError::Output),
    }
}

// ---- inputs ----------------------------------------------------------------------

/// One endpoint source: a CSV feed, or a plain list of one service.
#[derive(Debug, Clone)]
pub struct EndpointSource {
    pub name: String,
    /// The service of a plain list; `None` for a CSV feed.
    pub service: Option<String>,
    pub text: String,
}

/// A file's name and text: an earlier feed or a shared-hosting list.
#[derive(Debug, Clone)]
pub struct NamedText {
    pub name: String,
    pub text: String,
}

/// Everything the check reads, read before anything is judged.
#[derive(Debug, Clone)]
pub struct CheckInputs {
    /// In the order the first-listed rule follows: FILE…, --endpoints…,
    /// --list…; the bundled feed when there is none.
    pub endpoints: Vec<EndpointSource>,
    pub watched: WatchedSet,
    /// Where the watched set came from, for the report.
    pub watched_from: Vec<String>,
    pub against: Vec<NamedText>,
    pub shared_hosting: Vec<NamedText>,
    /// The services of the domain feed `run` would learn with (none with
    /// `--no-learn`): they take service ids too.
    pub domain_services: Vec<String>,
}

impl CheckInputs {
    /// Reads every file and validates the watched set as `run` does.
    pub fn read(args: &FeedsCheckArgs) -> Result<Self, CheckError> {
        if args.lists.len() != args.list_services.len() {
            return Err(CheckError::UnpairedLists {
                lists: args.lists.len(),
                services: args.list_services.len(),
            });
        }
        for service in &args.list_services {
            feeds::check_service_name(service).map_err(CheckError::ServiceName)?;
        }
        let watched = WatchedSet::from_arguments(&args.feeds.watch, &args.feeds.watch_files)?;
        let mut watched_from: Vec<String> = args
            .feeds
            .watch
            .iter()
            .map(|value| format!("--watch {value}"))
            .collect();
        watched_from.extend(
            args.feeds
                .watch_files
                .iter()
                .map(|p| p.display().to_string()),
        );
        if watched_from.is_empty() {
            watched_from.push(format!("the default {DEFAULT_WATCHED}"));
        }

        let mut endpoints = Vec::new();
        for path in args.files.iter().chain(&args.feeds.endpoint_files) {
            endpoints.push(EndpointSource {
                name: path.display().to_string(),
                service: None,
                text: feeds::read_file(path)?,
            });
        }
        for (path, service) in args.lists.iter().zip(&args.list_services) {
            endpoints.push(EndpointSource {
                name: path.display().to_string(),
                service: Some(service.clone()),
                text: feeds::read_file(path)?,
            });
        }
        if endpoints.is_empty() {
            endpoints.push(EndpointSource {
                name: BUNDLED_ENDPOINTS_NAME.to_string(),
                service: None,
                text: BUNDLED_ENDPOINTS.to_string(),
            });
        }
        Ok(Self {
            endpoints,
            watched,
            watched_from,
            against: read_all(&args.against)?,
            shared_hosting: read_all(&args.shared_hosting)?,
            domain_services: if args.no_learn {
                Vec::new()
            } else {
                crate::learn::DomainFeed::from_files(&args.domain_files)?.services()
            },
        })
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<NamedText>, FeedError> {
    paths
        .iter()
        .map(|path| {
            Ok(NamedText {
                name: path.display().to_string(),
                text: feeds::read_file(path)?,
            })
        })
        .collect()
}

/// Thresholds of the health checks and the capacities to check against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// IPv4 prefixes shorter than this are very broad.
    pub broad_prefix_v4: u8,
    /// IPv6 prefixes shorter than this are very broad.
    pub broad_prefix_v6: u8,
    /// A service keeping less than this share of its `--against` prefixes
    /// has shrunk.
    pub min_kept: f64,
    pub capacity_v4: Option<u32>,
    pub capacity_v6: Option<u32>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            broad_prefix_v4: 12,
            broad_prefix_v6: 32,
            min_kept: 0.5,
            capacity_v4: None,
            capacity_v6: None,
        }
    }
}

impl Rules {
    pub fn from_args(args: &FeedsCheckArgs) -> Self {
        Self {
            broad_prefix_v4: args.broad_prefix,
            broad_prefix_v6: args.broad_prefix_v6,
            min_kept: args.min_kept,
            capacity_v4: args.endpoint_capacity_v4,
            capacity_v6: args.endpoint_capacity_v6,
        }
    }
}

// ---- the report --------------------------------------------------------------------

/// What `feeds check` found (`classifier.feedcheck.v1`).
#[derive(Debug, Clone, Serialize)]
pub struct FeedCheck {
    pub schema: &'static str,
    pub inputs: Vec<Input>,
    pub watched: WatchedSummary,
    /// Every service named by the feeds or by `--against`, by name.
    pub services: Vec<ServiceCounts>,
    /// Unique endpoint prefixes, as loaded.
    pub totals: FamilyCounts,
    /// A prefix listed again for the same service (kept once).
    pub duplicates: Vec<Duplicate>,
    /// A prefix listed for two services: the first listed keeps it.
    pub conflicts: Vec<Conflict>,
    pub nested: NestedPrefixes,
    /// Prefixes shorter than the broad-prefix thresholds.
    pub broad: Vec<ServicePrefix>,
    pub shared_hosting: Vec<SharedHostingOverlap>,
    pub capacity: Capacity,
    pub warnings: Vec<Warning>,
}

/// A file the check read.
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub name: String,
    /// `endpoints`, `list`, `against` or `shared-hosting`.
    pub role: &'static str,
    /// The service of a plain list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Prefixes (or ranges) it lists.
    pub rows: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchedSummary {
    pub from: Vec<String>,
    pub ipv4: usize,
    pub ipv6: usize,
}

/// One service's unique prefixes, as loaded.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCounts {
    pub service: String,
    pub ipv4: u64,
    pub ipv6: u64,
    /// Prefixes it lists that a service listed before it keeps.
    pub lost_to_conflicts: u64,
    /// Its prefixes in the `--against` feed, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<FamilyCounts>,
}

impl ServiceCounts {
    pub fn total(&self) -> u64 {
        self.ipv4 + self.ipv6
    }
}

/// A file and line (from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u64,
}

impl Location {
    /// "line N" when in the same file as `other`, else the whole location.
    fn relative_to(&self, other: &Location) -> String {
        if self.file == other.file {
            format!("line {}", self.line)
        } else {
            self.to_string()
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file, self.line)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    pub prefix: String,
    pub service: String,
    pub first: Location,
    pub again: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub prefix: String,
    pub kept_by: String,
    pub kept_at: Location,
    pub dropped: String,
    pub dropped_at: Location,
}

/// Prefixes inside a shorter prefix of the feed: the longest prefix wins,
/// so the inner prefix's service gets its addresses.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NestedPrefixes {
    pub total: usize,
    /// Inside a prefix of the same service (harmless).
    pub same_service: usize,
    /// Inside a prefix of another service, each with the closest outer
    /// prefix.
    pub other_service: Vec<Nested>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nested {
    pub inner: String,
    pub inner_service: String,
    pub outer: String,
    pub outer_service: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePrefix {
    pub prefix: String,
    pub service: String,
}

/// An endpoint prefix overlapping (inside, around or equal to) a range of
/// a shared-hosting or CDN network.
#[derive(Debug, Clone, Serialize)]
pub struct SharedHostingOverlap {
    pub prefix: String,
    pub service: String,
    pub range: String,
    pub range_name: String,
}

/// The maps the loader would size for these feeds.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The services that take ids: the feed's, and the domain feed's.
    pub services: usize,
    /// Of those, named only by the domain feed.
    pub domain_only_services: usize,
    pub max_services: usize,
    pub endpoints_v4: usize,
    /// `--endpoint-capacity-v4`; `None`: no limit.
    pub capacity_v4: Option<u32>,
    /// The IPv4 table (watched set and IPv4 endpoints together).
    pub v4_table: TableSize,
    /// Entries of the IPv6 endpoint trie.
    pub endpoints_v6: usize,
    /// `--endpoint-capacity-v6`; `None`: sized from the feed.
    pub capacity_v6: Option<u32>,
    pub watched_v6_entries: usize,
    /// The watched IPv6 trie's size (at least 256).
    pub watched_v6_map: usize,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TableSize {
    pub nodes: usize,
    pub leaves: usize,
    pub runs: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    NoEndpoints,
    EmptyService,
    ShrunkService,
    SharedPrefix,
    BroadPrefix,
    SharedHosting,
}

impl WarningKind {
    fn name(self) -> &'static str {
        match self {
            Self::NoEndpoints => "no-endpoints",
            Self::EmptyService => "empty-service",
            Self::ShrunkService => "shrunk-service",
            Self::SharedPrefix => "shared-prefix",
            Self::BroadPrefix => "broad-prefix",
            Self::SharedHosting => "shared-hosting",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

/// A parsed endpoint row and the index of the source that lists it.
struct Listed {
    source: usize,
    row: FeedRow,
}

impl FeedCheck {
    /// Parses and judges `inputs`; refuses what `run` refuses.
    pub fn build(inputs: &CheckInputs, rules: &Rules) -> Result<Self, CheckError> {
        let mut report_inputs = Vec::new();
        let mut listed = Vec::new();
        for (index, source) in inputs.endpoints.iter().enumerate() {
            let rows = match &source.service {
                None => feeds::parse_endpoint_rows(&source.name, &source.text)?,
                Some(service) => feeds::parse_service_list(&source.name, &source.text, service)?,
            };
            report_inputs.push(Input {
                name: source.name.clone(),
                role: if source.service.is_some() {
                    "list"
                } else {
                    "endpoints"
                },
                service: source.service.clone(),
                rows: rows.len(),
                sha256: feeds::sha256_hex(source.text.as_bytes()),
            });
            listed.extend(rows.into_iter().map(|row| Listed { source: index, row }));
        }
        let mut against_rows = Vec::new();
        for old in &inputs.against {
            let rows = feeds::parse_endpoint_csv(&old.name, &old.text)?;
            report_inputs.push(text_input(old, "against", rows.len()));
            against_rows.extend(rows);
        }
        let mut ranges: BTreeMap<IpNet, String> = BTreeMap::new();
        for list in &inputs.shared_hosting {
            let parsed = parse_shared_hosting(&list.name, &list.text)?;
            report_inputs.push(text_input(list, "shared-hosting", parsed.len()));
            for (net, name) in parsed {
                ranges.entry(net).or_insert(name);
            }
        }

        // The same merge as `run`: the first service listed keeps a prefix.
        let feed = EndpointFeed::from_endpoints(listed.iter().map(|l| l.row.endpoint.clone()));
        let feed_names: Vec<&str> = inputs.endpoints.iter().map(|s| s.name.as_str()).collect();
        let capacity = capacity(
            &feed,
            &inputs.domain_services,
            &inputs.watched,
            rules,
            &feed_names.join(", "),
        )?;
        let (duplicates, conflicts) = repeats(&listed, &inputs.endpoints);
        let against = (!inputs.against.is_empty())
            .then(|| counts_by_service(&EndpointFeed::from_endpoints(against_rows)));

        let mut report = Self {
            schema: SCHEMA,
            inputs: report_inputs,
            watched: WatchedSummary {
                from: inputs.watched_from.clone(),
                ipv4: inputs.watched.v4.len(),
                ipv6: inputs.watched.v6.len(),
            },
            services: service_counts(&feed, inputs, &listed, &conflicts, against.as_ref()),
            totals: FamilyCounts {
                ipv4: feed.count(true) as u64,
                ipv6: feed.count(false) as u64,
            },
            duplicates,
            conflicts,
            nested: nested_prefixes(&feed.endpoints),
            broad: feed
                .endpoints
                .iter()
                .filter(|e| is_broad(e.net, rules))
                .map(|e| ServicePrefix {
                    prefix: e.net.to_string(),
                    service: e.service.clone(),
                })
                .collect(),
            shared_hosting: shared_hosting_overlaps(&feed.endpoints, &ranges),
            capacity,
            warnings: Vec::new(),
        };
        report.warnings = report.health_warnings(inputs, rules);
        Ok(report)
    }

    /// The health warnings, each with its numbers.
    fn health_warnings(&self, inputs: &CheckInputs, rules: &Rules) -> Vec<Warning> {
        let mut warnings = Vec::new();
        let mut warn = |kind, message: String| warnings.push(Warning { kind, message });
        if self.totals.ipv4 + self.totals.ipv6 == 0 {
            warn(
                WarningKind::NoEndpoints,
                "no endpoint prefixes: no traffic would be attributed to a service".into(),
            );
        }
        for service in &self.services {
            if let Some((kind, message)) = service_health(service, inputs, rules) {
                warn(kind, message);
            }
        }
        warnings.extend(shared_prefix_warnings(&self.conflicts));
        warnings.extend(broad_prefix_warnings(&self.broad, rules));
        warnings.extend(shared_hosting_warnings(&self.shared_hosting));
        warnings
    }

    /// The report as text for a terminal.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "inputs");
        for input in &self.inputs {
            let role = match &input.service {
                Some(service) => format!("list ({service})"),
                None => input.role.to_string(),
            };
            let _ = writeln!(
                out,
                "  {role:<15} {}: {} rows, sha256 {}",
                input.name,
                grouped(input.rows as u64),
                input.sha256.get(..12).unwrap_or(&input.sha256)
            );
        }
        let _ = writeln!(
            out,
            "  {:<15} {}: {} IPv4, {} IPv6 prefixes",
            "watched",
            self.watched.from.join(", "),
            self.watched.ipv4,
            self.watched.ipv6
        );

        let with_against = self.services.iter().any(|s| s.against.is_some());
        let _ = write!(
            out,
            "\n{:<32} {:>9} {:>7} {:>9} {:>6}",
            "service", "IPv4", "IPv6", "total", "lost"
        );
        let _ = writeln!(out, "{}", if with_against { "   against" } else { "" });
        for service in &self.services {
            let _ = write!(
                out,
                "{:<32} {:>9} {:>7} {:>9} {:>6}",
                service.service,
                grouped(service.ipv4),
                grouped(service.ipv6),
                grouped(service.total()),
                grouped(service.lost_to_conflicts)
            );
            let against = service
                .against
                .map(|c| format!(" {:>9}", grouped(c.ipv4 + c.ipv6)));
            let _ = writeln!(out, "{}", against.unwrap_or_default());
        }
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>7} {:>9}",
            format!("total ({} services loaded)", self.capacity.services),
            grouped(self.totals.ipv4),
            grouped(self.totals.ipv6),
            grouped(self.totals.ipv4 + self.totals.ipv6)
        );
        let _ = writeln!(out, "(lost: listed, but kept by a service listed before)");

        let _ = writeln!(
            out,
            "\nduplicates (kept once): {}",
            grouped(self.duplicates.len() as u64)
        );
        let lines = self.duplicates.iter().map(|d| {
            format!(
                "{} {}: {}, again {}",
                d.prefix,
                d.service,
                d.first,
                d.again.relative_to(&d.first)
            )
        });
        list_examples(&mut out, lines, self.duplicates.len());
        let _ = writeln!(
            out,
            "conflicts (one prefix, two services; the first listed keeps it): {}",
            grouped(self.conflicts.len() as u64)
        );
        let lines = self.conflicts.iter().map(|c| {
            format!(
                "{}: {} keeps it ({}), not {} ({})",
                c.prefix,
                c.kept_by,
                c.kept_at,
                c.dropped,
                c.dropped_at.relative_to(&c.kept_at)
            )
        });
        list_examples(&mut out, lines, self.conflicts.len());
        let nested = &self.nested;
        let _ = writeln!(
            out,
            "nested (the longest prefix wins): {}, {} inside another service's prefix",
            grouped(nested.total as u64),
            grouped(nested.other_service.len() as u64)
        );
        let lines = nested.other_service.iter().map(|n| {
            format!(
                "{} ({}) inside {} ({}): {} wins there",
                n.inner, n.inner_service, n.outer, n.outer_service, n.inner_service
            )
        });
        list_examples(&mut out, lines, nested.other_service.len());

        let capacity = &self.capacity;
        let table = &capacity.v4_table;
        let _ = writeln!(out, "\ncapacity");
        let _ = writeln!(
            out,
            "  services        {} of at most {}{}",
            capacity.services,
            grouped(capacity.max_services as u64),
            match capacity.domain_only_services {
                0 => String::new(),
                only => format!(" ({only} named only by the domain feed)"),
            }
        );
        let _ = writeln!(
            out,
            "  IPv4 endpoints  {} ({})",
            plural(capacity.endpoints_v4, "prefix", "prefixes"),
            describe_capacity(capacity.capacity_v4, "no limit set")
        );
        let _ = writeln!(
            out,
            "  IPv4 table      first level, second-level nodes {}, leaves {}, runs {}: {} bytes (with the watched set)",
            grouped(table.nodes as u64),
            grouped(table.leaves as u64),
            grouped(table.runs as u64),
            grouped(table.bytes as u64)
        );
        let _ = writeln!(
            out,
            "  IPv6 endpoints  {} ({})",
            plural(capacity.endpoints_v6, "trie entry", "trie entries"),
            describe_capacity(capacity.capacity_v6, "map sized from the feed")
        );
        let _ = writeln!(
            out,
            "  IPv6 watched    {} (map holds {})",
            plural(capacity.watched_v6_entries, "trie entry", "trie entries"),
            grouped(capacity.watched_v6_map as u64)
        );

        let _ = writeln!(out, "\nwarnings: {}", self.warnings.len());
        for warning in &self.warnings {
            let _ = writeln!(out, "  {}: {}", warning.kind.name(), warning.message);
        }
        out
    }
}

/// One warning per pair of services listing the same prefixes.
fn shared_prefix_warnings(conflicts: &[Conflict]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut shared: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for conflict in conflicts {
        shared
            .entry((&conflict.kept_by, &conflict.dropped))
            .or_default()
            .push(&conflict.prefix);
    }
    for ((kept, dropped), prefixes) in shared {
        warnings.push(Warning {
            kind: WarningKind::SharedPrefix,
            message: format!(
                "{kept} and {dropped} both list {}: {kept} keeps {} (listed first): {}",
                plural(prefixes.len(), "prefix", "prefixes"),
                if prefixes.len() == 1 { "it" } else { "them" },
                examples(&prefixes)
            ),
        });
    }
    warnings
}

/// One warning per service with very broad prefixes, IPv4 ones with their
/// address counts.
fn broad_prefix_warnings(broad: &[ServicePrefix], rules: &Rules) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut by_service: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for item in broad {
        let described = match item.prefix.parse::<Ipv4Net>() {
            Ok(net) => format!(
                "{} ({} addresses)",
                item.prefix,
                grouped(1u64 << (32 - u32::from(net.prefix_len())))
            ),
            Err(_) => item.prefix.clone(),
        };
        by_service.entry(&item.service).or_default().push(described);
    }
    for (service, prefixes) in by_service {
        warnings.push(Warning {
            kind: WarningKind::BroadPrefix,
            message: format!(
                "{service}: {} shorter than /{} (IPv4) or /{} (IPv6): {}",
                plural(prefixes.len(), "prefix", "prefixes"),
                rules.broad_prefix_v4,
                rules.broad_prefix_v6,
                examples(&prefixes)
            ),
        });
    }
    warnings
}

/// One warning per service with prefixes in shared-hosting ranges, with
/// the ranges named and counted.
fn shared_hosting_warnings(overlaps: &[SharedHostingOverlap]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut hosting: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut hosting_prefixes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for overlap in overlaps {
        let range = format!("{} {}", overlap.range_name, overlap.range);
        *hosting
            .entry(&overlap.service)
            .or_default()
            .entry(range)
            .or_default() += 1;
        hosting_prefixes
            .entry(&overlap.service)
            .or_default()
            .insert(&overlap.prefix);
    }
    for (service, ranges) in hosting {
        let prefixes = hosting_prefixes.get(service).map_or(0, BTreeSet::len);
        let ranges: Vec<String> = ranges
            .into_iter()
            .map(|(range, count)| format!("{range} ({count})"))
            .collect();
        warnings.push(Warning {
            kind: WarningKind::SharedHosting,
            message: format!(
                "{service}: {} shared-hosting ranges: {}",
                plural(prefixes, "prefix overlaps", "prefixes overlap"),
                examples(&ranges)
            ),
        });
    }
    warnings
}

fn text_input(file: &NamedText, role: &'static str, rows: usize) -> Input {
    Input {
        name: file.name.clone(),
        role,
        service: None,
        rows,
        sha256: feeds::sha256_hex(file.text.as_bytes()),
    }
}

fn describe_capacity(capacity: Option<u32>, unset: &str) -> String {
    match capacity {
        Some(capacity) => format!("capacity {}: fits", grouped(u64::from(capacity))),
        None => unset.to_string(),
    }
}

/// Up to [`TABLE_EXAMPLES`] indented lines, then how many more there are.
fn list_examples(out: &mut String, lines: impl Iterator<Item = String>, total: usize) {
    for line in lines.take(TABLE_EXAMPLES) {
        let _ = writeln!(out, "  {line}");
    }
    if total > TABLE_EXAMPLES {
        let _ = writeln!(
            out,
            "  … and {} more (--format json lists all)",
            grouped((total - TABLE_EXAMPLES) as u64)
        );
    }
}

/// The health warning about one service, if any: it has no prefixes, or
/// far fewer than in `--against`.
fn service_health(
    service: &ServiceCounts,
    inputs: &CheckInputs,
    rules: &Rules,
) -> Option<(WarningKind, String)> {
    let name = &service.service;
    let now = service.total();
    let before = service.against.map_or(0, |c| c.ipv4 + c.ipv6);
    if now == 0 {
        let why = if before > 0 {
            format!("{} in --against", grouped(before))
        } else if service.lost_to_conflicts > 0 {
            format!(
                "all {} it lists are kept by services listed before it",
                grouped(service.lost_to_conflicts)
            )
        } else {
            let lists: Vec<&str> = inputs
                .endpoints
                .iter()
                .filter(|source| source.service.as_ref() == Some(name))
                .map(|source| source.name.as_str())
                .collect();
            format!("{} lists none", lists.join(", "))
        };
        return Some((
            WarningKind::EmptyService,
            format!("{name}: no prefixes ({why})"),
        ));
    }
    let against = service.against?;
    if (now as f64) < before as f64 * rules.min_kept {
        return Some((
            WarningKind::ShrunkService,
            format!(
                "{name}: {} prefixes (IPv4 {}, IPv6 {}), down from {} (IPv4 {}, IPv6 {}) in --against: {:.0} % kept, warned below {:.0} %",
                grouped(now),
                grouped(service.ipv4),
                grouped(service.ipv6),
                grouped(before),
                grouped(against.ipv4),
                grouped(against.ipv6),
                now as f64 * 100.0 / before as f64,
                rules.min_kept * 100.0
            ),
        ));
    }
    None
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        grouped(count as u64),
        if count == 1 { one } else { many }
    )
}

/// The first [`WARNING_EXAMPLES`] items, then "…".
fn examples<T: AsRef<str>>(items: &[T]) -> String {
    let mut text = items
        .iter()
        .take(WARNING_EXAMPLES)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > WARNING_EXAMPLES {
        text.push_str(", …");
    }
    text
}

/// 31691 → "31,691".
pub fn grouped(number: u64) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn is_broad(net: IpNet, rules: &Rules) -> bool {
    match net {
        IpNet::V4(net) => net.prefix_len() < rules.broad_prefix_v4,
        IpNet::V6(net) => net.prefix_len() < rules.broad_prefix_v6,
    }
}

// ---- findings ----------------------------------------------------------------------

fn location(sources: &[EndpointSource], listed: &Listed) -> Location {
    Location {
        file: sources
            .get(listed.source)
            .map_or_else(String::new, |s| s.name.clone()),
        line: listed.row.line,
    }
}

/// Prefixes listed again for the same service, and for another service
/// (the first listed keeps it, as `EndpointFeed::from_endpoints` does).
fn repeats(listed: &[Listed], sources: &[EndpointSource]) -> (Vec<Duplicate>, Vec<Conflict>) {
    let mut first: HashMap<IpNet, &Listed> = HashMap::new();
    // Each service's first listing of each prefix: a second one is a
    // duplicate, also of a service that lost the prefix.
    let mut first_of_service: HashMap<(IpNet, &str), &Listed> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut conflicts = Vec::new();
    for item in listed {
        let endpoint = &item.row.endpoint;
        if let Some(earlier) = first_of_service.get(&(endpoint.net, endpoint.service.as_str())) {
            duplicates.push(Duplicate {
                prefix: endpoint.net.to_string(),
                service: endpoint.service.clone(),
                first: location(sources, earlier),
                again: location(sources, item),
            });
            continue;
        }
        first_of_service.insert((endpoint.net, endpoint.service.as_str()), item);
        let Some(kept) = first.get(&endpoint.net) else {
            first.insert(endpoint.net, item);
            continue;
        };
        conflicts.push(Conflict {
            prefix: endpoint.net.to_string(),
            kept_by: kept.row.endpoint.service.clone(),
            kept_at: location(sources, kept),
            dropped: endpoint.service.clone(),
            dropped_at: location(sources, item),
        });
    }
    (duplicates, conflicts)
}

fn counts_by_service(feed: &EndpointFeed) -> BTreeMap<String, FamilyCounts> {
    let mut counts: BTreeMap<String, FamilyCounts> = BTreeMap::new();
    for endpoint in &feed.endpoints {
        let entry = counts.entry(endpoint.service.clone()).or_default();
        match endpoint.net {
            IpNet::V4(_) => entry.ipv4 += 1,
            IpNet::V6(_) => entry.ipv6 += 1,
        }
    }
    counts
}

/// One row per service named by a feed, a `--service` or `--against`.
fn service_counts(
    feed: &EndpointFeed,
    inputs: &CheckInputs,
    listed: &[Listed],
    conflicts: &[Conflict],
    against: Option<&BTreeMap<String, FamilyCounts>>,
) -> Vec<ServiceCounts> {
    let kept = counts_by_service(feed);
    let mut names: BTreeSet<&str> = listed
        .iter()
        .map(|l| l.row.endpoint.service.as_str())
        .collect();
    names.extend(inputs.endpoints.iter().filter_map(|s| s.service.as_deref()));
    names.extend(
        against
            .into_iter()
            .flat_map(|a| a.keys().map(String::as_str)),
    );
    let mut lost: HashMap<&str, u64> = HashMap::new();
    for conflict in conflicts {
        *lost.entry(&conflict.dropped).or_default() += 1;
    }
    names
        .into_iter()
        .map(|name| {
            let counts = kept.get(name).copied().unwrap_or_default();
            ServiceCounts {
                service: name.to_string(),
                ipv4: counts.ipv4,
                ipv6: counts.ipv6,
                lost_to_conflicts: lost.get(name).copied().unwrap_or(0),
                against: against.map(|a| a.get(name).copied().unwrap_or_default()),
            }
        })
        .collect()
}

/// Nested prefixes of the merged feed. `endpoints` is sorted by family,
/// network, then length, so an outer prefix comes before what it holds.
fn nested_prefixes(endpoints: &[Endpoint]) -> NestedPrefixes {
    let mut nested = NestedPrefixes::default();
    let mut open: Vec<&Endpoint> = Vec::new();
    for endpoint in endpoints {
        while open
            .last()
            .is_some_and(|top| !top.net.contains(&endpoint.net))
        {
            open.pop();
        }
        if let Some(outer) = open.last() {
            nested.total += 1;
            if outer.service == endpoint.service {
                nested.same_service += 1;
            } else {
                nested.other_service.push(Nested {
                    inner: endpoint.net.to_string(),
                    inner_service: endpoint.service.clone(),
                    outer: outer.net.to_string(),
                    outer_service: outer.service.clone(),
                });
            }
        }
        open.push(endpoint);
    }
    nested
}

/// The maps `run` would size, refused as `run` refuses them.
fn capacity(
    feed: &EndpointFeed,
    domain_services: &[String],
    watched: &WatchedSet,
    rules: &Rules,
    feed_names: &str,
) -> Result<Capacity, CheckError> {
    let refuse = |error| CheckError::Capacity {
        feeds: feed_names.to_string(),
        error: Box::new(error),
    };
    let feed_only = ServiceTable::new(feed.services());
    let services = feed_only.extended_with(domain_services.to_vec());
    if services.len() >= MAX_SERVICES as usize {
        return Err(refuse(LoadError::too_many_services(&services, feed)));
    }
    let endpoints_v4 = feed.count(true);
    let endpoints_v6 = feed.count(false);
    for (family, prefixes, flag) in [
        ("v4", endpoints_v4, rules.capacity_v4),
        ("v6", endpoints_v6, rules.capacity_v6),
    ] {
        if let Some(capacity) = flag
            && (capacity as usize) < prefixes
        {
            return Err(refuse(LoadError::OverCapacity {
                family,
                prefixes,
                capacity,
            }));
        }
    }
    let ids = services.ids();
    let v4_endpoints: Vec<(Ipv4Net, u16)> = feed
        .endpoints
        .iter()
        .filter_map(|endpoint| match endpoint.net {
            IpNet::V4(net) => {
                let id = ids.get(endpoint.service.as_str())?;
                Some((net, u16::try_from(*id).ok()?))
            }
            IpNet::V6(_) => None,
        })
        .collect();
    let table = V4Table::build(&watched.v4, &v4_endpoints);
    if table.lower().is_none() {
        return Err(refuse(LoadError::V4TableTooLarge));
    }
    // The protocol services hold the first ids whatever the feed says.
    let protocols = classifier_common::PROTOCOL_SERVICES.len();
    Ok(Capacity {
        services: services.len() - protocols,
        domain_only_services: services.len() - feed_only.len(),
        max_services: MAX_SERVICES as usize - 1 - protocols,
        endpoints_v4,
        capacity_v4: rules.capacity_v4,
        v4_table: TableSize {
            nodes: table.nodes.len(),
            leaves: table.leaves.len(),
            runs: table.runs.len(),
            bytes: table.kernel_bytes(),
        },
        endpoints_v6,
        capacity_v6: rules.capacity_v6,
        watched_v6_entries: watched.v6.len(),
        watched_v6_map: watched.v6.len().max(WATCHED_V6_MIN_ENTRIES),
    })
}

/// A shared-hosting list: `cidr[,name]` or `cidr [name]` per line, `#`
/// comments, blank lines skipped; an optional first line naming a `cidr`
/// and a `name` column, in any order, sets the comma-separated columns
/// (quoted commas are not supported). A range without a name is named by
/// itself.
pub fn parse_shared_hosting(origin: &str, text: &str) -> Result<Vec<(IpNet, String)>, FeedError> {
    let mut ranges = Vec::new();
    // Column indexes of the cidr and the name.
    let mut columns = (0, Some(1));
    let mut first_line = true;
    for (index, line) in feeds::feed_lines(text).enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let is_csv = content.contains(',');
        let fields: Vec<&str> = if is_csv {
            content
                .split(',')
                .map(|f| f.trim().trim_matches('"'))
                .collect()
        } else {
            content
                .splitn(2, char::is_whitespace)
                .map(str::trim)
                .collect()
        };
        if std::mem::take(&mut first_line) {
            let position = |name: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(name));
            if let Some(cidr) = position("cidr") {
                columns = (cidr, position("name"));
                continue;
            }
        }
        // The header's columns apply to comma-separated lines; a line
        // without a comma is `cidr [name]`.
        let (cidr_column, name_column) = if is_csv { columns } else { (0, Some(1)) };
        let problem_at = |problem| FeedError::Line {
            origin: origin.to_string(),
            line: index as u64 + 1,
            problem,
        };
        let cidr = fields
            .get(cidr_column)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| problem_at(LineProblem::MissingField("cidr")))?;
        let net = feeds::parse_prefix(cidr).map_err(problem_at)?;
        let name = name_column
            .and_then(|column| fields.get(column))
            .filter(|name| !name.is_empty())
            .map_or_else(|| net.to_string(), |name| name.to_string());
        ranges.push((net, name));
    }
    Ok(ranges)
}

/// Endpoint prefixes that overlap a shared-hosting range: the range holds
/// the prefix, or the prefix holds the range. Prefixes never partly
/// overlap, so these are all.
fn shared_hosting_overlaps(
    endpoints: &[Endpoint],
    ranges: &BTreeMap<IpNet, String>,
) -> Vec<SharedHostingOverlap> {
    let mut overlaps = Vec::new();
    if ranges.is_empty() {
        return overlaps;
    }
    for endpoint in endpoints {
        let net = endpoint.net;
        let mut add = |range: &IpNet, name: &String| {
            overlaps.push(SharedHostingOverlap {
                prefix: net.to_string(),
                service: endpoint.service.clone(),
                range: range.to_string(),
                range_name: name.clone(),
            });
        };
        // Ranges holding the prefix (or equal to it): one per length.
        for length in 0..=net.prefix_len() {
            if let Ok(outer) = IpNet::new(net.addr(), length).map(|n| n.trunc())
                && let Some((range, name)) = ranges.get_key_value(&outer)
            {
                add(range, name);
            }
        }
        // Ranges inside the prefix: they sort right after it.
        for (range, name) in ranges.range((Bound::Excluded(net), Bound::Unbounded)) {
            if !net.contains(range) {
                break;
            }
            add(range, name);
        }
    }
    overlaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(endpoints: &[(&str, Option<&str>, &str)]) -> CheckInputs {
        CheckInputs {
            endpoints: endpoints
                .iter()
                .map(|(name, service, text)| EndpointSource {
                    name: name.to_string(),
                    service: service.map(str::to_string),
                    text: text.to_string(),
                })
                .collect(),
            watched: WatchedSet::from_arguments(&[], &[]).unwrap(),
            watched_from: vec!["the default".into()],
            against: Vec::new(),
            shared_hosting: Vec::new(),
            domain_services: Vec::new(),
        }
    }

    fn kinds(report: &FeedCheck) -> Vec<&'static str> {
        report.warnings.iter().map(|w| w.kind.name()).collect()
    }

    #[test]
    fn findings_match_the_loader_and_name_the_winner() {
        let check = inputs(&[(
            "f.csv",
            None,
            "cidr,service\n10.0.0.0/8,a\n10.0.0.0/8,a\n10.0.0.0/8,b\n10.1.0.0/16,a\n10.1.2.3/32,b\n192.168.0.0/16,c\n",
        )]);
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        let feed = EndpointFeed::from_sources(&[("f.csv".into(), check.endpoints[0].text.clone())])
            .unwrap();
        assert_eq!(report.duplicates.len(), feed.warnings.duplicates);
        assert_eq!(report.conflicts.len(), feed.warnings.conflicts);
        assert_eq!(report.nested.total, feed.warnings.nested);
        assert_eq!(
            report.nested.other_service.len(),
            feed.warnings.nested_other_service
        );

        let duplicate = &report.duplicates[0];
        assert_eq!(
            (duplicate.first.line, duplicate.again.line),
            (2, 3),
            "{duplicate:?}"
        );
        let conflict = &report.conflicts[0];
        assert_eq!(
            (
                conflict.prefix.as_str(),
                conflict.kept_by.as_str(),
                conflict.dropped.as_str()
            ),
            ("10.0.0.0/8", "a", "b")
        );
        assert_eq!(conflict.dropped_at.to_string(), "f.csv line 4");
        let nested = &report.nested.other_service[0];
        assert_eq!(
            (nested.inner.as_str(), nested.outer.as_str()),
            ("10.1.2.3/32", "10.1.0.0/16")
        );
        // 10.0.0.0/8 is shorter than /12.
        assert_eq!(kinds(&report), ["shared-prefix", "broad-prefix"]);
        assert!(
            report.warnings[0]
                .message
                .starts_with("a and b both list 1 prefix: a keeps it"),
            "{:?}",
            report.warnings[0]
        );
        let b = report.services.iter().find(|s| s.service == "b").unwrap();
        assert_eq!((b.ipv4, b.lost_to_conflicts), (1, 1));
        assert_eq!(report.totals.ipv4, 4);
    }

    #[test]
    fn a_losing_service_listing_a_prefix_twice_loses_it_once() {
        let text = "cidr,service\n1.2.3.0/24,nordvpn\n1.2.3.0/24,pia\n1.2.3.0/24,pia\n";
        let check = inputs(&[("f.csv", None, text)]);
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        let feed = EndpointFeed::from_sources(&[("f.csv".into(), text.into())]).unwrap();
        assert_eq!((report.conflicts.len(), feed.warnings.conflicts), (1, 1));
        assert_eq!((report.duplicates.len(), feed.warnings.duplicates), (1, 1));
        let duplicate = &report.duplicates[0];
        assert_eq!(
            (
                duplicate.service.as_str(),
                duplicate.first.line,
                duplicate.again.line
            ),
            ("pia", 3, 4)
        );
        let pia = report.services.iter().find(|s| s.service == "pia").unwrap();
        assert_eq!(pia.lost_to_conflicts, 1);
        let messages: Vec<&str> = report.warnings.iter().map(|w| w.message.as_str()).collect();
        assert!(
            messages.contains(
                &"pia: no prefixes (all 1 it lists are kept by services listed before it)"
            ),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("nordvpn and pia both list 1 prefix: nordvpn keeps it")),
            "{messages:?}"
        );
    }

    #[test]
    fn plain_lists_and_vanished_or_shrunk_services() {
        let mut check = inputs(&[
            (
                "new.csv",
                None,
                "cidr,service\n1.0.0.0/24,alpha\n2.0.0.0/24,beta\n",
            ),
            (
                "gamma.txt",
                Some("gamma"),
                "# gamma\n\n3.0.0.0/24\n::ffff:4.0.0.0/120\n",
            ),
            ("empty.txt", Some("delta"), "# nothing yet\n"),
        ]);
        check.against = vec![NamedText {
            name: "old.csv".into(),
            text: "cidr,service\n1.0.0.0/24,alpha\n1.0.1.0/24,alpha\n1.0.2.0/24,alpha\n2.0.0.0/24,beta\n5.0.0.0/24,omega\n"
                .into(),
        }];
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        let gamma = report
            .services
            .iter()
            .find(|s| s.service == "gamma")
            .unwrap();
        assert_eq!((gamma.ipv4, gamma.ipv6), (2, 0), "mapped IPv6 read as IPv4");
        let messages: Vec<String> = report
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.kind.name(), w.message))
            .collect();
        assert_eq!(
            messages,
            [
                "shrunk-service: alpha: 1 prefixes (IPv4 1, IPv6 0), down from 3 (IPv4 3, IPv6 0) in --against: 33 % kept, warned below 50 %",
                "empty-service: delta: no prefixes (empty.txt lists none)",
                "empty-service: omega: no prefixes (1 in --against)",
            ]
        );
        let relaxed = Rules {
            min_kept: 0.3,
            ..Rules::default()
        };
        let report = FeedCheck::build(&check, &relaxed).unwrap();
        assert_eq!(kinds(&report), ["empty-service", "empty-service"]);
    }

    #[test]
    fn shared_hosting_ranges_inside_and_around_prefixes() {
        let mut check = inputs(&[(
            "f.csv",
            None,
            "cidr,service\n104.16.0.0/24,a\n104.0.0.0/10,b\n8.8.8.8,c\n2001:db8::/48,d\n",
        )]);
        check.shared_hosting = vec![NamedText {
            name: "cdn.txt".into(),
            text: "# CDNs\nname,cidr\nCloudflare,104.16.0.0/13\nGoogle,8.8.8.0/24\n2001:db8:0:1::/64\n"
                .into(),
        }];
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        let overlaps: Vec<String> = report
            .shared_hosting
            .iter()
            .map(|o| format!("{} {} {} {}", o.service, o.prefix, o.range_name, o.range))
            .collect();
        assert_eq!(
            overlaps,
            [
                "c 8.8.8.8/32 Google 8.8.8.0/24",
                "b 104.0.0.0/10 Cloudflare 104.16.0.0/13",
                "a 104.16.0.0/24 Cloudflare 104.16.0.0/13",
                "d 2001:db8::/48 2001:db8:0:1::/64 2001:db8:0:1::/64",
            ]
        );
        assert_eq!(report.warnings.len(), 5, "{:?}", report.warnings);
    }

    #[test]
    fn shared_hosting_lists_refuse_bad_lines_with_file_and_line() {
        let ranges = parse_shared_hosting("h.txt", "1.2.3.0/24 Some CDN\n5.6.7.8\n").unwrap();
        assert_eq!(ranges[0].1, "Some CDN");
        assert_eq!(ranges[1].1, "5.6.7.8/32");
        let error = parse_shared_hosting("h.csv", "cidr,name\n1.2.3.4/24,x\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "h.csv: line 2: host bits set in 1.2.3.4/24 (did you mean 1.2.3.0/24?)"
        );
        let error = parse_shared_hosting("h.csv", "name,cidr\nx,\n").unwrap_err();
        assert_eq!(error.to_string(), "h.csv: line 2: missing cidr");
        // Saved as "UTF-8 with BOM": the header is still the header.
        let ranges = parse_shared_hosting("h.csv", "\u{feff}name,cidr\nx,1.2.3.0/24\n").unwrap();
        assert_eq!(
            ranges,
            ["1.2.3.0/24"
                .parse()
                .map(|net| (net, "x".to_string()))
                .unwrap()]
        );
    }

    #[test]
    fn capacity_is_refused_with_the_numbers() {
        let check = inputs(&[(
            "f.csv",
            None,
            "cidr,service\n1.0.0.0/24,a\n2.0.0.0/24,a\n2001:db8::/32,a\n",
        )]);
        let rules = Rules {
            capacity_v4: Some(1),
            ..Rules::default()
        };
        let error = FeedCheck::build(&check, &rules).unwrap_err();
        assert_eq!(
            error.to_string(),
            "f.csv: the endpoint feed has 2 v4 prefixes but the capacity is 1 (raise --endpoint-capacity-v4)"
        );
        let rules = Rules {
            capacity_v4: Some(2),
            capacity_v6: Some(1),
            ..Rules::default()
        };
        let report = FeedCheck::build(&check, &rules).unwrap();
        assert_eq!(report.capacity.endpoints_v6, 1);
        assert!(report.capacity.v4_table.bytes > 0);

        // One service more than fit: the numbers are the feed's own.
        let feed_of = |services: u32| {
            let mut text = String::from("cidr,service\n");
            for index in 0..services {
                let [_, a, b, c] = (index + 1).to_be_bytes();
                text.push_str(&format!("10.{a}.{b}.{c}/32,s{index}\n"));
            }
            text
        };
        let text = feed_of(1018);
        let error =
            FeedCheck::build(&inputs(&[("many.csv", None, &text)]), &Rules::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "many.csv: the endpoint feed has 1018 services; at most 1017 fit beside the 6 protocol services"
        );

        // A feed service named as a protocol service shares its id.
        let mut check = inputs(&[("p.csv", None, "cidr,service\n1.2.3.0/24,openvpn\n")]);
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        assert_eq!(report.capacity.services, 0);
        assert_eq!(report.capacity.domain_only_services, 0);
        check.domain_services = vec!["openvpn".into(), "vpn-a".into()];
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        assert_eq!(report.capacity.domain_only_services, 1);

        // With learning on, `run` gives the domain feed's services ids too.
        let text = feed_of(1016);
        let mut check = inputs(&[("many.csv", None, &text)]);
        check.domain_services = vec!["s1".into(), "vpn-a".into()];
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        assert_eq!(report.capacity.services, 1017);
        assert_eq!(report.capacity.domain_only_services, 1);
        check.domain_services.push("vpn-b".into());
        let error = FeedCheck::build(&check, &Rules::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "many.csv: the endpoint feed has 1016 services and 2 more are named only by the domain feed (learning; --no-learn leaves them out) or by feeds before a reload, 1018 in all; at most 1017 fit beside the 6 protocol services"
        );
    }

    #[test]
    fn bundled_feed_report() {
        let report = FeedCheck::build(&inputs(&[]), &Rules::default());
        // No source at all: an empty feed, which is a warning.
        assert_eq!(kinds(&report.unwrap()), ["no-endpoints"]);

        let mut check = inputs(&[]);
        check.endpoints.push(EndpointSource {
            name: BUNDLED_ENDPOINTS_NAME.into(),
            service: None,
            text: BUNDLED_ENDPOINTS.into(),
        });
        let report = FeedCheck::build(&check, &Rules::default()).unwrap();
        assert_eq!(report.capacity.services, 26);
        assert_eq!(report.conflicts.len(), 9);
        let table = report.render_table();
        assert!(table.contains("hotspot-shield"), "{table}");
        assert!(table.contains("warnings: "), "{table}");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(16_777_216), "16,777,216");
    }
}
