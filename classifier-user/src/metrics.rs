//! Metrics: the daemon's counters in Prometheus text format, served over
//! HTTP at `/metrics` (`--metrics-addr`).
//!
//! The daemon fills a [`MetricsState`] after every drain; a scrape encodes
//! the latest one. Counters are the kernel's own cumulative values since
//! the program was attached, so they stay monotonic across daemon restarts
//! that adopt the program. No per-address labels (cardinality).

use std::sync::{Arc, Mutex, PoisonError};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, MALFORMED_REASON_NAMES, ServiceCounters, Totals,
};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, prometheus_text},
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};

/// Everything a scrape shows, as of the last drain.
#[derive(Debug, Clone, Default)]
pub struct MetricsState {
    /// Kernel counters summed over CPUs, since the program was attached
    /// (`None` before the first drain).
    pub totals: Option<Totals>,
    /// Per service (name, counters since attach), in service-id order.
    pub services: Vec<(String, ServiceCounters)>,
    /// Flow-table keys evicted since attach.
    pub flow_evictions: u64,
    /// Flow keys alive in the kernel (LRU entries plus claimed cache slots).
    pub flow_entries: u64,
    /// LRU table capacity plus flow-cache slots over all CPUs.
    pub flow_capacity: u64,
    pub drains: u64,
    pub drain_failures: u64,
    /// How long the last drain took.
    pub last_drain_seconds: f64,
    /// IPFIX export's counts (`None`: no collector configured).
    pub ipfix: Option<crate::ipfix::ExportStats>,
    pub snapshot_writes: u64,
    pub snapshot_write_failures: u64,
    /// Unix time of the last snapshot written (`None`: none yet).
    pub last_snapshot_unix_seconds: Option<f64>,
    /// Snapshots computed but not yet written (failed writes being retried).
    pub snapshots_pending: u64,
    /// Prefixes loaded, as (family `ipv4`/`ipv6`, set `watched`/`endpoints`, count).
    pub feed_prefixes: Vec<(&'static str, &'static str, u64)>,
    /// Feed reloads swapped in and refused (since the program was loaded).
    pub feed_reloads: u64,
    pub feed_reload_failures: u64,
    /// Unix time the feeds in force were loaded.
    pub feeds_loaded_unix_seconds: f64,
    /// Unix time the program was attached.
    pub program_attached_unix_seconds: f64,
    /// Daemon starts that adopted an already-attached program.
    pub adopted: bool,
    /// What learning did since the daemon started, and the endpoints it
    /// holds (`None`: learning off).
    pub learning: Option<(crate::learn::LearnStats, u64)>,
}

/// Content type of [`render`]'s output: the Prometheus text format 0.0.4.
///
/// Not OpenMetrics: its text names a counter family `x` and the sample
/// `x_total`, which `promtool check metrics` (a Prometheus text parser)
/// reads as an untyped metric without help.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// One metric family's series in a fixed order, one per label set.
/// (`prometheus_client`'s `Family` keeps a hash map, so its series would
/// change order from scrape to scrape.) Registered with no series, the
/// family is left out of the output.
#[derive(Debug)]
struct Series<M>(Vec<(Labels, M)>);

