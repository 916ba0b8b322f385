//! `classifier pcap FILE…`: the very same XDP object over every frame of
//! capture files, one BPF_PROG_TEST_RUN per frame, drained into the same
//! ledger and report as `classifier run` (and snapshots by capture time).
//!
//! Time is the capture's: the program is loaded with its capture clock on,
//! and each frame's timestamp is written into it before the frame runs, so
//! flows' first and last seen are the frames' own times; the report's
//! `start`/`end` are the earliest and latest frame's (a file's frames may go
//! back in time), so they hold every flow's; snapshot intervals are cut
//! when a frame's time passes a boundary (an idle stretch of the capture
//! yields empty snapshots, as a live sensor would write).
//!
//! Several files are read as one capture in time order (merged frame by
//! frame as `mergecap` does), whatever order they are given in: rotated
//! captures whose names sort out of order (`cap`, `cap1`, `cap10`, `cap2`)
//! and captures of several interfaces over the same time give the same
//! report and snapshots as one file holding all their frames.

use std::{io::IsTerminal, os::unix::fs::MetadataExt, path::Path, time::Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    capture::{CaptureError, CaptureReader, TimeOrderedFrames},
    cli::PcapArgs,
    drain::{self, Ledger},
    feeds::{EndpointFeed, WatchedSet},
    flow_clock::FlowClock,
    learn::{LearnMaps, Learner},
    loader::{Capacities, CaptureClock, Sensor, ServiceTable},
    pins::{self, SensorMeta},
    pseudonym::Pseudonymizer,
    report::{Report, ReportContext, ReportFormat},
    run::sensor_name,
    snapshot::{Snapshotter, WriteAttempt, unix_ns_to_time},
    testrun::{self, MIN_TEST_FRAME},
};

/// The longest frame BPF_PROG_TEST_RUN surely hands a program whole: the
/// rest of a longer one goes into fragments the program is not told of
/// (its linear part is a page less 256 bytes of headroom and the fragment
/// table: 3,520 bytes on x86-64 with 17 fragments, less with more).
pub const WHOLE_FRAME_MAX: usize = 3_000;

/// `frame` as the test run gets it: longer than [`WHOLE_FRAME_MAX`], it
/// is cut there (a multiple of 16 bytes off, so a payload keeps its length
/// modulo 16, which WireGuard's signature checks) and its IPv4 total
/// length or IPv6 payload length (after up to two VLAN tags) shortened by
/// as much (bytes after the IP packet, a trailer, stay after it), as is an
/// IKE message's own length on UDP 500 or 4500, so the program parses the
/// same headers with the same verdict (all it reads lies in the part
/// kept); the capture clock gives it the whole frame's length to count.
pub fn cut_for_test_run(frame: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use crate::capture::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};
    const ETHERTYPE_AT: usize = 12;
    const VLAN_TPIDS: [u16; 2] = [0x8100, 0x88a8];
    if frame.len() <= WHOLE_FRAME_MAX {
        return std::borrow::Cow::Borrowed(frame);
    }
    let kept = frame.len() - (frame.len() - WHOLE_FRAME_MAX).next_multiple_of(16);
    let mut cut = frame[..kept].to_vec();
    let be16 = |at: usize| u16::from_be_bytes([cut[at], cut[at + 1]]);
    let mut ethertype_at = ETHERTYPE_AT;
    for _ in 0..classifier_common::MAX_VLAN_TAGS {
        if !VLAN_TPIDS.contains(&be16(ethertype_at)) {
            break;
        }
        ethertype_at += 4;
    }
    let ip = ethertype_at + 2;
    // Where the IP length field is, and the bytes before the part it counts.
    let (length_at, counted_from) = match be16(ethertype_at) {
        ETHERTYPE_IPV4 => (ip + 2, ip),
        ETHERTYPE_IPV6 => (ip + 4, ip + 40),
        _ => return std::borrow::Cow::Owned(cut),
    };
    let length = usize::from(be16(length_at));
    let claimed_end = counted_from + length;
    // An IPv6 jumbogram (payload length 0) runs to the frame's end.
    if length == 0 || claimed_end <= kept {
        return std::borrow::Cow::Owned(cut);
    }
    // Shortened by what the cut took: a packet claiming more than the frame
    // holds (a capture cut short) still does, one ending inside it keeps
    // the trailer that followed it (an FCS, a switch's tag). After a
    // longer trailer, it ends at the cut.
    const TRAILER_KEPT_MAX: usize = 256;
    let taken = frame.len() - kept;
    let shortened = if frame.len().saturating_sub(claimed_end) <= TRAILER_KEPT_MAX {
        length - taken
    } else {
        kept - counted_from
    };
    let shortened_field = u16::try_from(shortened).unwrap_or(u16::MAX).to_be_bytes();
    cut[length_at..length_at + 2].copy_from_slice(&shortened_field);
    shorten_ike_message(
        &mut cut,
        ip,
        counted_from + length,
        counted_from + shortened,
    );
    std::borrow::Cow::Owned(cut)
}

