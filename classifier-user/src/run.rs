//! `classifier run`: validate every input, load and attach, drain on an
//! interval until SIGINT/SIGTERM, detach, print the report.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    drain::{self, DrainError, Ledger},
    feeds::{EndpointFeed, FeedError, WatchedSet},
    loader::{AttachMode, Capacities, LoadError, Sensor, interface_index},
    report::{Report, ReportContext, ReportFormat},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("interface {0}: no such interface")]
    NoInterface(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Drain(#[from] DrainError),
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
}

/// Everything `run` needs, validated before anything touches the kernel.
#[derive(Debug)]
pub struct RunConfig {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub watched: WatchedSet,
    pub endpoints: EndpointFeed,
    pub interval: Duration,
    pub format: ReportFormat,
    pub capacities: Capacities,
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<Self, RunError> {
        let mut ifaces: Vec<String> = Vec::new();
        for iface in &args.ifaces {
            if interface_index(iface).is_none() {
                return Err(RunError::NoInterface(iface.clone()));
            }
            if !ifaces.contains(iface) {
                ifaces.push(iface.clone());
            }
        }
        Ok(Self {
            ifaces,
            mode: args.xdp_mode,
            watched: WatchedSet::from_arguments(&args.watch, &args.watch_files)?,
            endpoints: EndpointFeed::from_arguments(&args.endpoint_files)?,
            interval: args.interval,
            format: args.report_format,
            capacities: Capacities {
                endpoints_v4: args.endpoint_capacity_v4,
                endpoints_v6: args.endpoint_capacity_v6,
                flows: args.flow_capacity,
                flow_cache_slots: args.flow_cache_slots,
            },
        })
    }
}

pub fn sensor_name() -> String {
    hostname::get().map_or_else(
        |_| "unknown".into(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn log_feeds(config: &RunConfig) {
    let watched = &config.watched;
    log::info!(
        "watching {} IPv4 and {} IPv6 prefixes",
        watched.v4.len(),
        watched.v6.len()
    );
    let feed = &config.endpoints;
    let names: Vec<&str> = feed.origins.iter().map(|o| o.name.as_str()).collect();
    log::info!(
        "endpoints: {} IPv4 and {} IPv6 prefixes of {} services from {}",
        feed.count(true),
        feed.count(false),
        feed.services().len(),
        names.join(", ")
    );
    let w = &feed.warnings;
    if w.duplicates + w.conflicts + w.nested > 0 {
        log::warn!(
            "endpoint feed: {} duplicate prefixes (kept once), {} prefixes listed for two services (first kept), {} prefixes nested in a shorter one ({} of them in another service's; the longest prefix wins)",
            w.duplicates,
            w.conflicts,
            w.nested,
            w.nested_other_service
        );
    }
}

pub fn run(args: &RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = RunConfig::from_args(args)?;
    let format = config.format;
    let report = run_config(config)?;
    print!("{}", report.render(format));
    Ok(())
}

/// Returns freed heap memory to the system (glibc keeps it otherwise), so
/// the daemon's resident size reflects what it holds.
fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Loads, attaches, counts until a signal, and returns the final report.
pub fn run_config(mut config: RunConfig) -> Result<Report, RunError> {
    log_feeds(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Signals)?;
    runtime.block_on(async {
        // Handlers first: a signal that arrives once attached must detach.
        let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

        let mut sensor = Sensor::load(&config.watched, &config.endpoints, config.capacities)?;
        // The kernel holds the feed now; only its origins go in the report.
        // Give the memory back (a feed of a million prefixes is ~100 MB).
        config.endpoints.endpoints = Vec::new();
        release_free_memory();
        let start = OffsetDateTime::now_utc();
        for iface in &config.ifaces {
            let mode = sensor.attach(iface, config.mode)?;
            log::info!("attached to {iface} in {mode} mode");
        }
        log::info!("counting; SIGINT or SIGTERM stops and prints the report");

        let mut ledger = Ledger::default();
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    match drain::read(&sensor) {
                        Ok(reading) => {
                            ledger.absorb(reading, drain::monotonic_to_unix_ns());
                            release_free_memory();
                        }
                        Err(error) => log::error!("drain failed (will retry): {error}"),
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        sensor.detach_all();
        log::info!("detached; final drain");
        ledger.absorb(drain::read(&sensor)?, drain::monotonic_to_unix_ns());
        Ok(Report::build(
            &ledger,
            &sensor.services,
            ReportContext {
                start,
                end: OffsetDateTime::now_utc(),
                sensor: sensor_name(),
                interfaces: config.ifaces.clone(),
                feeds: config.endpoints.origins.clone(),
            },
        ))
    })
}
