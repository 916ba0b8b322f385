//! `cargo xtask bench`: the classifier's in-kernel cost per packet, measured
//! with BPF_PROG_TEST_RUN against an empty XDP_PASS program loaded by the
//! bench itself, interleaved in the same process and pinned to one CPU,
//! median of several rounds. Writes BENCHMARKS.md and, with --json, the
//! figures machine-readably.
//!
//! Modules: `workload` (feeds and frames), `stream` (stream mode), `live`
//! (veth frames per second), `host` (drain, daemon memory), `peers`
//! (xdp-filter, ndpiReader), `recipes` (issue 6's recipes, the floors of
//! our paths).

mod host;
mod live;
mod peers;
mod recipes;
mod stream;
mod workload;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use classifier_tests::netns::VethLink;
use classifier_user::{
    bpf_sys::{ProgramImage, program_image},
    drain,
    feedcheck::grouped,
    feeds::EndpointFeed,
    flow_clock::{FlowClock, TickCounter},
    loader::{AttachMode, Capacities, ProgramSetup, Sensor, Verdict, interface_index},
    testrun::{attach_xdp_link, load_constant_xdp, program_fd, run_repeated},
};
use recipes::{
    MATCH_RECIPE_CASE, RECIPE_CASE, StreamFlows, match_recipe_floor, recipe_floor,
    stream_recipe_floor,
};
use workload::{
    KNOWN_FLOW_CASE, MATCH_CASE, NEW_FLOW_CASE, NEW_FLOW_TABLE_CASE, NEW_FLOW_WARM_CASE,
    WATCHED_TCP_CASE, case_frame, cases, random_feed, random_unwatched_frames, stream_cases,
    stream_length, watched,
};

/// The pause before each drain between stream-mode rounds of new flows, so
/// the flows before it age past the recycling margin.
const DRAIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(30);

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The bench's command line; `cargo xtask bench` passes it on.
#[derive(clap::Parser)]
#[command(
    name = "classifier-bench",
    about = "Measures the classifier's XDP program against an empty one, its peers and its userspace (what `cargo xtask bench` runs)"
)]
struct Options {
    /// Small sizes and one round: checks that the bench runs and its
    /// figures are sane (CI's smoke); its figures are not to be quoted.
    #[arg(long)]
    quick: bool,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Also write the figures as one JSON object here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The command the report says it was written by.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    /// Only the cases whose name contains this (for working on one path);
    /// `userspace` runs only the drain and daemon figures. Pass --output
    /// too, so a partial run does not overwrite BENCHMARKS.md.
    #[arg(long)]
    only: Option<String>,
    /// Stream-mode rounds, each its own stream of frames (default 5, 1
    /// with --quick): more rounds, a steadier median.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    stream_rounds: Option<u16>,
    /// Flow-cache slots per CPU of the programs the feed-size setups load,
    /// stream mode's included (default the daemon's, 16,384; rounded up to
    /// a power of two as `classifier run` does; for measuring what the
    /// cache's size costs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    flow_cache_slots: Option<u32>,
}

impl Options {
    /// Warm-mode rounds per case.
    fn rounds(&self) -> usize {
        if self.quick { 1 } else { 15 }
    }

    /// Stream-mode rounds.
    fn stream_rounds(&self) -> usize {
        self.stream_rounds
            .map_or(if self.quick { 1 } else { 5 }, usize::from)
    }

    /// Warm-mode repeats per test run.
    fn repeat(&self) -> u32 {
        if self.quick { 100_000 } else { 2_000_000 }
    }

    fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| case.contains(only.as_str()))
    }

    /// Whether the drain and daemon figures run (always, unless `--only`
    /// picks kernel cases).
    fn wants_userspace(&self) -> bool {
        self.only.as_deref().is_none_or(|only| only == "userspace")
    }
}