impl<M> FromIterator<(Labels, M)> for Series<M> {
    fn from_iter<I: IntoIterator<Item = (Labels, M)>>(series: I) -> Self {
        Self(series.into_iter().collect())
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Series<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Labels from (name, value) pairs.
fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge<N>(value: N) -> ConstGauge<N> {
    ConstGauge::new(value)
}

/// Help of a counter the kernel keeps: what it counts, and since when.
fn since_attach(what: &str) -> String {
    format!(
        "{what}; cumulative since the XDP program was attached, \
         kept across daemon restarts that adopt it"
    )
}

/// The Prometheus text exposition ([`CONTENT_TYPE`]) of `state`, with
/// `version` as the build-info label.
///
/// The kernel's counters (packets, bytes, families, watched, matched,
/// services, malformed, flow-table inserts, evictions and insert failures)
/// are left out before the first drain rather than shown as zeros, so a
/// restarted daemon that adopts the program never makes them appear to
/// drop and rise again.
pub fn render(state: &MetricsState, version: &str) -> String {
    let mut registry = Registry::with_prefix("classifier");
    // Prometheus text names: `name` + `_total` for counters, `_info` for info.
    registry.register(
        "build",
        "Version of the classifier daemon serving these metrics (always 1)",
        Info::new(labels([("version", version)])),
    );
    if let Some(totals) = &state.totals {
        register_kernel_counters(&mut registry, totals, state);
    }
    register_daemon_metrics(&mut registry, state);
    if let Some((stats, endpoints)) = &state.learning {
        register_learning_metrics(&mut registry, stats, *endpoints);
    }

    let mut text = String::new();
    // Writing into a String cannot fail, nor can formatting our integers,
    // floats and label strings; should the encoder still report an error,
    // the scrape gets what was written before it.
    if let Err(error) = prometheus_text::encode(&mut text, &registry) {
        log::error!("encoding metrics: {error}");
    }
    text
}

fn register_kernel_counters(registry: &mut Registry, totals: &Totals, state: &MetricsState) {
    registry.register(
        "packets",
        since_attach("Packets seen by the XDP program"),
        counter(totals.packets()),
    );
    registry.register(
        "bytes",
        since_attach(
            "Bytes of the packets seen: frame lengths including the Ethernet header, without FCS",
        ),
        counter(totals.bytes),
    );
    registry.register(
        "family_packets",
        since_attach(
            "Packets by EtherType after VLAN tags: ipv4, ipv6 or other \
             (frames too short to have one count as other)",
        ),
        [
            ("ipv4", totals.ipv4),
            ("ipv6", totals.ipv6),
            ("other", totals.other),
        ]
        .into_iter()
        .map(|(family, packets)| (labels([("family", family)]), counter(packets)))
        .collect::<Series<_>>(),
    );
    registry.register(
        "watched_packets",
        since_attach("Well-formed packets with a watched source or destination address"),
        counter(totals.watched),
    );
    registry.register(
        "matched_packets",
        since_attach("Watched packets whose other end is a known service endpoint"),
        counter(totals.matched),
    );

    let directions = [("outbound", DIR_OUTBOUND), ("inbound", DIR_INBOUND)];
    let per_service = |value: fn(&ServiceCounters, usize) -> u64| -> Series<_> {
        state
            .services
            .iter()
            .flat_map(|(service, counters)| {
                directions.map(|(direction, index)| {
                    let labels = labels([("service", service), ("direction", direction)]);
                    (labels, counter(value(counters, usize::from(index))))
                })
            })
            .collect()
    };
    registry.register(
        "service_packets",
        since_attach(
            "Packets between watched addresses and a service's endpoints, by direction \
             (outbound: from the watched address)",
        ),
        per_service(|counters, direction| counters.packets[direction]),
    );
    registry.register(
        "service_bytes",
        since_attach(
            "Frame bytes (including the Ethernet header, without FCS) between watched addresses \
             and a service's endpoints, by direction (outbound: from the watched address)",
        ),
        per_service(|counters, direction| counters.bytes[direction]),
    );

    registry.register(
        "malformed_packets",
        since_attach("Packets the XDP program could not parse, by reason"),
        MALFORMED_REASON_NAMES
            .iter()
            .zip(totals.malformed)
            .map(|(reason, packets)| (labels([("reason", reason)]), counter(packets)))
            .collect::<Series<_>>(),
    );

    registry.register(
        "flow_table_inserts",
        since_attach("Flow keys the XDP program created"),
        counter(totals.flow_inserts),
    );
    registry.register(
        "flow_table_evictions",
        since_attach("Flow keys the kernel evicted to make room"),
        counter(state.flow_evictions),
    );
    registry.register(
        "flow_table_recycles",
        since_attach(
            "Flow-cache slots given to new flows after a drain had read the idle flows in them",
        ),
        counter(totals.flow_recycles),
    );
    registry.register(
        "flow_table_insert_failures",
        since_attach(
            "Flow-key inserts the kernel refused (the packet still counts in the other counters)",
        ),
        counter(totals.flow_insert_failures),
    );
    registry.register(
        "learn_handed_over_packets",
        since_attach("Packets the program handed to userspace to learn from (DNS responses to watched hosts, first TCP segments of unlisted flows)"),
        counter(totals.learn_records),
    );
    registry.register(
        "learn_ring_drops",
        since_attach("Packets the program could not hand over to learn from (ring buffer full)"),
        counter(totals.learn_drops),
    );
    registry.register(
        "learn_throttled_packets",
        since_attach("Packets the program did not hand over to learn from: the second's budget (--learn-rate) was spent"),
        counter(totals.learn_throttled),
    );
    registry.register(
        "capture_packets",
        since_attach("Matched packets the program copied for evidence captures (--capture-dir)"),
        counter(totals.capture_records),
    );
    registry.register(
        "capture_ring_drops",
        since_attach("Matched packets not captured: the capture ring buffer was full"),
        counter(totals.capture_drops),
    );
    registry.register(
        "capture_throttled_packets",
        since_attach(
            "Matched packets not captured: the second's budget (--capture-rate) was spent",
        ),
        counter(totals.capture_throttled),
    );
}

fn register_learning_metrics(
    registry: &mut Registry,
    stats: &crate::learn::LearnStats,
    endpoints: u64,
) {
    let since_start = |what: &str| format!("{what}, since this daemon started");
    for (name, help, value) in [
        (
            "learn_dns_responses",
            "DNS responses to watched hosts read",
            stats.dns_responses,
        ),
        (
            "learn_dns_unparsed",
            "DNS responses that were not readable DNS",
            stats.dns_unparsed,
        ),
        (
            "learn_dns_matched",
            "DNS responses for names the domain feed covers",
            stats.dns_matched,
        ),
        (
            "learn_tls_flows_named",
            "TCP flows whose TLS server name or certificate named a listed domain (given the service as a verdict)",
            stats.tls_flows_named,
        ),
        (
            "learn_endpoints_learned",
            "Addresses learned as endpoints",
            stats.learned,
        ),
        (
            "learn_endpoints_renewed",
            "Learned addresses answered again (expiry extended)",
            stats.renewed,
        ),
        (
            "learn_endpoints_expired",
            "Learned addresses removed at their expiry",
            stats.expired,
        ),
    ] {
        registry.register(name, since_start(help), counter(value));
    }
    registry.register(
        "learn_endpoints_skipped",
        since_start("Addresses not learned, by reason"),
        [
            (
                labels([("reason", "shared_hosting")]),
                counter(stats.skipped_shared_hosting),
            ),
            (
                labels([("reason", "capacity")]),
                counter(stats.skipped_capacity),
            ),
        ]
        .into_iter()
        .collect::<Series<_>>(),
    );
    registry.register(
        "learned_endpoints",
        "Endpoints learned and not expired, in the kernel's LEARNED map",
        gauge(endpoints),
    );
}

fn register_daemon_metrics(registry: &mut Registry, state: &MetricsState) {
    if let Some(ipfix) = state.ipfix {
        registry.register(
            "ipfix_records",
            "IPFIX data records delivered to collectors (per collector), since this daemon started",
            counter(ipfix.records),
        );
        registry.register(
            "ipfix_send_failures",
            "IPFIX exports a collector could not be sent (its records are not re-sent; snapshots keep every count)",
            counter(ipfix.messages_failed),
        );
    }
    registry.register(
        "flow_table_entries",
        "Flow keys alive in the kernel: LRU table entries plus claimed flow-cache slots",
        gauge(state.flow_entries),
    );
    registry.register(
        "flow_table_capacity",
        "Flow keys the kernel can hold: LRU table capacity plus flow-cache slots over all CPUs",
        gauge(state.flow_capacity),
    );

    registry.register(
        "drains",
        "Drains of the kernel's counters by this daemon process",
        counter(state.drains),
    );
    registry.register(
        "drain_failures",
        "Drains of the kernel's counters that failed, by this daemon process",
        counter(state.drain_failures),
    );
    registry.register(
        "drain_duration_seconds",
        "How long the last drain of the kernel's counters took",
        gauge(state.last_drain_seconds),
    );

    registry.register(
        "snapshot_writes",
        "Snapshots written by this daemon process",
        counter(state.snapshot_writes),
    );
    registry.register(
        "snapshot_write_failures",
        "Snapshot writes that failed, by this daemon process (the snapshot is retried)",
        counter(state.snapshot_write_failures),
    );
    registry.register(
        "snapshots_pending",
        "Snapshots computed but not yet written (failed writes being retried)",
        gauge(state.snapshots_pending),
    );
    if let Some(unix_seconds) = state.last_snapshot_unix_seconds {
        registry.register(
            "last_snapshot_timestamp_seconds",
            "Unix time the last snapshot was written",
            gauge(unix_seconds),
        );
    }

    registry.register(
        "feed_prefixes",
        "Prefixes loaded from the feeds, by address family and set (watched or endpoints)",
        state
            .feed_prefixes
            .iter()
            .map(|&(family, set, prefixes)| {
                (labels([("family", family), ("set", set)]), gauge(prefixes))
            })
            .collect::<Series<_>>(),
    );

    registry.register(
        "feed_reloads",
        "Feed reloads swapped in (SIGHUP or classifier reload) since the program was loaded",
        counter(state.feed_reloads),
    );
    registry.register(
        "feed_reload_failures",
        "Feed reloads refused (a bad feed, or a program the kernel refused); the old feeds \
         kept serving",
        counter(state.feed_reload_failures),
    );
    registry.register(
        "feeds_loaded_timestamp_seconds",
        "Unix time the feeds in force were loaded (the attachment or the last successful reload)",
        gauge(state.feeds_loaded_unix_seconds),
    );
    registry.register(
        "program_attached_timestamp_seconds",
        "Unix time the XDP program was attached; the kernel's counters count from then",
        gauge(state.program_attached_unix_seconds),
    );
    registry.register(
        "program_adopted",
        "1 if this daemon adopted an XDP program already attached (its counters continue), \
         0 if it attached the program itself",
        gauge(u64::from(state.adopted)),
    );
}

// ---- HTTP ------------------------------------------------------------------------

/// What the HTTP handlers share.
#[derive(Clone)]
struct Scrape {
    state: Arc<Mutex<MetricsState>>,
    version: &'static str,
}

/// Serves `GET /metrics` (the [`render`]ing of the latest `state`) and a
/// pointer to it at `GET /`; every other path is 404. Runs on the caller's
/// runtime, current-thread included; returns only if accepting fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<MetricsState>>,
    version: &'static str,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .with_state(Scrape { state, version });
    axum::serve(listener, router).await
}

async fn index() -> &'static str {
    "classifier: Prometheus metrics at /metrics\n"
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    let text = {
        // The state is plain figures: a panic elsewhere while holding the
        // lock leaves them readable, so a poisoned lock still serves them.
        let state = scrape.state.lock().unwrap_or_else(PoisonError::into_inner);
        render(&state, scrape.version)
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{IpAddr, SocketAddr, TcpStream},
        process::{Command, Stdio},
        time::Duration,
    };

