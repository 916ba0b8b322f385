//! Snapshots: every `--snapshot-interval` (aligned to the wall clock, UTC)
//! the daemon cuts its ledger and writes what the interval counted as one
//! report file, `classifier-YYYYMMDDTHHMMSSZ.json` named by the interval's
//! start, chained to the file before it by SHA-256.
//!
//! Nothing lost, nothing counted twice, across restarts and crashes:
//! - A cut takes `counts now - counts at the last cut` (see
//!   [`Ledger`](crate::drain::Ledger)): consecutive snapshots add up to what
//!   the kernel counted.
//! - Before a snapshot file is written, a state file (`.classifier-state.json`,
//!   a one-record write-ahead log) records the snapshot's text and the
//!   checkpoint it was cut at (the kernel's counters and live flows'
//!   baselines), tied to the program instance; after it, a marker
//!   (`.classifier-written`) names it. A starting daemon whose state names
//!   a snapshot the marker does not (the one before died between the
//!   writes) writes that snapshot first; one that adopts the same program
//!   resumes from the checkpoint. So the time a daemon was down lands in
//!   the next snapshot, and nothing that a written snapshot holds is counted
//!   again, even when a pipeline moves the files out of the folder.
//! - Both files are written atomically: a temporary file, fsync, rename,
//!   fsync of the folder. A reader never sees half a file.
//! - A failed write (disk full, folder removed: it is created again) is
//!   logged, retried with back-off, and its snapshot kept in memory (in
//!   order) until it lands.
//! - Boundaries are on the wall clock, elapsed time on the monotonic clock
//!   ([`BoundarySchedule`]): a wall clock stepped either way cuts the
//!   snapshot at the step (partial) and re-aligns, so intervals chain with
//!   no overlap and never run backwards.

use std::{
    collections::VecDeque,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, macros::format_description};

use crate::{
    drain::{Checkpoint, CheckpointText, Ledger},
    feeds::{FeedOrigin, sha256_hex},
    loader::ServiceTable,
    pins::SensorMeta,
    pseudonym::Pseudonymizer,
    report::{Coverage, PreviousSnapshot, Report, ReportContext, SnapshotInfo},
};

pub const FILE_PREFIX: &str = "classifier-";
pub const FILE_SUFFIX: &str = ".json";
/// A snapshot folder's daemon state: the last snapshot written and its
/// checkpoint, where the chain goes on after a restart.
pub const STATE_FILE: &str = ".classifier-state.json";
/// A snapshot folder's marker naming the last snapshot written whole; a
/// state file naming another was interrupted, and is written first.
pub const WRITTEN_MARKER: &str = ".classifier-written";
const STATE_SCHEMA: &str = "classifier.state.v1";
const NS_PER_SECOND: i128 = 1_000_000_000;
const LONGEST_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("snapshot folder {path}: {source}")]
pub struct SnapshotError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl SnapshotError {
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Creates the snapshot folder `dir` and its parents. When that fails
/// because `dir` or a parent is a file or a symbolic link to nothing (the
/// system says only "File exists" or "Not a directory"), the error says
/// which.
pub fn create_folder(dir: &Path) -> Result<(), SnapshotError> {
    create_folder_explained(dir).map_err(|source| SnapshotError {
        path: dir.to_path_buf(),
        source,
    })
}

/// `create_dir_all`, whose error says which of `dir` and its parents is a
/// file or a symbolic link to nothing, where the system would say only
/// "File exists" or "Not a directory" (also for evidence folders).
pub fn create_folder_explained(dir: &Path) -> std::io::Result<()> {
    let Err(source) = std::fs::create_dir_all(dir) else {
        return Ok(());
    };
    // The nearest of `dir` and its parents that is there is the one in the way.
    Err(dir
        .ancestors()
        .find(|path| std::fs::symlink_metadata(path).is_ok())
        .and_then(|path| not_a_folder(dir, path))
        .map_or(source, std::io::Error::other))
}

/// The name of [`check_writable`]'s file, less the pid it ends with.
const WRITE_PROBE: &str = ".classifier-write-check.tmp-";

/// Whether this process can create files in `dir`, tried by creating one
/// and removing it (permissions alone do not tell: a read-only mount, an
/// ACL, capabilities). The daemon asks once it has dropped its
/// capabilities, as root keeps no `CAP_DAC_OVERRIDE`: a folder it could
/// write into while loading may be closed to it from then on.
pub fn check_writable(dir: &Path) -> std::io::Result<()> {
    // A probe a killed daemon left (the snapshot writer's sweep of
    // temporaries covers only its own folder) goes first; then a new one,
    // never through a link someone put under its name.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with(WRITE_PROBE) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let probe = dir.join(format!("{WRITE_PROBE}{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match created {
        Ok(_) => match std::fs::remove_file(&probe) {
            // Taken away already (a pipeline that moves every file).
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(std::io::Error::other(format!(
                    "created {} but cannot remove it: {error}",
                    probe.display()
                )))
            }
            _ => Ok(()),
        },
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            Err(std::io::Error::other(format!(
                "cannot create a file in it: {error}; once attached the daemon keeps no \
                 CAP_DAC_OVERRIDE, so the folder's own permissions must let uid {uid} write \
                 into it (chown or chmod it, or choose another folder)"
            )))
        }
        Err(error) => Err(std::io::Error::other(format!(
            "cannot create a file in it: {error}"
        ))),
    }
}

/// What `path` (`dir` or one of its parents, which is there) is when it
/// is not a folder; `None` when it is one, or cannot be told.
fn not_a_folder(dir: &Path, path: &Path) -> Option<String> {
    let subject = if path == dir {
        String::new()
    } else {
        format!("{} is ", path.display())
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some(format!("{subject}a file, not a folder")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let target = std::fs::read_link(path).ok()?;
            Some(format!(
                "{subject}a symbolic link to {}, which does not exist",
                target.display()
            ))
        }
        Err(_) => None,
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError {
        path: path.to_path_buf(),
        source,
    }
}

/// The write-ahead record: the snapshot about to be written and the
/// checkpoint it was cut at.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    schema: String,
    instance: String,
    snapshot_file: String,
    snapshot_sha256: String,
    snapshot_end_unix_ns: i64,
    snapshot: String,
    checkpoint: CheckpointText,
}

/// A snapshot cut but not yet written.
struct Pending {
    /// The report until its first write attempt fixes name and text.
    report: Option<Report>,
    /// File name and text, fixed at the first attempt so a retry writes
    /// the same bytes under the same name.
    prepared: Option<(String, String)>,
    start_unix_ns: i64,
    end_unix_ns: i64,
    checkpoint: CheckpointText,
    /// The tick the drain the checkpoint holds started at, if known: once
    /// the checkpoint is on disk, the program may recycle flow-cache slots
    /// idle since before it (`CounterMaps::allow_recycling`).
    recycle_tick: Option<u64>,
}

