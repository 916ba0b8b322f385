//! Report: the one report model (`classifier.report.v1`) built from a
//! drained ledger, and its renderings as a table and as JSON.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FlowKey, MALFORMED_REASON_NAMES, MALFORMED_REASONS,
};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{drain::Ledger, feeds::FeedOrigin, loader::ServiceTable};

pub const SCHEMA: &str = "classifier.report.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub start: String,
    pub end: String,
    pub sensor: String,
    pub interfaces: Vec<String>,
    pub totals: Totals,
    /// Malformed packets by reason (every reason listed, zeros included).
    pub malformed: BTreeMap<String, u64>,
    pub flow_table: FlowTable,
    pub feeds: Vec<FeedOrigin>,
    pub services: Vec<ServiceRow>,
    pub flows: Vec<FlowRow>,
    /// The watched addresses with the most matched packets.
    #[serde(default)]
    pub top_sources: Vec<TopRow>,
    /// The endpoints with the most matched packets.
    #[serde(default)]
    pub top_endpoints: Vec<TopRow>,
    /// Present in snapshot files: the interval, provenance and coverage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// What learning did and the endpoints it holds, with provenance;
    /// absent when learning is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<Learning>,
}

/// Learning's state when the report was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learning {
    /// The domain feeds: name and SHA-256.
    pub domain_feeds: Vec<(String, String)>,
    pub stats: crate::learn::LearnStats,
    /// Packets the program handed over to learn from, those it could not
    /// (the ring buffer was full) and those over the rate (`--learn-rate`):
    /// the kernel's counts for the report's span.
    pub handed_over: u64,
    pub ring_drops: u64,
    #[serde(default)]
    pub throttled: u64,
    /// Endpoints learned and not expired, by service then address.
    pub endpoints: Vec<crate::learn::LearnedEndpoint>,
}

/// How many rows `top_sources` and `top_endpoints` keep.
pub const TOP_ROWS: usize = 10;

/// One address in a top list: its matched traffic over the report's flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopRow {
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    /// Services it was seen with, sorted.
    pub services: Vec<String>,
}

/// What a snapshot file adds to the report shape: which interval it covers,
/// what produced it, and the chain link to the file before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The configured interval (`--snapshot-interval`); `start`/`end` are
    /// this snapshot's real bounds (a partial interval is shorter).
    pub interval_seconds: u64,
    /// Identifies the loaded XDP program whose counters this drained; it
    /// stays the same across daemon restarts that adopt the program.
    pub instance: String,
    pub program_attached_at: String,
    /// The watched prefixes in force.
    pub watched: Vec<String>,
    /// The previous snapshot file in the same folder and its SHA-256; null
    /// for the first one.
    pub previous: Option<PreviousSnapshot>,
    pub coverage: Coverage,
    /// Set when watched addresses are keyed pseudonyms: the first 16 hex
    /// digits of the key's SHA-256 (so reports never mix keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSnapshot {
    pub file: String,
    pub sha256: String,
}

/// Coverage beyond `flow_table` (whose drains, evictions and failed
/// inserts are this interval's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Daemon starts within this interval that followed an earlier
    /// snapshot in the folder (adopting the program or loading a new one).
    pub restarts: u64,
    /// Seconds between the previous snapshot's end and this one's start in
    /// which no program was counting (0 when the program kept counting).
    pub gap_before_seconds: f64,
    /// True when the interval was cut short (daemon start or stop).
    pub partial: bool,
    /// True when the counters restarted from zero before this interval: a
    /// new program was loaded (not adopted) after the previous snapshot,
    /// e.g. after an upgrade or a detach. Deltas are never negative.
    #[serde(default)]
    pub counter_reset: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub other: u64,
    pub malformed: u64,
    pub watched: u64,
    pub matched: u64,
    /// Evidence captures (`--capture-dir`): matched packets captured, lost
    /// to a full ring buffer, and over the rate.
    #[serde(default)]
    pub captured: u64,
    #[serde(default)]
    pub capture_drops: u64,
    #[serde(default)]
    pub capture_throttled: u64,
}

