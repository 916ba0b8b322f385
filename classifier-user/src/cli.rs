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
    /// and print the report. Pins the program under --pin-path, serves
    /// Prometheus metrics and live counters, and with --snapshot-dir writes
    /// interval snapshots.
    Run(Box<RunArgs>),
    /// Live counters of a running sensor, read from its pinned maps (from
    /// another process; the daemon keeps running).
    Stats(StatsArgs),
    /// Ask the running `classifier run` to re-read its feeds and swap them
    /// in without a gap (as SIGHUP does); waits for the outcome.
    Reload(ReloadArgs),
    /// Run the same XDP program over every frame of pcap or pcapng files
    /// (BPF_PROG_TEST_RUN; no NIC, same privileges as `run`) and print the
    /// same report, timed by the capture.
    Pcap(PcapArgs),
    /// Generate a traffic mix shaped like the 2024 study (deterministic
    /// under --seed) onto an interface with AF_PACKET, or into a pcap file.
    /// Only for interfaces of a test or demo network: it writes raw frames.
    Generate(GenerateArgs),
    /// Aggregate snapshot files over any time range into the study's table
    /// (per service: unique watched sources, flows, packets, bytes, share,
    /// first and last seen), or check their chain with --verify.
    Report(ReportArgs),
    /// Check feeds without loading anything (`feeds check`).
    #[command(subcommand)]
    Feeds(FeedsCommand),
}

/// Where pins live by default: one sub-folder per interface set.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/classifier";
/// Where metrics are served by default.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

/// The watched set and endpoint feeds (`run` and `pcap`).
#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// Watched prefix, IPv4 or IPv6 (repeatable). When given (or with
    /// --watch-file), replaces the default 175.45.176.0/22.
    #[arg(long = "watch", value_name = "CIDR")]
    pub watch: Vec<String>,

    /// File of watched prefixes (repeatable), one per line ('#' comments;
    /// extra comma-separated columns ignored; `175.45.176.0 255.255.252.0`,
    /// an address and its netmask, is that /22).
    #[arg(long = "watch-file", value_name = "FILE")]
    pub watch_files: Vec<PathBuf>,

    /// Endpoint feed: CSV whose header has `cidr` and `service` columns
    /// (repeatable). Default: the bundled feed of 26 services.
    #[arg(long = "endpoints", value_name = "FILE")]
    pub endpoint_files: Vec<PathBuf>,
}

/// Learning endpoints from DNS answers (`run` and `pcap`).
#[derive(Debug, Clone, Args)]
pub struct LearnArgs {
    /// Domain feed: CSV whose header has `domain` and `service` columns; a
    /// domain covers its subdomains (repeatable). DNS answers sent to
    /// watched hosts for such names teach the addresses as endpoints of
    /// the service. Default: the bundled feed (data/vpn-domains.csv).
    #[arg(long = "domains", value_name = "FILE")]
    pub domain_files: Vec<PathBuf>,

    /// Shared-hosting and CDN ranges never learned (repeatable): `cidr,name`
    /// or `cidr name` per line, '#' comments. Default: the bundled list
    /// (data/shared-hosting.csv).
    #[arg(long = "learn-exclude", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,

    /// Longest a learned address is kept (its DNS TTL, at most this).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub learn_ttl: Duration,

    /// Most packets the program hands to userspace to learn from per
    /// second, all CPUs together (DNS responses to watched hosts, first
    /// TCP segments of unlisted flows; up to 2 KiB each). More are counted
    /// as throttled, never handed over (0: none, each counted as
    /// throttled; --no-learn looks at none).
    #[arg(long, value_name = "PACKETS", default_value_t = classifier_common::DEFAULT_LEARN_RATE)]
    pub learn_rate: u32,

    /// Learn nothing (the domain feed is not read; the program hands no
    /// packets over).
    #[arg(long)]
    pub no_learn: bool,
}

impl LearnArgs {
    /// The program's hand-over rate: none when learning is off.
    pub fn hand_over_rate(&self) -> u32 {
        if self.no_learn { 0 } else { self.learn_rate }
    }
}