/// What every snapshot of this daemon says about its source.
struct Source {
    sensor: String,
    interfaces: Vec<String>,
    feeds: Vec<FeedOrigin>,
    /// Feeds a reload replaced during the interval being counted: they
    /// named endpoints in part of it, so its snapshot lists them too.
    replaced_feeds: Vec<FeedOrigin>,
    services: ServiceTable,
    instance: String,
    attached_at: String,
    watched: Vec<String>,
    pseudonymizer: Option<Pseudonymizer>,
}

/// Cuts and writes snapshots into one folder.
pub struct Snapshotter {
    dir: PathBuf,
    interval_ns: i128,
    source: Source,
    /// Where the interval being counted started (Unix ns).
    start_unix_ns: i64,
    /// Coverage of the interval being counted.
    restarts: u64,
    gap_before_seconds: f64,
    counter_reset: bool,
    /// The interval is partial whatever its times say: the wall clock
    /// stepped during it, or the program missed packets in it.
    marked_partial: bool,
    previous: Option<PreviousSnapshot>,
    /// Where the snapshot the folder held last ends (Unix ns), if known.
    previous_end_unix_ns: Option<i64>,
    pending: VecDeque<Pending>,
    /// The newest `Pending::recycle_tick` written to disk, not yet taken.
    persisted_recycle_tick: Option<u64>,
    retry_at: Option<Instant>,
    backoff: Duration,
    pub writes: u64,
    pub write_failures: u64,
    pub last_write_unix_seconds: Option<f64>,
    /// Learning's state, copied into the next snapshot cut.
    learning: Option<crate::report::Learning>,
    /// The learner's cumulative counts at the last cut: a snapshot carries
    /// those of its interval.
    learn_stats_at_cut: crate::learn::LearnStats,
    /// Held while the daemon runs: one writer per folder.
    _lock: std::fs::File,
}

/// How a daemon starts counting: the ledger to drain into and when its
/// counts begin.
pub struct Resumed {
    pub snapshotter: Snapshotter,
    pub ledger: Ledger,
    pub start_unix_ns: i64,
}

pub fn now_unix_ns() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub fn unix_ns_to_time(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `time` as file names carry it: `20261124T190000Z`.
pub fn file_stamp(time: OffsetDateTime) -> String {
    time.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

/// The snapshot file name for an interval starting at `start`.
pub fn file_name(start: OffsetDateTime) -> String {
    format!("{FILE_PREFIX}{}{FILE_SUFFIX}", file_stamp(start))
}

/// Sorts snapshot names by time: the start stamp, then the counter a name
/// collision added (`…Z.json`, `…Z-1.json`, `…Z-2.json`, `…Z-10.json`).
pub fn snapshot_order(name: &str) -> (String, u64) {
    let stem = name.strip_suffix(FILE_SUFFIX).unwrap_or(name);
    match stem.rsplit_once('-') {
        Some((base, counter)) if base.len() > FILE_PREFIX.len() => {
            (base.to_string(), counter.parse().unwrap_or(0))
        }
        _ => (stem.to_string(), 0),
    }
}

/// Whether `name` is a snapshot file (not a temporary or state file).
pub fn is_snapshot_name(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// Test hook, not an interface: milliseconds to sleep after a snapshot
/// file's temporary is written and synced and before it is renamed, so an
/// integration test can SIGKILL the daemon inside that window.
const TEST_PAUSE_BEFORE_RENAME: &str = "CLASSIFIER_TEST_PAUSE_BEFORE_RENAME_MS";

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if is_snapshot_name(name)
            && let Some(pause) = std::env::var(TEST_PAUSE_BEFORE_RENAME)
                .ok()
                .and_then(|ms| ms.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(pause));
        }
        std::fs::rename(&temporary, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The previous-link to the newest snapshot in `dir` (by name, which sorts
/// by time) and the end of the interval it covers. Files named like
/// snapshots that are not (a merged report, anything else) are passed over.
fn link_to_newest_snapshot(
    dir: &Path,
) -> Result<Option<(PreviousSnapshot, Option<i64>)>, SnapshotError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| is_snapshot_name(name))
        .collect();
    names.sort_by_key(|name| snapshot_order(name));
    Ok(names.iter().rev().find_map(|name| link_to(dir, name)))
}

/// The previous-link to `dir/name` and the end of the interval it covers,
/// if it is a snapshot.
fn link_to(dir: &Path, name: &str) -> Option<(PreviousSnapshot, Option<i64>)> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    let report = serde_json::from_slice::<Report>(&bytes).ok()?;
    report.snapshot.as_ref()?;
    let end = OffsetDateTime::parse(&report.end, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|end| i64::try_from(end.unix_timestamp_nanos()).ok());
    Some((
        PreviousSnapshot {
            file: name.to_string(),
            sha256: sha256_hex(&bytes),
        },
        end,
    ))
}

fn read_state(dir: &Path) -> Option<StateFile> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(state) if state.schema == STATE_SCHEMA => Some(state),
        Ok(state) => {
            log::warn!(
                "{}: unknown schema {}; ignored",
                path.display(),
                state.schema
            );
            None
        }
        Err(error) => {
            log::warn!("{}: unreadable ({error}); ignored", path.display());
            None
        }
    }
}

