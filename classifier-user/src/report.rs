//! Report: the one report model (`classifier.report.v1`) built from a
//! drained ledger, and its renderings as a table and as JSON.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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
    pub unique_sources: u64,
    /// This service's fraction of all matched flows.
    pub share: f64,
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
        };

        let service_name = |id: u16| {
            services
                .name(u32::from(id))
                .unwrap_or("unknown")
                .to_string()
        };
        let mut flows: Vec<(&FlowKey, _)> = ledger.flows.iter().collect();
        // Keys are unique, so an unstable sort gives the same order.
        flows.sort_unstable_by(|(a, ra), (b, rb)| {
            ra.first_seen_unix_ns
                .cmp(&rb.first_seen_unix_ns)
                .then_with(|| a.watched.cmp(&b.watched))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
                .then_with(|| a.port.cmp(&b.port))
                .then_with(|| a.direction.cmp(&b.direction))
        });

        let mut flow_counts: BTreeMap<u16, u64> = BTreeMap::new();
        // Only the number of unique sources per service is reported.
        let mut sources: HashMap<u16, HashSet<[u8; 16]>> = HashMap::new();
        for (key, record) in &flows {
            *flow_counts.entry(record.service).or_default() += 1;
            sources
                .entry(record.service)
                .or_default()
                .insert(key.watched);
        }
        let matched_flows: u64 = flow_counts.values().sum();

        let mut rows = Vec::new();
        for (id, counters) in ledger.services.iter().enumerate().skip(1) {
            let packets = counters.packets.iter().sum::<u64>();
            let Ok(id) = u16::try_from(id) else { continue };
            let flow_count = flow_counts.get(&id).copied().unwrap_or(0);
            if packets == 0 && flow_count == 0 {
                continue;
            }
            rows.push(ServiceRow {
                service: service_name(id),
                packets,
                bytes: counters.bytes.iter().sum(),
                packets_outbound: counters.packets[DIR_OUTBOUND as usize],
                packets_inbound: counters.packets[DIR_INBOUND as usize],
                bytes_outbound: counters.bytes[DIR_OUTBOUND as usize],
                bytes_inbound: counters.bytes[DIR_INBOUND as usize],
                flows: flow_count,
                unique_sources: sources.get(&id).map_or(0, |s| s.len() as u64),
                share: if matched_flows == 0 {
                    0.0
                } else {
                    flow_count as f64 / matched_flows as f64
                },
            });
        }
        rows.sort_by(|a, b| {
            b.flows
                .cmp(&a.flows)
                .then_with(|| b.packets.cmp(&a.packets))
                .then_with(|| a.service.cmp(&b.service))
        });

        let flow_rows = flows
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
            })
            .collect();

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
                evictions: ledger.flow_evictions(),
                insert_failures: kernel.flow_insert_failures,
                drains: ledger.drains,
            },
            feeds: context.feeds,
            services: rows,
            flows: flow_rows,
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
            "{:<18} {:>7} {:>7} {:>8} {:>10} {:>12} {:>10} {:>10}",
            "service", "flows", "share", "sources", "packets", "bytes", "out pkts", "in pkts"
        );
        for row in &self.services {
            let _ = writeln!(
                out,
                "{:<18} {:>7} {:>6.1}% {:>8} {:>10} {:>12} {:>10} {:>10}",
                row.service,
                row.flows,
                row.share * 100.0,
                row.unique_sources,
                row.packets,
                row.bytes,
                row.packets_outbound,
                row.packets_inbound
            );
        }
        if self.services.is_empty() {
            let _ = writeln!(out, "(no watched traffic reached a known endpoint)");
        }
        let reasons: Vec<String> = self
            .malformed
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        if !reasons.is_empty() {
            let _ = writeln!(out, "\nmalformed: {}", reasons.join(", "));
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