/// Evidence captures (`run`).
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Write the first bytes of matched packets (watched address and known
    /// endpoint) to pcapng files in DIR, one per snapshot interval (hourly
    /// without snapshots), each packet commented with its service and
    /// direction.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,

    /// Bytes of each captured packet, from its Ethernet header (1 to 256).
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub capture_bytes: u32,

    /// Most packets captured per second, all flows together; more are
    /// counted as throttled. At least 1.
    #[arg(long, value_name = "R", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub capture_rate: u32,

    /// Packets captured per flow: its first N (each direction is a flow).
    /// At least 1.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub capture_per_flow: u32,

    /// Allow captures with --pseudonymize-key: the files hold real
    /// addresses, so keeping them must be a deliberate choice.
    #[arg(long)]
    pub capture_raw_addresses: bool,
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

    #[command(flatten)]
    pub feeds: FeedArgs,

    #[command(flatten)]
    pub learn: LearnArgs,

    #[command(flatten)]
    pub capture: CaptureArgs,

    /// How often the per-CPU maps are drained (e.g. 500ms, 1s, 1m; at
    /// least 10ms).
    #[arg(long, default_value = "1s", value_parser = parse_drain_interval)]
    pub interval: Duration,

    /// Report printed on exit.
    #[arg(long, value_enum, default_value = "table")]
    pub report_format: ReportFormat,

    /// Flow-table capacity in flows: the LRU table behind the flow cache
    /// (the least recently seen flow is evicted when full; evictions are
    /// counted). Each flow takes about 88 bytes plus 48 per CPU of kernel
    /// memory (65,536 flows on 16 CPUs: about 54 MiB).
    #[arg(long, default_value_t = crate::loader::DEFAULT_FLOW_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub flow_capacity: u32,

    /// Flow-cache slots per CPU, rounded up to a power of two (96 bytes
    /// each). The first flow hashed to a slot keeps it until a drain has
    /// read it and it has gone idle, when a new flow may take the slot
    /// over; until then, later ones that collide go to the LRU table.
    #[arg(
        long,
        default_value_t = crate::loader::DEFAULT_FLOW_CACHE_SLOTS,
        value_parser = clap::value_parser!(u32).range(1..=16_777_216)
    )]
    pub flow_cache_slots: u32,

    /// Most IPv4 endpoint prefixes accepted: a larger feed is refused with
    /// the numbers (default: no limit; the table is sized from the feed).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v4: Option<u32>,

    /// Most IPv6 endpoint prefixes accepted: the IPv6 trie is made this
    /// large and a larger feed is refused with the numbers (default: no
    /// limit; the trie is sized from the feed).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v6: Option<u32>,

    /// BPF filesystem folder for the pinned maps and XDP links; each
    /// interface set gets a sub-folder (e.g. `eth1+eth2`). A program already
    /// pinned there is adopted (no reload, no gap) instead of loading a new
    /// one.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// On SIGTERM/SIGINT leave the program attached and counting (its pins
    /// stay) so the next `classifier run` adopts it. Default: detach and
    /// remove the pins.
    #[arg(long)]
    pub keep_attached: bool,

    /// Remove an XDP program another tool attached to an interface (named
    /// in the refusal without this flag) and attach ours in its place. An
    /// interface runs one XDP program per mode: without the flag `run`
    /// refuses to take a DDoS filter's or another sensor's place. Not with
    /// --xdp-dispatcher, which shares the interface instead.
    #[arg(long, conflicts_with = "xdp_dispatcher")]
    pub replace: bool,

    /// Share the interfaces with other XDP programs through libxdp's
    /// dispatcher (the one `xdp-loader` and `xdp-filter` of xdp-tools use):
    /// join the dispatcher already there, or attach a new one, and on stop
    /// take only our program out. Needs libxdp's xdp-dispatcher.o (Debian:
    /// xdp-tools) and kernel 5.10 or later. See README, "Beside other XDP
    /// programs".
    #[arg(long)]
    pub xdp_dispatcher: bool,

    /// Our run priority in the dispatcher: lower runs first. The default, 5,
    /// runs before xdp-filter (10) and libxdp's default (50), so every
    /// packet is counted, also those a filter drops after us; we pass every
    /// packet on.
    #[arg(long, value_name = "N", default_value_t = crate::dispatcher::DEFAULT_PRIORITY, requires = "xdp_dispatcher")]
    pub xdp_priority: u32,

    /// Local socket serving live counters, read-only, to `classifier stats`
    /// run by users without BPF privileges; `off` for none. Default:
    /// /run/classifier/<interface set>.sock (e.g. eth1+eth2.sock).
    #[arg(long, value_name = "PATH|off", value_parser = parse_stats_socket)]
    pub stats_socket: Option<StatsSocket>,

    /// Group (name or number) allowed to read the stats socket (mode 0660).
    /// Without it only the daemon's user may (mode 0600).
    #[arg(long, value_name = "GROUP")]
    pub stats_group: Option<String>,

    /// Export flows over IPFIX (RFC 7011) to this collector: HOST:PORT
    /// (UDP), udp://HOST:PORT or tcp://HOST:PORT (repeatable). Every
    /// --ipfix-interval, one record per watched<->endpoint flow with its
    /// counts since the last export (see README, "IPFIX export").
    #[arg(long = "ipfix", value_name = "TARGET")]
    pub ipfix: Vec<crate::ipfix::Target>,

    /// How often flows are exported over IPFIX (at least 100ms).
    #[arg(long, value_name = "D", default_value = "60s", value_parser = parse_export_interval)]
    pub ipfix_interval: Duration,

    /// IPFIX observation domain id. Default: derived from the sensor's
    /// name (the first four bytes of its SHA-256), printed at start.
    #[arg(long, value_name = "N")]
    pub observation_domain: Option<u32>,

    /// Address of the Prometheus metrics endpoint (`/metrics`), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = DEFAULT_METRICS_ADDR,
          value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,

    /// Folder for snapshot files: one JSON report per interval, named by
    /// its start (`classifier-20261124T190000Z.json`), chained by SHA-256.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Snapshot interval, aligned to the wall clock (UTC): 1h snapshots
    /// cover 19:00:00-20:00:00. Whole seconds: 10s, 5m, 1h, 1d.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = parse_whole_seconds)]
    pub snapshot_interval: Duration,

    /// The sensor's name in reports and snapshots (letters, digits, '.',
    /// '_', '-'; at most 64). Default: the host name. `classifier report`
    /// over several sensors' snapshots tells them apart by it.
    #[arg(long, value_name = "NAME", value_parser = parse_sensor_name)]
    pub sensor_name: Option<String>,

    /// Replace watched addresses in snapshots and reports by keyed
    /// pseudonyms (HMAC-SHA256 with the file's bytes as key: 16 to 1024
    /// bytes of a file or pipe, not a device; e.g. head -c 32 /dev/urandom
    /// > key).
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key: Option<PathBuf>,
}