impl Snapshotter {
    /// Opens `dir` (creating it), links to its newest snapshot, and decides
    /// where counting starts: at the checkpoint of the last snapshot when
    /// the program it drained is the one `meta` describes and was adopted,
    /// else at the program's attachment (adopted without a checkpoint) or
    /// now (a program just loaded, which starts from zero).
    pub fn resume(
        dir: &Path,
        interval: Duration,
        meta: &SensorMeta,
        adopted: bool,
        sensor: String,
        pseudonymizer: Option<Pseudonymizer>,
    ) -> Result<Resumed, SnapshotError> {
        create_folder(dir)?;
        let lock = lock_folder(dir)?;
        remove_stale_temporaries(dir);
        let state = read_state(dir);
        let interrupted = state
            .as_ref()
            .and_then(|state| interrupted_write(dir, state));
        // The chain continues from the last snapshot written here, even if
        // a pipeline has moved it away since.
        let link = match &state {
            Some(state) => Some((
                PreviousSnapshot {
                    file: state.snapshot_file.clone(),
                    sha256: state.snapshot_sha256.clone(),
                },
                Some(state.snapshot_end_unix_ns),
            )),
            None => link_to_newest_snapshot(dir)?,
        };
        let resumable = state
            .as_ref()
            .filter(|state| adopted && state.instance == meta.instance);
        // A snapshot before this one drained another program's counters.
        let counter_reset = state
            .as_ref()
            .is_some_and(|state| state.instance != meta.instance);
        let resumed = resumable.and_then(|state| {
            let ledger = Checkpoint::from_text(&state.checkpoint)
                .and_then(|checkpoint| Ledger::resume(&checkpoint, meta.flow_cache_slots));
            if ledger.is_none() {
                log::warn!(
                    "{}: its checkpoint does not fit this build or program; counting from the program's attachment",
                    dir.join(STATE_FILE).display()
                );
            }
            ledger.map(|ledger| (state, ledger))
        });
        let (ledger, start_unix_ns) = match resumed {
            Some((state, ledger)) => {
                log::info!(
                    "resuming after snapshot {}: counts since {} go into the next snapshot",
                    state.snapshot_file,
                    crate::report::rfc3339(unix_ns_to_time(state.snapshot_end_unix_ns))
                );
                (ledger, state.snapshot_end_unix_ns)
            }
            // The ledger counts from zero: everything since the attachment.
            None => (Ledger::default(), meta.attached_at_unix_ns),
        };
        let gap_before_seconds = link.as_ref().and_then(|(_, end)| *end).map_or(0.0, |end| {
            (start_unix_ns.saturating_sub(end)).max(0) as f64 / 1e9
        });
        let interval_ns = i128::from(interval.as_secs().max(1)) * NS_PER_SECOND;
        let snapshotter = Self {
            dir: dir.to_path_buf(),
            interval_ns,
            source: Source {
                sensor,
                interfaces: meta.interfaces.clone(),
                feeds: meta.feeds.clone(),
                replaced_feeds: Vec::new(),
                services: meta.service_table(),
                instance: meta.instance.clone(),
                attached_at: crate::report::rfc3339(unix_ns_to_time(meta.attached_at_unix_ns)),
                watched: meta.watched.clone(),
                pseudonymizer,
            },
            start_unix_ns,
            restarts: u64::from(link.is_some()),
            counter_reset,
            marked_partial: false,
            gap_before_seconds,
            previous_end_unix_ns: link.as_ref().and_then(|(_, end)| *end),
            previous: link.map(|(previous, _)| previous),
            // A cut the previous daemon did not finish writing goes first.
            pending: interrupted.into_iter().collect(),
            persisted_recycle_tick: None,
            _lock: lock,
            retry_at: None,
            backoff: Duration::from_secs(1),
            writes: 0,
            write_failures: 0,
            last_write_unix_seconds: None,
            learning: None,
            learn_stats_at_cut: crate::learn::LearnStats::default(),
        };
        Ok(Resumed {
            snapshotter,
            ledger,
            start_unix_ns,
        })
    }

    /// What later snapshots say about their source after a feed reload:
    /// the feeds, services and watched set now in force.
    pub fn update_source(&mut self, meta: &SensorMeta) {
        let replaced = std::mem::replace(&mut self.source.feeds, meta.feeds.clone());
        FeedOrigin::note_replaced(&mut self.source.replaced_feeds, replaced, &meta.feeds);
        self.source.services = meta.service_table();
        self.source.watched = meta.watched.clone();
    }

    /// The first interval boundary after `after_unix_ns`.
    pub fn next_boundary(&self, after_unix_ns: i64) -> i64 {
        boundary_after(after_unix_ns, self.interval_ns)
    }

    pub fn is_boundary(&self, unix_ns: i64) -> bool {
        i128::from(unix_ns).rem_euclid(self.interval_ns) == 0
    }

    /// The boundaries of the interval being counted and those after it,
    /// from `now` on.
    pub fn schedule(&self, now: ClockReading) -> BoundarySchedule {
        BoundarySchedule::new(self.interval_ns, self.start_unix_ns, now)
    }

    /// The wall clock stepped by `step_ns` (forward when positive): the
    /// next cut is partial whatever its times say.
    pub fn note_clock_step(&mut self, step_ns: i64) {
        log::warn!(
            "the wall clock stepped {:+.3} s: the snapshot is cut at the step (marked partial) and the next boundary follows the new clock",
            step_ns as f64 / 1e9
        );
        self.marked_partial = true;
    }

    /// The program was found detached from an interface and attached to it
    /// again: packets in between were missed, so the interval being counted
    /// is partial.
    pub fn note_missed_packets(&mut self) {
        self.marked_partial = true;
    }

    /// Snapshots cut but not yet written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Cuts as [`Self::cut`], the snapshot carrying what `learner` did in
    /// its interval (every snapshot has it while learning is on).
    pub fn cut_with_learning(
        &mut self,
        ledger: &mut Ledger,
        end_unix_ns: i64,
        recycle_tick: Option<u64>,
        learner: Option<&crate::learn::Learner>,
    ) {
        self.learning = learner.map(|learner| {
            let mut learning = learner.report(&ledger.totals_since_mark());
            let cumulative = learning.stats;
            learning.stats = cumulative.since(&self.learn_stats_at_cut);
            learning.stats_per_interval = true;
            self.learn_stats_at_cut = cumulative;
            learning
        });
        self.cut(ledger, end_unix_ns, recycle_tick);
    }

    /// Cuts the ledger at `end_unix_ns` (just drained) into a snapshot and
    /// queues it for writing. `recycle_tick`: the tick the ledger's last
    /// drain started at (see [`Self::take_persisted_recycle_tick`]).
    pub fn cut(&mut self, ledger: &mut Ledger, end_unix_ns: i64, recycle_tick: Option<u64>) {
        // A clock stepped back never makes an interval end before it began.
        let end_unix_ns = end_unix_ns.max(self.start_unix_ns);
        let interval = ledger.since_mark();
        let checkpoint = ledger.cut();
        let start_unix_ns = self.start_unix_ns;
        let replaced_feeds = std::mem::take(&mut self.source.replaced_feeds);
        let source = &self.source;
        let mut report = Report::build(
            &interval,
            &source.services,
            ReportContext {
                start: unix_ns_to_time(start_unix_ns),
                end: unix_ns_to_time(end_unix_ns),
                sensor: source.sensor.clone(),
                interfaces: source.interfaces.clone(),
                // In the order they were loaded: those replaced first.
                feeds: replaced_feeds
                    .into_iter()
                    .chain(source.feeds.clone())
                    .collect(),
            },
        );
        report.snapshot = Some(SnapshotInfo {
            interval_seconds: u64::try_from(self.interval_ns / NS_PER_SECOND).unwrap_or(0),
            instance: source.instance.clone(),
            program_attached_at: source.attached_at.clone(),
            watched: source.watched.clone(),
            previous: None,
            coverage: Coverage {
                restarts: self.restarts,
                gap_before_seconds: self.gap_before_seconds,
                counter_reset: self.counter_reset,
                // Anything but exactly one aligned interval.
                partial: self.marked_partial
                    || !self.is_boundary(start_unix_ns)
                    || i128::from(end_unix_ns) - i128::from(start_unix_ns) != self.interval_ns,
            },
            pseudonym_key_id: None,
        });
        report.learning = self.learning.take();
        if let Some(pseudonymizer) = &source.pseudonymizer {
            pseudonymizer.apply(&mut report);
        }
        self.pending.push_back(Pending {
            report: Some(report),
            prepared: None,
            start_unix_ns,
            end_unix_ns,
            checkpoint: checkpoint.to_text(),
            recycle_tick,
        });
        self.start_unix_ns = end_unix_ns;
        self.restarts = 0;
        self.gap_before_seconds = 0.0;
        self.counter_reset = false;
        self.marked_partial = false;
    }

