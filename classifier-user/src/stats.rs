//! `classifier stats`: live counters of a running sensor, read from the
//! maps `classifier run` pinned (as root) or from its stats socket (as
//! anyone in its `--stats-group`), from another process (reading never
//! changes a counter, so the daemon's counts are unaffected).
//!
//! Counts are the kernel's own, cumulative since the program was attached;
//! rates are the difference between two readings over the time between
//! them. Flows (and so unique sources and top sources) are those the
//! kernel's flow table holds now.

use std::{
    fmt::Write as _,
    io::{IsTerminal, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use classifier_common::{DIR_INBOUND, DIR_OUTBOUND, ServiceCounters, Totals};

use crate::{
    cli::{ReloadArgs, StatsArgs},
    live::{self, LiveError, LiveStats},
    pins::{self, PinnedCounters},
    pseudonym::Pseudonymizer,
    report::{Report, rfc3339},
    snapshot::{now_unix_ns, unix_ns_to_time},
};

/// Where the readings come from: the pinned maps (takes CAP_BPF) or the
/// daemon's stats socket (for everyone else).
enum Source {
    Pins(Box<PinnedCounters>),
    Socket(PathBuf),
}

impl Source {
    /// The socket when one is named or when not root, else the pins.
    fn open(args: &StatsArgs) -> Result<Self, Box<dyn std::error::Error>> {
        // SAFETY: geteuid has no failure mode.
        let root = unsafe { libc::geteuid() } == 0;
        Ok(match &args.socket {
            Some(path) => Self::Socket(live::find_socket(path)?),
            None if root => Self::Pins(Box::new(pins::open_counters_at(&args.pin_path)?)),
            None => Self::Socket(live::find_socket(Path::new(live::RUNTIME_DIR))?),
        })
    }

    fn read(&mut self, key: Option<&Pseudonymizer>) -> Result<LiveStats, LiveError> {
        match self {
            Self::Pins(pinned) => {
                refresh_meta(pinned)?;
                LiveStats::read(pinned, key)
            }
            Self::Socket(path) => {
                let mut stats = live::fetch(path)?;
                match (&stats.pseudonym_key_id, key) {
                    (None, Some(key)) => {
                        key.apply(&mut stats.report);
                        stats.pseudonym_key_id = Some(key.key_id.clone());
                    }
                    (Some(theirs), Some(key)) if *theirs != key.key_id => {
                        return Err(LiveError::Socket {
                            path: path.clone(),
                            problem: format!(
                                "the daemon serves pseudonyms under key {theirs}; --pseudonymize-key is key {}",
                                key.key_id
                            ),
                        });
                    }
                    _ => {}
                }
                Ok(stats)
            }
        }
    }

    /// Whether the sensor went away (nothing counts any more).
    fn stopped(&self) -> Option<String> {
        match self {
            // The maps stay readable through our handles, but nothing
            // counts into them any more.
            Self::Pins(pinned) => (!pinned.dir.join("META").exists())
                .then(|| format!("its pins under {} are gone", pinned.dir.display())),
            Self::Socket(path) => {
                (!path.exists()).then(|| format!("its socket {} is gone", path.display()))
            }
        }
    }
}

/// Follows the sensor's META from reading to reading: a reload rewrites it
/// (new services and feeds, same counters); a program loaded since has
/// counters of its own, which are opened. A META caught half rewritten is
/// read again next time.
fn refresh_meta(pinned: &mut PinnedCounters) -> Result<(), LiveError> {
    match pins::read_meta(&pinned.dir) {
        Ok(Some(meta)) if meta.instance != pinned.meta.instance => {
            *pinned = pins::open_counters_at(&pinned.dir)?;
        }
        Ok(Some(meta)) => pinned.meta = meta,
        Ok(None) => {}
        Err(error) => log::debug!("keeping the last META: {error}"),
    }
    Ok(())
}

/// One reading and when it was taken.
struct Sample {
    stats: LiveStats,
    taken: Instant,
}

fn sample(source: &mut Source, key: Option<&Pseudonymizer>) -> Result<Sample, LiveError> {
    Ok(Sample {
        stats: source.read(key)?,
        taken: Instant::now(),
    })
}

pub fn stats(args: &StatsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let key = match &args.pseudonymize_key {
        Some(path) => Some(Pseudonymizer::from_file(path)?),
        None => None,
    };
    let mut source = Source::open(args)?;
    let mut previous = sample(&mut source, key.as_ref())?;
    if args.json && args.watch.is_none() {
        let json = previous
            .stats
            .report
            .render(crate::report::ReportFormat::Json);
        crate::report::write_stdout(&json)?;
        return Ok(());
    }
    let period = args.watch.unwrap_or(Duration::from_secs(1));
    let mut stdout = std::io::stdout();
    loop {
        std::thread::sleep(period);
        let current = match sample(&mut source, key.as_ref()) {
            Ok(current) => current,
            Err(error) => match source.stopped() {
                Some(why) if args.watch.is_some() => {
                    log::info!("the sensor stopped ({why})");
                    return Ok(());
                }
                _ => return Err(error.into()),
            },
        };
        let text = if args.json {
            let mut line = serde_json::to_string(&current.stats.report)?;
            line.push('\n');
            line
        } else {
            let view = view(&previous, &current);
            if args.watch.is_some() && std::io::stdout().is_terminal() {
                // Clear the terminal and draw from the top.
                format!("\x1b[2J\x1b[H{view}")
            } else {
                view
            }
        };
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            // The reader went away (`| head`): done.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            result => result?,
        }
        if args.watch.is_none() {
            return Ok(());
        }
        if let Some(why) = source.stopped() {
            log::info!("the sensor stopped ({why})");
            return Ok(());
        }
        previous = current;
    }
}

/// Per second over the time between two readings.
fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 / seconds
}

