//! `classifier run`: validate every input, load, attach and pin (or adopt
//! a program a previous daemon left attached), drain on an interval, serve
//! metrics, write snapshots, and on SIGINT/SIGTERM detach (unless
//! `--keep-attached`) and print the report.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{FeedArgs, MetricsAddr, RunArgs, StatsSocket},
    drain::{self, DrainError, Ledger},
    feeds::{EndpointFeed, FeedError, WatchedSet},
    loader::{
        AttachMode, Capacities, LoadError, Pinned, Sensor, ServiceTable, error_chain,
        interface_index,
    },
    metrics::{self, MetricsState},
    notify::Notifier,
    pins::{self, PinError, PinnedSensor, SensorMeta},
    privileges,
    pseudonym::{PseudonymError, Pseudonymizer},
    report::{Report, ReportContext, ReportFormat},
    snapshot::{self, SnapshotError, Snapshotter, WriteAttempt, unix_ns_to_time},
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
    #[error(transparent)]
    Clock(#[from] crate::flow_clock::ClockError),
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] std::io::Error),
    #[error("IPFIX: cannot start a thread to send with: {0}")]
    IpfixThread(#[source] std::io::Error),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Dispatcher(#[from] crate::dispatcher::DispatcherError),
    #[error(
        "interface {iface}: {program} is already attached; classifier run would take its place (stop the tool that attached it, or pass --replace to remove it)"
    )]
    Occupied {
        iface: String,
        program: crate::interface_xdp::AttachedProgram,
    },
    #[error("interface {iface}: cannot {action} its XDP programs: {source}")]
    InterfaceXdp {
        iface: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Live(#[from] crate::live::LiveError),
    #[error(transparent)]
    Learn(#[from] crate::learn::LearnError),
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
    #[error(transparent)]
    Pseudonym(#[from] PseudonymError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(
        "cannot serve metrics on {addr}: {source} (choose another --metrics-addr, or --metrics-addr off)"
    )]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} snapshot(s) could not be written before exit (see the errors above); the report on stdout still holds every count"
    )]
    SnapshotsLost(usize),
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
    pub pin_path: PathBuf,
    pub keep_attached: bool,
    /// Remove another XDP program from the interfaces instead of refusing.
    pub replace: bool,
    /// `Some(priority)`: run in libxdp's dispatcher (`--xdp-dispatcher`).
    pub xdp_dispatcher: Option<u32>,
    /// The stats socket: `None` when off; whether the path was chosen.
    pub stats_socket: Option<(PathBuf, bool)>,
    /// The group that may read it.
    pub stats_gid: Option<u32>,
    pub metrics_addr: MetricsAddr,
    /// Folder and interval.
    pub snapshots: Option<(PathBuf, Duration)>,
    pub pseudonymizer: Option<Pseudonymizer>,
    /// Learning from DNS answers (`None` with `--no-learn`).
    pub learner: Option<crate::learn::Learner>,
    /// Where the feeds came from: a reload reads them again.
    pub feed_args: FeedArgs,
    /// IPFIX collectors, export interval and observation domain.
    pub ipfix: Option<(Vec<crate::ipfix::Target>, Duration, u32)>,
    /// Evidence captures.
    pub capture: Option<crate::evidence::CaptureSettings>,
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
        let pseudonymizer = match &args.pseudonymize_key {
            Some(path) => Some(Pseudonymizer::from_file(path)?),
            None => None,
        };
        let pseudonymizer_set = pseudonymizer.is_some();
        let watched = WatchedSet::from_arguments(&args.feeds.watch, &args.feeds.watch_files)?;
        let endpoints = EndpointFeed::from_arguments(&args.feeds.endpoint_files)?;
        if pseudonymizer_set {
            crate::feeds::refuse_watched_endpoints(&watched, &endpoints)?;
        }
        let learner = crate::learn::Learner::from_args(&args.learn)?;
        if let Some(dir) = &args.snapshot_dir {
            // A folder that cannot be made is refused before loading (and
            // only once the feeds were accepted).
            crate::snapshot::create_folder(dir).map_err(RunError::Snapshot)?;
        }
        let stats_socket = match &args.stats_socket {
            Some(StatsSocket::Off) => None,
            Some(StatsSocket::At(path)) => Some((path.clone(), true)),
            None => Some((
                crate::live::default_socket(&pins::interface_set_dir(&args.pin_path, &ifaces)),
                false,
            )),
        };
        Ok(Self {
            ifaces,
            mode: args.xdp_mode,
            watched,
            endpoints,
            interval: args.interval,
            format: args.report_format,
            capacities: Capacities {
                endpoints_v4: args.endpoint_capacity_v4,
                endpoints_v6: args.endpoint_capacity_v6,
                flows: args.flow_capacity,
                flow_cache_slots: args.flow_cache_slots,
                learn_rate: args.learn.hand_over_rate(),
            },
            pin_path: args.pin_path.clone(),
            keep_attached: args.keep_attached,
            replace: args.replace,
            xdp_dispatcher: args.xdp_dispatcher.then_some(args.xdp_priority),
            stats_socket,
            stats_gid: args
                .stats_group
                .as_deref()
                .map(crate::live::group_id)
                .transpose()?,
            metrics_addr: args.metrics_addr,
            snapshots: args
                .snapshot_dir
                .clone()
                .map(|dir| (dir, args.snapshot_interval)),
            pseudonymizer,
            learner,
            feed_args: args.feeds.clone(),
            capture: capture_settings(args, pseudonymizer_set)?,
            ipfix: (!args.ipfix.is_empty()).then(|| {
                let domain = args
                    .observation_domain
                    .unwrap_or_else(|| crate::ipfix::observation_domain_of(&sensor_name()));
                (args.ipfix.clone(), args.ipfix_interval, domain)
            }),
        })
    }
}