/// `--metrics-addr`: where to serve, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    On(std::net::SocketAddr),
}

/// `--stats-socket`: a path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsSocket {
    Off,
    At(PathBuf),
}

pub fn parse_stats_socket(text: &str) -> Result<StatsSocket, String> {
    match text {
        "off" => Ok(StatsSocket::Off),
        "" => Err("give a path, or off".into()),
        path => Ok(StatsSocket::At(PathBuf::from(path))),
    }
}

pub fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr::Off);
    }
    text.parse().map(MetricsAddr::On).map_err(|_| {
        format!("{text:?} is not an address and port (e.g. 127.0.0.1:9477, [::1]:9477) or `off`")
    })
}

pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=100.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a number from 0 to 100")),
    }
}

pub fn parse_span(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration > Duration::from_secs(30 * 86_400) {
        return Err("must be at most 30 days".into());
    }
    Ok(duration)
}

pub fn parse_whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 {
        return Err("must be whole seconds (e.g. 10s, 5m, 1h)".into());
    }
    Ok(duration)
}

#[derive(Debug, Args)]
pub struct PcapArgs {
    /// Capture files (classic pcap in either byte order, micro- or
    /// nanosecond; pcapng). Several files are one capture: their frames are
    /// merged in time order (as mergecap does), whatever order the files are
    /// given in. Link types: Ethernet, raw IP, Linux cooked (SLL, SLL2).
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,

    #[command(flatten)]
    pub feeds: FeedArgs,

    #[command(flatten)]
    pub learn: LearnArgs,

    /// table: the study's table; json: the classifier.report.v1 report
    /// (the same as `run --report-format json`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,

    /// Write snapshots by capture time, as `run --snapshot-dir` does live.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Snapshot interval by capture time, aligned to UTC.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = parse_whole_seconds)]
    pub snapshot_interval: Duration,

