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
const STATE_FILE: &str = ".classifier-state.json";
const WRITTEN_MARKER: &str = ".classifier-written";
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
}

/// What every snapshot of this daemon says about its source.
struct Source {
    sensor: String,
    interfaces: Vec<String>,
    feeds: Vec<FeedOrigin>,
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
    previous: Option<PreviousSnapshot>,
    pending: VecDeque<Pending>,
    retry_at: Option<Instant>,
    backoff: Duration,
    pub writes: u64,
    pub write_failures: u64,
    pub last_write_unix_seconds: Option<f64>,
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

/// The snapshot file name for an interval starting at `start`.
pub fn file_name(start: OffsetDateTime) -> String {
    let stamp = start
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| start.unix_timestamp().to_string());
    format!("{FILE_PREFIX}{stamp}{FILE_SUFFIX}")
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

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The newest snapshot file in `dir` (by name, which sorts by time).
fn newest_snapshot(dir: &Path) -> Result<Option<String>, SnapshotError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| is_snapshot_name(name))
        .collect();
    names.sort_by_key(|name| snapshot_order(name));
    Ok(names.pop())
}

/// The previous-link to `dir/name` and the end of the interval it covers.
fn link_to(dir: &Path, name: &str) -> Option<(PreviousSnapshot, Option<i64>)> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    let end = serde_json::from_slice::<Report>(&bytes)
        .ok()
        .and_then(|report| {
            OffsetDateTime::parse(&report.end, &time::format_description::well_known::Rfc3339).ok()
        })
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
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
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
            None => newest_snapshot(dir)?.and_then(|name| link_to(dir, &name)),
        };
        let resumable = state
            .as_ref()
            .filter(|state| adopted && state.instance == meta.instance);
        // A snapshot before this one drained another program's counters.
        let counter_reset = state
            .as_ref()
            .is_some_and(|state| state.instance != meta.instance);
        let checkpoint = resumable.and_then(|state| {
            let checkpoint = Checkpoint::from_text(&state.checkpoint);
            if checkpoint.is_none() {
                log::warn!(
                    "{}: its checkpoint does not fit this build; counting from the program's attachment",
                    dir.join(STATE_FILE).display()
                );
            }
            checkpoint.map(|checkpoint| (state, checkpoint))
        });
        let (ledger, start_unix_ns) = match checkpoint {
            Some((state, checkpoint)) => {
                log::info!(
                    "resuming after snapshot {}: counts since {} go into the next snapshot",
                    state.snapshot_file,
                    crate::report::rfc3339(unix_ns_to_time(state.snapshot_end_unix_ns))
                );
                (Ledger::resume(&checkpoint), state.snapshot_end_unix_ns)
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
                services: meta.service_table(),
                instance: meta.instance.clone(),
                attached_at: crate::report::rfc3339(unix_ns_to_time(meta.attached_at_unix_ns)),
                watched: meta.watched.clone(),
                pseudonymizer,
            },
            start_unix_ns,
            restarts: u64::from(link.is_some()),
            counter_reset,
            gap_before_seconds,
            previous: link.map(|(previous, _)| previous),
            // A cut the previous daemon did not finish writing goes first.
            pending: interrupted.into_iter().collect(),
            _lock: lock,
            retry_at: None,
            backoff: Duration::from_secs(1),
            writes: 0,
            write_failures: 0,
            last_write_unix_seconds: None,
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
        self.source.feeds = meta.feeds.clone();
        self.source.services = meta.service_table();
        self.source.watched = meta.watched.clone();
    }

    /// The first interval boundary after `after_unix_ns`.
    pub fn next_boundary(&self, after_unix_ns: i64) -> i64 {
        let after = i128::from(after_unix_ns);
        let next = (after.div_euclid(self.interval_ns) + 1) * self.interval_ns;
        i64::try_from(next).unwrap_or(i64::MAX)
    }

    pub fn is_boundary(&self, unix_ns: i64) -> bool {
        i128::from(unix_ns).rem_euclid(self.interval_ns) == 0
    }

    /// Snapshots cut but not yet written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Cuts the ledger at `end_unix_ns` (just drained) into a snapshot and
    /// queues it for writing.
    pub fn cut(&mut self, ledger: &mut Ledger, end_unix_ns: i64) {
        // A clock stepped back never makes an interval end before it began.
        let end_unix_ns = end_unix_ns.max(self.start_unix_ns);
        let interval = ledger.since_mark();
        let checkpoint = ledger.cut();
        let start_unix_ns = self.start_unix_ns;
        let source = &self.source;
        let mut report = Report::build(
            &interval,
            &source.services,
            ReportContext {
                start: unix_ns_to_time(start_unix_ns),
                end: unix_ns_to_time(end_unix_ns),
                sensor: source.sensor.clone(),
                interfaces: source.interfaces.clone(),
                feeds: source.feeds.clone(),
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
                partial: !self.is_boundary(start_unix_ns)
                    || i128::from(end_unix_ns) - i128::from(start_unix_ns) != self.interval_ns,
            },
            pseudonym_key_id: None,
        });
        if let Some(pseudonymizer) = &source.pseudonymizer {
            pseudonymizer.apply(&mut report);
        }
        self.pending.push_back(Pending {
            report: Some(report),
            prepared: None,
            start_unix_ns,
            end_unix_ns,
            checkpoint: checkpoint.to_text(),
        });
        self.start_unix_ns = end_unix_ns;
        self.restarts = 0;
        self.gap_before_seconds = 0.0;
        self.counter_reset = false;
    }

    /// Writes queued snapshots in order, unless a failed write's back-off
    /// has not passed (`now` ignores it). Returns whether all were written.
    pub fn write_pending(&mut self, now: bool) -> bool {
        if !now && self.retry_at.is_some_and(|at| Instant::now() < at) {
            return self.pending.is_empty();
        }
        while let Some(pending) = self.pending.front_mut() {
            match write_one(&self.dir, &self.source.instance, &self.previous, pending) {
                Ok(previous) => {
                    log::info!("wrote snapshot {}", previous.file);
                    self.previous = Some(previous);
                    self.pending.pop_front();
                    self.writes += 1;
                    self.last_write_unix_seconds = Some(now_unix_ns() as f64 / 1e9);
                    self.retry_at = None;
                    self.backoff = Duration::from_secs(1);
                }
                Err(error) => {
                    self.write_failures += 1;
                    log::error!(
                        "cannot write a snapshot into {}: {error}; {} snapshot(s) kept in memory, retrying in {} s (no counts are lost while the daemon runs)",
                        self.dir.display(),
                        self.pending.len(),
                        self.backoff.as_secs()
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