/// 1234567 → "1.23 M"; small numbers as they are.
fn human(value: f64) -> String {
    for (scale, unit) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if value >= scale {
            return format!("{:.2} {unit}", value / scale);
        }
    }
    format!("{value:.0} ")
}

fn service_sums(counters: &ServiceCounters) -> (u64, u64) {
    (counters.packets.iter().sum(), counters.bytes.iter().sum())
}

fn view(before: &Sample, now: &Sample) -> String {
    let meta = &now.stats.meta;
    let report: &Report = &now.stats.report;
    let seconds = now
        .taken
        .duration_since(before.taken)
        .as_secs_f64()
        .max(1e-3);
    let (t, b): (&Totals, &Totals) = (&now.stats.totals, &before.stats.totals);
    let mut out = String::new();
    let modes: Vec<String> = meta
        .interfaces
        .iter()
        .zip(&meta.modes)
        .map(|(iface, mode)| format!("{iface} ({mode})"))
        .collect();
    let _ = writeln!(
        out,
        "classifier stats  {}  sensor {}  interfaces {}",
        rfc3339(unix_ns_to_time(now_unix_ns())),
        report.sensor,
        modes.join(", ")
    );
    let _ = writeln!(
        out,
        "attached since {} (instance {}); rates over {seconds:.1} s",
        report.start, meta.instance
    );
    let _ = writeln!(
        out,
        "\npackets {:>14}  {:>10}pkt/s   bytes {:>16}  {:>10}bit/s",
        t.packets(),
        human(rate(t.packets(), b.packets(), seconds)),
        t.bytes,
        human(rate(t.bytes, b.bytes, seconds) * 8.0)
    );
    let _ = writeln!(
        out,
        "ipv4 {}  ipv6 {}  other {}  malformed {}",
        t.ipv4, t.ipv6, t.other, report.totals.malformed
    );
    let _ = writeln!(
        out,
        "watched {:>14}  {:>10}pkt/s   matched {:>14}  {:>10}pkt/s",
        t.watched,
        human(rate(t.watched, b.watched, seconds)),
        t.matched,
        human(rate(t.matched, b.matched, seconds))
    );
    let _ = writeln!(
        out,
        "\n{:<18} {:>12} {:>11} {:>14} {:>12} {:>10} {:>10} {:>6} {:>7}",
        "service", "packets", "pkt/s", "bytes", "bit/s", "out pkts", "in pkts", "flows", "sources"
    );
    let zero: ServiceCounters = bytemuck::Zeroable::zeroed();
    let mut rows = 0;
    for (index, name) in meta.services.iter().enumerate() {
        let current = now.stats.services.get(index + 1).unwrap_or(&zero);
        let earlier = before.stats.services.get(index + 1).unwrap_or(&zero);
        let (packets, bytes) = service_sums(current);
        if packets == 0 {
            continue;
        }
        let (packets_before, bytes_before) = service_sums(earlier);
        let row = report.services.iter().find(|row| row.service == *name);
        let _ = writeln!(
            out,
            "{:<18} {:>12} {:>10}/s {:>14} {:>10}/s {:>10} {:>10} {:>6} {:>7}",
            name,
            packets,
            human(rate(packets, packets_before, seconds)),
            bytes,
            human(rate(bytes, bytes_before, seconds) * 8.0),
            current.packets[DIR_OUTBOUND as usize],
            current.packets[DIR_INBOUND as usize],
            row.map_or(0, |row| row.flows),
            row.map_or(0, |row| row.unique_sources)
        );
        rows += 1;
    }
    if rows == 0 {
        let _ = writeln!(out, "(no watched traffic has reached a known endpoint yet)");
    }
    if !report.top_sources.is_empty() {
        let _ = writeln!(
            out,
            "\ntop watched sources (flows in the kernel's table now)"
        );
        for row in &report.top_sources {
            let _ = writeln!(
                out,
                "  {:<40} {:>12} packets {:>6} flows  {}",
                row.address.to_string(),
                row.packets,
                row.flows,
                row.services.join(",")
            );
        }
    }
    let _ = writeln!(
        out,
        "\nflow table: {} live of {} ({} table + {} cache slots), {} evictions, {} failed inserts",
        now.stats.live_flows,
        meta.flow_capacity + meta.flow_cache_slots,
        meta.flow_capacity,
        meta.flow_cache_slots,
        now.stats.evictions,
        t.flow_insert_failures
    );
    out
}