    use bytemuck::Zeroable;
    use classifier_common::{MALFORMED_IPV4_TRUNCATED, MALFORMED_L4_TRUNCATED};

    use super::*;

    /// A state after some drains: two services, some malformed packets, a
    /// busy flow table.
    fn drained_state() -> MetricsState {
        let mut totals = Totals::zeroed();
        totals.bytes = 12_345;
        totals.ipv4 = 20;
        totals.ipv6 = 5;
        totals.other = 2;
        totals.watched = 15;
        totals.matched = 12;
        totals.flow_inserts = 9;
        totals.flow_insert_failures = 1;
        totals.malformed[MALFORMED_IPV4_TRUNCATED] = 3;
        totals.malformed[MALFORMED_L4_TRUNCATED] = 1;
        MetricsState {
            totals: Some(totals),
            services: vec![
                (
                    "pia".to_owned(),
                    ServiceCounters {
                        packets: [7, 5],
                        bytes: [700, 4_500],
                    },
                ),
                ("nordvpn".to_owned(), ServiceCounters::zeroed()),
            ],
            flow_evictions: 2,
            flow_entries: 7,
            flow_capacity: 65_536,
            drains: 4,
            drain_failures: 1,
            last_drain_seconds: 0.25,
            ipfix: Some(crate::ipfix::ExportStats {
                records: 12,
                messages_failed: 1,
            }),
            snapshot_writes: 3,
            snapshot_write_failures: 1,
            last_snapshot_unix_seconds: Some(1_700_000_000.5),
            snapshots_pending: 1,
            feed_prefixes: vec![
                ("ipv4", "watched", 120),
                ("ipv6", "watched", 4),
                ("ipv4", "endpoints", 2_000),
                ("ipv6", "endpoints", 30),
            ],
            feed_reloads: 2,
            feed_reload_failures: 1,
            feeds_loaded_unix_seconds: 1_699_999_500.0,
            program_attached_unix_seconds: 1_699_999_000.0,
            adopted: true,
            learning: Some((
                crate::learn::LearnStats {
                    dns_responses: 12,
                    dns_matched: 4,
                    learned: 5,
                    expired: 1,
                    skipped_shared_hosting: 2,
                    tls_flows_named: 3,
                    ..crate::learn::LearnStats::default()
                },
                4,
            )),
        }
    }