/// Flow-table pressure: per-service counts never depend on it, but `flows`
/// and `unique_sources` miss what was evicted before a drain saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTable {
    pub inserts: u64,
    pub evictions: u64,
    pub insert_failures: u64,
    pub drains: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    pub packets: u64,
    pub bytes: u64,
    pub packets_outbound: u64,
    pub packets_inbound: u64,
    pub bytes_outbound: u64,
    pub bytes_inbound: u64,
    pub flows: u64,
    /// Of `flows`, those learning named (a learned endpoint, or a TLS name);
    /// the rest a feed listed, or (protocol services) their signature.
    #[serde(default)]
    pub flows_learned: u64,
    pub unique_sources: u64,
    /// This service's fraction of all matched flows.
    pub share: f64,
    /// Earliest first-seen and latest last-seen of its flows.
    #[serde(default)]
    pub first_seen: Option<String>,
    #[serde(default)]
    pub last_seen: Option<String>,
}

impl ServiceRow {
    /// A row with every count zero.
    pub fn empty(service: String) -> Self {
        Self {
            service,
            packets: 0,
            bytes: 0,
            packets_outbound: 0,
            packets_inbound: 0,
            bytes_outbound: 0,
            bytes_inbound: 0,
            flows: 0,
            flows_learned: 0,
            unique_sources: 0,
            share: 0.0,
            first_seen: None,
            last_seen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub watched: IpAddr,
    pub endpoint: IpAddr,
    pub protocol: u8,
    pub port: u16,
    pub service: String,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub tcp_flags: u8,
    /// What named the service: "feed", "learned" or "protocol".
    #[serde(default = "origin_feed")]
    pub origin: String,
}

fn origin_feed() -> String {
    "feed".into()
}

/// The name of a `classifier_common::ORIGIN_*` value.
pub fn origin_name(origin: u8) -> &'static str {
    match origin {
        classifier_common::ORIGIN_LEARNED => "learned",
        classifier_common::ORIGIN_PROTOCOL => "protocol",
        _ => "feed",
    }
}

/// What a report covers besides the counts.
#[derive(Debug, Clone)]
pub struct ReportContext {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub sensor: String,
    pub interfaces: Vec<String>,
    pub feeds: Vec<FeedOrigin>,
}

/// Writes command output to stdout. A reader that went away (`| head`)
/// ends the output quietly: that is not an error of ours.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An RFC 3339 time as a comparable value (text compares wrongly when
/// fractions have different lengths); unparsable text sorts first.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

pub fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

fn unix_ns_to_rfc3339(ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns).map_or_else(|_| ns.to_string(), rfc3339)
}

/// The address a flow key holds, IPv4 shown as IPv4.
pub fn key_address(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

pub fn direction_name(direction: u8) -> &'static str {
    match direction {
        DIR_OUTBOUND => "outbound",
        DIR_INBOUND => "inbound",
        _ => "unknown",
    }
}