/// An IKE message on UDP 500 (or 4500, behind its non-ESP marker) whose
/// length field said the whole payload, in an IP packet at `ip` that ended
/// at `old_end` and now ends at `new_end`: its length field follows the
/// payload, as the program's signature compares the two.
fn shorten_ike_message(cut: &mut [u8], ip: usize, old_end: usize, new_end: usize) {
    const PROTO_UDP: u8 = 17;
    const IKE_PORTS: [u16; 2] = [500, 4500];
    const IKE_LENGTH_AT: usize = 24;
    let (protocol, header_len) = match cut[ip] >> 4 {
        4 => (cut[ip + 9], usize::from(cut[ip] & 0x0f) * 4),
        6 => (cut[ip + 6], 40),
        _ => return,
    };
    let udp = ip + header_len;
    let Some(ports) = cut.get(udp..udp + 4) else {
        return;
    };
    let ports = [
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ];
    if protocol != PROTO_UDP || !ports.iter().any(|port| IKE_PORTS.contains(port)) {
        return;
    }
    let payload = udp + 8;
    // Where the program looks for the header, in its order: at the
    // payload on port 500, behind the non-ESP marker on 4500.
    let on_500 = ports.contains(&500).then_some(payload);
    let behind_marker = (ports.contains(&4500) && cut.get(payload..payload + 4) == Some(&[0; 4]))
        .then_some(payload + 4);
    for ike in on_500.into_iter().chain(behind_marker) {
        let length_at = ike + IKE_LENGTH_AT;
        let Some(field) = cut.get(length_at..length_at + 4) else {
            continue;
        };
        let length = u32::from_be_bytes([field[0], field[1], field[2], field[3]]) as usize;
        if old_end.checked_sub(ike) == Some(length) {
            let shortened = u32::try_from(new_end - ike).unwrap_or(u32::MAX);
            cut[length_at..length_at + 4].copy_from_slice(&shortened.to_be_bytes());
            return;
        }
    }
}

/// Drain at least this often (in frames), so flows are read before a full
/// flow table evicts them, as the live daemon drains every second.
const DRAIN_EVERY_FRAMES: u64 = 200_000;