    /// Where the newest snapshot the folder held when it was opened ends,
    /// and its file name.
    pub fn folder_end(&self) -> Option<(i64, &str)> {
        Some((
            self.previous_end_unix_ns?,
            self.previous.as_ref()?.file.as_str(),
        ))
    }

    /// The tick of the newest checkpoint written since the last call: a
    /// daemon that resumes after a crash counts from a checkpoint at least
    /// that new, so flow-cache slots idle since before it hold nothing it
    /// would miss.
    pub fn take_persisted_recycle_tick(&mut self) -> Option<u64> {
        self.persisted_recycle_tick.take()
    }

    /// Writes queued snapshots in order, unless a failed write's back-off
    /// has not passed (only [`WriteAttempt::WhenDue`] waits for it).
    /// Returns whether all were written.
    pub fn write_pending(&mut self, attempt: WriteAttempt) -> bool {
        if attempt == WriteAttempt::WhenDue && self.retry_at.is_some_and(|at| Instant::now() < at) {
            return self.pending.is_empty();
        }
        while let Some(pending) = self.pending.front_mut() {
            match write_one(&self.dir, &self.source.instance, &self.previous, pending) {
                Ok(previous) => {
                    log::info!("wrote snapshot {}", previous.file);
                    if let Some(tick) = pending.recycle_tick {
                        self.persisted_recycle_tick = self.persisted_recycle_tick.max(Some(tick));
                    }
                    self.previous = Some(previous);
                    self.pending.pop_front();
                    self.writes += 1;
                    self.last_write_unix_seconds = Some(now_unix_ns() as f64 / 1e9);
                    self.retry_at = None;
                    self.backoff = Duration::from_secs(1);
                }
                Err(error) => {
                    self.write_failures += 1;
                    let what_next = match attempt {
                        WriteAttempt::WhenDue | WriteAttempt::Now => format!(
                            "kept in memory, retrying in {} s (no counts are lost while the daemon runs)",
                            self.backoff.as_secs()
                        ),
                        WriteAttempt::AtNextCut => {
                            "kept in memory, retried at the next snapshot boundary and at the end"
                                .to_string()
                        }
                        WriteAttempt::Last => "not written".to_string(),
                    };
                    log::error!(
                        "cannot write a snapshot into {}: {error}; {} snapshot(s) {what_next}",
                        self.dir.display(),
                        self.pending.len(),
                    );
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(LONGEST_RETRY);
                    return false;
                }
            }
        }
        true
    }
}

/// When [`Snapshotter::write_pending`] writes, and what a failure leads to
/// (its log line says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAttempt {
    /// The daemon's loop: not before a failed write's back-off has passed.
    WhenDue,
    /// Right away (a snapshot was just cut); a failure is retried after
    /// the back-off.
    Now,
    /// A replay's boundary: a failure is retried at the next one.
    AtNextCut,
    /// The last attempt before exit: a failure is not retried.
    Last,
}

/// A boundary drain this late (ns) cuts at the drain's time instead.
const LATE_BOUNDARY_NS: i64 = 1_000_000_000;
/// Between two readings the wall clock stepped when it moved this much
/// (ns) more or less than the monotonic clock...
const CLOCK_STEP_NS: i64 = 1_000_000_000;
/// ...and more than 1/this of the time between them: NTP slews the wall
/// clock by at most 500 ppm, which is drift, not a step.
const CLOCK_SLEW_DIVISOR: i64 = 1_000;

/// Both clocks, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// `CLOCK_REALTIME` (Unix ns): names the intervals; can step either way.
    pub wall_unix_ns: i64,
    /// `CLOCK_BOOTTIME` (ns): never steps, and counts a suspend as time
    /// that passed (so a resume is a late wake-up, not a step).
    pub monotonic_ns: i64,
}

/// Where time comes from: [`SystemClock`] in the daemon, a fake in tests.
pub trait Clock {
    fn read(&self) -> ClockReading;
}

/// The kernel's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn read(&self) -> ClockReading {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes into a valid timespec.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec)
        };
        ClockReading {
            monotonic_ns: read(libc::CLOCK_BOOTTIME),
            wall_unix_ns: read(libc::CLOCK_REALTIME),
        }
    }
}

/// Why a snapshot is cut where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// At the boundary: the drain woke within `LATE_BOUNDARY_NS` (1 s) of it.
    Boundary,
    /// Woken later (a stalled process): at the drain's time, so the
    /// interval holds no counts from after its end; partial.
    Late,
    /// The wall clock stepped by this many ns (forward when positive):
    /// at the step, partial.
    ClockStep(i64),
}

/// A cut the schedule calls for: drain, then cut the ledger at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundaryCut {
    /// Where the interval began: the previous cut's end.
    pub start_unix_ns: i64,
    /// Never before `start_unix_ns`.
    pub end_unix_ns: i64,
    pub reason: CutReason,
}

/// What the drain loop does after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Cut(BoundaryCut),
    /// Read the clocks again after this long (or at the next drain).
    Wait(Duration),
}

/// When snapshots are cut, decided from clock readings alone (no sleeping,
/// no I/O), so tests drive it with a fake clock.
///
/// Boundaries are multiples of the interval on the wall clock; elapsed time
/// is measured on the monotonic clock. When, between two readings, the
/// wall clock moved more than a second (and more than an NTP slew
/// could) off what the monotonic clock measured, it stepped: the interval
/// is cut at the step, at the later of the old clock's and the new clock's
/// "now" (forward: the new time, as for a late wake-up; backward: the old
/// time, so no time already reported is reported again), and the next
/// boundary is the first after that end (on the new clock). A backward step
/// thus makes the interval after it longer in real time than its times
/// say (the wall clock repeats the step's span); it is marked partial.
/// Every cut starts where the one before ended and never ends before it
/// starts.
#[derive(Debug, Clone)]
pub struct BoundarySchedule {
    interval_ns: i128,
    start_unix_ns: i64,
    boundary_unix_ns: i64,
    last: ClockReading,
}

/// The first multiple of `interval_ns` after `after_unix_ns`.
fn boundary_after(after_unix_ns: i64, interval_ns: i128) -> i64 {
    let next = (i128::from(after_unix_ns).div_euclid(interval_ns) + 1) * interval_ns;
    i64::try_from(next).unwrap_or(i64::MAX)
}