/// `--capture-*`, refused with `--pseudonymize-key` unless raw addresses
/// are allowed.
fn capture_settings(
    args: &RunArgs,
    pseudonymized: bool,
) -> Result<Option<crate::evidence::CaptureSettings>, RunError> {
    let capture = &args.capture;
    let Some(dir) = &capture.capture_dir else {
        return Ok(None);
    };
    if pseudonymized && !capture.capture_raw_addresses {
        return Err(crate::evidence::EvidenceError::Pseudonymized.into());
    }
    Ok(Some(crate::evidence::CaptureSettings {
        dir: dir.clone(),
        bytes: capture.capture_bytes,
        rate: capture.capture_rate,
        per_flow: capture.capture_per_flow,
        rotate_after: args
            .snapshot_dir
            .is_none()
            .then_some(crate::evidence::ROTATION_WITHOUT_SNAPSHOTS),
    }))
}

/// The name `--sensor-name` gave, set once at the start of `run` or `pcap`.
static SENSOR_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's sensor (`--sensor-name`); without a name, the
/// host name stays.
pub fn set_sensor_name(name: Option<&str>) {
    if let Some(name) = name {
        let _ = SENSOR_NAME.set(name.to_string());
    }
}

/// The sensor's name in reports and snapshots: `--sensor-name`, else the
/// host name.
pub fn sensor_name() -> String {
    if let Some(name) = SENSOR_NAME.get() {
        return name.clone();
    }
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
    set_sensor_name(args.sensor_name.as_deref());
    let config = RunConfig::from_args(args)?;
    let format = config.format;
    let report = run_config(config)?;
    crate::report::write_stdout(&report.render(format))?;
    Ok(())
}

/// Returns freed heap memory to the system (glibc keeps it otherwise), so
/// the daemon's resident size reflects what it holds.
fn release_free_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// An adopted program keeps the flow table and cache it was loaded with:
/// says so when this run asked for other sizes.
fn warn_about_kept_sizes(meta: &SensorMeta, asked: Capacities) {
    let cpus = aya::util::nr_cpus().map_or(1, |cpus| cpus as u64).max(1);
    let asked_slots = u64::from(asked.flow_cache_slots.next_power_of_two()) * cpus;
    if meta.flow_capacity != u64::from(asked.flows) || meta.flow_cache_slots != asked_slots {
        log::warn!(
            "the adopted program keeps its flow table of {} flows and {} cache slots per CPU; \
             this run's --flow-capacity {} and --flow-cache-slots {} apply once it is detached \
             (stop this daemon without --keep-attached, then run again)",
            meta.flow_capacity,
            meta.flow_cache_slots / cpus,
            asked.flows,
            asked.flow_cache_slots,
        );
    }
}

/// With --no-learn, an adopted program still counts the endpoints a
/// previous daemon learned into it (nothing expires them now): says so.
fn warn_about_kept_learning(sensor: &PinnedSensor) {
    if !sensor.adopted {
        return;
    }
    match crate::learn::LearnMaps::from_pins(&sensor.dir) {
        Ok(maps) if maps.learned_len() > 0 => log::warn!(
            "--no-learn: the adopted program holds {} learned endpoint(s) and counts them until it is detached",
            maps.learned_len()
        ),
        Ok(_) => {}
        Err(error) => log::debug!("cannot read the adopted program's learned endpoints: {error}"),
    }
}