impl Report {
    pub fn build(ledger: &Ledger, services: &ServiceTable, context: ReportContext) -> Self {
        let kernel = &ledger.totals;
        let malformed: BTreeMap<String, u64> = MALFORMED_REASON_NAMES
            .iter()
            .zip(&kernel.malformed[..MALFORMED_REASONS])
            .map(|(name, count)| ((*name).to_string(), *count))
            .collect();
        let totals = Totals {
            packets: kernel.packets(),
            bytes: kernel.bytes,
            ipv4: kernel.ipv4,
            ipv6: kernel.ipv6,
            other: kernel.other,
            malformed: malformed.values().sum(),
            watched: kernel.watched,
            matched: kernel.matched,
            captured: kernel.capture_records,
            capture_drops: kernel.capture_drops,
            capture_throttled: kernel.capture_throttled,
        };

        let service_name = |id: u16| {
            services
                .name(u32::from(id))
                .unwrap_or("unknown")
                .to_string()
        };
        // Records with nothing counted yet (resumed baselines) are not flows.
        let mut flows: Vec<(&FlowKey, _)> = ledger
            .flows
            .iter()
            .filter(|(_, record)| record.packets > 0)
            .collect();
        // Keys are unique, so an unstable sort gives the same order.
        flows.sort_unstable_by(|(a, ra), (b, rb)| {
            ra.first_seen_unix_ns
                .cmp(&rb.first_seen_unix_ns)
                .then_with(|| a.watched.cmp(&b.watched))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
                .then_with(|| a.port.cmp(&b.port))
                .then_with(|| a.direction.cmp(&b.direction))
        });

        let flow_rows: Vec<FlowRow> = flows
            .into_iter()
            .map(|(key, record)| FlowRow {
                watched: key_address(key.family, key.watched),
                endpoint: key_address(key.family, key.endpoint),
                protocol: key.protocol,
                port: key.port,
                service: service_name(record.service),
                direction: direction_name(key.direction).to_string(),
                packets: record.packets,
                bytes: record.bytes,
                first_seen: unix_ns_to_rfc3339(record.first_seen_unix_ns.into()),
                last_seen: unix_ns_to_rfc3339(record.last_seen_unix_ns.into()),
                tcp_flags: record.tcp_flags,
                origin: origin_name(record.origin).to_string(),
            })
            .collect();
        let by_service = FlowSummary::of(&flow_rows);

        let mut rows = Vec::new();
        for (id, counters) in ledger.services.iter().enumerate().skip(1) {
            let Ok(id) = u16::try_from(id) else { continue };
            rows.push(ServiceRow {
                packets: counters.packets.iter().sum(),
                bytes: counters.bytes.iter().sum(),
                packets_outbound: counters.packets[DIR_OUTBOUND as usize],
                packets_inbound: counters.packets[DIR_INBOUND as usize],
                bytes_outbound: counters.bytes[DIR_OUTBOUND as usize],
                bytes_inbound: counters.bytes[DIR_INBOUND as usize],
                ..ServiceRow::empty(service_name(id))
            });
        }
        let rows = by_service.fill_service_rows(rows);

        Self {
            schema: SCHEMA.to_string(),
            start: rfc3339(context.start),
            end: rfc3339(context.end),
            sensor: context.sensor,
            interfaces: context.interfaces,
            totals,
            malformed,
            flow_table: FlowTable {
                inserts: kernel.flow_inserts,
                evictions: ledger.flow_evictions,
                insert_failures: kernel.flow_insert_failures,
                drains: ledger.drains,
            },
            feeds: context.feeds,
            services: rows,
            top_sources: top_rows(&flow_rows, |flow| flow.watched),
            top_endpoints: top_rows(&flow_rows, |flow| flow.endpoint),
            flows: flow_rows,
            snapshot: None,
            learning: None,
        }
    }

    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Json => {
                let mut text =
                    serde_json::to_string_pretty(self).expect("a report always serialises");
                text.push('\n');
                text
            }
            ReportFormat::Table => self.table(),
        }
    }

    /// "reason count" for every malformed reason with packets.
    pub fn malformed_reasons(&self) -> Vec<String> {
        self.malformed
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect()
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(out, "classifier report  {} .. {}", self.start, self.end);
        let _ = writeln!(
            out,
            "sensor {}  interfaces {}",
            self.sensor,
            self.interfaces.join(",")
        );
        let _ = writeln!(
            out,
            "packets {}  bytes {}  ipv4 {}  ipv6 {}  other {}  malformed {}  watched {}  matched {}",
            t.packets, t.bytes, t.ipv4, t.ipv6, t.other, t.malformed, t.watched, t.matched
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:>7} {:>8} {:>10} {:>12} {:>10} {:>10} seen (UTC)",
            "service", "flows", "share", "sources", "packets", "bytes", "out pkts", "in pkts"
        );
        for row in &self.services {
            let _ = writeln!(
                out,
                "{:<18} {:>7} {:>6.1}% {:>8} {:>10} {:>12} {:>10} {:>10} {}",
                row.service,
                row.flows,
                row.share * 100.0,
                row.unique_sources,
                row.packets,
                row.bytes,
                row.packets_outbound,
                row.packets_inbound,
                seen_span(row.first_seen.as_deref(), row.last_seen.as_deref())
            );
        }
        if self.services.is_empty() {
            let _ = writeln!(out, "(no watched traffic reached a known endpoint)");
        }
        write_top_rows(&mut out, "top watched sources", &self.top_sources);
        write_top_rows(&mut out, "top endpoints", &self.top_endpoints);
        let reasons = self.malformed_reasons();
        if !reasons.is_empty() {
            let _ = writeln!(out, "\nmalformed: {}", reasons.join(", "));
        }
        if let Some(learning) = &self.learning {
            let s = &learning.stats;
            let _ = writeln!(
                out,
                "\nlearning: {} packets handed over ({} dropped, ring buffer full; {} over the rate)",
                learning.handed_over, learning.ring_drops, learning.throttled
            );
            let _ = writeln!(
                out,
                "  {} DNS responses to watched hosts ({} unreadable, {} for listed domains); {} addresses learned, {} renewed, {} expired; not learned: {} in shared hosting or CDNs, {} over capacity",
                s.dns_responses,
                s.dns_unparsed,
                s.dns_matched,
                s.learned,
                s.renewed,
                s.expired,
                s.skipped_shared_hosting,
                s.skipped_capacity
            );
            let owed: Vec<String> = self
                .services
                .iter()
                .filter(|row| row.flows_learned > 0)
                .map(|row| format!("{} {} of {}", row.service, row.flows_learned, row.flows))
                .collect();
            if !owed.is_empty() {
                let _ = writeln!(out, "  flows named by learning: {}", owed.join(", "));
            }
            for endpoint in &learning.endpoints {
                let _ = writeln!(
                    out,
                    "  {:<40} {:<16} {} (asked by {}, answered by {}) until {}",
                    endpoint.address.to_string(),
                    endpoint.service,
                    endpoint.name,
                    endpoint.watched,
                    endpoint.resolver,
                    endpoint.expires_at
                );
            }
        }
        let f = &self.flow_table;
        let _ = writeln!(
            out,
            "\nflow table: {} flows, {} inserts, {} evictions, {} failed inserts, {} drains",
            self.flows.len(),
            f.inserts,
            f.evictions,
            f.insert_failures,
            f.drains
        );
        out
    }
}

