//! Report: the one report model (`classifier.report.v1`) built from a
//! drained ledger, and its renderings as a table and as JSON.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, FlowKey, MALFORMED_REASON_NAMES, MALFORMED_REASONS,
};
use foldhash::fast::RandomState;
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
    /// Set when watched addresses are keyed pseudonyms: the first 16 hex
    /// digits of the key's SHA-256, on every such report (a snapshot's
    /// section carries it too), so merges never mix keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym_key_id: Option<String>,
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
    /// In a merged report (`classifier report`): the intervals of the
    /// snapshots it sums, so that read beside snapshots it overlaps only
    /// those it holds, not every one between its start and end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedPart>,
    /// What learning did and the endpoints it holds, with provenance;
    /// absent when learning is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<Learning>,
}

/// One snapshot a merged report sums: whose, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedPart {
    pub sensor: String,
    pub interfaces: Vec<String>,
    pub start: String,
    pub end: String,
    /// The snapshot's coverage: daemon restarts in it, and seconds without
    /// a counting program before it.
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub gap_before_seconds: f64,
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
    /// Whether `stats` count the report's own span, as snapshots' do from
    /// this version on (and merged reports'): older snapshots counted from
    /// their daemon's start, and a merged report leaves their counts out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stats_per_interval: bool,
    /// In a merged report whose `stats` sum fewer snapshots than it
    /// merged (`merged_from`; the others had learning off, or counted from
    /// their daemon's start): how many they sum. Absent when they sum all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_cover_snapshots: Option<u64>,
}

impl Learning {
    /// Whether `stats` are unknown: a merged report whose snapshots all
    /// counted from their daemon's start (their counts are left out).
    pub fn stats_unknown(&self) -> bool {
        self.stats_cover_snapshots == Some(0)
    }
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
    /// Flow-cache slots given to new flows after a drain read the flows in
    /// them (inserts whose flow replaced was drained first).
    #[serde(default)]
    pub recycles: u64,
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
    /// "outbound" or "inbound" (shared text: a report holds many rows).
    pub direction: Cow<'static, str>,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub tcp_flags: u8,
    /// What named the service: "feed", "learned" or "protocol".
    #[serde(default = "origin_feed")]
    pub origin: Cow<'static, str>,
}

fn origin_feed() -> Cow<'static, str> {
    Cow::Borrowed("feed")
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

/// Unix-nanosecond times as [`unix_ns_to_rfc3339`] writes them, reusing
/// the text of the last whole second (a report's flows cluster in time).
#[derive(Debug, Default)]
struct TimeFormatter {
    /// The second `prefix` shows: `YYYY-MM-DDTHH:MM:SS`.
    second: Option<i64>,
    prefix: String,
}

impl TimeFormatter {
    fn format(&mut self, ns: i64) -> String {
        let second = ns.div_euclid(1_000_000_000);
        let nanos = ns.rem_euclid(1_000_000_000);
        if self.second != Some(second) {
            let whole = unix_ns_to_rfc3339(i128::from(second) * 1_000_000_000);
            let Some(prefix) = whole.strip_suffix('Z') else {
                // Outside what RFC 3339 can show: as the one-off does.
                return unix_ns_to_rfc3339(ns.into());
            };
            self.prefix = prefix.to_string();
            self.second = Some(second);
        }
        let mut text = String::with_capacity(self.prefix.len() + 11);
        text.push_str(&self.prefix);
        if nanos != 0 {
            // Nine digits without their trailing zeros, as `time` writes them.
            let mut digits = [b'0'; 9];
            let mut rest = nanos as u32;
            for digit in digits.iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let shown = 9 - digits.iter().rev().take_while(|d| **d == b'0').count();
            text.push('.');
            text.extend(digits[..shown].iter().map(|d| char::from(*d)));
        }
        text.push('Z');
        text
    }
}

/// What a flow row needs, copied out of the ledger: the sort and the rows
/// then read memory in order (the ledger's records are scattered).
struct RowSource {
    first_seen: i64,
    last_seen: i64,
    key: FlowKey,
    packets: u64,
    bytes: u64,
    service: u16,
    tcp_flags: u8,
    origin: u8,
}