    /// The sensor's name in reports and snapshots (letters, digits, '.',
    /// '_', '-'; at most 64). Default: the host name. `classifier report`
    /// over several sensors' snapshots tells them apart by it.
    #[arg(long, value_name = "NAME", value_parser = parse_sensor_name)]
    pub sensor_name: Option<String>,

    /// Replace watched addresses in the report and snapshots by keyed
    /// pseudonyms (as `run --pseudonymize-key`: 16 to 1024 bytes of a
    /// file or pipe).
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key: Option<PathBuf>,

    /// Flow-table capacity (as for `run`).
    #[arg(long, default_value_t = crate::loader::DEFAULT_FLOW_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub flow_capacity: u32,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["iface", "pcap"])))]
pub struct GenerateArgs {
    /// Write the frames onto this interface (AF_PACKET), spread over
    /// --duration.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,

    /// Write the frames into this pcap file (Ethernet, nanosecond
    /// timestamps spread over --duration from now).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// The same seed gives the same frames.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Conversations of the 31 watched hosts (each gives an outbound and an
    /// inbound flow).
    #[arg(long, default_value_t = 1000)]
    pub conversations: usize,

    /// Ordinary (unwatched) frames per watched frame (0 to 100).
    #[arg(long, default_value_t = 4.0, value_parser = parse_ratio)]
    pub background_ratio: f64,

    /// How long sending takes (or the span of the pcap's timestamps; at
    /// most 30 days).
    #[arg(long, default_value = "10s", value_parser = parse_span)]
    pub duration: Duration,

    /// Also write the plan (what each service should show) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,