/// A compact first..last seen span in UTC to the minute, e.g.
/// `2026-11-24 19:03 .. 20:41` (the end's date shown only when it differs:
/// `11-25 02:10`, or in full across years); `-` without flows.
fn seen_span(first: Option<&str>, last: Option<&str>) -> String {
    let (Some(first), Some(last)) = (first, last) else {
        return "-".to_string();
    };
    let utc = |text: &str| {
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .map(|time| time.to_offset(time::UtcOffset::UTC))
    };
    let (Some(first_time), Some(last_time)) = (utc(first), utc(last)) else {
        return format!("{first} .. {last}");
    };
    let minute = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let last_format = if last_time.date() == first_time.date() {
        time::macros::format_description!("[hour]:[minute]")
    } else if last_time.year() == first_time.year() {
        time::macros::format_description!("[month]-[day] [hour]:[minute]")
    } else {
        minute
    };
    match (first_time.format(minute), last_time.format(last_format)) {
        (Ok(first_text), Ok(last_text)) => format!("{first_text} .. {last_text}"),
        _ => format!("{first} .. {last}"),
    }
}

/// Appends a top list (address, packets, bytes, flows, services) under
/// `title`; nothing when `rows` is empty.
fn write_top_rows(out: &mut String, title: &str, rows: &[TopRow]) {
    if rows.is_empty() {
        return;
    }
    let width = rows
        .iter()
        .map(|row| row.address.to_string().len())
        .chain([title.len()])
        .max()
        .unwrap_or(title.len());
    let _ = writeln!(
        out,
        "\n{title:<width$} {:>10} {:>12} {:>7} services",
        "packets", "bytes", "flows"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>10} {:>12} {:>7} {}",
            row.address.to_string(),
            row.packets,
            row.bytes,
            row.flows,
            row.services.join(",")
        );
    }
}