/// `classifier reload`: signals the daemon holding the pins (SIGHUP) and
/// waits until its pinned description records the reload or its refusal.
pub fn reload(args: &ReloadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dir = pins::find_set(&args.pin_path)?;
    let before =
        pins::read_meta(&dir)?.ok_or_else(|| pins::PinError::NothingPinned(dir.clone()))?;
    let pid = pins::lock_holder(&dir).ok_or_else(|| {
        format!(
            "no classifier run is using {} (the program may be attached with --keep-attached and no daemon running; start one)",
            dir.display()
        )
    })?;
    let target = i32::try_from(pid)?;
    // SAFETY: kill with a pid read from /proc/locks and a valid signal.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot signal classifier run (pid {pid}): {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    let deadline = Instant::now() + args.timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Some(now) = pins::read_meta(&dir)? else {
            return Err(format!("{}: the sensor stopped", dir.display()).into());
        };
        if now.reloads > before.reloads {
            println!(
                "reloaded: {} IPv4 and {} IPv6 endpoint prefixes of {} services, {} watched prefixes (classifier run, pid {pid})",
                now.endpoint_prefixes_v4,
                now.endpoint_prefixes_v6,
                now.feeds
                    .iter()
                    .flat_map(|f| f.prefixes.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                now.watched.len()
            );
            return Ok(());
        }
        if now.reload_failures > before.reload_failures {
            return Err(format!(
                "reload refused; the old feeds keep serving: {}",
                now.last_reload_error.unwrap_or_default()
            )
            .into());
        }
    }
    Err(format!(
        "classifier run (pid {pid}) did not report within {}",
        humantime::format_duration(args.timeout)
    )
    .into())
}