/// Flow keys in report order: watched address, endpoint, port, direction,
/// protocol, family (every field, so no two keys tie).
fn flow_key_order(a: &FlowKey, b: &FlowKey) -> std::cmp::Ordering {
    // Big-endian numbers order as their bytes do, and compare cheaper.
    let number = u128::from_be_bytes;
    number(a.watched)
        .cmp(&number(b.watched))
        .then_with(|| number(a.endpoint).cmp(&number(b.endpoint)))
        .then_with(|| a.port.cmp(&b.port))
        .then_with(|| a.direction.cmp(&b.direction))
        .then_with(|| a.protocol.cmp(&b.protocol))
        .then_with(|| a.family.cmp(&b.family))
        // A flow counted under two services (`drain::relabelled_key`).
        .then_with(|| a._pad.cmp(&b._pad))
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
        // Records with nothing counted yet (resumed baselines) are not
        // flows.
        let mut flows: Vec<RowSource> = ledger
            .flows
            .iter()
            .filter(|(_, record)| record.packets > 0)
            .map(|(key, record)| RowSource {
                first_seen: record.first_seen_unix_ns,
                last_seen: record.last_seen_unix_ns,
                key: *key,
                packets: record.packets,
                bytes: record.bytes,
                service: record.service,
                tcp_flags: record.tcp_flags,
                origin: record.origin,
            })
            .collect();
        // Keys are unique, so an unstable sort gives the same order.
        flows.sort_unstable_by(|a, b| {
            a.first_seen
                .cmp(&b.first_seen)
                .then_with(|| flow_key_order(&a.key, &b.key))
        });

        let mut times = TimeFormatter::default();
        let mut by_service = FlowSummary::default();
        let flow_rows: Vec<FlowRow> = flows
            .iter()
            .map(|flow| {
                let key = &flow.key;
                let watched = key_address(key.family, key.watched);
                let service = service_name(flow.service);
                by_service.add(
                    &service,
                    flow.origin == classifier_common::ORIGIN_LEARNED,
                    watched,
                    flow.first_seen.into(),
                    flow.last_seen.into(),
                );
                FlowRow {
                    watched,
                    endpoint: key_address(key.family, key.endpoint),
                    protocol: key.protocol,
                    port: key.port,
                    service,
                    direction: Cow::Borrowed(direction_name(key.direction)),
                    packets: flow.packets,
                    bytes: flow.bytes,
                    first_seen: times.format(flow.first_seen),
                    last_seen: times.format(flow.last_seen),
                    tcp_flags: flow.tcp_flags,
                    origin: Cow::Borrowed(origin_name(flow.origin)),
                }
            })
            .collect();
        drop(flows);

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
                recycles: kernel.flow_recycles,
            },
            feeds: context.feeds,
            services: rows,
            top_sources: top_rows(&flow_rows, |flow| flow.watched),
            top_endpoints: top_rows(&flow_rows, |flow| flow.endpoint),
            flows: flow_rows,
            pseudonym_key_id: None,
            snapshot: None,
            merged_from: Vec::new(),
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

    /// Flows by (watched, endpoint, protocol, port, direction): a flow with
    /// a row under each of two services (its service changed) counts once.
    pub fn distinct_flows(&self) -> usize {
        self.flows
            .iter()
            .map(|flow| {
                (
                    flow.watched,
                    flow.endpoint,
                    flow.protocol,
                    flow.port,
                    &flow.direction,
                )
            })
            .collect::<std::collections::HashSet<_>>()
            .len()
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
            match learning.stats_cover_snapshots {
                Some(0) => {
                    let _ = writeln!(
                        out,
                        "  DNS, TLS and address counts not known: the snapshots merged counted them from their daemon's start"
                    );
                }
                Some(covered) => {
                    let _ = writeln!(
                        out,
                        "  the counts below cover {covered} of the {} snapshots merged (the others had learning off or counted from their daemon's start)",
                        self.merged_from.len()
                    );
                }
                None => {}
            }
            if !learning.stats_unknown() {
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
            }
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
            "\nflow table: {} flows, {} inserts ({} into recycled cache slots), {} evictions, {} failed inserts, {} drains",
            self.distinct_flows(),
            f.inserts,
            f.recycles,
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
            .and_then(|time| time.checked_to_offset(time::UtcOffset::UTC))
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
/// seen) computed from the same flows as the flow rows, so a report built
/// from a ledger and one merged from snapshots agree.
#[derive(Debug, Default)]
pub struct FlowSummary {
    services: HashMap<String, ServiceFlows, RandomState>,
}

#[derive(Debug, Default)]
struct ServiceFlows {
    flows: u64,
    flows_learned: u64,
    sources: HashSet<IpAddr, RandomState>,
    /// Unix nanoseconds.
    first_seen: Option<i128>,
    last_seen: Option<i128>,
}

impl FlowSummary {
    /// Adds one flow (each flow key once); times are Unix nanoseconds.
    pub fn add(&mut self, service: &str, learned: bool, watched: IpAddr, first: i128, last: i128) {
        let add = |entry: &mut ServiceFlows| {
            entry.flows += 1;
            entry.flows_learned += u64::from(learned);
            entry.sources.insert(watched);
            entry.first_seen = Some(entry.first_seen.map_or(first, |seen| seen.min(first)));
            entry.last_seen = Some(entry.last_seen.map_or(last, |seen| seen.max(last)));
        };
        // One lookup for every flow but a service's first.
        if let Some(entry) = self.services.get_mut(service) {
            return add(entry);
        }
        add(self.services.entry(service.to_string()).or_default());
    }

    /// The summary of flow rows that hold each flow key once. A time that
    /// does not parse counts the flow but not towards first or last seen.
    pub fn of(flows: &[FlowRow]) -> Self {
        let mut summary = Self::default();
        for flow in flows {
            let time = |text: &str| parse_time(text).map(OffsetDateTime::unix_timestamp_nanos);
            let (first, last) = (time(&flow.first_seen), time(&flow.last_seen));
            summary.add(
                &flow.service,
                flow.origin == origin_name(classifier_common::ORIGIN_LEARNED),
                flow.watched,
                first.unwrap_or(i128::MAX),
                last.unwrap_or(i128::MIN),
            );
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
                row.first_seen = flows
                    .first_seen
                    .filter(|ns| *ns != i128::MAX)
                    .map(unix_ns_to_rfc3339);
                row.last_seen = flows
                    .last_seen
                    .filter(|ns| *ns != i128::MIN)
                    .map(unix_ns_to_rfc3339);
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
    let mut by_address: HashMap<IpAddr, (TopRow, BTreeSet<&str>), RandomState> = HashMap::default();
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
    let mut rows: Vec<_> = by_address.into_values().collect();
    rows.sort_by(|(a, _), (b, _)| {
        b.packets
            .cmp(&a.packets)
            .then_with(|| b.bytes.cmp(&a.bytes))
            .then_with(|| a.address.cmp(&b.address))
    });
    rows.truncate(TOP_ROWS);
    // Service names only for the rows kept.
    rows.into_iter()
        .map(|(mut row, services)| {
            row.services = services.into_iter().map(str::to_string).collect();
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formatter_writes_what_the_one_off_writes() {
        let mut times = TimeFormatter::default();
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1d);
        let second = 1_000_000_000_i64;
        let mut cases: Vec<i64> = vec![
            0,
            1,
            -1,
            second,
            -second,
            1_764_000_000 * second,
            1_764_000_000 * second + 500_000_000,
            1_764_000_000 * second + 120,
            1_764_000_000 * second + 999_999_999,
            i64::MAX,
            i64::MIN,
        ];
        // Runs of times within one second (the cache), then random ones.
        for _ in 0..2_000 {
            let base = (next() % 4_000_000_000) as i64 * second;
            for _ in 0..5 {
                cases.push(base + (next() % 1_000_000_000) as i64);
            }
            cases.push(next() as i64);
        }
        for ns in cases {
            assert_eq!(times.format(ns), unix_ns_to_rfc3339(ns.into()), "{ns}");
        }
    }

    #[test]
    fn flow_summary_keeps_the_earliest_and_latest_times_it_can_read() {
        let row = |first: &str, last: &str, watched: &str| FlowRow {
            watched: watched.parse().expect("an address"),
            endpoint: "203.0.113.1".parse().expect("an address"),
            protocol: 6,
            port: 443,
            service: "NordVPN".into(),
            direction: "outbound".into(),
            packets: 1,
            bytes: 60,
            first_seen: first.into(),
            last_seen: last.into(),
            tcp_flags: 0,
            origin: "feed".into(),
        };
        let rows = vec![
            row(
                "2026-11-26T10:00:01.5Z",
                "2026-11-26T10:00:02Z",
                "175.45.176.1",
            ),
            row(
                "2026-11-26T10:00:01.25Z",
                "2026-11-26T10:00:01.75Z",
                "175.45.176.2",
            ),
            row("not a time", "2026-11-26T10:00:03.000001Z", "175.45.176.1"),
        ];
        let filled = FlowSummary::of(&rows).fill_service_rows(Vec::new());
        assert_eq!(filled.len(), 1);
        let service = &filled[0];
        assert_eq!(service.flows, 3);
        assert_eq!(service.unique_sources, 2);
        assert_eq!(
            service.first_seen.as_deref(),
            Some("2026-11-26T10:00:01.25Z")
        );
        assert_eq!(
            service.last_seen.as_deref(),
            Some("2026-11-26T10:00:03.000001Z")
        );
    }
}