/// Per-service flow facts (flows, unique watched sources, first and last
/// seen) computed from flow rows, so a report built from a ledger and one
/// merged from snapshots agree.
#[derive(Debug, Default)]
pub struct FlowSummary {
    services: HashMap<String, ServiceFlows>,
}

#[derive(Debug, Default)]
struct ServiceFlows {
    flows: u64,
    flows_learned: u64,
    sources: HashSet<IpAddr>,
    first_seen: Option<String>,
    last_seen: Option<String>,
}

impl FlowSummary {
    /// `flows` must hold each flow key once.
    pub fn of(flows: &[FlowRow]) -> Self {
        let mut summary = Self::default();
        for flow in flows {
            let entry = summary.services.entry(flow.service.clone()).or_default();
            entry.flows += 1;
            entry.flows_learned += u64::from(flow.origin == "learned");
            entry.sources.insert(flow.watched);
            let earlier = |a: &str, b: &str| parse_time(a) < parse_time(b);
            if entry
                .first_seen
                .as_ref()
                .is_none_or(|t| earlier(&flow.first_seen, t))
            {
                entry.first_seen = Some(flow.first_seen.clone());
            }
            if entry
                .last_seen
                .as_ref()
                .is_none_or(|t| earlier(t, &flow.last_seen))
            {
                entry.last_seen = Some(flow.last_seen.clone());
            }
        }
        summary
    }

    /// Fills flows, unique sources, share and times into `rows` (adding a
    /// row for a service that has flows but no counters), drops rows with
    /// neither, and sorts by flows, packets, then name.
    pub fn fill_service_rows(mut self, mut rows: Vec<ServiceRow>) -> Vec<ServiceRow> {
        let matched_flows: u64 = self.services.values().map(|s| s.flows).sum();
        for name in self.services.keys() {
            if !rows.iter().any(|row| row.service == *name) {
                rows.push(ServiceRow::empty(name.clone()));
            }
        }
        for row in &mut rows {
            if let Some(flows) = self.services.remove(&row.service) {
                row.flows = flows.flows;
                row.flows_learned = flows.flows_learned;
                row.unique_sources = flows.sources.len() as u64;
                row.first_seen = flows.first_seen;
                row.last_seen = flows.last_seen;
            }
            row.share = if matched_flows == 0 {
                0.0
            } else {
                row.flows as f64 / matched_flows as f64
            };
        }
        rows.retain(|row| row.packets > 0 || row.flows > 0);
        rows.sort_by(|a, b| {
            b.flows
                .cmp(&a.flows)
                .then_with(|| b.packets.cmp(&a.packets))
                .then_with(|| a.service.cmp(&b.service))
        });
        rows
    }
}

/// The [`TOP_ROWS`] addresses with the most packets over `flows`, grouped
/// by `address_of`.
pub fn top_rows(flows: &[FlowRow], address_of: impl Fn(&FlowRow) -> IpAddr) -> Vec<TopRow> {
    let mut by_address: HashMap<IpAddr, (TopRow, BTreeSet<&str>)> = HashMap::new();
    for flow in flows {
        let address = address_of(flow);
        let (row, services) = by_address.entry(address).or_insert_with(|| {
            (
                TopRow {
                    address,
                    packets: 0,
                    bytes: 0,
                    flows: 0,
                    services: Vec::new(),
                },
                BTreeSet::new(),
            )
        });
        row.packets += flow.packets;
        row.bytes += flow.bytes;
        row.flows += 1;
        services.insert(&flow.service);
    }
    let mut rows: Vec<TopRow> = by_address
        .into_values()
        .map(|(mut row, services)| {
            row.services = services.into_iter().map(str::to_string).collect();
            row
        })
        .collect();
    rows.sort_by(|a, b| {
        b.packets
            .cmp(&a.packets)
            .then_with(|| b.bytes.cmp(&a.bytes))
            .then_with(|| a.address.cmp(&b.address))
    });
    rows.truncate(TOP_ROWS);
    rows
}