/// The program this daemon counts with: adopted from pins a previous
/// daemon left, or loaded, attached and pinned now.
fn adopt_or_load(config: &mut RunConfig) -> Result<(PinnedSensor, std::fs::File), RunError> {
    let dir = pins::interface_set_dir(&config.pin_path, &config.ifaces);
    pins::prepare_bpf_fs(&dir)?;
    let lock = pins::lock_set(&dir)?;
    if let Some(sensor) = PinnedSensor::adopt(&dir, &config.ifaces)? {
        let meta = &sensor.meta;
        log::info!(
            "adopting the program attached to {} since {} (instance {}): {}",
            meta.interfaces.join(","),
            crate::report::rfc3339(unix_ns_to_time(meta.attached_at_unix_ns)),
            meta.instance,
            if sensor.reattached.is_empty() {
                "no reload, no gap".to_string()
            } else {
                format!(
                    "no reload; attached again to {} (see above)",
                    sensor.reattached.join(",")
                )
            }
        );
        let theirs: Vec<&str> = meta.feeds.iter().map(|f| f.sha256.as_str()).collect();
        let ours: Vec<&str> = config
            .endpoints
            .origins
            .iter()
            .map(|f| f.sha256.as_str())
            .collect();
        let watched: Vec<String> = config.watched.all().map(|net| net.to_string()).collect();
        if theirs != ours || watched != meta.watched {
            log::warn!(
                "the adopted program counts with the feeds it was loaded with ({}); the feeds given now differ: SIGHUP (or `classifier reload`) swaps them in",
                meta.feeds
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        warn_about_kept_sizes(meta, config.capacities);
        return Ok((sensor, lock));
    }

    let (sensor, modes) = match load_and_attach(config, &dir) {
        Ok(loaded) => loaded,
        Err(error) => {
            // The loader pinned the counter maps; a refused program (the
            // verifier's log is in the error) or a failed attach leaves no
            // pin and no attachment behind.
            if let Err(cleanup) = pins::remove_pins(&dir) {
                log::error!("cannot clean up after a failed start: {cleanup}");
            }
            return Err(error);
        }
    };
    let attached_at_unix_ns = snapshot::now_unix_ns();
    let loaded_at = crate::report::rfc3339(unix_ns_to_time(attached_at_unix_ns));
    let mut feeds = config.endpoints.origins.clone();
    for feed in &mut feeds {
        feed.loaded_at = Some(loaded_at.clone());
    }
    let meta = SensorMeta {
        schema: "classifier.pins.v1".into(),
        instance: pins::new_instance_id(),
        version: env!("CARGO_PKG_VERSION").into(),
        layout: pins::layout(),
        attached_at_unix_ns,
        interfaces: config.ifaces.clone(),
        modes,
        services: sensor.services.names().to_vec(),
        feeds,
        watched: config.watched.all().map(|net| net.to_string()).collect(),
        endpoint_prefixes_v4: config.endpoints.count(true) as u64,
        endpoint_prefixes_v6: config.endpoints.count(false) as u64,
        flow_capacity: u64::from(config.capacities.flows),
        flow_cache_slots: u64::from(sensor.flow_cache_slots)
            * aya::util::nr_cpus().map_or(1, |cpus| cpus as u64),
        reloads: 0,
        reload_failures: 0,
        last_reload_error: None,
        feeds_loaded_at_unix_ns: attached_at_unix_ns,
        dispatcher_priority: config.xdp_dispatcher,
        sensor: Some(sensor_name()),
    };
    let program_id = sensor
        .any_program()
        .ok()
        .and_then(|program| program.info().ok())
        .map(|info| info.id());
    match PinnedSensor::pin(sensor, &dir, meta) {
        Ok(pinned) => {
            log::info!("pinned under {}", dir.display());
            Ok((pinned, lock))
        }
        Err(error) => {
            // The dispatchers' pins hold our program: out of them too.
            if config.xdp_dispatcher.is_some()
                && let Some(id) = program_id
            {
                crate::dispatcher::leave_all(&config.ifaces, id);
            }
            // The loader's handles are gone: removing what was pinned detaches.
            if dir.exists()
                && let Err(cleanup) = pins::remove_pins(&dir)
            {
                log::error!("cannot clean up after a failed pin: {cleanup}");
            }
            Err(error.into())
        }
    }
}

/// Loads the program with its counters pinned under `dir/maps` and attaches
/// it to every interface; returns the attach modes.
fn load_and_attach(config: &RunConfig, dir: &Path) -> Result<(Sensor, Vec<String>), RunError> {
    for iface in &config.ifaces {
        if config.xdp_dispatcher.is_some() {
            crate::dispatcher::check_joinable(iface)?;
        } else {
            clear_interface(iface, config.replace)?;
        }
    }
    let maps_dir = dir.join("maps");
    std::fs::create_dir_all(&maps_dir).map_err(|error| {
        RunError::Pin(PinError::Path {
            path: maps_dir.clone(),
            problem: error.to_string(),
        })
    })?;
    let mut services = ServiceTable::new(config.endpoints.services());
    if let Some(learner) = &config.learner {
        // Services only the domain feed names need ids too.
        services = services.extended_with(learner.domains.services());
    }
    let extension_of = config
        .xdp_dispatcher
        .map(|_| crate::dispatcher::extension_target())
        .transpose()?;
    let as_extension = extension_of.is_some();
    let mut sensor = Sensor::load_pinned(
        &config.watched,
        &config.endpoints,
        config.capacities,
        services,
        Pinned {
            maps_dir: &maps_dir,
            extension_of,
        },
    )
    .map_err(|error| match error {
        LoadError::Program(aya::programs::ProgramError::LoadError { io_error, .. })
            if as_extension && io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            crate::dispatcher::DispatcherError::ExtensionsRefused(io_error).into()
        }
        error => RunError::from(error),
    })?;
    let mut modes = Vec::new();
    let Some(priority) = config.xdp_dispatcher else {
        for iface in &config.ifaces {
            let mode = sensor.attach(iface, config.mode)?;
            log::info!("attached to {iface} in {mode} mode");
            modes.push(mode.to_string());
        }
        return Ok((sensor, modes));
    };
    let program = sensor.any_program()?;
    for (joined, iface) in config.ifaces.iter().enumerate() {
        match crate::dispatcher::join(iface, program, priority, config.mode) {
            Ok(mode) => {
                log::info!(
                    "joined libxdp's dispatcher on {iface} at run priority {priority} ({mode} mode)"
                );
                modes.push(mode.to_string());
            }
            Err(error) => {
                // Out of the dispatchers joined so far: all or nothing.
                if let Ok(info) = program.info() {
                    crate::dispatcher::leave_all(&config.ifaces[..joined], info.id());
                }
                return Err(error.into());
            }
        }
    }
    Ok((sensor, modes))
}

/// Refuses an interface where another XDP program is attached, naming it,
/// or with `replace` removes it.
fn clear_interface(iface: &str, replace: bool) -> Result<(), RunError> {
    let if_index = interface_index(iface).ok_or_else(|| RunError::NoInterface(iface.into()))?;
    let failed = |action| {
        move |source| RunError::InterfaceXdp {
            iface: iface.to_string(),
            action,
            source,
        }
    };
    for program in crate::interface_xdp::attached_programs(if_index).map_err(failed("list"))? {
        if !replace {
            return Err(RunError::Occupied {
                iface: iface.to_string(),
                program,
            });
        }
        log::warn!("{iface}: --replace: removing {program}");
        crate::interface_xdp::remove(if_index, &program).map_err(failed("remove"))?;
    }
    Ok(())
}

fn metrics_state(sensor: &PinnedSensor, ledger: &Ledger) -> MetricsState {
    let meta = &sensor.meta;
    let services = meta
        .services
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let counters = ledger
                .kernel_services
                .get(index + 1)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed);
            (name.clone(), counters)
        })
        .collect();
    MetricsState {
        totals: (ledger.drains > 0).then_some(ledger.kernel_totals),
        services,
        flow_evictions: ledger.kernel_evictions,
        flow_entries: ledger.live_flows as u64,
        flow_capacity: meta.flow_capacity + meta.flow_cache_slots,
        drains: ledger.drains,
        feed_prefixes: vec![
            (
                "ipv4",
                "watched",
                meta.watched.iter().filter(|w| !w.contains(':')).count() as u64,
            ),
            (
                "ipv6",
                "watched",
                meta.watched.iter().filter(|w| w.contains(':')).count() as u64,
            ),
            ("ipv4", "endpoints", meta.endpoint_prefixes_v4),
            ("ipv6", "endpoints", meta.endpoint_prefixes_v6),
        ],
        feed_reloads: meta.reloads,
        feed_reload_failures: meta.reload_failures,
        feeds_loaded_unix_seconds: meta.feeds_loaded_at_unix_ns as f64 / 1e9,
        program_attached_unix_seconds: meta.attached_at_unix_ns as f64 / 1e9,
        adopted: sensor.adopted,
        ..MetricsState::default()
    }
}