/// Most idle snapshots one step of the capture's clock may write (over a
/// decade of hourly files): a longer jump is a corrupt timestamp far more
/// often than a capture that really paused that long.
const MAX_IDLE_SNAPSHOTS: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{file}: frame {frame}: BPF_PROG_TEST_RUN failed: {source}")]
    Run {
        file: String,
        frame: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no frames")]
    Empty(String),
    #[error("{second}: the same file as {first}: its frames would be counted twice")]
    SameFileTwice { first: String, second: String },
    #[error(
        "--snapshot-dir {dir}: its snapshots run to {end} ({file}), past the capture's first frame at {first_frame}: this capture's snapshots would overlap them (counted twice in `classifier report`); replay into another folder, or remove those snapshots and the folder's .classifier-state.json, which records the last one"
    )]
    SnapshotsOverlap {
        dir: String,
        file: String,
        end: String,
        first_frame: String,
    },
    #[error(
        "{file}: frame {frame}: its time {time} is {days:.1} days after the frame before; --snapshot-dir would write {idle} idle snapshots (a corrupt timestamp? split the capture there)"
    )]
    TimeJump {
        file: String,
        frame: u64,
        time: String,
        days: f64,
        idle: i64,
    },
    #[error(
        "{file}: frame {frame}: its time {time} leaves no room for a snapshot boundary after it (times end in 2262; a corrupt timestamp?)"
    )]
    NoBoundaryAfter {
        file: String,
        frame: u64,
        time: String,
    },
}

/// What the replay counted outside the report.
#[derive(Debug, Default)]
struct Progress {
    frames: u64,
    /// Captured shorter than they were on the wire (snap length).
    cut_short: u64,
    /// The first frame's time, where snapshots start.
    first_ns: Option<i64>,
    /// The earliest and latest frame times: the report's period.
    earliest_ns: i64,
    latest_ns: i64,
}

/// Everything replaying needs besides the frames.
struct Replay {
    sensor: Sensor,
    clock: CaptureClock,
    ledger: Ledger,
    meta: SensorMeta,
    snapshots: Option<(std::path::PathBuf, std::time::Duration)>,
    snapshotter: Option<Snapshotter>,
    boundary: Option<i64>,
    pseudonymizer: Option<Pseudonymizer>,
    progress: Progress,
    /// Learning from DNS answers, on the capture's clock.
    learning: Option<(Learner, LearnMaps)>,
}

impl Replay {
    fn drain(&mut self) -> Result<(), drain::DrainError> {
        // The capture clock is Unix time already.
        drain::read_into(&self.sensor, &mut self.ledger, FlowClock::UNIX_NS)
    }

    /// Starts snapshots at the first frame's time.
    fn start(&mut self, first_ns: i64) -> Result<(), Box<dyn std::error::Error>> {
        self.progress.first_ns = Some(first_ns);
        self.progress.earliest_ns = first_ns;
        self.progress.latest_ns = first_ns;
        self.meta.attached_at_unix_ns = first_ns;
        if let Some((dir, interval)) = &self.snapshots {
            let resumed = Snapshotter::resume(
                dir,
                *interval,
                &self.meta,
                false,
                sensor_name(),
                self.pseudonymizer.clone(),
            )?;
            if let Some((end_ns, file)) = resumed.snapshotter.folder_end()
                && end_ns > first_ns
            {
                return Err(ReplayError::SnapshotsOverlap {
                    dir: dir.display().to_string(),
                    file: file.to_string(),
                    end: crate::report::rfc3339(unix_ns_to_time(end_ns)),
                    first_frame: crate::report::rfc3339(unix_ns_to_time(first_ns)),
                }
                .into());
            }
            self.boundary = Some(resumed.snapshotter.next_boundary(first_ns));
            self.snapshotter = Some(resumed.snapshotter);
        }
        Ok(())
    }

    /// Cuts every boundary the capture's time has passed.
    fn cut_passed_boundaries(&mut self, now_ns: i64) -> Result<(), drain::DrainError> {
        while let (Some(boundary), Some(_)) = (self.boundary, &self.snapshotter) {
            if now_ns < boundary {
                break;
            }
            self.drain()?;
            self.cut_snapshot(boundary, WriteAttempt::AtNextCut);
            if let Some(snapshotter) = &self.snapshotter {
                self.boundary = Some(snapshotter.next_boundary(boundary));
            }
        }
        Ok(())
    }