    /// A state before the first drain.
    fn fresh_state() -> MetricsState {
        MetricsState {
            flow_capacity: 65_536,
            feed_prefixes: vec![("ipv4", "watched", 120)],
            program_attached_unix_seconds: 1_699_999_000.0,
            ..MetricsState::default()
        }
    }

    fn sample_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    /// The metric name of a sample line.
    fn metric_name(line: &str) -> &str {
        line.split(['{', ' ']).next().unwrap_or_default()
    }

    /// The (name, value) label pairs of a sample line.
    fn label_pairs(line: &str) -> Vec<(&str, &str)> {
        let Some((_, rest)) = line.split_once('{') else {
            return Vec::new();
        };
        let (inside, _) = rest.split_once("} ").expect("labels end with '} '");
        inside
            .split("\",")
            .map(|pair| {
                let (name, value) = pair.split_once("=\"").expect("label is name=\"value\"");
                (name, value.trim_end_matches('"'))
            })
            .collect()
    }

    #[test]
    fn metrics_render_exact_samples() {
        let text = render(&drained_state(), "1.2.3");
        let samples = sample_lines(&text);
        for expected in [
            r#"classifier_build_info{version="1.2.3"} 1"#,
            "classifier_packets_total 27",
            "classifier_bytes_total 12345",
            r#"classifier_family_packets_total{family="ipv4"} 20"#,
            r#"classifier_family_packets_total{family="ipv6"} 5"#,
            r#"classifier_family_packets_total{family="other"} 2"#,
            "classifier_watched_packets_total 15",
            "classifier_matched_packets_total 12",
            r#"classifier_service_packets_total{service="pia",direction="outbound"} 7"#,
            r#"classifier_service_packets_total{service="pia",direction="inbound"} 5"#,
            r#"classifier_service_packets_total{service="nordvpn",direction="outbound"} 0"#,
            r#"classifier_service_packets_total{service="nordvpn",direction="inbound"} 0"#,
            r#"classifier_service_bytes_total{service="pia",direction="outbound"} 700"#,
            r#"classifier_service_bytes_total{service="pia",direction="inbound"} 4500"#,
            r#"classifier_service_bytes_total{service="nordvpn",direction="outbound"} 0"#,
            r#"classifier_service_bytes_total{service="nordvpn",direction="inbound"} 0"#,
            r#"classifier_malformed_packets_total{reason="ipv4_truncated"} 3"#,
            r#"classifier_malformed_packets_total{reason="l4_truncated"} 1"#,
            r#"classifier_malformed_packets_total{reason="ethernet_truncated"} 0"#,
            "classifier_flow_table_inserts_total 9",
            "classifier_flow_table_evictions_total 2",
            "classifier_flow_table_insert_failures_total 1",
            "classifier_learn_handed_over_packets_total 0",
            "classifier_learn_ring_drops_total 0",
            "classifier_learn_throttled_packets_total 0",
            "classifier_capture_packets_total 0",
            "classifier_capture_ring_drops_total 0",
            "classifier_capture_throttled_packets_total 0",
            "classifier_ipfix_records_total 12",
            "classifier_ipfix_send_failures_total 1",
            "classifier_learn_dns_responses_total 12",
            "classifier_learn_tls_flows_named_total 3",
            "classifier_learn_endpoints_learned_total 5",
            "classifier_learn_endpoints_expired_total 1",
            r#"classifier_learn_endpoints_skipped_total{reason="shared_hosting"} 2"#,
            "classifier_learned_endpoints 4",
            "classifier_flow_table_entries 7",
            "classifier_flow_table_capacity 65536",
            "classifier_drains_total 4",
            "classifier_drain_failures_total 1",
            "classifier_drain_duration_seconds 0.25",
            "classifier_snapshot_writes_total 3",
            "classifier_snapshot_write_failures_total 1",
            "classifier_feed_reloads_total 2",
            "classifier_feed_reload_failures_total 1",
            "classifier_snapshots_pending 1",
            "classifier_last_snapshot_timestamp_seconds 1700000000.5",
            r#"classifier_feed_prefixes{family="ipv4",set="watched"} 120"#,
            r#"classifier_feed_prefixes{family="ipv6",set="endpoints"} 30"#,
            "classifier_program_attached_timestamp_seconds 1699999000.0",
            "classifier_program_adopted 1",
        ] {
            assert!(
                samples.contains(&expected),
                "no line {expected:?} in\n{text}"
            );
        }
        let malformed = samples
            .iter()
            .filter(|line| metric_name(line) == "classifier_malformed_packets_total")
            .count();
        assert_eq!(malformed, MALFORMED_REASON_NAMES.len(), "{text}");
        assert!(
            text.contains(
                "# HELP classifier_bytes_total Bytes of the packets seen: frame lengths \
                 including the Ethernet header, without FCS; cumulative since the XDP program \
                 was attached, kept across daemon restarts that adopt it.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn metrics_every_family_has_help_and_type() {
        let text = render(&drained_state(), "1.2.3");
        for line in sample_lines(&text) {
            let name = metric_name(line);
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: no HELP");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}: no TYPE");
        }
    }

    #[test]
    fn metrics_carry_no_addresses() {
        let text = render(&drained_state(), "1.2.3");
        let allowed = ["version", "family", "service", "direction", "reason", "set"];
        for line in sample_lines(&text) {
            for (name, value) in label_pairs(line) {
                assert!(allowed.contains(&name), "unexpected label {name} in {line}");
                let without_prefix_length = value.split('/').next().unwrap_or(value);
                assert!(
                    without_prefix_length.parse::<IpAddr>().is_err(),
                    "address in {line}"
                );
            }
        }
    }

    #[test]
    fn metrics_before_first_drain_leave_kernel_counters_out() {
        let text = render(&fresh_state(), "1.2.3");
        let kernel_metrics = [
            "classifier_packets_total",
            "classifier_bytes_total",
            "classifier_family_packets_total",
            "classifier_watched_packets_total",
            "classifier_matched_packets_total",
            "classifier_service_packets_total",
            "classifier_service_bytes_total",
            "classifier_malformed_packets_total",
            "classifier_flow_table_inserts_total",
            "classifier_flow_table_evictions_total",
            "classifier_flow_table_insert_failures_total",
        ];
        for line in text.lines() {
            for name in kernel_metrics {
                assert!(
                    !line.contains(name),
                    "{name} before the first drain: {line}"
                );
            }
        }
        let samples = sample_lines(&text);
        for expected in [
            r#"classifier_build_info{version="1.2.3"} 1"#,
            "classifier_flow_table_entries 0",
            "classifier_flow_table_capacity 65536",
            "classifier_drains_total 0",
            "classifier_drain_failures_total 0",
            "classifier_snapshot_writes_total 0",
            "classifier_snapshots_pending 0",
            r#"classifier_feed_prefixes{family="ipv4",set="watched"} 120"#,
            "classifier_program_adopted 0",
        ] {
            assert!(
                samples.contains(&expected),
                "no line {expected:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("classifier_last_snapshot_timestamp_seconds"),
            "a snapshot time before any snapshot:\n{text}"
        );
    }

    /// `promtool check metrics` (Debian's `prometheus` package) must accept
    /// the output without a lint problem. Without promtool the test fails
    /// in CI and only says so elsewhere.
    #[test]
    fn metrics_pass_promtool_check() {
        for text in [
            render(&drained_state(), "1.2.3"),
            render(&fresh_state(), "1.2.3"),
        ] {
            let spawned = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match spawned {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    assert_ne!(
                        std::env::var("CI").as_deref(),
                        Ok("true"),
                        "promtool is not on PATH (install Debian's prometheus package)"
                    );
                    eprintln!(
                        "notice: promtool is not on PATH, the exposition is not checked \
                         (install Debian's prometheus package)"
                    );
                    return;
                }
                spawned => spawned.expect("promtool starts"),
            };
            child
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(text.as_bytes())
                .expect("promtool reads the exposition");
            let output = child.wait_with_output().expect("promtool finishes");
            let problems = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                output.status.success() && problems.is_empty(),
                "promtool check metrics: {} {problems}\n{text}",
                output.status
            );
        }
    }