impl BoundarySchedule {
    /// Counting since `start_unix_ns`; the first boundary is the first after
    /// both it and `now` (a start the wall clock has not reached yet, after
    /// a step back while no daemon ran, never gives a negative interval).
    fn new(interval_ns: i128, start_unix_ns: i64, now: ClockReading) -> Self {
        let interval_ns = interval_ns.max(1);
        Self {
            interval_ns,
            start_unix_ns,
            boundary_unix_ns: boundary_after(now.wall_unix_ns.max(start_unix_ns), interval_ns),
            last: now,
        }
    }

    /// The next boundary (Unix ns).
    pub fn boundary(&self) -> i64 {
        self.boundary_unix_ns
    }

    /// Feeds a reading (every drain, and when the wait ends): a cut when
    /// one is due, else how long until the boundary by the wall clock.
    pub fn poll(&mut self, now: ClockReading) -> Next {
        let elapsed = now
            .monotonic_ns
            .saturating_sub(self.last.monotonic_ns)
            .max(0);
        let expected_wall = self.last.wall_unix_ns.saturating_add(elapsed);
        let step = now.wall_unix_ns.saturating_sub(expected_wall);
        self.last = now;
        let tolerance = CLOCK_STEP_NS.max(elapsed / CLOCK_SLEW_DIVISOR);
        if step.unsigned_abs() > tolerance.unsigned_abs() {
            // Forward: the new time (no later drain can see earlier counts);
            // backward: the old clock's, never a time already reported.
            let end = now.wall_unix_ns.max(expected_wall);
            return Next::Cut(self.cut(end, CutReason::ClockStep(step)));
        }
        let late = now.wall_unix_ns.saturating_sub(self.boundary_unix_ns);
        if late > LATE_BOUNDARY_NS {
            return Next::Cut(self.cut(now.wall_unix_ns, CutReason::Late));
        }
        if late >= 0 {
            return Next::Cut(self.cut(self.boundary_unix_ns, CutReason::Boundary));
        }
        Next::Wait(Duration::from_nanos(late.unsigned_abs()))
    }

    /// Ends the interval at `end` (never before its start) and aims at the
    /// first boundary after that end.
    fn cut(&mut self, end: i64, reason: CutReason) -> BoundaryCut {
        let start_unix_ns = self.start_unix_ns;
        let end_unix_ns = end.max(start_unix_ns);
        self.start_unix_ns = end_unix_ns;
        self.boundary_unix_ns = boundary_after(end_unix_ns, self.interval_ns);
        BoundaryCut {
            start_unix_ns,
            end_unix_ns,
            reason,
        }
    }
}

/// Writes one snapshot: the state record first, then the file, then the
/// marker. A retry writes the same bytes under the same name, and skips a
/// file that is already there with them.
fn write_one(
    dir: &Path,
    instance: &str,
    previous: &Option<PreviousSnapshot>,
    pending: &mut Pending,
) -> std::io::Result<PreviousSnapshot> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        log::warn!("{}: the folder was gone; created it again", dir.display());
    }
    let (name, text) = match &pending.prepared {
        Some(prepared) => prepared.clone(),
        None => {
            let mut report = pending
                .report
                .take()
                .ok_or_else(|| std::io::Error::other("nothing to write"))?;
            if let Some(snapshot) = &mut report.snapshot {
                snapshot.previous = previous.clone();
            }
            let mut text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
            text.push('\n');
            let base = file_name(unix_ns_to_time(pending.start_unix_ns));
            let mut name = base.clone();
            let mut suffix = 0;
            while dir.join(&name).exists() {
                suffix += 1;
                name = base.replace(FILE_SUFFIX, &format!("-{suffix}{FILE_SUFFIX}"));
            }
            pending.prepared = Some((name.clone(), text.clone()));
            (name, text)
        }
    };
    let sha256 = sha256_hex(text.as_bytes());
    let state = StateFile {
        schema: STATE_SCHEMA.to_string(),
        instance: instance.to_string(),
        snapshot_file: name.clone(),
        snapshot_sha256: sha256.clone(),
        snapshot_end_unix_ns: pending.end_unix_ns,
        snapshot: text.clone(),
        checkpoint: pending.checkpoint.clone(),
    };
    let state = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    write_atomically(dir, STATE_FILE, &state)?;
    write_snapshot_once(dir, &name, &text)?;
    write_atomically(dir, WRITTEN_MARKER, name.as_bytes())?;
    Ok(PreviousSnapshot { file: name, sha256 })
}

/// Writes `text` as `dir/name` unless that file already holds it.
fn write_snapshot_once(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    if std::fs::read(dir.join(name)).is_ok_and(|bytes| bytes == text.as_bytes()) {
        return Ok(());
    }
    write_atomically(dir, name, text.as_bytes())
}

/// The snapshot the writer of `dir` (a daemon or a replay) last wrote
/// whole, with the SHA-256 it wrote: its state file's, when the marker says
/// that write finished, else the one the state's unwritten cut follows.
pub fn last_written(dir: &Path) -> Option<LastWritten> {
    let state = read_state(dir)?;
    let marker = std::fs::read_to_string(dir.join(WRITTEN_MARKER)).ok()?;
    // The state keeps the snapshot's text: its link to the one before.
    let follows = serde_json::from_str::<Report>(&state.snapshot)
        .ok()
        .and_then(|report| report.snapshot?.previous);
    if marker != state.snapshot_file {
        // The cut it holds was not written whole (the daemon died between
        // the writes): the last written is the one that cut follows, whose
        // SHA-256 its link records.
        return follows
            .filter(|previous| previous.file == marker)
            .map(|snapshot| LastWritten {
                snapshot,
                follows: None,
            });
    }
    Some(LastWritten {
        snapshot: PreviousSnapshot {
            file: state.snapshot_file,
            sha256: state.snapshot_sha256,
        },
        follows,
    })
}

/// What a snapshot folder's state file says of the last snapshot written.
pub struct LastWritten {
    /// Its name and SHA-256.
    pub snapshot: PreviousSnapshot,
    /// The snapshot it names as its previous (name and SHA-256), if any.
    pub follows: Option<PreviousSnapshot>,
}

/// The snapshot the state file holds, when the marker says it was never
/// written (the daemon died between the writes): to be written first.
/// Delivery is at least once: if a pipeline had already taken the file
/// away, it gets the same bytes again (`classifier report` counts
/// byte-identical files once).
fn interrupted_write(dir: &Path, state: &StateFile) -> Option<Pending> {
    let marker = std::fs::read_to_string(dir.join(WRITTEN_MARKER)).unwrap_or_default();
    if marker == state.snapshot_file {
        return None;
    }
    log::warn!(
        "snapshot {} was cut by the previous daemon but not (fully) written; writing it first",
        state.snapshot_file
    );
    Some(Pending {
        report: None,
        prepared: Some((state.snapshot_file.clone(), state.snapshot.clone())),
        start_unix_ns: 0,
        end_unix_ns: state.snapshot_end_unix_ns,
        checkpoint: state.checkpoint.clone(),
        recycle_tick: None,
    })
}