    /// Cuts a snapshot ending at `end_ns`, with what learning did in its
    /// interval as live snapshots have it, and writes it; whether every
    /// snapshot cut so far is written.
    fn cut_snapshot(&mut self, end_ns: i64, attempt: WriteAttempt) -> bool {
        let Some(snapshotter) = &mut self.snapshotter else {
            return true;
        };
        snapshotter.cut_with_learning(
            &mut self.ledger,
            end_ns,
            None,
            self.learning.as_ref().map(|(learner, _)| learner),
        );
        snapshotter.write_pending(attempt)
    }

    fn frame(
        &mut self,
        file: &str,
        number: u64,
        time_ns: i64,
        data: &[u8],
        original_len: u32,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if self.progress.first_ns.is_none() {
            self.start(time_ns)?;
        }
        if let Some(snapshotter) = &self.snapshotter
            && snapshotter.next_boundary(time_ns) <= time_ns
        {
            // Cutting would never get past it.
            return Err(ReplayError::NoBoundaryAfter {
                file: file.to_string(),
                frame: number,
                time: crate::report::rfc3339(unix_ns_to_time(time_ns)),
            }
            .into());
        }
        if let (Some(boundary), Some((_, interval))) = (self.boundary, &self.snapshots) {
            let interval_ns = i64::try_from(interval.as_nanos())
                .unwrap_or(i64::MAX)
                .max(1);
            let idle = time_ns.saturating_sub(boundary) / interval_ns;
            if idle > MAX_IDLE_SNAPSHOTS {
                let before = self.progress.latest_ns;
                return Err(ReplayError::TimeJump {
                    file: file.to_string(),
                    frame: number,
                    time: crate::report::rfc3339(unix_ns_to_time(time_ns)),
                    days: time_ns.saturating_sub(before) as f64 / 86_400e9,
                    idle,
                }
                .into());
            }
        }
        self.cut_passed_boundaries(time_ns)?;
        let progress = &mut self.progress;
        progress.frames += 1;
        progress.earliest_ns = progress.earliest_ns.min(time_ns);
        progress.latest_ns = progress.latest_ns.max(time_ns);
        if (data.len() as u64) < u64::from(original_len) {
            progress.cut_short += 1;
        }
        if data.len() < MIN_TEST_FRAME {
            self.ledger.count_runt(data.len() as u64);
        } else {
            self.clock.set(time_ns);
            self.clock.set_frame_len(data.len());
            // Entries whose time is up by this frame's time are gone first.
            if let Some((learner, maps)) = &mut self.learning {
                maps.expire(learner, &self.sensor.services, time_ns);
            }
            let fd = testrun::program_fd(&self.sensor)?;
            testrun::run_repeated(fd, &cut_for_test_run(data), 1).map_err(|source| {
                ReplayError::Run {
                    file: file.to_string(),
                    frame: number,
                    source,
                }
            })?;
            // What the frame taught applies from the next frame on.
            if let Some((learner, maps)) = &mut self.learning {
                maps.pump(learner, &self.sensor.services, time_ns);
            }
        }
        if self.progress.frames.is_multiple_of(DRAIN_EVERY_FRAMES) {
            self.drain()?;
        }
        Ok(())
    }
}

