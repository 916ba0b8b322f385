//! Metrics: the daemon's counters in Prometheus text format, served over
//! HTTP at `/metrics` (`--metrics-addr`).
//!
//! The daemon fills a [`MetricsState`] after every drain; a scrape encodes
//! the latest one. Counters are the kernel's own cumulative values since
//! the program was attached, so they stay monotonic across daemon restarts
//! that adopt the program. No per-address labels (cardinality).

use classifier_common::{ServiceCounters, Totals};

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
    pub snapshot_writes: u64,
    pub snapshot_write_failures: u64,
    /// Unix time of the last snapshot written (`None`: none yet).
    pub last_snapshot_unix_seconds: Option<f64>,
    /// Snapshots computed but not yet written (failed writes being retried).
    pub snapshots_pending: u64,
    /// Prefixes loaded, as (family `ipv4`/`ipv6`, set `watched`/`endpoints`, count).
    pub feed_prefixes: Vec<(&'static str, &'static str, u64)>,
    /// Unix time the program was attached.
    pub program_attached_unix_seconds: f64,
    /// Daemon starts that adopted an already-attached program.
    pub adopted: bool,
}