    /// An HTTP/1.1 GET of `path`: (status line, headers, body).
    fn http_get(address: SocketAddr, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(address).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("sets a timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("sends the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reads the response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_owned(), headers.to_lowercase(), body.to_owned())
    }

    #[test]
    fn metrics_served_over_http_on_current_thread_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let state = Arc::new(Mutex::new(drained_state()));
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let address = listener.local_addr().expect("has an address");
            let server = tokio::spawn(serve(listener, Arc::clone(&state), "1.2.3"));

            let (status, headers, body) =
                tokio::task::spawn_blocking(move || http_get(address, "/metrics"))
                    .await
                    .expect("the client runs");
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(
                headers.contains(&format!("content-type: {}", CONTENT_TYPE.to_lowercase())),
                "{headers}"
            );
            assert_eq!(body, render(&drained_state(), "1.2.3"));
            assert!(body.contains(
                r#"classifier_service_packets_total{service="pia",direction="outbound"} 7"#
            ));

            let (status, headers, body) =
                tokio::task::spawn_blocking(move || http_get(address, "/"))
                    .await
                    .expect("the client runs");
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(headers.contains("content-type: text/plain"), "{headers}");
            assert!(body.contains("/metrics"), "{body}");

            let (status, _, _) = tokio::task::spawn_blocking(move || http_get(address, "/nope"))
                .await
                .expect("the client runs");
            assert_eq!(status, "HTTP/1.1 404 Not Found");

            assert!(!server.is_finished(), "the server stopped");
            server.abort();
        });
    }
}