/// The daemon's drain loop state.
struct Daemon {
    notifier: Notifier,
    sensor: PinnedSensor,
    ledger: Ledger,
    snapshots: Option<Snapshotter>,
    metrics: Arc<Mutex<MetricsState>>,
    drain_failures: u64,
    learning: Option<(crate::learn::Learner, crate::learn::LearnMaps)>,
    exporter: Option<crate::ipfix::Exporter>,
    evidence: Option<crate::evidence::Evidence>,
    /// Feeds a reload replaced during this run: the exit report lists them
    /// before those in force, as they named endpoints in part of it.
    replaced_feeds: Vec<crate::feeds::FeedOrigin>,
    /// Turns the program's tick stamps into Unix time.
    ticks: crate::flow_clock::Ticks,
    /// Reads the tick each drain starts at.
    tick_counter: crate::flow_clock::TickCounter,
    /// The tick the last drain that worked started at.
    last_drain_tick: Option<u64>,
    /// How long the last drain took (the metric until the next drain).
    last_drain_time: Duration,
}

impl Daemon {
    /// Reads what the program handed over and applies what it teaches.
    fn learn(&mut self) {
        if let Some((learner, maps)) = &mut self.learning {
            maps.pump(
                learner,
                &self.sensor.meta.service_table(),
                snapshot::now_unix_ns(),
            );
        }
    }

    /// Drains once; a failure is logged and counted (the next drain
    /// catches up: kernel counters are cumulative).
    fn drain(&mut self) -> Result<(), DrainError> {
        let started = std::time::Instant::now();
        let services = self.sensor.meta.services.len();
        self.learn();
        // Read before the drain: once the drain is folded in whole, the
        // program may recycle flow-cache slots idle since before it.
        let drain_started_tick = self.tick_counter.now();
        let result = drain::drain_into(
            &self.sensor.counters,
            services,
            &mut self.ledger,
            self.ticks.flow_clock(),
        )
        .map(|()| {
            match drain_started_tick {
                Ok(tick) => {
                    self.last_drain_tick = Some(tick);
                    // Nothing resumes from this ledger: what it drained is
                    // final. With snapshots, only once a checkpoint that
                    // holds it is on disk (`write_snapshots`).
                    if self.snapshots.is_none() {
                        self.allow_recycling(tick);
                    }
                }
                Err(error) => log::warn!("no flow-cache slot recycled after this drain: {error}"),
            }
            release_free_memory();
            // Only a drain that worked feeds the watchdog.
            self.notifier.drained();
        });
        if let Err(error) = &result {
            self.drain_failures += 1;
            log::error!("drain failed (will retry): {error}");
        }
        self.last_drain_time = started.elapsed();
        self.publish();
        result
    }

    /// Writes the captured packets waiting in the ring buffer.
    fn capture(&mut self) {
        if let Some(evidence) = &mut self.evidence {
            evidence.pump(
                &self.sensor.meta.service_table(),
                drain::monotonic_to_unix_ns(),
            );
        }
    }

    /// Exports what the flows gained since the last export (IPFIX).
    fn export(&mut self, pseudonymizer: Option<&Pseudonymizer>) {
        if let Some(exporter) = &mut self.exporter {
            let now = u32::try_from(snapshot::now_unix_ns() / 1_000_000_000).unwrap_or(u32::MAX);
            exporter.export(
                &self.ledger,
                &self.sensor.meta.service_table(),
                pseudonymizer,
                now,
            );
            if let Ok(mut shared) = self.metrics.lock() {
                shared.ipfix = Some(exporter.stats());
            }
        }
    }