/// xdp-filter's program against ours on the same non-matching frame, and
/// ndpiReader against our in-kernel packets per second on one stream of
/// random non-watched frames.
fn compare_peers(
    options: &Options,
    link: &VethLink,
    floor: BorrowedFd<'_>,
    sensor: &mut Sensor,
    figures: &mut BTreeMap<&str, f64>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let frames = random_unwatched_frames(stream_length(options), 7);
    sensor.attach(&link.sensor_iface, AttachMode::Native)?;
    let ours = stream::compare_stream(floor, program_fd(sensor)?, std::slice::from_ref(&frames));
    sensor.detach_all();
    let ours_pps = 1e9 / ours?.ours_ns;
    let pcap = std::env::temp_dir().join(format!("classifier-bench-{}.pcap", std::process::id()));
    peers::write_pcap(&pcap, &frames)?;
    let ndpi = peers::ndpi_pps(&pcap);
    let replayed = peers::classifier_pcap_pps(&pcap);
    let _ = std::fs::remove_file(&pcap);
    let ndpi_pps = ndpi?;
    let pcap_pps = replayed?;
    figures.insert("vs_ndpi_speedup", ours_pps / ndpi_pps);
    figures.insert("pcap_pps", pcap_pps);
    notes.push(format!(
        "`classifier pcap` on the same file (one BPF_PROG_TEST_RUN per frame, the capture clock set per frame, reading included; its own figure, loading the feed excluded): {pcap_pps:.0} frames/s, {:.2} x ndpiReader.",
        pcap_pps / ndpi_pps
    ));
    notes.push(format!(
        "ndpiReader on a pcap of {} random non-watched 64-byte frames, one core: {:.0} packets/s; ours in the kernel on the same frames (stream mode): {:.0} packets/s per core, {:.1} x.",
        frames.len(),
        ndpi_pps,
        ours_pps,
        ours_pps / ndpi_pps
    ));

    let frame = cases(64).swap_remove(0).1;
    let filter = peers::XdpFilter::load(&link.sensor_iface)?;
    let theirs = filter.program()?;
    let vs_theirs = measure(theirs.as_fd(), program_fd(sensor)?, &frame, options)?;
    let theirs_vs_empty = measure(floor, theirs.as_fd(), &frame, options)?;
    drop(filter);
    figures.insert("vs_xdp_filter_ratio", vs_theirs.ratio);
    notes.push(format!(
        "xdp-filter (xdpfilt_alw_all, one IP and one port rule) on the same 64-byte non-matching frame: {:.1} ns/packet ({:.3} x the empty program); ours {:.1} ns/packet, {:.3} x xdp-filter.",
        vs_theirs.floor_ns, theirs_vs_empty.ratio, vs_theirs.ours_ns, vs_theirs.ratio
    ));
    Ok(())
}

/// Draining a full flow table into a report, and the daemon's load time and
/// memory with the largest feed. Runs in the sensor namespace.
fn userspace(
    options: &Options,
    link: &VethLink,
    figures: &mut BTreeMap<&str, f64>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (prefixes, flows) = if options.quick {
        (100_000, 20_000)
    } else {
        (1_000_000, 1_000_000)
    };
    let capacity = flows + flows / 4;
    let capacities = Capacities {
        flows: capacity,
        ..Capacities::default()
    };
    let mut sensor = Sensor::load(&watched(1), &random_feed(0, 0, 1), capacities)?;
    sensor.attach(&link.sensor_iface, AttachMode::Native)?;
    host::fill_flows(program_fd(&sensor)?, flows)?;
    sensor.detach_all();
    let drain = host::drain_and_report(&sensor)?;
    ensure!(
        drain.flows == flows as usize,
        "{flows} flows created but the report holds {}",
        drain.flows
    );
    drop(sensor);
    figures.insert("drain_1m_s", drain.total_s());
    notes.push(format!(
        "Drain {flows} flows (flow capacity {capacity}) and build the report: {:.2} s (read the maps into the ledger {:.2} s, build the report {:.2} s).",
        drain.total_s(),
        drain.read_s,
        drain.report_s
    ));

    let feed = random_feed(prefixes, 100_000, 42);
    let csv = std::env::temp_dir().join(format!("classifier-bench-{}.csv", std::process::id()));
    let mut text = String::from("cidr,service\n");
    for endpoint in &feed.endpoints {
        let _ = writeln!(text, "{},{}", endpoint.net, endpoint.service);
    }
    std::fs::write(&csv, text).with_context(|| format!("write {}", csv.display()))?;
    let daemon = host::daemon(link, &csv, flows, capacity);
    let _ = std::fs::remove_file(&csv);
    let daemon = daemon?;
    figures.insert("rss_full_mb", daemon.full_mb);
    figures.insert("daemon_load_s", daemon.load_s);
    notes.push(format!(
        "`classifier run` with {prefixes} IPv4 + 100,000 IPv6 prefixes from a CSV file: counting after {:.2} s (read, build, fill, attach), peak RSS {:.0} MB while loading, {:.0} MB at rest, {:.0} MB with {flows} flows in its table and ledger.",
        daemon.load_s, daemon.peak_mb, daemon.rest_mb, daemon.full_mb
    ));
    Ok(())
}