    #[command(flatten)]
    pub feeds: FeedArgs,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Where `classifier run` pinned its maps (the folder or one interface
    /// set's sub-folder).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// How long to wait for the daemon to report the outcome.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Where `classifier run` pinned its maps (the folder or one interface
    /// set's sub-folder).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Print the JSON report (classifier.report.v1), cumulative since the
    /// program was attached.
    #[arg(long)]
    pub json: bool,

    /// Refresh every SECS seconds until interrupted or the sensor stops
    /// (rates are over the refresh interval; without --watch, over one
    /// second). On a terminal the view is redrawn in place.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub watch: Option<Duration>,

    /// Show watched addresses as keyed pseudonyms (as snapshots do).
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key: Option<PathBuf>,

    /// Read the daemon's stats socket (a socket, or a folder holding one)
    /// instead of the pinned maps. Without it: the pins as root, else the
    /// socket in /run/classifier (reading pins takes CAP_BPF; the socket
    /// takes membership of the daemon's `--stats-group`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    // Shorter refreshes only redraw (and ask the daemon) in a busy loop.
    if !(0.1..=86_400.0).contains(&seconds) {
        return Err("must be at least 0.1 and at most 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Snapshot files, or folders whose `classifier-*.json` files are read.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Only snapshots that start at or after this time (RFC 3339, e.g.
    /// 2026-11-24T19:00:00Z, or a date 2026-11-24 meaning its midnight UTC).
    #[arg(long, value_name = "T")]
    pub from: Option<String>,

    /// Only snapshots that end at or before this time (as --from: a date
    /// 2026-11-25 means its midnight UTC, so 2026-11-24 to 2026-11-25 is
    /// one day).
    #[arg(long, value_name = "T")]
    pub to: Option<String>,

    /// table: the study's table; json: the classifier.report.v1 report;
    /// csv: one row per service; html: one self-contained page with charts
    /// (service shares, matched packets over time with gaps shown), the
    /// tables behind them, top sources and endpoints, totals and coverage.
    #[arg(long, value_enum, default_value = "table")]
    pub format: HistoryFormat,

    /// Also one block per sensor (table: after the merged one; json: a
    /// `by_sensor` array; csv: a first `sensor` column, the merged rows
    /// under `*`; html: a per-sensor table). The merged view counts a
    /// watched source, and a flow, seen by several sensors once.
    #[arg(long)]
    pub by_sensor: bool,

    /// Write the report to this file (atomically) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Check each folder's SHA-256 chain and name the first break (a
    /// missing, reordered or edited snapshot); exit 1 when broken.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryFormat {
    Table,
    Json,
    Csv,
    Html,
}

#[derive(Debug, Subcommand)]
pub enum FeedsCommand {
    /// Validate watched and endpoint feeds as `run` would load them (same
    /// refusals, with file and line; exit 1), then report per service and
    /// family counts, duplicates, conflicts and nested prefixes with the one
    /// that wins, the map capacity needed, and health warnings: services
    /// that vanished or shrank against --against, prefixes shared by two
    /// services, very broad prefixes, prefixes in --shared-hosting ranges.
    /// Without endpoint files it checks the bundled feed.
    Check(FeedsCheckArgs),
}

#[derive(Debug, Args)]
pub struct FeedsCheckArgs {
    /// Endpoint feeds (CSV with `cidr` and `service` columns), read before
    /// the --endpoints files.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    #[command(flatten)]
    pub feeds: FeedArgs,

    /// Plain list of one service's prefixes (one per line, '#' comments),
    /// read after the CSV feeds; each --list pairs with a --service, in
    /// order.
    #[arg(long = "list", value_name = "FILE", requires = "list_services")]
    pub lists: Vec<PathBuf>,

    /// The service of the --list at the same position.
    #[arg(long = "service", value_name = "NAME", requires = "lists")]
    pub list_services: Vec<String>,

    /// An earlier endpoint feed (CSV, repeatable): warn about services with
    /// no prefixes now or far fewer than in it.
    #[arg(long = "against", value_name = "OLD")]
    pub against: Vec<PathBuf>,

    /// With --against: warn when a service keeps less than this share of
    /// its earlier prefix count.
    #[arg(long, value_name = "SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub min_kept: f64,

    /// Ranges of large shared-hosting or CDN networks (repeatable):
    /// `cidr[,name]` or `cidr name` per line ('#' comments, an optional
    /// `cidr,name` header); endpoint prefixes overlapping them are warned
    /// about.
    #[arg(long = "shared-hosting", value_name = "FILE")]
    pub shared_hosting: Vec<PathBuf>,

    /// Warn about IPv4 prefixes shorter than this.
    #[arg(long, value_name = "LEN", default_value_t = 12,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub broad_prefix: u8,

    /// Warn about IPv6 prefixes shorter than this.
    #[arg(long, value_name = "LEN", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub broad_prefix_v6: u8,

    /// Check against this IPv4 endpoint capacity (as `run`).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v4: Option<u32>,

    /// Check against this IPv6 endpoint capacity (as `run`).
    #[arg(long, value_name = "N")]
    pub endpoint_capacity_v6: Option<u32>,

    /// The domain feed `run` would learn with (repeatable; default: the
    /// bundled one): read and checked, and services only it names count
    /// towards the service limit, as in `run`.
    #[arg(long = "domains", value_name = "FILE")]
    pub domain_files: Vec<PathBuf>,

    /// As `run --no-learn`: no domain feed, its services not counted.
    #[arg(long)]
    pub no_learn: bool,

    /// table: the findings for a reader; json: the same as one object, for
    /// scripts and CI.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,

    /// Exit 1 when there is any warning.
    #[arg(long)]
    pub strict: bool,
}

/// A share above 0 and at most 1 (e.g. 0.5).
pub fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number (e.g. 0.5)"))?;
    if !(share > 0.0 && share <= 1.0) {
        return Err("must be more than 0 and at most 1 (e.g. 0.5)".into());
    }
    Ok(share)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|error| format!("{error} (try 1s, 500ms, 5m)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// `--interval`: at least 10ms; a shorter one keeps a CPU busy draining.
fn parse_drain_interval(text: &str) -> Result<Duration, String> {
    at_least(parse_duration(text)?, Duration::from_millis(10), "draining")
}

/// `--ipfix-interval`: at least 100ms; a shorter one keeps a CPU busy
/// exporting.
fn parse_export_interval(text: &str) -> Result<Duration, String> {
    at_least(
        parse_duration(text)?,
        Duration::from_millis(100),
        "exporting",
    )
}

fn at_least(duration: Duration, least: Duration, doing: &str) -> Result<Duration, String> {
    if duration < least {
        return Err(format!(
            "must be at least {} (a shorter one keeps a CPU busy {doing})",
            humantime::format_duration(least)
        ));
    }
    Ok(duration)
}

/// A sensor name: 1 to 64 of letters, digits, '.', '_' and '-'.
fn parse_sensor_name(text: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err("expected 1 to 64 letters, digits, '.', '_' or '-'".to_string())
    }
}