    fn publish(&self) {
        let mut state = metrics_state(&self.sensor, &self.ledger);
        state.drain_failures = self.drain_failures;
        state.learning = self
            .learning
            .as_ref()
            .map(|(learner, _)| (learner.stats, learner.len() as u64));
        state.last_drain_seconds = self.last_drain_time.as_secs_f64();
        state.ipfix = self.exporter.as_ref().map(crate::ipfix::Exporter::stats);
        if let Some(snapshots) = &self.snapshots {
            state.snapshot_writes = snapshots.writes;
            state.snapshot_write_failures = snapshots.write_failures;
            state.last_snapshot_unix_seconds = snapshots.last_write_unix_seconds;
            state.snapshots_pending = snapshots.pending() as u64;
        }
        if let Ok(mut shared) = self.metrics.lock() {
            *shared = state;
        }
    }

    /// Re-reads the feeds and swaps them in (SIGHUP). A bad feed or a
    /// program the kernel refuses leaves the old one serving; either way
    /// the outcome is recorded in the pinned description and the metrics.
    fn reload(&mut self, config: &RunConfig) {
        self.notifier.reloading();
        let result = self.swap_in_feeds(
            &config.feed_args,
            config.capacities,
            config.pseudonymizer.is_some(),
        );
        self.notifier.ready("counting (feeds reloaded or kept)");
        let mut meta = self.sensor.meta.clone();
        match result {
            Ok(()) => return self.publish(),
            Err(error) => {
                let reason = error_chain(&error);
                log::error!("feed reload refused; the old feeds keep serving: {reason}");
                meta.reload_failures += 1;
                meta.last_reload_error = Some(reason);
            }
        }
        if let Err(error) = self.sensor.update_meta(meta) {
            log::error!("cannot record the failed reload: {error}");
        }
        self.publish();
    }

    fn swap_in_feeds(
        &mut self,
        feed_args: &FeedArgs,
        capacities: Capacities,
        pseudonymizing: bool,
    ) -> Result<(), RunError> {
        let watched = WatchedSet::from_arguments(&feed_args.watch, &feed_args.watch_files)?;
        let endpoints = EndpointFeed::from_arguments(&feed_args.endpoint_files)?;
        if pseudonymizing {
            crate::feeds::refuse_watched_endpoints(&watched, &endpoints)?;
        }
        let old = &self.sensor.meta;
        let services = old.service_table().extended_with(endpoints.services());
        let cpus = aya::util::nr_cpus().map_or(1, |cpus| cpus as u64).max(1);
        let capacities = Capacities {
            // The counters are reused: their sizes stay.
            flows: u32::try_from(old.flow_capacity).unwrap_or(capacities.flows),
            flow_cache_slots: u32::try_from(old.flow_cache_slots / cpus)
                .unwrap_or(capacities.flow_cache_slots),
            ..capacities
        };
        let extension_of = old
            .dispatcher_priority
            .map(|_| crate::dispatcher::extension_target())
            .transpose()?;
        let sensor = Sensor::load_pinned(
            &watched,
            &endpoints,
            capacities,
            services.clone(),
            Pinned {
                maps_dir: &self.sensor.dir.join("maps"),
                extension_of,
            },
        )?;
        let now = snapshot::now_unix_ns();
        let loaded_at = crate::report::rfc3339(unix_ns_to_time(now));
        let mut feeds = endpoints.origins.clone();
        for feed in &mut feeds {
            feed.loaded_at = Some(loaded_at.clone());
        }
        let meta = SensorMeta {
            services: services.names().to_vec(),
            feeds,
            watched: watched.all().map(|net| net.to_string()).collect(),
            endpoint_prefixes_v4: endpoints.count(true) as u64,
            endpoint_prefixes_v6: endpoints.count(false) as u64,
            reloads: old.reloads + 1,
            last_reload_error: None,
            feeds_loaded_at_unix_ns: now,
            ..old.clone()
        };
        // A flow the new feed gives another service keeps, in its flow
        // rows, what it counted for the old one up to this drain (what
        // comes between it and the swap counts for the new one there).
        if let Err(error) = self.drain() {
            log::warn!("drain before the reload's swap failed: {error}");
        }
        let old_feeds = self.sensor.meta.feeds.clone();
        self.sensor.swap_program(sensor, meta)?;
        crate::feeds::FeedOrigin::note_replaced(
            &mut self.replaced_feeds,
            old_feeds,
            &self.sensor.meta.feeds,
        );
        if let Some((learner, maps)) = &mut self.learning {
            maps.watch(learner, &watched, &self.sensor.meta.service_table());
        }
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.update_source(&self.sensor.meta);
        }
        let meta = &self.sensor.meta;
        log::info!(
            "feeds reloaded: {} IPv4 and {} IPv6 endpoint prefixes of {} services, {} watched prefixes; the program was swapped on every interface",
            meta.endpoint_prefixes_v4,
            meta.endpoint_prefixes_v6,
            endpoints.services().len(),
            meta.watched.len()
        );
        Ok(())
    }

    /// Lets the program recycle flow-cache slots idle since before `tick`
    /// (see `CounterMaps::allow_recycling`).
    fn allow_recycling(&mut self, tick: u64) {
        if let Err(error) = self.sensor.counters.allow_recycling(tick) {
            log::warn!("no flow-cache slot recycled after this drain: {error}");
        }
    }

    /// Writes the snapshots cut and not yet written, then lets the program
    /// recycle what the checkpoints written hold.
    fn write_snapshots(&mut self, attempt: WriteAttempt) {
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.write_pending(attempt);
            if let Some(tick) = snapshots.take_persisted_recycle_tick() {
                self.allow_recycling(tick);
            }
        }
    }

    /// Cuts a snapshot ending at `end_unix_ns` and writes it (`attempt`:
    /// `Now`, or `Last` at exit).
    fn cut_snapshot(&mut self, end_unix_ns: i64, attempt: WriteAttempt) {
        let captured = self.ledger.totals_since_mark().capture_records;
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.cut_with_learning(
                &mut self.ledger,
                end_unix_ns,
                self.last_drain_tick,
                self.learning.as_ref().map(|(learner, _)| learner),
            );
            self.write_snapshots(attempt);
        }
        // Capture files follow the snapshots' intervals: each holds the
        // packets its snapshot counts.
        if let Some(evidence) = &mut self.evidence {
            evidence.close_after(captured);
        }
        self.capture();
        self.publish();
    }
}