/// The newest loaded program called `name` (names are not unique; the bench
/// looks for one that something it started has just loaded).
fn newest_loaded_program(name: &str) -> Result<aya::programs::ProgramFd> {
    let mut newest = None;
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info.name_as_str() == Some(name) && newest.as_ref().is_none_or(|(id, _)| info.id() > *id)
        {
            newest = Some((info.id(), info));
        }
    }
    let (_, info) = newest.with_context(|| format!("no loaded program is called {name}"))?;
    Ok(info.fd()?)
}

/// Attaches `program` to the peer side of `link` (from a thread in the peer
/// namespace); attached until the descriptor is dropped. Keeps the empty
/// program in the XDP dispatcher for stream mode.
fn attach_on_peer(link: &VethLink, program: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<std::os::fd::OwnedFd> {
                link.peer.enter_on_this_thread()?;
                let peer_if = interface_index(&link.peer_iface).context("no peer interface")?;
                Ok(attach_xdp_link(program, peer_if)?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("attaching thread panicked"))?
    })
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions (the thread's affinity is one CPU,
    // so available_parallelism would say 1).
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The floor's and our cost per packet, and their ratio.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    floor_ns: f64,
    ours_ns: f64,
    /// The median of the rounds' ratios: each round measures both programs
    /// back to back, so the machine's drift between rounds cancels.
    ratio: f64,
}

/// Each round runs the floor, ours, ours, the floor (whichever runs right
/// after the other program is a little slower, so each gets both places).
fn measure(
    floor: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    frame: &[u8],
    options: &Options,
) -> Result<Measurement> {
    let mut floor_ns = Vec::new();
    let mut ours_ns = Vec::new();
    let mut ratios = Vec::new();
    // One unmeasured run warms caches, the flow entry and the JIT image.
    run_repeated(ours, frame, 1000)?;
    for _ in 0..options.rounds() {
        let floor_first = timed_run(floor, frame, options.repeat())?;
        let ours_first = timed_run(ours, frame, options.repeat())?;
        let ours_second = timed_run(ours, frame, options.repeat())?;
        let floor_second = timed_run(floor, frame, options.repeat())?;
        ratios.push((ours_first + ours_second) / (floor_first + floor_second));
        floor_ns.extend([floor_first, floor_second]);
        ours_ns.extend([ours_first, ours_second]);
    }
    Ok(Measurement {
        floor_ns: median(&mut floor_ns),
        ours_ns: median(&mut ours_ns),
        ratio: median(&mut ratios),
    })
}

