//! Command-line definitions (clap) and nothing else; `config` turns them
//! into validated settings.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{loader::AttachMode, report::ReportFormat};

/// Counts packets between a watched address range (by default North Korea's
/// 175.45.176.0/22) and known VPN and proxy endpoints, with an XDP program on
/// the sensor's NIC. Passive: every packet is passed on unchanged.
#[derive(Debug, Parser)]
#[command(name = "classifier", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to interfaces and count until SIGINT or SIGTERM, then detach
    /// and print the report.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,

    /// XDP attach mode: auto tries native (driver) mode and falls back to
    /// generic (skb) mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: AttachMode,

    /// Watched prefix, IPv4 or IPv6 (repeatable). When given (or with
    /// --watch-file), replaces the default 175.45.176.0/22.
    #[arg(long = "watch", value_name = "CIDR")]
    pub watch: Vec<String>,

    /// File of watched prefixes, one per line ('#' comments; extra
    /// comma-separated columns ignored).
    #[arg(long = "watch-file", value_name = "FILE")]
    pub watch_files: Vec<PathBuf>,

    /// Endpoint feed: CSV whose header has `cidr` and `service` columns
    /// (repeatable). Default: the bundled feed of 26 services.
    #[arg(long = "endpoints", value_name = "FILE")]
    pub endpoint_files: Vec<PathBuf>,

    /// How often the per-CPU maps are drained (e.g. 500ms, 1s, 1m).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Report printed on exit.
    #[arg(long, value_enum, default_value = "table")]
    pub report_format: ReportFormat,

    /// Flow-table capacity in flows: the LRU table behind the flow cache
    /// (the least recently seen flow is evicted when full; evictions are
    /// counted).
    #[arg(long, default_value_t = crate::loader::DEFAULT_FLOW_CAPACITY)]
    pub flow_capacity: u32,

    /// Flow-cache slots per CPU, rounded up to a power of two (88 bytes
    /// each). The first flow hashed to a slot keeps it; later ones that
    /// collide go to the LRU table.
    #[arg(
        long,
        default_value_t = crate::loader::DEFAULT_FLOW_CACHE_SLOTS,
        value_parser = clap::value_parser!(u32).range(1..=16_777_216)
    )]
    pub flow_cache_slots: u32,

    /// Most IPv4 endpoint prefixes accepted (default: no limit).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v4: Option<u32>,

    /// IPv6 endpoint map capacity, so most IPv6 prefixes accepted (default:
    /// the feed's size).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v6: Option<u32>,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|error| format!("{error} (try 1s, 500ms, 5m)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}