/// Removes temporary files a killed daemon left (`.NAME.tmp-PID`).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Takes the snapshot folder for this daemon alone (an exclusive `flock`,
/// held while the file is open): two daemons would overwrite each other's
/// state file.
fn lock_folder(dir: &Path) -> Result<std::fs::File, SnapshotError> {
    crate::pins::try_lock_folder(dir)
        .and_then(|folder| {
            folder.ok_or_else(|| {
                std::io::Error::other(
                    "another classifier is writing snapshots here; give each sensor its own folder",
                )
            })
        })
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::{drain::KernelReading, test_support::TempFolder};

    const SEC: i64 = 1_000_000_000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    /// On an hour (2026-05-10T08:00:00Z).
    const T0: i64 = 494_000 * HOUR;

    /// Two clocks the test moves: real time passing moves both, a step
    /// moves only the wall clock.
    struct FakeClock(Cell<ClockReading>);

    impl FakeClock {
        fn new(wall_unix_ns: i64) -> Self {
            Self(Cell::new(ClockReading {
                wall_unix_ns,
                monotonic_ns: 42 * SEC,
            }))
        }

        fn pass(&self, ns: i64) {
            let now = self.0.get();
            self.0.set(ClockReading {
                wall_unix_ns: now.wall_unix_ns + ns,
                monotonic_ns: now.monotonic_ns + ns,
            });
        }

        fn step(&self, ns: i64) {
            let now = self.0.get();
            self.0.set(ClockReading {
                wall_unix_ns: now.wall_unix_ns + ns,
                ..now
            });
        }
    }

    impl Clock for FakeClock {
        fn read(&self) -> ClockReading {
            self.0.get()
        }
    }

    /// One snapshot as cut: its times, coverage and count.
    #[derive(Debug, PartialEq, Eq)]
    struct Cut {
        start: i64,
        end: i64,
        partial: bool,
        packets: u64,
    }

    /// The daemon's loop in miniature: a kernel that counts packets, a
    /// drain every tick, and cuts where the schedule says, through the
    /// real `Snapshotter::cut` on a real ledger.
    struct Daemon {
        _folder: TempFolder,
        start: i64,
        clock: FakeClock,
        snapshotter: Snapshotter,
        ledger: Ledger,
        schedule: BoundarySchedule,
        kernel_packets: u64,
        reasons: Vec<CutReason>,
    }

    impl Daemon {
        /// Hourly snapshots from a program attached at `start`.
        fn start(test: &str, start: i64) -> Self {
            let folder = TempFolder::new(&format!("schedule-{test}"));
            let meta = SensorMeta {
                schema: String::new(),
                instance: "test".into(),
                version: String::new(),
                layout: String::new(),
                attached_at_unix_ns: start,
                interfaces: vec!["eth0".into()],
                modes: Vec::new(),
                services: Vec::new(),
                feeds: Vec::new(),
                watched: Vec::new(),
                endpoint_prefixes_v4: 0,
                endpoint_prefixes_v6: 0,
                flow_capacity: 0,
                flow_cache_slots: 0,
                reloads: 0,
                reload_failures: 0,
                last_reload_error: None,
                feeds_loaded_at_unix_ns: start,
                dispatcher_priority: None,
                sensor: None,
            };
            let resumed = Snapshotter::resume(
                &folder.0,
                Duration::from_secs(3600),
                &meta,
                false,
                "sensor".into(),
                None,
            )
            .expect("snapshot folder");
            assert_eq!(resumed.start_unix_ns, start);
            let clock = FakeClock::new(start);
            let schedule = resumed.snapshotter.schedule(clock.read());
            Self {
                _folder: folder,
                start,
                clock,
                snapshotter: resumed.snapshotter,
                ledger: resumed.ledger,
                schedule,
                kernel_packets: 0,
                reasons: Vec::new(),
            }
        }

        /// `ticks` drains `tick` apart, the kernel counting one packet
        /// before each.
        fn run(&mut self, ticks: i64, tick: i64) {
            for _ in 0..ticks {
                self.clock.pass(tick);
                self.kernel_packets += 1;
                self.drain();
            }
        }

        /// Drains, then cuts while the schedule says so (as `run_config`).
        fn drain(&mut self) {
            let mut totals: classifier_common::Totals = bytemuck::Zeroable::zeroed();
            totals.ipv4 = self.kernel_packets;
            let reading = KernelReading {
                totals,
                services: Vec::new(),
                flows: Vec::new(),
                cached_flows: Vec::new(),
                cache_slots: Vec::new(),
                cache_slots_used: 0,
            };
            self.ledger
                .absorb(reading, crate::flow_clock::FlowClock::UNIX_NS);
            while let Next::Cut(cut) = self.schedule.poll(self.clock.read()) {
                if let CutReason::ClockStep(step) = cut.reason {
                    self.snapshotter.note_clock_step(step);
                }
                let before = self.snapshotter.start_unix_ns;
                self.snapshotter
                    .cut(&mut self.ledger, cut.end_unix_ns, None);
                assert_eq!(cut.start_unix_ns, before, "schedule and snapshots agree");
                self.reasons.push(cut.reason);
            }
        }

        /// Stops as `finish` does: a last drain, a cut at the wall clock.
        /// Returns every snapshot, checked: they chain from the start, none
        /// runs backwards, and they add up to what the kernel counted.
        fn stop(mut self) -> (Vec<Cut>, Vec<CutReason>) {
            self.drain();
            let now = self.clock.read().wall_unix_ns;
            self.snapshotter.cut(&mut self.ledger, now, None);
            let cuts: Vec<Cut> = self
                .snapshotter
                .pending
                .iter()
                .map(|pending| {
                    let report = pending.report.as_ref().expect("not written");
                    let info = report.snapshot.as_ref().expect("snapshot section");
                    assert_eq!(report.start, rfc3339(pending.start_unix_ns));
                    assert_eq!(report.end, rfc3339(pending.end_unix_ns));
                    Cut {
                        start: pending.start_unix_ns,
                        end: pending.end_unix_ns,
                        partial: info.coverage.partial,
                        packets: report.totals.packets,
                    }
                })
                .collect();
            let first = cuts.first().expect("a snapshot");
            assert_eq!(first.start, self.start);
            for cut in &cuts {
                assert!(cut.end >= cut.start, "negative interval {cut:?}");
            }
            for pair in cuts.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "chained: {pair:?}");
            }
            let counted: u64 = cuts.iter().map(|cut| cut.packets).sum();
            assert_eq!(counted, self.kernel_packets, "no count lost or doubled");
            (cuts, self.reasons)
        }
    }

    #[test]
    fn slots_recycle_only_after_the_checkpoint_holding_their_drain_is_written() {
        let start = 1_700_000_000 * NS_PER_SECOND as i64;
        let mut daemon = Daemon::start("recycle", start);
        daemon.run(3, 1_000_000_000);
        let snapshots = &mut daemon.snapshotter;
        snapshots.cut(&mut daemon.ledger, start + 3_000_000_000, Some(7));
        assert_eq!(snapshots.take_persisted_recycle_tick(), None, "not written");
        assert!(snapshots.write_pending(WriteAttempt::Now));
        assert_eq!(snapshots.take_persisted_recycle_tick(), Some(7));
        assert_eq!(snapshots.take_persisted_recycle_tick(), None, "taken");
        // Two cuts written together: the newer drain's tick.
        snapshots.cut(&mut daemon.ledger, start + 4_000_000_000, Some(9));
        snapshots.cut(&mut daemon.ledger, start + 5_000_000_000, None);
        assert!(snapshots.write_pending(WriteAttempt::Now));
        assert_eq!(snapshots.take_persisted_recycle_tick(), Some(9));
    }

    #[test]
    fn the_write_check_leaves_nothing_behind_and_clears_leftover_probes() {
        let folder = crate::test_support::TempFolder::new("write-check");
        check_writable(&folder.0).unwrap();
        assert_eq!(std::fs::read_dir(&folder.0).unwrap().count(), 0);
        // Daemons killed between the two steps, one of the same pid; and
        // a link planted under the name, which is removed, not followed.
        let target = folder.file("target");
        std::fs::write(&target, b"kept").unwrap();
        let own = folder.file(&format!("{WRITE_PROBE}{}", std::process::id()));
        std::os::unix::fs::symlink(&target, own).unwrap();
        std::fs::write(folder.file(&format!("{WRITE_PROBE}1")), b"").unwrap();
        check_writable(&folder.0).unwrap();
        let left: Vec<_> = std::fs::read_dir(&folder.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["target"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        let error = check_writable(&folder.file("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot create a file in it: No such file"),
            "{error}"
        );
    }

    #[test]
    fn verify_checks_the_last_snapshot_against_its_writers_record() {
        use crate::history::{ChainCheck, verify_paths};
        let start = 1_700_000_000 * NS_PER_SECOND as i64;
        let mut daemon = Daemon::start("verify-last", start);
        daemon.run(3, 1_000_000_000);
        let snapshots = &mut daemon.snapshotter;
        for end_seconds in [2, 3, 5] {
            snapshots.cut(
                &mut daemon.ledger,
                start + end_seconds * 1_000_000_000,
                None,
            );
        }
        assert!(snapshots.write_pending(WriteAttempt::Now));
        let folder = daemon._folder.0.clone();
        let check = || {
            verify_paths(std::slice::from_ref(&folder)).unwrap()[0]
                .check
                .clone()
        };
        assert!(
            matches!(check(), ChainCheck::Intact { snapshots: 3, ref notes, .. } if notes.is_empty())
        );

        // No later link covers the last file: the state file's record does.
        let LastWritten {
            snapshot: last,
            follows,
        } = last_written(&folder).unwrap();
        let follows = follows.expect("the second follows the first");
        // A cut in the state but not in its file (the daemon died between
        // the two writes): the last written is the one it follows.
        std::fs::write(folder.join(WRITTEN_MARKER), &follows.file).unwrap();
        let interrupted = last_written(&folder).unwrap();
        assert_eq!(interrupted.snapshot, follows);
        assert!(interrupted.follows.is_none());
        std::fs::write(folder.join(WRITTEN_MARKER), &last.file).unwrap();
        // An edit that keeps the file valid JSON.
        let edit = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap();
            std::fs::write(path, text.replacen("\"packets\": ", "\"packets\": 1", 1)).unwrap();
        };
        let path = folder.join(&last.file);
        edit(&path);
        let ChainCheck::Broken { file, problem } = check() else {
            panic!("an edited last snapshot passed");
        };
        assert_eq!(file, last.file);
        assert!(
            problem.starts_with(&format!(
                "the last snapshot written here should have sha256 {} (its writer's record, .classifier-state.json), found ",
                last.sha256
            )) && problem.ends_with(" (edited since?)"),
            "{problem}"
        );

        // Gone (a pipeline moved it, or it was deleted): a note.
        std::fs::remove_file(&path).unwrap();
        let ChainCheck::Intact {
            snapshots: 2,
            notes,
            ..
        } = check()
        else {
            panic!("{:?}", check());
        };
        assert_eq!(
            notes,
            [format!(
                "{}, the last snapshot written here, is not in the folder (moved away or deleted)",
                last.file
            )]
        );

        // Gone, and the one before it edited: the record of the gone one's
        // link shows it.
        let before = folder.join(&follows.file);
        edit(&before);
        let ChainCheck::Broken { file, problem } = check() else {
            panic!("an edit before a gone last snapshot passed");
        };
        assert_eq!(file, follows.file);
        assert!(
            problem.starts_with(&format!(
                "{}, the last snapshot written here (gone; its writer's record, .classifier-state.json), names it with sha256 {}, found ",
                last.file, follows.sha256
            )),
            "{problem}"
        );

        // Both gone: the note says so.
        std::fs::remove_file(&before).unwrap();
        let ChainCheck::Intact {
            snapshots: 1,
            notes,
            ..
        } = check()
        else {
            panic!("{:?}", check());
        };
        assert_eq!(
            notes,
            [format!(
                "{}, the last snapshot written here, is not in the folder (moved away or deleted); nor is {}, the one it follows",
                last.file, follows.file
            )]
        );

        // Every file gone: the error names the last one written.
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("classifier-")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        let error = verify_paths(std::slice::from_ref(&folder))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "no snapshot files (classifier-*.json) found in {0}; {0}'s .classifier-state.json records {1} as the last snapshot written there (moved away or deleted?)",
                folder.display(),
                last.file
            )
        );
    }

    fn rfc3339(unix_ns: i64) -> String {
        crate::report::rfc3339(unix_ns_to_time(unix_ns))
    }

    fn cut(start: i64, end: i64, partial: bool, packets: u64) -> Cut {
        Cut {
            start,
            end,
            partial,
            packets,
        }
    }

    #[test]
    fn a_steady_clock_cuts_on_every_boundary_and_a_drain_under_a_second_late_is_on_time() {
        // Started mid-hour, drained every second, 0.4 s after each second.
        let start = T0 + 20 * MIN + 400_000_000;
        let mut daemon = Daemon::start("steady", start);
        assert_eq!(daemon.schedule.boundary(), T0 + HOUR);
        assert_eq!(
            daemon.schedule.poll(daemon.clock.read()),
            Next::Wait(Duration::from_nanos(
                u64::try_from(T0 + HOUR - start).unwrap()
            ))
        );
        daemon.run(2400 + 3600 + 3600 + 1800, SEC);
        let (cuts, reasons) = daemon.stop();
        let end = T0 + 3 * HOUR + 30 * MIN + 400_000_000;
        assert_eq!(
            cuts,
            [
                cut(start, T0 + HOUR, true, 2400),
                cut(T0 + HOUR, T0 + 2 * HOUR, false, 3600),
                cut(T0 + 2 * HOUR, T0 + 3 * HOUR, false, 3600),
                cut(T0 + 3 * HOUR, end, true, 1800),
            ]
        );
        assert_eq!(reasons, [CutReason::Boundary; 3]);
    }

    #[test]
    fn a_clock_stepped_back_an_hour_cuts_at_the_step_and_never_reports_a_time_twice() {
        let mut daemon = Daemon::start("back", T0);
        daemon.run(30 * 60, SEC);
        daemon.clock.step(-HOUR);
        daemon.run(1, SEC);
        // The wall clock says 07:30 again; the next boundary is 09:00,
        // after the last time reported (08:30).
        assert_eq!(daemon.schedule.boundary(), T0 + HOUR);
        daemon.run(90 * 60 - 1 + 30 * 60, SEC);
        let (cuts, reasons) = daemon.stop();
        let step = T0 + 30 * MIN + SEC;
        assert_eq!(
            cuts,
            [
                // Not 08:00-09:00 after 90 minutes, unnoticed.
                cut(T0, step, true, 1801),
                cut(step, T0 + HOUR, true, 90 * 60 - 1),
                cut(T0 + HOUR, T0 + HOUR + 30 * MIN, true, 30 * 60),
            ]
        );
        assert_eq!(reasons, [CutReason::ClockStep(-HOUR), CutReason::Boundary]);
    }

    #[test]
    fn a_clock_stepped_forward_three_hours_cuts_at_the_drain_and_realigns() {
        let mut daemon = Daemon::start("forward", T0);
        daemon.run(30 * 60, SEC);
        daemon.clock.step(3 * HOUR);
        daemon.run(1, SEC);
        let step = T0 + 3 * HOUR + 30 * MIN + SEC;
        assert_eq!(daemon.schedule.boundary(), T0 + 4 * HOUR);
        daemon.run(30 * 60 - 1 + 30 * 60, SEC);
        let (cuts, reasons) = daemon.stop();
        assert_eq!(
            cuts,
            [
                cut(T0, step, true, 1801),
                cut(step, T0 + 4 * HOUR, true, 30 * 60 - 1),
                cut(T0 + 4 * HOUR, T0 + 4 * HOUR + 30 * MIN, true, 30 * 60),
            ]
        );
        assert_eq!(
            reasons,
            [CutReason::ClockStep(3 * HOUR), CutReason::Boundary]
        );
    }

    #[test]
    fn a_clock_stepped_back_across_a_boundary_already_cut_overlaps_nothing() {
        let mut daemon = Daemon::start("across", T0);
        daemon.run(65 * 60, SEC);
        // 09:05 back to 08:55: the 09:00 boundary was cut already.
        daemon.clock.step(-10 * MIN);
        daemon.run(1, SEC);
        let step = T0 + HOUR + 5 * MIN + SEC;
        daemon.run(65 * 60 - 1, SEC);
        let (cuts, reasons) = daemon.stop();
        assert_eq!(
            cuts,
            [
                cut(T0, T0 + HOUR, false, 3600),
                cut(T0 + HOUR, step, true, 301),
                cut(step, T0 + 2 * HOUR, true, 65 * 60 - 1),
                // The daemon stops exactly on the boundary it just cut.
                cut(T0 + 2 * HOUR, T0 + 2 * HOUR, true, 0),
            ]
        );
        assert_eq!(
            reasons,
            [
                CutReason::Boundary,
                CutReason::ClockStep(-10 * MIN),
                CutReason::Boundary
            ]
        );
    }

    #[test]
    fn a_stop_right_after_a_backward_step_ends_no_earlier_than_it_began() {
        let mut daemon = Daemon::start("stop", T0);
        daemon.run(10 * 60, SEC);
        daemon.clock.step(-HOUR);
        daemon.run(3, SEC);
        let (cuts, _) = daemon.stop();
        let step = T0 + 10 * MIN + SEC;
        // The stop's wall clock (07:10) is before the interval's start.
        assert_eq!(cuts, [cut(T0, step, true, 601), cut(step, step, true, 2)]);
    }

    #[test]
    fn a_stalled_daemon_cuts_late_at_the_drain_and_its_counts_land_once() {
        let mut daemon = Daemon::start("stall", T0);
        daemon.run(55 * 60, SEC);
        // Stopped for ten minutes (both clocks run; the kernel counts on).
        daemon.clock.pass(10 * MIN);
        daemon.kernel_packets += 600;
        daemon.run(1, SEC);
        let late = T0 + HOUR + 5 * MIN + SEC;
        assert_eq!(daemon.schedule.boundary(), T0 + 2 * HOUR);
        daemon.run(55 * 60 - 1, SEC);
        let (cuts, reasons) = daemon.stop();
        assert_eq!(
            cuts,
            [
                cut(T0, late, true, 55 * 60 + 600 + 1),
                cut(late, T0 + 2 * HOUR, true, 55 * 60 - 1),
                cut(T0 + 2 * HOUR, T0 + 2 * HOUR, true, 0),
            ]
        );
        assert_eq!(reasons, [CutReason::Late, CutReason::Boundary]);
    }

    #[test]
    fn a_slewing_clock_is_not_a_step() {
        // Drained hourly, no boundary in sight; NTP runs the wall clock
        // 500 ppm fast (1.8 s/h).
        let mut schedule = BoundarySchedule::new(
            i128::from(100 * HOUR),
            T0,
            ClockReading {
                wall_unix_ns: T0,
                monotonic_ns: 0,
            },
        );
        for hour in 1..20 {
            let now = ClockReading {
                wall_unix_ns: T0 + hour * (HOUR + 1_800_000_000),
                monotonic_ns: hour * HOUR,
            };
            assert!(matches!(schedule.poll(now), Next::Wait(_)), "hour {hour}");
        }
        // Two seconds in one minute is a step.
        let now = ClockReading {
            wall_unix_ns: T0 + 20 * (HOUR + 1_800_000_000) + MIN + 2 * SEC,
            monotonic_ns: 20 * HOUR + MIN,
        };
        assert!(matches!(
            schedule.poll(now),
            Next::Cut(BoundaryCut {
                reason: CutReason::ClockStep(_),
                ..
            })
        ));
    }
}