/// Loads (or adopts), attaches, counts until a signal, and returns the
/// final report: the counts since this daemon's start point (the program's
/// attachment, or the last snapshot a previous daemon wrote).
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
        let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
        let listener = match config.metrics_addr {
            MetricsAddr::Off => None,
            MetricsAddr::On(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| RunError::Metrics { addr, source })?,
            ),
        };

        let stats_socket = match &config.stats_socket {
            None => None,
            Some((path, chosen)) => match crate::live::bind(path, config.stats_gid) {
                Ok(socket) => Some(socket),
                Err(error) if *chosen => return Err(error.into()),
                // The default place may not be ours to write (no /run
                // access): counting matters more; root still reads pins.
                Err(error) => {
                    log::warn!(
                        "{error}: live counters for users without BPF privileges are off (choose --stats-socket PATH, or off)"
                    );
                    None
                }
            },
        };

        // The lock is held until the daemon ends (dropped with `_lock`).
        let (sensor, _lock) = adopt_or_load(&mut config)?;
        // The kernel holds the feed now; only its origins go in the report.
        // Give the memory back (a feed of a million prefixes is ~100 MB).
        config.endpoints.endpoints = Vec::new();
        release_free_memory();

        let (ledger, snapshots, start_unix_ns) = match &config.snapshots {
            Some((dir, interval)) => {
                let resumed = Snapshotter::resume(
                    dir,
                    *interval,
                    &sensor.meta,
                    sensor.adopted,
                    sensor_name(),
                    config.pseudonymizer.clone(),
                );
                let mut resumed = match resumed {
                    Ok(resumed) => resumed,
                    Err(error) => {
                        abandon(sensor, &config);
                        return Err(error.into());
                    }
                };
                if !sensor.reattached.is_empty() {
                    resumed.snapshotter.note_missed_packets();
                }
                (
                    resumed.ledger,
                    Some(resumed.snapshotter),
                    resumed.start_unix_ns,
                )
            }
            // Counting starts at the attachment (now, for a program just
            // loaded): the ledger drains everything the kernel has.
            None => (Ledger::default(), None, sensor.meta.attached_at_unix_ns),
        };
        let clocks = crate::flow_clock::Ticks::calibrated()
            .and_then(|ticks| Ok((ticks, crate::flow_clock::TickCounter::load()?)));
        let (ticks, tick_counter) = match clocks {
            Ok(clocks) => clocks,
            Err(error) => {
                abandon(sensor, &config);
                return Err(error.into());
            }
        };
        let metrics = Arc::new(Mutex::new(MetricsState::default()));
        let learning = match config.learner.take() {
            Some(mut learner) => match crate::learn::LearnMaps::from_pins(&sensor.dir).and_then(
                |mut maps| {
                    // What the program counts with (the watched set given,
                    // or for an adopted program the one it was loaded with
                    // until a reload).
                    let counted = WatchedSet::from_prefixes(
                        sensor
                            .meta
                            .watched
                            .iter()
                            .filter_map(|prefix| prefix.parse().ok()),
                    );
                    let _ = learner.set_watched(&counted);
                    let inherited = maps.inherit(
                        &mut learner,
                        &sensor.meta.service_table(),
                        snapshot::now_unix_ns(),
                    )?;
                    if inherited > 0 {
                        log::info!(
                            "took over {inherited} learned endpoint(s) from the adopted program: kept {} at most",
                            humantime::format_duration(learner.ttl)
                        );
                    }
                    Ok(maps)
                },
            ) {
                Ok(maps) => Some((learner, maps)),
                Err(error) => {
                    abandon(sensor, &config);
                    return Err(error.into());
                }
            },
            None => {
                warn_about_kept_learning(&sensor);
                None
            }
        };
        // An adopted program may still capture for the daemon before; this
        // one sets its own configuration (none: capture nothing).
        let evidence = match &config.capture {
            Some(settings) => match crate::evidence::Evidence::start(&sensor.dir, settings) {
                Ok(evidence) => {
                    log::info!(
                        "evidence capture: the first {} bytes of the first {} packets of each matched flow, at most {} a second, into {}",
                        settings.bytes,
                        settings.per_flow,
                        settings.rate,
                        settings.dir.display()
                    );
                    Some(evidence)
                }
                Err(error) => {
                    abandon(sensor, &config);
                    return Err(error.into());
                }
            },
            None => {
                if let Err(error) = crate::evidence::configure(&sensor.dir, None) {
                    log::warn!("cannot turn evidence capture off: {error}");
                }
                None
            }
        };
        // Capabilities are per thread: dropped before any thread starts (the
        // IPFIX senders), so none keeps them.
        let also: &[(u32, &str)] = if config.xdp_dispatcher.is_some() {
            &[privileges::DISPATCHER_KEPT]
        } else {
            &[]
        };
        match privileges::drop_all_but_kept(also) {
            Ok(left) => log::info!(
                "dropped every capability but {} (what a feed reload needs)",
                match privileges::kept_names(left.effective) {
                    names if names.is_empty() => "none".to_string(),
                    names => names.join(", "),
                }
            ),
            Err(error) => log::warn!("cannot drop capabilities: {error}"),
        }
        if let Err(error) = check_folders_writable(&config) {
            abandon(sensor, &config);
            return Err(error);
        }
        let exporter = match &config.ipfix {
            Some((targets, interval, domain)) => match crate::ipfix::Exporter::new(targets, *domain) {
                Ok(exporter) => {
                    log::info!(
                        "IPFIX: exporting every {} to {} (observation domain {domain})",
                        humantime::format_duration(*interval),
                        targets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    Some(exporter)
                }
                Err(error) => {
                    abandon(sensor, &config);
                    return Err(RunError::IpfixThread(error));
                }
            },
            None => None,
        };
        let mut daemon = Daemon {
            notifier: Notifier::from_env(),
            ticks,
            tick_counter,
            last_drain_tick: None,
            evidence,
            sensor,
            ledger,
            snapshots,
            metrics: metrics.clone(),
            drain_failures: 0,
            last_drain_time: Duration::ZERO,
            learning,
            exporter,
            replaced_feeds: Vec::new(),
        };
        daemon.publish();
        if daemon.sensor.adopted && daemon.exporter.is_some() {
            // The daemon before exported what the program counted up to its
            // stop: IPFIX deltas start from what the program holds now.
            if let Err(error) = daemon.drain() {
                log::warn!("IPFIX: cannot read the adopted program's flows: {error}");
            }
            if let Some(exporter) = &mut daemon.exporter {
                exporter.take_as_exported(&daemon.ledger);
            }
        }
        if let Some(socket) = stats_socket {
            log::info!(
                "serving live counters at {}{}",
                socket.path.display(),
                config
                    .stats_gid
                    .map_or(" (owner only)".to_string(), |gid| format!(
                        " to group {gid}"
                    ))
            );
            let pin_dir = daemon.sensor.dir.clone();
            let key = config.pseudonymizer.clone();
            tokio::spawn(async move { crate::live::serve(&socket, pin_dir, key).await });
        }
        if let Some(listener) = listener {
            if let Ok(addr) = listener.local_addr() {
                log::info!("serving metrics at http://{addr}/metrics");
            }
            tokio::spawn(async move {
                if let Err(error) =
                    metrics::serve(listener, metrics, env!("CARGO_PKG_VERSION")).await
                {
                    log::error!("metrics server stopped: {error}");
                }
            });
        }
        log::info!("counting; SIGINT or SIGTERM stops and prints the report");
        daemon.notifier.ready(&format!(
            "counting on {}",
            daemon.sensor.meta.interfaces.join(",")
        ));

        // The ring buffers poll readable when the program hands over a record.
        let learn_fd = daemon.learning.as_ref().and_then(|(_, maps)| {
            poll_ring(maps.ring_fd(), "learning reads at drains only")
        });
        let capture_fd = daemon.evidence.as_ref().and_then(|evidence| {
            poll_ring(evidence.ring_fd(), "evidence capture writes at drains only")
        });
        let mut export_ticker =
            tokio::time::interval(config.ipfix.as_ref().map_or(Duration::from_secs(3600), |i| i.1));
        export_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: nothing to export yet.
        export_ticker.reset();
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Boundaries on the wall clock, elapsed time (and so a stepped wall
        // clock) on the monotonic one: see `BoundarySchedule`.
        use snapshot::{Clock as _, CutReason, Next};
        let clock = snapshot::SystemClock;
        let mut schedule = daemon.snapshots.as_ref().map(|s| s.schedule(clock.read()));
        loop {
            let mut until_boundary = Duration::from_secs(3600);
            if let Some(schedule) = &mut schedule {
                match schedule.poll(clock.read()) {
                    Next::Wait(wait) => until_boundary = wait,
                    Next::Cut(cut) => {
                        let _ = daemon.drain();
                        if let (CutReason::ClockStep(step), Some(snapshots)) =
                            (cut.reason, &mut daemon.snapshots)
                        {
                            snapshots.note_clock_step(step);
                        }
                        daemon.cut_snapshot(cut.end_unix_ns, WriteAttempt::Now);
                        continue;
                    }
                }
            }
            let learn_ready = async {
                match &learn_fd {
                    Some(fd) => fd.readable().await.map(|mut guard| guard.clear_ready()),
                    None => std::future::pending().await,
                }
            };
            let capture_ready = async {
                match &capture_fd {
                    Some(fd) => fd.readable().await.map(|mut guard| guard.clear_ready()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = capture_ready => daemon.capture(),
                // Records to learn from: read at once, so a flow's verdict
                // applies to its next packets rather than after a drain.
                _ = learn_ready => daemon.learn(),
                _ = ticker.tick() => {
                    let _ = daemon.drain();
                    daemon.capture();
                    daemon.write_snapshots(WriteAttempt::WhenDue);
                }
                _ = export_ticker.tick(), if daemon.exporter.is_some() => {
                    let _ = daemon.drain();
                    daemon.export(config.pseudonymizer.as_ref());
                }
                // The next pass reads the clocks and cuts.
                _ = tokio::time::sleep(until_boundary), if schedule.is_some() => {}
                _ = hangup.recv() => {
                    log::info!("SIGHUP: reloading the feeds");
                    // Counts up to now were drained with the old feeds'
                    // service names; the swap keeps every id.
                    let _ = daemon.drain();
                    daemon.reload(&config);
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        finish(daemon, &config, start_unix_ns)
    })
}

/// A ring buffer's descriptor registered with the runtime, so the loop
/// wakes when records wait; `None` when it cannot be (logged: `fallback`
/// says what happens instead).
fn poll_ring(
    fd: std::io::Result<std::os::fd::OwnedFd>,
    fallback: &str,
) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let registered = fd.and_then(|fd| {
        // SAFETY: an OwnedFd, owned by the AsyncFd for its whole life,
        // always returns the same open descriptor.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|error| std::io::Error::other(error.to_string()))
    });
    match registered {
        Ok(fd) => Some(fd),
        Err(error) => {
            log::warn!("{fallback}: cannot poll its ring buffer: {error}");
            None
        }
    }
}

/// Refuses a snapshot or capture folder this process can no longer write
/// into, now that its capabilities are dropped: every snapshot and capture
/// would fail until the operator read the log.
fn check_folders_writable(config: &RunConfig) -> Result<(), RunError> {
    if let Some((dir, _)) = &config.snapshots {
        crate::snapshot::check_writable(dir).map_err(|source| SnapshotError::new(dir, source))?;
    }
    if let Some(settings) = &config.capture {
        crate::snapshot::check_writable(&settings.dir).map_err(|source| {
            crate::evidence::EvidenceError::Dir {
                dir: settings.dir.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Gives up before counting: a program this daemon loaded is detached and
/// its pins removed (unless `--keep-attached`); an adopted one is left as
/// it was found.
fn abandon(mut sensor: PinnedSensor, config: &RunConfig) {
    if sensor.adopted || config.keep_attached {
        return;
    }
    sensor.detach();
    if let Err(error) = sensor.remove_pins() {
        log::error!("cannot remove the pins: {error}");
    }
}

/// Stops counting: detaches (unless kept attached), drains a last time,
/// writes the partial snapshot, removes the pins, builds the report.
fn finish(mut daemon: Daemon, config: &RunConfig, start_unix_ns: i64) -> Result<Report, RunError> {
    daemon.notifier.stopping();
    // Pins removed by hand keep nothing attached: the program goes with
    // this daemon's descriptors.
    let pins_gone = !pins::is_pinned(&daemon.sensor.dir);
    let keep_attached = config.keep_attached && !pins_gone;
    if config.keep_attached && pins_gone {
        log::warn!(
            "--keep-attached, but the pins under {} are gone (removed by hand?): nothing keeps the program attached, so it detaches when this daemon exits; final drain",
            daemon.sensor.dir.display()
        );
    } else if keep_attached {
        log::info!(
            "leaving the program attached and pinned under {} (the next run adopts it); final drain",
            daemon.sensor.dir.display()
        );
    } else {
        daemon.sensor.detach();
        // Runs that started before the detach may still be counting on
        // other CPUs; they finish within microseconds.
        std::thread::sleep(Duration::from_millis(20));
        log::info!("detached; final drain");
    }
    // A failed final drain is logged (by `drain`); the last snapshot and
    // the report then hold the counts up to the last good drain.
    let _ = daemon.drain();
    // The last deltas go to the collectors before exit (waiting a while
    // for them to be sent), the last captured packets to their file.
    daemon.export(config.pseudonymizer.as_ref());
    daemon.capture();
    if daemon.evidence.is_some()
        && keep_attached
        && let Err(error) = crate::evidence::configure(&daemon.sensor.dir, None)
    {
        log::warn!("cannot turn evidence capture off: {error}");
    }
    // A wall clock stepped back past the start never ends the report
    // before it began (the last snapshot clamps the same way).
    let end_unix_ns = snapshot::now_unix_ns().max(start_unix_ns);
    daemon.cut_snapshot(end_unix_ns, WriteAttempt::Last);
    if let Some(evidence) = &mut daemon.evidence {
        evidence.finish();
    }
    let unwritten = daemon.snapshots.as_ref().map_or(0, Snapshotter::pending);
    // Waited for last: the report and the last snapshot end when counting
    // did, not after the wait.
    if let Some(exporter) = daemon.exporter.take() {
        exporter.finish(crate::ipfix::FINAL_SEND_WAIT);
    }
    if !config.keep_attached
        && let Err(error) = daemon.sensor.remove_pins()
    {
        log::error!("cannot remove the pins: {error}");
    }
    let meta = &daemon.sensor.meta;
    let mut report = Report::build(
        &daemon.ledger,
        &meta.service_table(),
        ReportContext {
            start: unix_ns_to_time(start_unix_ns),
            end: unix_ns_to_time(end_unix_ns),
            sensor: sensor_name(),
            interfaces: meta.interfaces.clone(),
            feeds: daemon
                .replaced_feeds
                .iter()
                .chain(&meta.feeds)
                .cloned()
                .collect(),
        },
    );
    report.learning = daemon
        .learning
        .as_ref()
        .map(|(learner, _)| learner.report(&daemon.ledger.totals));
    if let Some(pseudonymizer) = &config.pseudonymizer {
        pseudonymizer.apply(&mut report);
    }
    if unwritten > 0 && keep_attached {
        // The program keeps counting; the state file holds the first cut
        // not written (the next daemon writes it first) or the last one
        // written (it resumes from there): either way nothing is lost.
        log::warn!(
            "{unwritten} snapshot(s) could not be written; the next `classifier run` adopting the program resumes after the last one written, so their counts land in its first snapshot"
        );
    } else if unwritten > 0 {
        let _ = crate::report::write_stdout(&report.render(config.format));
        return Err(RunError::SnapshotsLost(unwritten));
    }
    Ok(report)
}