fn progress_bar(files: &[std::path::PathBuf], format: ReportFormat) -> ProgressBar {
    let total: u64 = files
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    if format == ReportFormat::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn pcap(args: &PcapArgs) -> Result<(), Box<dyn std::error::Error>> {
    crate::run::set_sensor_name(args.sensor_name.as_deref());
    let watched = WatchedSet::from_arguments(&args.feeds.watch, &args.feeds.watch_files)?;
    let endpoints = EndpointFeed::from_arguments(&args.feeds.endpoint_files)?;
    let pseudonymizer = match &args.pseudonymize_key {
        Some(path) => Some(Pseudonymizer::from_file(path)?),
        None => None,
    };
    if pseudonymizer.is_some() {
        crate::feeds::refuse_watched_endpoints(&watched, &endpoints)?;
    }
    // Open every file first: a bad one is refused before anything runs.
    let mut readers = Vec::new();
    // By device and inode: a link of any kind, or another path, is the file.
    let mut opened: std::collections::HashMap<(u64, u64), &Path> = std::collections::HashMap::new();
    for path in &args.files {
        if let Ok(metadata) = std::fs::metadata(path)
            && let Some(first) = opened.insert((metadata.dev(), metadata.ino()), path)
        {
            return Err(ReplayError::SameFileTwice {
                first: first.display().to_string(),
                second: path.display().to_string(),
            }
            .into());
        }
        readers.push(CaptureReader::open(path)?);
    }
    if let Some(dir) = &args.snapshot_dir {
        // A folder that cannot be made is refused before loading.
        crate::snapshot::create_folder(dir)?;
    }
    let capacities = Capacities {
        flows: args.flow_capacity,
        learn_rate: args.learn.hand_over_rate(),
        ..Capacities::default()
    };
    let mut learner = Learner::from_args(&args.learn)?;
    if let Some(learner) = &mut learner {
        // Nothing learned yet: nothing to forget.
        let _ = learner.set_watched(&watched);
    }
    let mut services = ServiceTable::new(endpoints.services());
    if let Some(learner) = &learner {
        services = services.extended_with(learner.domains.services());
    }
    let mut sensor = Sensor::load_for_capture(&watched, &endpoints, capacities, services)?;
    let learning = match learner {
        Some(learner) => {
            let (events, learned, verdicts, hints) = sensor
                .take_learn_maps()
                .ok_or("the program has no learning maps")?;
            Some((
                learner,
                LearnMaps::from_maps(events, learned, verdicts, &hints)?,
            ))
        }
        None => None,
    };
    let clock = sensor.capture_clock()?;
    let names: Vec<String> = args
        .files
        .iter()
        .map(|p| format!("pcap:{}", p.display()))
        .collect();
    let meta = SensorMeta {
        schema: String::new(),
        instance: pins::new_instance_id(),
        version: env!("CARGO_PKG_VERSION").into(),
        layout: pins::layout(),
        attached_at_unix_ns: 0,
        interfaces: names.clone(),
        modes: Vec::new(),
        services: sensor.services.names().to_vec(),
        feeds: endpoints.origins.clone(),
        watched: watched.all().map(|net| net.to_string()).collect(),
        endpoint_prefixes_v4: endpoints.count(true) as u64,
        endpoint_prefixes_v6: endpoints.count(false) as u64,
        flow_capacity: u64::from(args.flow_capacity),
        flow_cache_slots: 0,
        reloads: 0,
        reload_failures: 0,
        last_reload_error: None,
        feeds_loaded_at_unix_ns: 0,
        dispatcher_priority: None,
        sensor: Some(sensor_name()),
    };
    let mut replay = Replay {
        sensor,
        clock,
        ledger: Ledger::default(),
        meta,
        snapshots: args
            .snapshot_dir
            .clone()
            .map(|dir| (dir, args.snapshot_interval)),
        snapshotter: None,
        boundary: None,
        pseudonymizer,
        progress: Progress::default(),
        learning,
    };

    let bar = progress_bar(&args.files, args.format);
    let started = Instant::now();
    let files: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    let mut frames = TimeOrderedFrames::new(readers);
    while let Some(next) = frames.next() {
        let (file, frame) = next?;
        replay.frame(
            &files[file],
            frame.number,
            frame.timestamp_ns,
            &frame.data,
            frame.original_len,
        )?;
        if replay.progress.frames.is_multiple_of(4096) {
            bar.set_message(file_name(&args.files[file]));
            bar.set_position(frames.bytes_read());
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    if replay.progress.first_ns.is_none() {
        return Err(ReplayError::Empty(
            args.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .into());
    }
    // After the check for no frames at all: a file cut inside its first
    // record has none to count.
    for (file, tail) in frames.cut_tails() {
        log::warn!(
            "{}: the file ends inside a record ({} bytes of it, as when a capture is stopped mid-write); the {} frames before it are counted, that record is not",
            files[file],
            tail.bytes,
            tail.frames_before
        );
    }
    let (earliest_ns, latest_ns) = (replay.progress.earliest_ns, replay.progress.latest_ns);
    replay.drain()?;
    let unwritten = if replay.cut_snapshot(latest_ns, WriteAttempt::Last) {
        0
    } else {
        replay.snapshotter.as_ref().map_or(0, Snapshotter::pending)
    };
    let progress = &replay.progress;
    log::info!(
        "{} frames in {elapsed:.2} s: {:.0} frames per second",
        progress.frames,
        progress.frames as f64 / elapsed.max(1e-9)
    );
    if progress.cut_short > 0 {
        log::warn!(
            "{} frames were captured shorter than on the wire (snap length); the program saw, and the report counts, what was captured",
            progress.cut_short
        );
    }
    let mut report = Report::build(
        &replay.ledger,
        &replay.sensor.services,
        ReportContext {
            start: unix_ns_to_time(earliest_ns),
            end: unix_ns_to_time(latest_ns),
            sensor: sensor_name(),
            interfaces: names,
            feeds: endpoints.origins.clone(),
        },
    );
    report.learning = replay
        .learning
        .as_ref()
        .map(|(learner, _)| learner.report(&replay.ledger.totals));
    if let Some(pseudonymizer) = &replay.pseudonymizer {
        pseudonymizer.apply(&mut report);
    }
    crate::report::write_stdout(&report.render(args.format))?;
    if unwritten > 0 {
        return Err(format!(
            "{unwritten} snapshot(s) could not be written (see the errors above); the report on stdout holds every count"
        )
        .into());
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame of `len` bytes: `tags` VLAN tags, then an IP
    /// header of `ethertype` whose length field says `ip_length`.
    fn frame(tags: usize, ethertype: u16, ip_length: u16, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        for _ in 0..tags {
            frame.extend_from_slice(&[0x81, 0x00, 0, 1]);
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        let ip = frame.len();
        frame.resize(len, 0);
        let at = if ethertype == 0x0800 { ip + 2 } else { ip + 4 };
        frame[at..at + 2].copy_from_slice(&ip_length.to_be_bytes());
        frame
    }

    fn field(frame: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([frame[at], frame[at + 1]])
    }

    #[test]
    fn long_frames_are_cut_with_their_ip_length_shortened_by_the_cut() {
        // Short enough: handed over as it is.
        let short = frame(0, 0x0800, 2986, 3000);
        assert!(matches!(
            cut_for_test_run(&short),
            std::borrow::Cow::Borrowed(_)
        ));
        // IPv4 filling the frame: it ends at the cut.
        let cut = cut_for_test_run(&frame(0, 0x0800, 8986, 9000)).into_owned();
        assert_eq!(cut.len(), WHOLE_FRAME_MAX);
        assert_eq!(usize::from(field(&cut, 16)), WHOLE_FRAME_MAX - 14);
        // A multiple of 16 bytes off: 6,016 of 9,001, so a payload keeps
        // its length modulo 16 (WireGuard's signature checks it).
        let cut = cut_for_test_run(&frame(0, 0x0800, 8987, 9001)).into_owned();
        assert_eq!(cut.len(), 9001 - 6016);
        assert_eq!(usize::from(field(&cut, 16)), 9001 - 6016 - 14);
        assert_eq!((8987 - usize::from(field(&cut, 16))) % 16, 0);
        // After a VLAN tag, and for IPv6 (the payload length after the
        // 40-byte header).
        let cut = cut_for_test_run(&frame(1, 0x0800, 8982, 9000)).into_owned();
        assert_eq!(usize::from(field(&cut, 20)), WHOLE_FRAME_MAX - 18);
        let cut = cut_for_test_run(&frame(0, 0x86dd, 8946, 9000)).into_owned();
        assert_eq!(usize::from(field(&cut, 18)), WHOLE_FRAME_MAX - 14 - 40);
        // An IP packet ending before the cut (padding after it) keeps its
        // length; a jumbogram's 0 stays 0.
        let cut = cut_for_test_run(&frame(0, 0x0800, 100, 9000)).into_owned();
        assert_eq!(field(&cut, 16), 100);
        let cut = cut_for_test_run(&frame(0, 0x86dd, 0, 9000)).into_owned();
        assert_eq!(field(&cut, 18), 0);
        // Claiming 500 bytes more than the frame holds: as much more than
        // the cut, so the program still finds it truncated.
        let cut = cut_for_test_run(&frame(0, 0x0800, 9486, 9000)).into_owned();
        assert_eq!(usize::from(field(&cut, 16)), WHOLE_FRAME_MAX - 14 + 500);
        // Not IP: cut, nothing rewritten.
        let arp = frame(0, 0x0806, 7, 5000);
        assert_eq!(&cut_for_test_run(&arp)[..], &arp[..WHOLE_FRAME_MAX]);
        // A 4-byte trailer after the packet: it stays after it, and the
        // packet keeps its length modulo 16 (6,016 bytes off).
        let cut = cut_for_test_run(&frame(0, 0x0800, 8983, 9001)).into_owned();
        assert_eq!(usize::from(field(&cut, 16)), 8983 - 6016);
        // A trailer longer than 256 bytes: the packet ends at the cut.
        let cut = cut_for_test_run(&frame(0, 0x0800, 8000, 9001)).into_owned();
        assert_eq!(usize::from(field(&cut, 16)), 9001 - 6016 - 14);
    }

    /// An IPv4 UDP frame from `port` to `port` whose payload, `marker`
    /// zero bytes and then an IKE header, fills it; the IKE length field
    /// says `ike_length`.
    fn ike_frame(port: u16, marker: usize, len: usize, ike_length: u32) -> Vec<u8> {
        let mut frame = frame(0, 0x0800, u16::try_from(len - 14).unwrap(), len);
        frame[14] = 0x45;
        frame[14 + 9] = 17;
        frame[34..36].copy_from_slice(&port.to_be_bytes());
        frame[36..38].copy_from_slice(&port.to_be_bytes());
        frame[42..42 + marker].fill(0);
        let at = 42 + marker + 24;
        frame[42 + marker] = 1;
        frame[at..at + 4].copy_from_slice(&ike_length.to_be_bytes());
        frame
    }

    #[test]
    fn an_ike_message_is_shortened_with_its_packet() {
        let ike_length = |frame: &[u8], marker: usize| {
            let at = 42 + marker + 24;
            u32::from_be_bytes(frame[at..at + 4].try_into().unwrap())
        };
        // UDP 500: the whole payload, 9,000 - 42 bytes, then 6,000 less.
        let cut = cut_for_test_run(&ike_frame(500, 0, 9000, 8958)).into_owned();
        assert_eq!(ike_length(&cut, 0), 8958 - 6000);
        assert_eq!(ike_length(&cut, 0) as usize, cut.len() - 42);
        // UDP 4500 behind the non-ESP marker.
        let cut = cut_for_test_run(&ike_frame(4500, 4, 9000, 8954)).into_owned();
        assert_eq!(ike_length(&cut, 4), 8954 - 6000);
        // A length field that is not the payload's, or another port: left.
        let cut = cut_for_test_run(&ike_frame(500, 0, 9000, 100)).into_owned();
        assert_eq!(ike_length(&cut, 0), 100);
        let cut = cut_for_test_run(&ike_frame(501, 0, 9000, 8958)).into_owned();
        assert_eq!(ike_length(&cut, 0), 8958);
    }
}