/// Mean nanoseconds per run of `repeat` runs in one call, from this
/// thread's CPU time around the call. The kernel's own figure is whole
/// nanoseconds (3% steps at this size), and the wall clock is no use: each
/// call also updates the kernel's XDP dispatcher, which sleeps for RCU grace
/// periods (milliseconds). Sleeping is not CPU time; the dispatcher's own
/// work is microseconds against the tens of milliseconds measured.
fn timed_run(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<f64> {
    let start = thread_cpu_ns();
    let (verdict, _) = run_repeated(program, frame, repeat)?;
    let spent = thread_cpu_ns() - start;
    ensure!(
        verdict == XDP_PASS,
        "a program returned {verdict}, not XDP_PASS"
    );
    Ok(spent as f64 / f64::from(repeat))
}

fn thread_cpu_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn cpu_model() -> String {
    read_trimmed("/proc/cpuinfo")
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

struct Row {
    group: String,
    case: String,
    bytes: usize,
    cost: Measurement,
}

fn main() -> Result<()> {
    let options = <Options as clap::Parser>::parse();
    if options.only.is_none() {
        // The peers, installed first if missing: later the bench runs in a
        // namespace of its own, where apt-get cannot reach the mirror.
        peers::require_tool("xdp-filter", "xdp-tools")?;
        peers::require_tool("ndpiReader", "libndpi-bin")?;
    }
    classifier_tests::pin_to_cpu(0).context("pin to CPU 0")?;
    let floor = load_constant_xdp(XDP_PASS).context("load the empty XDP program")?;
    let mut rows: Vec<Row> = Vec::new();
    let mut figures: BTreeMap<&str, f64> = BTreeMap::new();
    let mut notes = Vec::new();

    // Cases a–f on the bundled feed.
    let bundled = EndpointFeed::from_arguments(&[]).context("bundled feed")?;
    let mut with_target = bundled.endpoints.clone();
    with_target.extend(random_feed(0, 0, 1).endpoints);
    let bundled = EndpointFeed::from_endpoints(with_target);
    let sensor = Sensor::load(&watched(1), &bundled, Capacities::default())?;
    let jit = Jit::of(floor.as_fd(), program_fd(&sensor)?)?;
    figures.insert("verified_insns", f64::from(jit.ours.verified_insns));
    for size in [64, 1500] {
        for (case, frame) in cases(size).into_iter().filter(|(c, _)| options.wants(c)) {
            let cost = measure(floor.as_fd(), program_fd(&sensor)?, &frame, &options)?;
            rows.push(Row {
                group: BUNDLED_GROUP.into(),
                case: case.into(),
                bytes: frame.len(),
                cost,
            });
        }
    }
    if options.wants(NEW_FLOW_WARM_CASE) {
        let (cost, note) = new_flows_warm(floor.as_fd(), &bundled, &options)?;
        figures.insert("new_flow_warm_ratio", cost.ratio);
        rows.push(Row {
            group: BUNDLED_GROUP.into(),
            case: NEW_FLOW_WARM_CASE.into(),
            bytes: 64,
            cost,
        });
        notes.push(note);
    }
    if options.wants(RECIPE_CASE) {
        let source_only = recipe_floor(floor.as_fd(), program_fd(&sensor)?, false, &options)?;
        let both = recipe_floor(floor.as_fd(), program_fd(&sensor)?, true, &options)?;
        figures.insert("recipe_ratio", source_only.recipe.ratio);
        figures.insert("recipe_both_addresses_ratio", both.recipe.ratio);
        figures.insert("nonwatched_vs_recipe_ratio", both.ours.ratio);
        notes.push(format!(
            "The non-watched path's floor on this machine: issue 6's recipe (bounds-check the Ethernet and IPv4 headers, read the ethertype, compare the source with one watched prefix, add the packet and its bytes to one per-CPU array value), in BPF instructions written by hand, on the 64-byte non-watched frame: {:.1} ns against {:.1} ns for the empty program, {:.3} x; comparing the destination too, as replies to a watched host need: {:.1} ns against {:.1} ns, {:.3} x (each counted every packet it ran on). Ours on the same frame: {:.3} x the first, {:.3} x the second.",
            source_only.recipe.ours_ns,
            source_only.recipe.floor_ns,
            source_only.recipe.ratio,
            both.recipe.ours_ns,
            both.recipe.floor_ns,
            both.recipe.ratio,
            source_only.ours.ratio,
            both.ours.ratio,
        ));
    }
    if options.wants(MATCH_RECIPE_CASE) {
        let recipe = match_recipe_floor(floor.as_fd(), program_fd(&sensor)?, &options)?;
        figures.insert("match_recipe_ratio", recipe.known.recipe.ratio);
        figures.insert("match_vs_recipe_ratio", recipe.known.ours.ratio);
        figures.insert("new_flow_recipe_ratio", recipe.new_flow.ratio);
        figures.insert("nonendpoint_recipe_ratio", recipe.non_endpoint.recipe.ratio);
        figures.insert(
            "nonendpoint_vs_recipe_ratio",
            recipe.non_endpoint.ours.ratio,
        );
        notes.push(format!(
            "The match path's floor on this machine: issue 6's design for it (parse and compare the source with one watched prefix; add to one per-CPU totals value; the destination's entry in a first level by its top 18 bits, its /24's 256-bit leaf, its rank by a software popcount, its service; add to the service's per-CPU counters; hash the 5-tuple into a direct-mapped per-CPU flow cache, compare, add and stamp), in BPF instructions written by hand, on the 64-byte match frame: {:.1} ns against {:.1} ns for the empty program, {:.3} x a known flow's packet; every packet a new flow (claiming a slot whatever it holds): {:.1} ns against {:.1} ns, {:.3} x (each counted every packet it ran on). Ours on the same frame: {:.3} x the recipe's known flow. The same program on the 64-byte watched -> non-endpoint frame (counted in its totals, then no entry in the first level): {:.1} ns against {:.1} ns, {:.3} x; ours {:.3} x it.",
            recipe.known.recipe.ours_ns,
            recipe.known.recipe.floor_ns,
            recipe.known.recipe.ratio,
            recipe.new_flow.ours_ns,
            recipe.new_flow.floor_ns,
            recipe.new_flow.ratio,
            recipe.known.ours.ratio,
            recipe.non_endpoint.recipe.ours_ns,
            recipe.non_endpoint.recipe.floor_ns,
            recipe.non_endpoint.recipe.ratio,
            recipe.non_endpoint.ours.ratio,
        ));
    }
    let ratio_of = |rows: &[Row], prefix: &str, bytes: usize| {
        rows.iter()
            .find(|r| r.case.starts_with(prefix) && r.bytes == bytes)
            .map(|r| r.cost.ratio)
            .unwrap_or(f64::NAN)
    };
    figures.insert("nonwatched_ratio", ratio_of(&rows, "a ", 64));
    figures.insert("watched_nonendpoint_ratio", ratio_of(&rows, "b ", 64));
    figures.insert(
        "watched_nonendpoint_tcp_ratio",
        ratio_of(&rows, WATCHED_TCP_CASE, 64),
    );

    // Everything attached lives on a veth pair in two namespaces of our own.
    let link = VethLink::create_with_queues("bench", online_cpus())
        .context("create the bench's veth pair")?;
    link.sensor
        .enter_on_this_thread()
        .context("enter the sensor namespace")?;
    let _floor_on_peer = attach_on_peer(&link, floor.as_fd())?;
    let mut sensor = sensor;
    if options.only.is_none() {
        let cpus = online_cpus();
        let frame = cases(64).swap_remove(0).1;
        let frames_per_cpu = if options.quick { 100_000 } else { 2_000_000 };
        let live_rounds = if options.quick { 1 } else { 5 };
        let bench = live::LiveBench::new(&link, frame, frames_per_cpu, cpus)?;
        let empty_drop = load_constant_xdp(XDP_DROP).context("load the empty XDP_DROP program")?;
        let mut dropping = Sensor::load_as(
            &watched(1),
            &bundled,
            Capacities::default(),
            ProgramSetup {
                verdict: Verdict::Drop,
                ..ProgramSetup::SENSOR
            },
        )?;
        let drop = bench.compare(empty_drop.as_fd(), &mut dropping, live_rounds)?;
        let pass = bench.compare(floor.as_fd(), &mut sensor, live_rounds)?;
        figures.insert("live_drop_ratio", drop.ratio);
        figures.insert("live_pass_mpps", pass.ours_mpps);
        notes.push(format!(
            "Live, {cpus} sender(s) x {frames_per_cpu} 64-byte non-watched frames, {live_rounds} round(s): dropping, empty {:.2} Mpps, ours {:.2} Mpps (ratio {:.3}); passing to the stack, empty {:.2} Mpps, ours {:.2} Mpps (ratio {:.3}). Every frame sent was counted.",
            drop.empty_mpps, drop.ours_mpps, drop.ratio, pass.empty_mpps, pass.ours_mpps, pass.ratio
        ));
        compare_peers(
            &options,
            &link,
            floor.as_fd(),
            &mut sensor,
            &mut figures,
            &mut notes,
        )?;
    }
    drop(sensor);

    // Feed sizes and watched-set sizes: the cost must stay flat.
    let sizes: &[(usize, &str)] = if options.only.as_deref() == Some("userspace") {
        &[]
    } else if options.only.is_some() {
        &[(1_000_000, "1m")]
    } else if options.quick {
        &[(1_000, "1k"), (100_000, "100k")]
    } else {
        &[(1_000, "1k"), (100_000, "100k"), (1_000_000, "1m")]
    };
    let largest = if options.quick && options.only.is_none() {
        "100k"
    } else {
        "1m"
    };
    let mut match_cost: BTreeMap<&str, f64> = BTreeMap::new();
    let mut stream_floors: Vec<(&str, Measurement, Measurement)> = Vec::new();
    for (prefixes, label) in sizes {
        let feed = random_feed(*prefixes, 100_000, 42);
        for watched_count in [1, 256] {
            let started = Instant::now();
            let mut capacities = Capacities::default();
            if let Some(slots) = options.flow_cache_slots {
                capacities.flow_cache_slots = slots;
            }
            let mut sensor = Sensor::load(&watched(watched_count), &feed, capacities)?;
            let load_s = started.elapsed().as_secs_f64();
            if *label == "1m" && watched_count == 1 {
                figures.insert("load_1m_s", load_s);
            }
            for (case, frame) in cases(64)
                .into_iter()
                .filter(|(c, _)| (c.starts_with("a ") || c.starts_with("c ")) && options.wants(c))
            {
                let cost = measure(floor.as_fd(), program_fd(&sensor)?, &frame, &options)?;
                if case.starts_with("c ") && watched_count == 1 {
                    match_cost.insert(label, cost.ratio);
                    figures.insert(
                        match *label {
                            "1k" => "match_1k_ratio",
                            "100k" => "match_100k_ratio",
                            _ => "match_1m_ratio",
                        },
                        cost.ratio,
                    );
                }
                rows.push(Row {
                    group: format!(
                        "{prefixes} IPv4 + 100,000 IPv6 random prefixes, {watched_count} watched"
                    ),
                    case: case.into(),
                    bytes: frame.len(),
                    cost,
                });
            }
            // After the warm cases: stream mode fills the flow cache.
            if *label == largest && watched_count == 1 {
                sensor.attach(&link.sensor_iface, AttachMode::Native)?;
                for (case, streams) in stream_cases(&options, &feed)
                    .into_iter()
                    .filter(|(case, _)| options.wants(case))
                {
                    let cost = if case == NEW_FLOW_CASE {
                        let (cost, note) =
                            new_flows_between_drains(floor.as_fd(), &mut sensor, &streams)?;
                        notes.push(note);
                        figures.insert("new_flow_ratio", cost.ratio);
                        cost
                    } else {
                        let cost =
                            stream::compare_stream(floor.as_fd(), program_fd(&sensor)?, &streams)?;
                        if case == NEW_FLOW_TABLE_CASE {
                            figures.insert("new_flow_table_ratio", cost.ratio);
                        }
                        if case == KNOWN_FLOW_CASE {
                            figures.insert("known_flow_stream_ratio", cost.ratio);
                        }
                        cost
                    };
                    rows.push(Row {
                        group: format!(
                            "{prefixes} IPv4 + 100,000 IPv6 random prefixes, 1 watched, stream mode{}",
                            options.flow_cache_slots.map_or(String::new(), |slots| format!(
                                ", a flow cache of {} slots per CPU (not 16,384)",
                                slots.next_power_of_two()
                            ))
                        ),
                        case: case.into(),
                        bytes: streams[0][0].len(),
                        cost,
                    });
                    let flows = match case {
                        NEW_FLOW_CASE => StreamFlows::New,
                        KNOWN_FLOW_CASE => StreamFlows::Known,
                        _ => continue,
                    };
                    // Attached beside ours, on the namespace's loopback.
                    let loopback = interface_index("lo").context("no loopback interface")?;
                    let mut ledger = drain::Ledger::default();
                    let clock = FlowClock::kernel()?;
                    let recipe =
                        stream_recipe_floor(floor.as_fd(), &streams, flows, loopback, || {
                            drain::read_into(&sensor, &mut ledger, clock)?;
                            Ok(())
                        })?;
                    stream_floors.push((case, cost, recipe));
                }
                sensor.detach_all();
            }
        }
    }
    for (case, ours, recipe) in &stream_floors {
        figures.insert(
            if *case == NEW_FLOW_CASE {
                "new_flow_stream_recipe_ratio"
            } else {
                "known_flow_stream_recipe_ratio"
            },
            recipe.ratio,
        );
        notes.push(format!(
            "Stream mode's floor ({case}): the match recipe above on the same frames, attached beside ours{}: {:.0} ns against {:.0} ns for the empty program, {:.3} x; ours {:.0} ns, {:.3} x (counted: every frame in its totals and service, {}).",
            if *case == NEW_FLOW_CASE {
                ", with the same pause between rounds as ours, its flow cache read from userspace as the drain reads ours, then a drain of ours"
            } else {
                ""
            },
            recipe.ours_ns,
            recipe.floor_ns,
            recipe.ratio,
            ours.ours_ns,
            ours.ratio,
            if *case == NEW_FLOW_CASE {
                "a slot claimed for each"
            } else {
                "one slot claimed, holding them all"
            },
        ));
    }
    if let (Some(small), Some(large)) = (match_cost.get("1k"), match_cost.get(largest)) {
        figures.insert(
            if options.quick {
                "flatness_100k_vs_1k"
            } else {
                "flatness_1m_vs_1k"
            },
            large / small,
        );
    }

    if options.wants_userspace() {
        userspace(&options, &link, &mut figures, &mut notes)?;
    }

    let report = markdown(&options, &jit, &rows, &figures, &notes);
    std::fs::write(&options.output, &report)
        .with_context(|| format!("write {}", options.output.display()))?;
    print!("{report}");
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&figures)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    for (name, value) in figures.iter().filter(|_| options.only.is_none()) {
        ensure!(
            value.is_finite() && *value > 0.0,
            "{name} is {value}: not a sane figure"
        );
    }
    Ok(())
}

/// The JIT's state, read before the bench enters its namespaces (a
/// namespace of its own has no `bpf_jit_enable`), and what it made of the
/// empty program and ours.
struct Jit {
    enable: String,
    floor: ProgramImage,
    ours: ProgramImage,
}

impl Jit {
    /// Refuses to measure interpreted programs: the figures are the JIT's.
    fn of(floor: BorrowedFd<'_>, ours: BorrowedFd<'_>) -> Result<Self> {
        let jit = Jit {
            enable: read_trimmed("/proc/sys/net/core/bpf_jit_enable"),
            floor: program_image(floor).context("read the empty program's info")?,
            ours: program_image(ours).context("read our program's info")?,
        };
        ensure!(
            jit.floor.jited_bytes > 0 && jit.ours.jited_bytes > 0,
            "the BPF JIT is off (net.core.bpf_jit_enable = {}): the bench measures JIT-compiled programs; turn it on with `sysctl net.core.bpf_jit_enable=1`",
            jit.enable
        );
        Ok(jit)
    }
}

fn markdown(
    options: &Options,
    jit: &Jit,
    rows: &[Row],
    figures: &BTreeMap<&str, f64>,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `{}`{}. Rerun it to reproduce; numbers vary between machines, ratios less so.\n",
        options.command,
        if options.quick {
            " (quick mode: too few rounds to quote)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "- CPU: {} ({} online)", cpu_model(), online_cpus());
    let _ = writeln!(
        out,
        "- kernel: {}",
        read_trimmed("/proc/sys/kernel/osrelease")
    );
    let _ = writeln!(
        out,
        "- BPF JIT: on (`net.core.bpf_jit_enable` = {}); machine code of the empty program {} bytes, of ours {} bytes",
        jit.enable,
        grouped(u64::from(jit.floor.jited_bytes)),
        grouped(u64::from(jit.ours.jited_bytes))
    );
    let _ = writeln!(
        out,
        "- verifier: ours accepted after {} instructions processed, of the kernel's limit of 1,000,000",
        grouped(u64::from(jit.ours.verified_insns))
    );
    let _ = writeln!(
        out,
        "- method: BPF_PROG_TEST_RUN in one process pinned to CPU 0, the empty XDP_PASS program and ours alternating (empty, ours, ours, empty per round), the ratio the median of the rounds' ratios. Warm mode: the same frame repeated {} times per run (so the flow entry exists), timed by the thread's CPU time, {} rounds. Stream mode: a different frame per run (random addresses, or a new flow each), both programs attached to a veth so runs skip the XDP dispatcher update, timed by the kernel, summed over the stream, {} rounds (each its own stream).\n",
        options.repeat(),
        options.rounds(),
        options.stream_rounds()
    );
    let _ = writeln!(
        out,
        "| setup | case | frame bytes | empty ns | ours ns | ratio |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.3} |",
            row.group, row.case, row.bytes, row.cost.floor_ns, row.cost.ours_ns, row.cost.ratio
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Live, userspace and peers\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    let _ = writeln!(out, "\n## Figures\n");
    for (name, value) in figures {
        let _ = writeln!(out, "- `{name}`: {value:.3}");
    }
    out.push('\n');
    out.push_str(include_str!("tried.md"));
    out
}

/// The rows measured on the bundled feed.
const BUNDLED_GROUP: &str = "bundled feed (33,401 prefixes), 1 watched prefix";

/// [`NEW_FLOW_WARM_CASE`]: the match frame, repeated, into a program set
/// up to count every matched packet as a new flow, with every cache slot
/// recyclable (as if a drain had just read the flow in it). Returns the
/// cost and a note of how many of the packets claimed a cache slot.
fn new_flows_warm(
    floor: BorrowedFd<'_>,
    feed: &EndpointFeed,
    options: &Options,
) -> Result<(Measurement, String)> {
    let mut sensor = Sensor::load_as(
        &watched(1),
        feed,
        Capacities::default(),
        ProgramSetup {
            new_flow_every_packet: true,
            ..ProgramSetup::SENSOR
        },
    )?;
    sensor.allow_recycling(u64::MAX)?;
    let frame = case_frame(64, MATCH_CASE)?;
    let cost = measure(floor, program_fd(&sensor)?, &frame, options)?;
    let totals = classifier_user::drain::read(&sensor)?.totals;
    ensure!(
        totals.matched > 0 && totals.flow_inserts == totals.matched,
        "{NEW_FLOW_WARM_CASE}: {} of {} matched packets were counted as new flows, not all",
        totals.flow_inserts,
        totals.matched
    );
    let note = format!(
        "New flows, warm ({NEW_FLOW_WARM_CASE}): of {} matched packets, {} were counted as a new flow ({} of them in a cache slot another flow had held), {} failed to insert.",
        totals.matched, totals.flow_inserts, totals.flow_recycles, totals.flow_insert_failures,
    );
    Ok((cost, note))
}

/// [`NEW_FLOW_CASE`]: before each round the bench does what the daemon
/// does, once the flows before it have aged past the recycling margin:
/// reads the tick, drains every map into a ledger and lets the program
/// recycle the slots that drain read. Returns the cost and a note of how
/// many of the new flows claimed a slot a drain had read (the rest claimed
/// an empty one, or found theirs taken by a new flow of the same round and
/// went to the LRU table).
fn new_flows_between_drains(
    floor: BorrowedFd<'_>,
    sensor: &mut Sensor,
    streams: &[Vec<Vec<u8>>],
) -> Result<(Measurement, String)> {
    let ours = program_fd(sensor)?.try_clone_to_owned()?;
    let ticks = TickCounter::load()?;
    let clock = FlowClock::kernel()?;
    let mut ledger = drain::Ledger::default();
    drain::read_into(sensor, &mut ledger, clock)?;
    let before = ledger.kernel_totals;
    let cost = stream::compare_stream_with(floor, ours.as_fd(), streams, || {
        std::thread::sleep(DRAIN_PAUSE);
        let started = ticks.now()?;
        drain::read_into(sensor, &mut ledger, clock)?;
        sensor.allow_recycling(started)?;
        Ok(())
    })?;
    drain::read_into(sensor, &mut ledger, clock)?;
    let after = ledger.kernel_totals;
    let recycled = after.flow_recycles - before.flow_recycles;
    let flows: usize = streams.iter().map(Vec::len).sum();
    let note = format!(
        "New flows between drains ({}): {recycled} of {flows} new flows ({:.1}%) claimed a cache slot the last drain had read; the others claimed an empty slot (in a partial run, whose cache starts empty) or found theirs taken by a new flow of the same round and went to the LRU table.",
        NEW_FLOW_CASE,
        100.0 * recycled as f64 / flows.max(1) as f64
    );
    Ok((cost, note))
}
