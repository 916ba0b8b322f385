//! `classifier report PATH…`: reads snapshot files, keeps those within
//! `--from`/`--to`, drops duplicates and overlaps, merges them into one
//! report, and checks the SHA-256 chain with `--verify`.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map::Entry},
    fmt, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use time::{
    Date, OffsetDateTime, PrimitiveDateTime, UtcOffset, format_description::well_known::Rfc3339,
    macros::format_description,
};

use crate::{
    cli::{HistoryFormat, ReportArgs},
    feeds::{FeedOrigin, sha256_hex},
    report::{
        FlowRow, FlowSummary, FlowTable, MergedPart, Report, ReportFormat, SCHEMA, ServiceRow,
        Totals, top_rows,
    },
};

/// The header of `--format csv`: one row per service.
pub const CSV_HEADER: [&str; 12] = [
    "service",
    "flows",
    "share",
    "unique_sources",
    "packets",
    "bytes",
    "packets_outbound",
    "packets_inbound",
    "bytes_outbound",
    "bytes_inbound",
    "first_seen",
    "last_seen",
];

/// Why `classifier report` could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: cannot read: {source}")]
    ReadPath { path: PathBuf, source: io::Error },
    #[error("{file}: {problem}")]
    File {
        file: PathBuf,
        #[source]
        problem: FileProblem,
    },
    #[error("no snapshot files (classifier-*.json) found in {paths}{written_before}")]
    NoSnapshots {
        paths: String,
        /// What the state files of the folders named say was written
        /// there (a pipeline took every file away), or empty.
        written_before: String,
    },
    #[error(
        "{paths} holds only merged reports ({merged} without a snapshot section), which a folder read skips: name them as files to merge them"
    )]
    OnlyMergedReports { paths: String, merged: usize },
    #[error(
        "--{flag} {value:?}: expected an RFC 3339 time (e.g. 2026-11-24T19:00:00Z) \
         or a date (2026-11-24, meaning midnight UTC)"
    )]
    BadBound { flag: &'static str, value: String },
    #[error("--from {from} is after --to {to}")]
    EmptyRange { from: String, to: String },
    #[error(
        "none of the {found} snapshots in {paths} lies wholly within --from/--to \
         ({partial} only partly; a snapshot cannot be split)"
    )]
    NothingInRange {
        paths: String,
        found: usize,
        partial: usize,
    },
    #[error(
        "{first} and {second} use different pseudonym keys ({first_key} vs {second_key}); \
         reports never mix keys"
    )]
    MixedPseudonymKeys {
        first: PathBuf,
        first_key: String,
        second: PathBuf,
        second_key: String,
    },
    #[error("cannot write CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("snapshot chain broken in {broken} of {folders} folder(s)")]
    ChainBroken { broken: usize, folders: usize },
    #[error("{path}: cannot write the report: {source}")]
    WriteOutput { path: PathBuf, source: io::Error },
    #[error("-o {output}: that is {input}, one of the reports being read; choose another file")]
    OutputIsInput { output: PathBuf, input: PathBuf },
    #[error(
        "-o {output}: {name} is the name of a snapshot folder's {what}, which the daemon reads; choose another file"
    )]
    OutputIsSnapshotState {
        output: PathBuf,
        name: &'static str,
        what: &'static str,
    },
    #[error(
        "{file}: {counter} {before} passes the largest count ({max}); a hand-edited or corrupt snapshot?",
        max = u64::MAX
    )]
    CountOverflow {
        file: PathBuf,
        counter: String,
        /// How the sum came about: the files merged before it, or the
        /// file's own rows.
        before: String,
    },
}

/// What is wrong with one snapshot file (the file is named by the caller).
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// serde_json's message carries the line and column.
    #[error("not a valid report: {0}")]
    Json(#[source] serde_json::Error),
    #[error("schema is {found:?}, expected {SCHEMA:?}")]
    Schema { found: String },
    #[error("{field} {value:?} is not an RFC 3339 time")]
    Time { field: String, value: String },
    #[error("{what}ends ({end}) before it starts ({start})")]
    EndsBeforeStart {
        /// Empty for the report, `merged_from[N] ` for one of its parts.
        what: String,
        start: String,
        end: String,
    },
}

/// `classifier report`: prints the merged report (or the chain check).
pub fn report(args: &ReportArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.verify {
        if args.from.is_some() || args.to.is_some() {
            log::warn!("--from/--to are ignored with --verify: whole chains are checked");
        }
        let chains = verify_paths(&args.paths)?;
        let text: String = chains.iter().map(|chain| format!("{chain}\n")).collect();
        write_stdout(&text)?;
        let broken = chains.iter().filter(|chain| chain.is_broken()).count();
        if broken > 0 {
            return Err(HistoryError::ChainBroken {
                broken,
                folders: chains.len(),
            }
            .into());
        }
        return Ok(());
    }

    let range = TimeRange::parse(args.from.as_deref(), args.to.as_deref())?;
    if let Some(output) = &args.output {
        refuse_output_over_snapshot_state(output)?;
    }
    let mut merged = merge_paths(&args.paths, &range)?;
    if let Some(output) = &args.output {
        refuse_output_over_input(output, &merged.inputs)?;
    }
    if !args.by_sensor {
        merged.by_sensor.clear();
    }
    let text = match args.format {
        HistoryFormat::Table => {
            let mut text = format!(
                "{}\n{}\n",
                merged.report.render(ReportFormat::Table),
                merged.counts.coverage_line()
            );
            for report in &merged.by_sensor {
                text.push_str(&format!(
                    "\n=== sensor {} ===\n{}",
                    report.sensor,
                    report.render(ReportFormat::Table)
                ));
            }
            text
        }
        HistoryFormat::Json => by_sensor_json(&merged),
        HistoryFormat::Csv => services_csv(&merged.report, &merged.by_sensor)?,
        HistoryFormat::Html => crate::html::render(&merged),
    };
    match &args.output {
        Some(path) => write_output(path, &text)?,
        None => write_stdout(&text)?,
    }
    Ok(())
}

/// Refuses an `-o` file that is one of the reports read: writing it would
/// replace a snapshot (evidence, chained by SHA-256) with the merged
/// report. A folder's merged report, which a folder read skips, may be
/// written again.
fn refuse_output_over_input(output: &Path, inputs: &[PathBuf]) -> Result<(), HistoryError> {
    let Ok(target) = std::fs::canonicalize(output) else {
        // Not there yet, so not an input.
        return Ok(());
    };
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|path| path == target) {
            return Err(HistoryError::OutputIsInput {
                output: output.to_path_buf(),
                input: input.clone(),
            });
        }
    }
    Ok(())
}

/// Refuses an `-o` file named as a snapshot folder's daemon state or
/// written marker: the daemon (or the next replay) would find a report
/// there, warn it unreadable and lose its place in the chain.
fn refuse_output_over_snapshot_state(output: &Path) -> Result<(), HistoryError> {
    let Some(name) = output.file_name() else {
        return Ok(());
    };
    for (reserved, what) in [
        (crate::snapshot::STATE_FILE, "state file"),
        (crate::snapshot::WRITTEN_MARKER, "marker file"),
    ] {
        if name == reserved {
            return Err(HistoryError::OutputIsSnapshotState {
                output: output.to_path_buf(),
                name: reserved,
                what,
            });
        }
    }
    Ok(())
}

/// Writes `text` to `path` atomically (a reader never sees half a report).
fn write_output(path: &Path, text: &str) -> Result<(), HistoryError> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| HistoryError::WriteOutput {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    crate::snapshot::write_atomically(dir, name, text.as_bytes()).map_err(|source| {
        HistoryError::WriteOutput {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Writes without panicking when stdout is closed (e.g. piped to `head`).
fn write_stdout(text: &str) -> io::Result<()> {
    crate::report::write_stdout(text)
}

// ---------------------------------------------------------------------------
// Time range

/// The `--from`/`--to` bounds; `None` is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

impl TimeRange {
    /// Parses both flags (RFC 3339 or `YYYY-MM-DD`, midnight UTC).
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, HistoryError> {
        let range = Self {
            from: from.map(|text| parse_bound("from", text)).transpose()?,
            to: to.map(|text| parse_bound("to", text)).transpose()?,
        };
        if let (Some(from), Some(to)) = (range.from, range.to)
            && from > to
        {
            return Err(HistoryError::EmptyRange {
                from: crate::report::rfc3339(from),
                to: crate::report::rfc3339(to),
            });
        }
        Ok(range)
    }

    /// True when `[start, end]` lies wholly within the range.
    fn contains(&self, start: OffsetDateTime, end: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| start >= from) && self.to.is_none_or(|to| end <= to)
    }

    /// True when `[start, end]` shares some time with the range.
    fn overlaps(&self, start: OffsetDateTime, end: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| end > from) && self.to.is_none_or(|to| start < to)
    }
}

fn parse_bound(flag: &'static str, text: &str) -> Result<OffsetDateTime, HistoryError> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time);
    }
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map(|date| date.midnight().assume_utc())
        .map_err(|_| HistoryError::BadBound {
            flag,
            value: text.to_string(),
        })
}

/// An RFC 3339 time, in UTC; `None` also for one whose UTC date is past
/// year 9999 (`9999-12-31T23:30:00-01:00`), which cannot be shown.
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()?
        .checked_to_offset(UtcOffset::UTC)
}

/// Orders two RFC 3339 times by the instant they name (as text when one
/// does not parse; loading has checked they do).
fn compare_times(a: &str, b: &str) -> Ordering {
    match (parse_time(a), parse_time(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

// ---------------------------------------------------------------------------
// File names

/// The parts of a snapshot file name `classifier-20261124T190000Z-2.json`:
/// the start it names (UTC, whole seconds) and the collision counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SnapshotName {
    start: OffsetDateTime,
    counter: u32,
}

impl SnapshotName {
    fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name
            .strip_prefix("classifier-")?
            .strip_suffix(".json")?;
        let (stamp, counter) = match stem.split_once('-') {
            Some((stamp, counter)) if counter.bytes().all(|b| b.is_ascii_digit()) => {
                (stamp, counter.parse().ok()?)
            }
            Some(_) => return None,
            None => (stem, 0),
        };
        let start = PrimitiveDateTime::parse(
            stamp,
            format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .ok()?
        .assume_utc();
        Some(Self { start, counter })
    }
}

/// Sort key of snapshot file names: by the start they name, then the
/// counter (`…Z.json` before `…Z-1.json`, `-2` before `-10`); names that
/// do not parse last, by text.
fn name_order(file_name: &str) -> (bool, Option<SnapshotName>, String) {
    let parsed = SnapshotName::parse(file_name);
    (parsed.is_none(), parsed, file_name.to_string())
}

fn is_snapshot_file_name(file_name: &str) -> bool {
    !file_name.starts_with('.')
        && file_name.starts_with("classifier-")
        && file_name.ends_with(".json")
}

fn file_name_of(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn join_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

// ---------------------------------------------------------------------------
// Loading

/// One loaded report file.
#[derive(Debug)]
struct Snapshot {
    path: PathBuf,
    /// The file name, without the folder.
    name: String,
    /// SHA-256 of the file's exact bytes (lowercase hex).
    sha256: String,
    report: Report,
    start: OffsetDateTime,
    end: OffsetDateTime,
    /// What it holds: itself, or for a merged report the snapshots it
    /// sums (one part over its whole span for a merged report written
    /// before they were listed).
    parts: Vec<Part>,
}

/// An interval a report holds, for each sensor and interface, and its
/// coverage (daemon restarts, seconds without a counting program).
#[derive(Debug)]
struct Part {
    pairs: Vec<(String, String)>,
    start: OffsetDateTime,
    end: OffsetDateTime,
    restarts: u64,
    gap_seconds: f64,
}

impl Snapshot {
    /// The report's key id; a snapshot written before reports carried
    /// it has it in its snapshot section only.
    fn pseudonym_key_id(&self) -> Option<&str> {
        self.report.pseudonym_key_id.as_deref().or_else(|| {
            self.report
                .snapshot
                .as_ref()
                .and_then(|info| info.pseudonym_key_id.as_deref())
        })
    }
}

/// The files named by `paths`: files as given, folders expanded to their
/// `classifier-*.json` files (not recursively; hidden and temp files
/// skipped). Each path once, in the order given (folders by name).
fn collect_files(paths: &[PathBuf]) -> Result<Vec<FoundFile>, HistoryError> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|source| HistoryError::ReadPath {
            path: path.clone(),
            source,
        })?;
        if !metadata.is_dir() {
            files.push(FoundFile {
                path: path.clone(),
                in_folder: false,
            });
            continue;
        }
        let read_error = |source| HistoryError::ReadPath {
            path: path.clone(),
            source,
        };
        let mut in_folder = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_snapshot_file_name(&name) && entry.path().is_file() {
                in_folder.push((name_order(&name), entry.path()));
            }
        }
        if in_folder.is_empty() {
            log::warn!("{}: no snapshot files (classifier-*.json)", path.display());
        }
        in_folder.sort();
        files.extend(in_folder.into_iter().map(|(_, path)| FoundFile {
            path,
            in_folder: true,
        }));
    }
    // A file met twice (named, and in a named folder; or by two spellings
    // of its path) is read once, as named if it was named.
    let mut first_index: HashMap<PathBuf, usize> = HashMap::new();
    let mut unique: Vec<FoundFile> = Vec::new();
    for file in files {
        let identity = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        match first_index.get(&identity) {
            Some(&index) => unique[index].in_folder &= file.in_folder,
            None => {
                first_index.insert(identity, unique.len());
                unique.push(file);
            }
        }
    }
    let files = unique;
    if files.is_empty() {
        return Err(HistoryError::NoSnapshots {
            paths: join_paths(paths),
            written_before: written_before(paths),
        });
    }
    Ok(files)
}

/// For folders without snapshot files whose state file records one as
/// written: "; DIR's state file records FILE as the last snapshot written
/// there (moved away or deleted?)", for each.
fn written_before(paths: &[PathBuf]) -> String {
    // `dir/` and `dir` name one folder, said once, without the slash.
    let folders: BTreeSet<PathBuf> = paths
        .iter()
        .filter(|path| path.is_dir())
        .map(|path| path.components().collect())
        .collect();
    folders
        .iter()
        .filter_map(|folder| {
            let last = crate::snapshot::last_written(folder)?;
            Some(format!(
                "; {}'s {} records {} as the last snapshot written there (moved away or deleted?)",
                folder.display(),
                crate::snapshot::STATE_FILE,
                last.snapshot.file
            ))
        })
        .collect()
}

/// A file to read, and whether a folder scan found it (rather than the
/// command line naming it).
struct FoundFile {
    path: PathBuf,
    in_folder: bool,
}

/// The note for a merged report (no `snapshot` section) met where
/// snapshots are read.
fn merged_report_note(name: &str) -> String {
    format!("{name}: a merged report, not a snapshot (no snapshot section): skipped")
}

/// Reads and checks one report file: valid JSON, our schema, RFC 3339
/// times.
fn load_snapshot(path: &Path) -> Result<Snapshot, FileProblem> {
    let bytes = std::fs::read(path).map_err(FileProblem::Read)?;
    let report: Report = serde_json::from_slice(&bytes).map_err(FileProblem::Json)?;
    if report.schema != SCHEMA {
        return Err(FileProblem::Schema {
            found: report.schema,
        });
    }
    let time_of = |field: &str, value: &str| {
        parse_time(value).ok_or_else(|| FileProblem::Time {
            field: field.to_string(),
            value: value.to_string(),
        })
    };
    let interval = |what: String, start: &str, end: &str| {
        let (start_time, end_time) = (time_of("start", start)?, time_of("end", end)?);
        if end_time < start_time {
            return Err(FileProblem::EndsBeforeStart {
                what,
                start: start.to_string(),
                end: end.to_string(),
            });
        }
        Ok((start_time, end_time))
    };
    let (start, end) = interval(String::new(), &report.start, &report.end)?;
    for (index, flow) in report.flows.iter().enumerate() {
        time_of(&format!("flows[{index}].first_seen"), &flow.first_seen)?;
        time_of(&format!("flows[{index}].last_seen"), &flow.last_seen)?;
    }
    let mut parts = Vec::new();
    for (index, part) in report.merged_from.iter().enumerate() {
        let (start, end) = interval(format!("merged_from[{index}] "), &part.start, &part.end)?;
        parts.push(Part {
            pairs: sensor_interface_pairs(&part.sensor, &part.interfaces),
            start,
            end,
            restarts: part.restarts,
            gap_seconds: part.gap_before_seconds,
        });
    }
    if parts.is_empty() {
        let coverage = report.snapshot.as_ref().map(|info| &info.coverage);
        parts.push(Part {
            pairs: sensor_interface_pairs(&report.sensor, &report.interfaces),
            start,
            end,
            restarts: coverage.map_or(0, |coverage| coverage.restarts),
            gap_seconds: coverage.map_or(0.0, |coverage| coverage.gap_before_seconds),
        });
    }
    Ok(Snapshot {
        path: path.to_path_buf(),
        name: file_name_of(path),
        sha256: sha256_hex(&bytes),
        report,
        start,
        end,
        parts,
    })
}

// ---------------------------------------------------------------------------
// Selection

/// What the selection kept and skipped, and the coverage of what it kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectionCounts {
    /// Snapshots merged.
    pub used: usize,
    /// Byte-identical copies skipped.
    pub duplicates: usize,
    /// Different files that share a sensor and interface with one kept
    /// and overlap its time, skipped.
    pub overlapping: usize,
    /// Snapshots wholly outside `--from`/`--to`.
    pub outside: usize,
    /// Snapshots only partly inside `--from`/`--to` (skipped: a snapshot
    /// cannot be split).
    pub partial: usize,
    /// Daemon restarts summed over the snapshots used.
    pub restarts: u64,
    /// Seconds without a counting program, summed over the snapshots used.
    pub gap_seconds: f64,
    /// Seconds between the first start and the last end that no snapshot
    /// used covers (a snapshot missing, or no daemon writing one).
    pub uncovered_seconds: f64,
}

impl SelectionCounts {
    /// One line for the table: what was used, skipped, and the coverage.
    pub fn coverage_line(&self) -> String {
        format!(
            "snapshots: {} used; skipped {} identical, {} overlapping, {} outside the range, \
             {} partly inside; restarts {}, gaps {:.1} s, not covered by any snapshot {:.1} s",
            self.used,
            self.duplicates,
            self.overlapping,
            self.outside,
            self.partial,
            self.restarts,
            self.gap_seconds,
            self.uncovered_seconds
        )
    }
}

/// A merged report and what went into it.
#[derive(Debug, Clone)]
pub struct MergedHistory {
    pub report: Report,
    pub counts: SelectionCounts,
    /// The snapshots merged, by start: each one's interval and matched
    /// packets per service (the HTML report's time series).
    pub intervals: Vec<Interval>,
    /// One merged report per sensor, by sensor name (`--by-sensor`).
    pub by_sensor: Vec<Report>,
    /// Every file read as an input, used or skipped as a copy, an overlap
    /// or outside the range (not a folder's merged report, which a folder
    /// read skips).
    pub inputs: Vec<PathBuf>,
}

/// One merged snapshot's interval and its matched packets per service.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub sensor: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// Cut short (the daemon started or stopped within it).
    pub partial: bool,
    pub packets: BTreeMap<String, u64>,
}

impl Interval {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            sensor: snapshot.report.sensor.clone(),
            start: snapshot.start,
            end: snapshot.end,
            partial: snapshot
                .report
                .snapshot
                .as_ref()
                .is_some_and(|info| info.coverage.partial),
            packets: snapshot
                .report
                .services
                .iter()
                .filter(|row| row.packets > 0)
                .map(|row| (row.service.clone(), row.packets))
                .collect(),
        }
    }
}

/// Loads the snapshots under `paths`, keeps those within `range` once
/// each, and merges them.
pub fn merge_paths(paths: &[PathBuf], range: &TimeRange) -> Result<MergedHistory, HistoryError> {
    let mut snapshots = Vec::new();
    let mut merged_skipped = 0;
    let mut inputs = Vec::new();
    for file in collect_files(paths)? {
        let snapshot = load_snapshot(&file.path).map_err(|problem| HistoryError::File {
            file: file.path.clone(),
            problem,
        })?;
        // A folder's merged report (`report DIR -o DIR/classifier-day.json`)
        // sums its snapshots; named on the command line it is taken.
        if file.in_folder && snapshot.report.snapshot.is_none() {
            log::warn!("{}", merged_report_note(&file.path.display().to_string()));
            merged_skipped += 1;
            continue;
        }
        inputs.push(file.path);
        snapshots.push(snapshot);
    }
    if snapshots.is_empty() {
        return Err(HistoryError::OnlyMergedReports {
            paths: join_paths(paths),
            merged: merged_skipped,
        });
    }
    let (used, counts) = select(snapshots, range, paths)?;
    let mut sensors: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
    for snapshot in &used {
        sensors
            .entry(snapshot.report.sensor.as_str())
            .or_default()
            .push(snapshot);
    }
    let cumulative: Vec<&Snapshot> = used
        .iter()
        .filter(|s| {
            s.report
                .learning
                .as_ref()
                .is_some_and(|l| !l.stats_per_interval)
        })
        .collect();
    if let (Some(first), Some(last)) = (cumulative.first(), cumulative.last()) {
        log::warn!(
            "{} snapshot(s) ({} .. {}) count learning from their daemon's start (written before those counts were per interval): their learning counts are left out",
            cumulative.len(),
            first.path.display(),
            last.path.display()
        );
    }
    let by_sensor = sensors
        .into_values()
        .map(|own| merge(&own))
        .collect::<Result<_, _>>()?;
    Ok(MergedHistory {
        report: merge(&used.iter().collect::<Vec<_>>())?,
        counts,
        intervals: used.iter().map(Interval::of).collect(),
        by_sensor,
        inputs,
    })
}

/// Keeps the snapshots within `range`, each file's bytes once, and of
/// overlapping files of one sensor the one that starts first. Returns them
/// ordered by start.
fn select(
    snapshots: Vec<Snapshot>,
    range: &TimeRange,
    paths: &[PathBuf],
) -> Result<(Vec<Snapshot>, SelectionCounts), HistoryError> {
    let found = snapshots.len();
    let mut counts = SelectionCounts::default();
    let mut in_range = Vec::new();
    let mut partial_files = Vec::new();
    for snapshot in snapshots {
        if range.contains(snapshot.start, snapshot.end) {
            in_range.push(snapshot);
        } else if range.overlaps(snapshot.start, snapshot.end) {
            counts.partial += 1;
            partial_files.push(snapshot.path.display().to_string());
        } else {
            counts.outside += 1;
        }
    }
    if counts.partial > 0 {
        log::warn!(
            "skipped {} snapshot(s) only partly within --from/--to (a snapshot cannot be split): {}",
            counts.partial,
            partial_files.join(", ")
        );
    }
    if in_range.is_empty() {
        return Err(HistoryError::NothingInRange {
            paths: join_paths(paths),
            found,
            partial: counts.partial,
        });
    }

    let unique = drop_identical(in_range, &mut counts);
    check_pseudonym_keys(&unique)?;
    let unique = drop_merged_reports_held_whole(unique, &mut counts);
    let used = drop_overlapping(unique, &mut counts);

    counts.used = used.len();
    counts.uncovered_seconds = uncovered_seconds(&used);
    for part in used.iter().flat_map(|snapshot| &snapshot.parts) {
        // Past u64::MAX only in a hand-edited file; no wrap, no panic.
        counts.restarts = counts.restarts.saturating_add(part.restarts);
        counts.gap_seconds += part.gap_seconds;
    }
    Ok((used, counts))
}

/// Per sensor and interface, the seconds between its first start and its
/// last end that none of its snapshots in `used` covers; summed.
fn uncovered_seconds(used: &[Snapshot]) -> f64 {
    let mut by_pair: HashMap<&(String, String), Vec<(OffsetDateTime, OffsetDateTime)>> =
        HashMap::new();
    for part in used.iter().flat_map(|s| &s.parts) {
        for pair in &part.pairs {
            by_pair
                .entry(pair)
                .or_default()
                .push((part.start, part.end));
        }
    }
    let mut uncovered = 0.0;
    for parts in by_pair.values_mut() {
        parts.sort();
        let mut covered_until: Option<OffsetDateTime> = None;
        for &(start, end) in parts.iter() {
            if let Some(until) = covered_until
                && start > until
            {
                uncovered += (start - until).as_seconds_f64();
            }
            covered_until = Some(covered_until.map_or(end, |until| until.max(end)));
        }
    }
    uncovered
}

/// Drops a merged report whose every listed snapshot is among the files
/// read: they hold the same counts with each interval's own detail
/// (timeline, coverage). A merged report that holds more (another sensor's
/// snapshots, say) stays, and the overlap check then prefers it.
fn drop_merged_reports_held_whole(
    snapshots: Vec<Snapshot>,
    counts: &mut SelectionCounts,
) -> Vec<Snapshot> {
    let present: HashSet<(&str, &[String], &str, &str)> = snapshots
        .iter()
        .filter(|s| s.report.snapshot.is_some())
        .map(|s| {
            let report = &s.report;
            (
                report.sensor.as_str(),
                report.interfaces.as_slice(),
                report.start.as_str(),
                report.end.as_str(),
            )
        })
        .collect();
    let held_whole: Vec<bool> = snapshots
        .iter()
        .map(|s| {
            !s.report.merged_from.is_empty()
                && s.report.merged_from.iter().all(|part| {
                    present.contains(&(
                        part.sensor.as_str(),
                        part.interfaces.as_slice(),
                        part.start.as_str(),
                        part.end.as_str(),
                    ))
                })
        })
        .collect();
    snapshots
        .into_iter()
        .zip(held_whole)
        .filter_map(|(snapshot, held)| {
            if held {
                log::info!(
                    "{}: a merged report of snapshots all read beside it: they are used instead",
                    snapshot.path.display()
                );
                counts.overlapping += 1;
                return None;
            }
            Some(snapshot)
        })
        .collect()
}

/// Keeps the first of files with the same SHA-256.
fn drop_identical(snapshots: Vec<Snapshot>, counts: &mut SelectionCounts) -> Vec<Snapshot> {
    let mut first_with_hash: HashMap<String, PathBuf> = HashMap::new();
    let mut unique = Vec::new();
    for snapshot in snapshots {
        if let Some(kept) = first_with_hash.get(&snapshot.sha256) {
            log::info!(
                "{} is byte-identical to {}: counted once",
                snapshot.path.display(),
                kept.display()
            );
            counts.duplicates += 1;
        } else {
            first_with_hash.insert(snapshot.sha256.clone(), snapshot.path.clone());
            unique.push(snapshot);
        }
    }
    unique
}

/// Refuses snapshots whose watched addresses are pseudonyms under
/// different keys (or pseudonyms mixed with addresses).
fn check_pseudonym_keys(snapshots: &[Snapshot]) -> Result<(), HistoryError> {
    let Some(first) = snapshots.first() else {
        return Ok(());
    };
    let key_name = |key: Option<&str>| key.unwrap_or("none").to_string();
    match snapshots
        .iter()
        .find(|other| other.pseudonym_key_id() != first.pseudonym_key_id())
    {
        Some(other) => Err(HistoryError::MixedPseudonymKeys {
            first: first.path.clone(),
            first_key: key_name(first.pseudonym_key_id()),
            second: other.path.clone(),
            second_key: key_name(other.pseudonym_key_id()),
        }),
        None => Ok(()),
    }
}

/// Among files that share a sensor and interface and overlap in time,
/// keeps the one that starts first (ties: the longer, then a merged report
/// before a snapshot, as it may hold more, then by file name). A merged
/// report overlaps only the snapshots it lists (`merged_from`): read beside
/// its own snapshots it overlaps each of them, and beside the snapshots of
/// a gap in it, none. Touching bounds (one ends when the next starts) are
/// not an overlap. Returns the kept ones ordered by start.
fn drop_overlapping(mut snapshots: Vec<Snapshot>, counts: &mut SelectionCounts) -> Vec<Snapshot> {
    snapshots.sort_by_cached_key(|s| {
        (
            s.start,
            Reverse(s.end),
            s.report.snapshot.is_some(),
            name_order(&s.name),
            s.path.clone(),
        )
    });
    // Per sensor and interface: the intervals kept (disjoint), by start,
    // with their end and file.
    let mut kept_intervals: HashMap<
        (String, String),
        BTreeMap<OffsetDateTime, (OffsetDateTime, PathBuf)>,
    > = HashMap::new();
    let mut kept = Vec::new();
    for snapshot in snapshots {
        let overlapped = snapshot.parts.iter().find_map(|part| {
            part.pairs.iter().find_map(|pair| {
                // Kept intervals are disjoint: the last one starting before
                // this part ends is the only one that can reach into it (an
                // instant is inside one that starts with it).
                let kept = kept_intervals.get(pair)?;
                let (_, (end, file)) = if part.end > part.start {
                    kept.range(..part.end).next_back()?
                } else {
                    kept.range(..=part.end).next_back()?
                };
                (*end > part.start).then_some((pair, file))
            })
        });
        if let Some(((sensor, interface), kept_file)) = overlapped {
            log::warn!(
                "{} overlaps {} (sensor {sensor}, interface {interface}): skipped so nothing is counted twice",
                snapshot.path.display(),
                kept_file.display(),
            );
            counts.overlapping += 1;
            continue;
        }
        // An instant holds no time another file could overlap (and would
        // take the key of the interval starting with it).
        for part in snapshot.parts.iter().filter(|part| part.end > part.start) {
            for pair in &part.pairs {
                kept_intervals
                    .entry(pair.clone())
                    .or_default()
                    .insert(part.start, (part.end, snapshot.path.clone()));
            }
        }
        kept.push(snapshot);
    }
    kept
}

/// Each sensor named (a merged report names several, joined by ',') with
/// each of `interfaces`.
fn sensor_interface_pairs(sensors: &str, interfaces: &[String]) -> Vec<(String, String)> {
    let interfaces: &[String] = if interfaces.is_empty() {
        &[String::new()]
    } else {
        interfaces
    };
    sensors
        .split(',')
        .flat_map(|sensor| {
            interfaces
                .iter()
                .map(move |interface| (sensor.to_string(), interface.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Merge

/// A flow's identity across snapshots: watched, endpoint, protocol, port,
/// direction, service.
type FlowId = (IpAddr, IpAddr, u8, u16, String, String);

/// Merges snapshots (already free of duplicates and overlaps) into one
/// report without a `snapshot` section; a sum past `u64::MAX` (only a
/// hand-edited or corrupt file holds such counts) is refused with the files
/// named.
fn merge(snapshots: &[&Snapshot]) -> Result<Report, HistoryError> {
    let mut sensors = BTreeSet::new();
    let mut interfaces = BTreeSet::new();
    let mut totals = Totals::default();
    let mut malformed: BTreeMap<String, u64> = BTreeMap::new();
    let mut flow_table = FlowTable::default();
    let mut feeds: Vec<FeedOrigin> = Vec::new();
    let mut services: BTreeMap<String, ServiceRow> = BTreeMap::new();
    let mut flows: BTreeMap<FlowId, FlowRow> = BTreeMap::new();
    let mut merged_from: Vec<MergedPart> = Vec::new();
    let mut learning = MergedLearning::default();

    for (index, snapshot) in snapshots.iter().enumerate() {
        let overflow = |counter: String| HistoryError::CountOverflow {
            file: snapshot.path.clone(),
            counter,
            before: files_before(&snapshots[..index]),
        };
        let report = &snapshot.report;
        sensors.extend(report.sensor.split(',').map(str::to_string));
        if report.merged_from.is_empty() {
            let coverage = report.snapshot.as_ref().map(|info| &info.coverage);
            merged_from.push(MergedPart {
                sensor: report.sensor.clone(),
                interfaces: report.interfaces.clone(),
                start: report.start.clone(),
                end: report.end.clone(),
                restarts: coverage.map_or(0, |coverage| coverage.restarts),
                gap_before_seconds: coverage.map_or(0.0, |coverage| coverage.gap_before_seconds),
            });
        } else {
            merged_from.extend(report.merged_from.iter().cloned());
        }
        interfaces.extend(report.interfaces.iter().cloned());
        add_totals(&mut totals, &report.totals).map_err(overflow)?;
        for (reason, count) in &report.malformed {
            add_count(malformed.entry(reason.clone()).or_default(), *count)
                .map_err(|()| overflow(format!("malformed.{reason}")))?;
        }
        add_flow_table(&mut flow_table, &report.flow_table).map_err(overflow)?;
        for feed in &report.feeds {
            let known = feeds
                .iter()
                .any(|seen| seen.name == feed.name && seen.sha256 == feed.sha256);
            if !known {
                feeds.push(feed.clone());
            }
        }
        for row in &report.services {
            add_service_counters(&mut services, row).map_err(overflow)?;
        }
        for flow in &report.flows {
            add_flow(&mut flows, flow).map_err(overflow)?;
        }
        if let Some(add) = &report.learning {
            learning.add(add, report).map_err(overflow)?;
        }
    }

    let mut flows: Vec<FlowRow> = flows.into_values().collect();
    flows.sort_by_cached_key(|flow| {
        (
            parse_time(&flow.first_seen),
            flow.watched,
            flow.endpoint,
            flow.port,
            flow.direction.clone(),
        )
    });
    let services = FlowSummary::of(&flows).fill_service_rows(services.into_values().collect());
    let start = snapshots.iter().map(|s| s.start).min();
    let end = snapshots.iter().map(|s| s.end).max();
    let sensors: Vec<String> = sensors.into_iter().collect();
    let learning = learning.finish(merged_from.len());

    Ok(Report {
        schema: SCHEMA.to_string(),
        start: start.map_or_else(String::new, crate::report::rfc3339),
        end: end.map_or_else(String::new, crate::report::rfc3339),
        sensor: sensors.join(","),
        interfaces: interfaces.into_iter().collect(),
        // One key for all (`check_pseudonym_keys`).
        pseudonym_key_id: snapshots
            .first()
            .and_then(|s| s.pseudonym_key_id())
            .map(str::to_string),
        totals,
        malformed,
        flow_table,
        feeds,
        services,
        top_sources: top_rows(&flows, |flow| flow.watched),
        top_endpoints: top_rows(&flows, |flow| flow.endpoint),
        flows,
        snapshot: None,
        merged_from,
        learning,
    })
}

/// The learning sections of the snapshots merged: counts summed over
/// their intervals, the domain feeds of all, and the endpoints still
/// learned at the end of each sensor's latest snapshot.
#[derive(Default)]
struct MergedLearning {
    sum: Option<crate::report::Learning>,
    /// Whether any snapshot's learning counts were summed (none: the
    /// counts are unknown, not zero).
    counted: bool,
    /// Snapshots whose learning counts were summed (a merged report given
    /// as input adds those its own counts cover).
    counted_snapshots: u64,
    /// Per sensor and interfaces: the end of its latest snapshot read, and
    /// the endpoints it held then.
    latest: BTreeMap<(String, Vec<String>), (String, Vec<crate::learn::LearnedEndpoint>)>,
}

impl MergedLearning {
    /// Adds one report's learning section.
    fn add(&mut self, add: &crate::report::Learning, report: &Report) -> Result<(), String> {
        let sum = self.sum.get_or_insert_with(|| crate::report::Learning {
            domain_feeds: Vec::new(),
            stats: crate::learn::LearnStats::default(),
            handed_over: 0,
            ring_drops: 0,
            throttled: 0,
            endpoints: Vec::new(),
            stats_per_interval: true,
            stats_cover_snapshots: None,
        });
        add_named(
            "learning",
            [
                (&mut sum.handed_over, add.handed_over, "handed_over"),
                (&mut sum.ring_drops, add.ring_drops, "ring_drops"),
                (&mut sum.throttled, add.throttled, "throttled"),
            ],
        )?;
        // Older snapshots' counts ran from their daemon's start: left out
        // (`merge_paths` says so once).
        if add.stats_per_interval {
            sum.stats = sum
                .stats
                .checked_plus(&add.stats)
                .ok_or_else(|| "learning.stats".to_string())?;
            self.counted = true;
            let parts = report.merged_from.len().max(1) as u64;
            self.counted_snapshots += add.stats_cover_snapshots.unwrap_or(parts);
        }
        for feed in &add.domain_feeds {
            if !sum.domain_feeds.contains(feed) {
                sum.domain_feeds.push(feed.clone());
            }
        }
        let sensor = (report.sensor.clone(), report.interfaces.clone());
        let later = self
            .latest
            .get(&sensor)
            .is_none_or(|(end, _)| parse_time(&report.end) >= parse_time(end));
        if later {
            self.latest
                .insert(sensor, (report.end.clone(), add.endpoints.clone()));
        }
        Ok(())
    }

    /// The merged section of a merge of `snapshots`; `None` when no
    /// report had one.
    fn finish(self, snapshots: usize) -> Option<crate::report::Learning> {
        let mut learning = self.sum?;
        learning.stats_per_interval = self.counted;
        learning.stats_cover_snapshots =
            (self.counted_snapshots < snapshots as u64).then_some(self.counted_snapshots);
        let mut endpoints: BTreeMap<(String, IpAddr), crate::learn::LearnedEndpoint> =
            BTreeMap::new();
        for endpoint in self
            .latest
            .into_values()
            .flat_map(|(_, endpoints)| endpoints)
        {
            let key = (endpoint.service.clone(), endpoint.address);
            // Two sensors that learned it: the later expiry.
            let keep = endpoints
                .get(&key)
                .is_none_or(|kept| parse_time(&endpoint.expires_at) > parse_time(&kept.expires_at));
            if keep {
                endpoints.insert(key, endpoint);
            }
        }
        learning.endpoints = endpoints.into_values().collect();
        Some(learning)
    }
}

/// How an overflow error names the files merged before the one that
/// overflowed: the first few and how many more; none when it overflowed
/// by its own rows (a flow listed twice).
fn files_before(snapshots: &[&Snapshot]) -> String {
    const NAMED: usize = 3;
    if snapshots.is_empty() {
        return "summed over the file's own rows".to_string();
    }
    let mut names: Vec<String> = snapshots
        .iter()
        .take(NAMED)
        .map(|snapshot| snapshot.path.display().to_string())
        .collect();
    if snapshots.len() > NAMED {
        names.push(format!("{} more", snapshots.len() - NAMED));
    }
    format!("added to the sum of {}", names.join(", "))
}

/// `sum += add`, refused past `u64::MAX`.
fn add_count(sum: &mut u64, add: u64) -> Result<(), ()> {
    *sum = sum.checked_add(add).ok_or(())?;
    Ok(())
}

/// Adds each counter (its sum, what to add, its name) with [`add_count`];
/// an overflow gives the counter's name, `what.name`.
fn add_named<const N: usize>(
    what: &str,
    counters: [(&mut u64, u64, &str); N],
) -> Result<(), String> {
    for (sum, add, name) in counters {
        add_count(sum, add).map_err(|()| format!("{what}.{name}"))?;
    }
    Ok(())
}

fn add_totals(sum: &mut Totals, add: &Totals) -> Result<(), String> {
    add_named(
        "totals",
        [
            (&mut sum.packets, add.packets, "packets"),
            (&mut sum.bytes, add.bytes, "bytes"),
            (&mut sum.ipv4, add.ipv4, "ipv4"),
            (&mut sum.ipv6, add.ipv6, "ipv6"),
            (&mut sum.other, add.other, "other"),
            (&mut sum.malformed, add.malformed, "malformed"),
            (&mut sum.watched, add.watched, "watched"),
            (&mut sum.matched, add.matched, "matched"),
            (&mut sum.captured, add.captured, "captured"),
            (&mut sum.capture_drops, add.capture_drops, "capture_drops"),
            (
                &mut sum.capture_throttled,
                add.capture_throttled,
                "capture_throttled",
            ),
        ],
    )
}

fn add_flow_table(sum: &mut FlowTable, add: &FlowTable) -> Result<(), String> {
    add_named(
        "flow_table",
        [
            (&mut sum.inserts, add.inserts, "inserts"),
            (&mut sum.evictions, add.evictions, "evictions"),
            (
                &mut sum.insert_failures,
                add.insert_failures,
                "insert_failures",
            ),
            (&mut sum.drains, add.drains, "drains"),
            (&mut sum.recycles, add.recycles, "recycles"),
        ],
    )
}

/// Sums a service's packet and byte counters; flows, sources, share and
/// times are recomputed from the merged flows.
fn add_service_counters(
    services: &mut BTreeMap<String, ServiceRow>,
    row: &ServiceRow,
) -> Result<(), String> {
    let sum = services
        .entry(row.service.clone())
        .or_insert_with(|| ServiceRow::empty(row.service.clone()));
    add_named(
        &format!("services[{}]", row.service),
        [
            (&mut sum.packets, row.packets, "packets"),
            (&mut sum.bytes, row.bytes, "bytes"),
            (
                &mut sum.packets_outbound,
                row.packets_outbound,
                "packets_outbound",
            ),
            (
                &mut sum.packets_inbound,
                row.packets_inbound,
                "packets_inbound",
            ),
            (
                &mut sum.bytes_outbound,
                row.bytes_outbound,
                "bytes_outbound",
            ),
            (&mut sum.bytes_inbound, row.bytes_inbound, "bytes_inbound"),
        ],
    )
}

/// Adds one snapshot's flow: counts summed, earliest first seen, latest
/// last seen, TCP flags OR-ed.
fn add_flow(flows: &mut BTreeMap<FlowId, FlowRow>, flow: &FlowRow) -> Result<(), String> {
    let id = (
        flow.watched,
        flow.endpoint,
        flow.protocol,
        flow.port,
        flow.direction.to_string(),
        flow.service.clone(),
    );
    match flows.entry(id) {
        Entry::Vacant(entry) => {
            entry.insert(flow.clone());
        }
        Entry::Occupied(mut entry) => {
            let sum = entry.get_mut();
            add_named(
                &format!(
                    "flows[{} {} {} port {} {}]",
                    flow.watched, flow.direction, flow.endpoint, flow.port, flow.service
                ),
                [
                    (&mut sum.packets, flow.packets, "packets"),
                    (&mut sum.bytes, flow.bytes, "bytes"),
                ],
            )?;
            if compare_times(&flow.first_seen, &sum.first_seen).is_lt() {
                sum.first_seen = flow.first_seen.clone();
            }
            if compare_times(&flow.last_seen, &sum.last_seen).is_gt() {
                sum.last_seen = flow.last_seen.clone();
            }
            sum.tcp_flags |= flow.tcp_flags;
        }
    }
    Ok(())
}

/// `--format csv`: one row per service, under [`CSV_HEADER`]; with
/// `--by-sensor` (`by_sensor` not empty) a first `sensor` column, each
/// sensor's rows, then the merged rows under sensor `*`.
pub fn services_csv(report: &Report, by_sensor: &[Report]) -> Result<String, HistoryError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let fleet = !by_sensor.is_empty();
    let mut header: Vec<&str> = Vec::new();
    if fleet {
        header.push("sensor");
    }
    header.extend(CSV_HEADER);
    writer.write_record(&header)?;
    let blocks = by_sensor
        .iter()
        .map(|own| (own.sensor.as_str(), own))
        .chain(std::iter::once(("*", report)));
    for (sensor, report) in blocks {
        for row in &report.services {
            let mut record: Vec<String> = Vec::new();
            if fleet {
                record.push(sensor.to_string());
            }
            record.extend([
                row.service.clone(),
                row.flows.to_string(),
                row.share.to_string(),
                row.unique_sources.to_string(),
                row.packets.to_string(),
                row.bytes.to_string(),
                row.packets_outbound.to_string(),
                row.packets_inbound.to_string(),
                row.bytes_outbound.to_string(),
                row.bytes_inbound.to_string(),
                row.first_seen.clone().unwrap_or_default(),
                row.last_seen.clone().unwrap_or_default(),
            ]);
            writer.write_record(&record)?;
        }
    }
    let bytes = writer
        .into_inner()
        .map_err(|error| csv::Error::from(error.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `--format json`: the merged report; with `--by-sensor`, plus a
/// `by_sensor` array of each sensor's merged report.
fn by_sensor_json(merged: &MergedHistory) -> String {
    #[derive(serde::Serialize)]
    struct Fleet<'a> {
        #[serde(flatten)]
        report: &'a Report,
        #[serde(skip_serializing_if = "<[Report]>::is_empty")]
        by_sensor: &'a [Report],
    }
    let mut text = serde_json::to_string_pretty(&Fleet {
        report: &merged.report,
        by_sensor: &merged.by_sensor,
    })
    .expect("a report always serialises");
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------
// Chain verification

/// The outcome of checking one folder's chain.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainCheck {
    /// Every link holds. `notes` says what was not a break (a first file
    /// whose predecessor was pruned).
    Intact {
        snapshots: usize,
        start: String,
        end: String,
        notes: Vec<String>,
    },
    /// The first break: the file (name only) and what is wrong.
    Broken { file: String, problem: String },
}

/// One folder and the outcome of its chain check.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderChain {
    pub folder: PathBuf,
    pub check: ChainCheck,
}

impl FolderChain {
    /// True when the folder's chain has a break.
    pub fn is_broken(&self) -> bool {
        matches!(self.check, ChainCheck::Broken { .. })
    }
}

impl fmt::Display for FolderChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let folder = self.folder.display();
        match &self.check {
            ChainCheck::Intact {
                snapshots,
                start,
                end,
                notes,
            } => {
                write!(
                    f,
                    "chain intact: {snapshots} snapshots in {folder}, {start} .. {end}"
                )?;
                for note in notes {
                    write!(f, "\n  note: {note}")?;
                }
                Ok(())
            }
            ChainCheck::Broken { file, problem } => {
                write!(f, "chain broken in {folder}: {file}: {problem}")
            }
        }
    }
}

/// Checks the chain of the snapshot files under `paths`, per folder: a
/// folder path checks all its `classifier-*.json` files, file paths check
/// the files given (grouped by the folder holding them).
pub fn verify_paths(paths: &[PathBuf]) -> Result<Vec<FolderChain>, HistoryError> {
    let mut by_folder: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for FoundFile { path: file, .. } in collect_files(paths)? {
        let folder = file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        by_folder.entry(folder).or_default().push(file);
    }
    Ok(by_folder
        .into_iter()
        .map(|(folder, files)| FolderChain {
            check: check_last_written(&folder, check_chain(files)),
            folder,
        })
        .collect())
}

/// An intact chain's folder checked against what its writer recorded of
/// the last snapshot it wrote (the state file): a file edited since breaks
/// the chain, which no later link would show; a file gone (moved by a
/// pipeline, or deleted) is a note.
fn check_last_written(folder: &Path, mut check: ChainCheck) -> ChainCheck {
    let ChainCheck::Intact { notes, .. } = &mut check else {
        return check;
    };
    let Some(crate::snapshot::LastWritten {
        snapshot: last,
        follows,
    }) = crate::snapshot::last_written(folder)
    else {
        return check;
    };
    match differing_sha256(folder, &last) {
        Ok(found) => {
            if let Some(found) = found {
                return ChainCheck::Broken {
                    file: last.file,
                    problem: format!(
                        "the last snapshot written here should have sha256 {} (its writer's record, {}), found {found} (edited since?)",
                        last.sha256,
                        crate::snapshot::STATE_FILE
                    ),
                };
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // Its link to the one before is in the record: that one is
            // checked as the gone file would have checked it.
            let mut note = format!(
                "{}, the last snapshot written here, is not in the folder (moved away or deleted)",
                last.file
            );
            if let Some(previous) = follows {
                match differing_sha256(folder, &previous) {
                    Ok(found) => {
                        if let Some(found) = found {
                            return ChainCheck::Broken {
                                file: previous.file,
                                problem: format!(
                                    "{}, the last snapshot written here (gone; its writer's record, {}), names it with sha256 {}, found {found} (edited since?)",
                                    last.file,
                                    crate::snapshot::STATE_FILE,
                                    previous.sha256
                                ),
                            };
                        }
                    }
                    Err(_) => {
                        note.push_str(&format!("; nor is {}, the one it follows", previous.file))
                    }
                }
            }
            notes.push(note);
        }
        Err(error) => notes.push(format!(
            "{}, the last snapshot written here, cannot be read: {error}",
            last.file
        )),
    }
    check
}

/// The SHA-256 of the file `link` names in `folder` when it is not the one
/// `link` records (`None` when it is).
fn differing_sha256(
    folder: &Path,
    link: &crate::report::PreviousSnapshot,
) -> io::Result<Option<String>> {
    let found = crate::feeds::sha256_hex(&std::fs::read(folder.join(&link.file))?);
    Ok((found != link.sha256).then_some(found))
}

/// Checks one folder's files, in name order, and stops at the first break.
fn check_chain(mut files: Vec<PathBuf>) -> ChainCheck {
    files.sort_by_cached_key(|file| name_order(&file_name_of(file)));
    let names: HashSet<String> = files.iter().map(|file| file_name_of(file)).collect();
    let mut notes = Vec::new();
    let mut previous: Option<Snapshot> = None;
    let mut first_start = String::new();
    let mut checked = 0;
    for file in &files {
        let snapshot = match load_snapshot(file) {
            Ok(snapshot) => snapshot,
            Err(problem) => {
                return ChainCheck::Broken {
                    file: file_name_of(file),
                    problem: problem.to_string(),
                };
            }
        };
        if snapshot.report.snapshot.is_none() {
            notes.push(merged_report_note(&snapshot.name));
            continue;
        }
        checked += 1;
        let link = check_name(&snapshot).and_then(|()| match &previous {
            None => check_first_link(&snapshot, &names),
            Some(previous) => check_link(&snapshot, previous, &names).map(|()| None),
        });
        match link {
            Ok(note) => notes.extend(note),
            Err(problem) => {
                return ChainCheck::Broken {
                    file: snapshot.name,
                    problem,
                };
            }
        }
        if previous.is_none() {
            first_start = snapshot.report.start.clone();
        }
        previous = Some(snapshot);
    }
    ChainCheck::Intact {
        snapshots: checked,
        start: first_start,
        end: previous.map(|last| last.report.end).unwrap_or_default(),
        notes,
    }
}

/// The file name must be a snapshot name naming its start (to the second).
fn check_name(snapshot: &Snapshot) -> Result<(), String> {
    let Some(name) = SnapshotName::parse(&snapshot.name) else {
        return Err("name is not classifier-YYYYMMDDTHHMMSSZ[-N].json".to_string());
    };
    let start = snapshot.start;
    let whole_second = start - time::Duration::nanoseconds(i64::from(start.nanosecond()));
    if name.start != whole_second {
        return Err(format!(
            "its name says {} but it starts at {} (renamed?)",
            crate::report::rfc3339(name.start),
            snapshot.report.start
        ));
    }
    Ok(())
}

/// The first file may follow a pruned predecessor (a note), but not one
/// that sorts after it.
fn check_first_link(
    snapshot: &Snapshot,
    names: &HashSet<String>,
) -> Result<Option<String>, String> {
    let Some(link) = snapshot
        .report
        .snapshot
        .as_ref()
        .and_then(|info| info.previous.as_ref())
    else {
        return Ok(None);
    };
    if names.contains(&link.file) {
        return Err(format!(
            "its previous snapshot {} sorts after it (reordered)",
            link.file
        ));
    }
    Ok(Some(format!(
        "{} follows {}, which is not here (older snapshots pruned?)",
        snapshot.name, link.file
    )))
}

/// Every later file must name the file just before it with that file's
/// SHA-256, and start no earlier than it ends.
fn check_link(
    snapshot: &Snapshot,
    previous: &Snapshot,
    names: &HashSet<String>,
) -> Result<(), String> {
    let expected = format!(
        "previous snapshot should be {} with sha256 {}",
        previous.name, previous.sha256
    );
    let link = snapshot
        .report
        .snapshot
        .as_ref()
        .and_then(|info| info.previous.as_ref());
    let Some(link) = link else {
        return Err(format!(
            "{expected}, found none (a new chain starts here: edited, or files of another chain mixed in)"
        ));
    };
    if link.file != previous.name || link.sha256 != previous.sha256 {
        let why = if link.file == previous.name {
            format!("{} was edited: its bytes no longer match", previous.name)
        } else if names.contains(&link.file) {
            format!("{} is here but out of order: reordered", link.file)
        } else {
            format!("{} is missing", link.file)
        };
        return Err(format!(
            "{expected}, found {} with sha256 {} ({why})",
            link.file, link.sha256
        ));
    }
    if snapshot.start < previous.end {
        return Err(format!(
            "starts at {}, before {} ends at {} (out of time order)",
            snapshot.report.start, previous.name, previous.report.end
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Coverage, PreviousSnapshot, SnapshotInfo};

    use crate::test_support::TempFolder;

    const NORDVPN: &str = "nordvpn";
    const TOR: &str = "tor";

    fn flow(
        watched: &str,
        endpoint: &str,
        service: &str,
        packets: u64,
        first_seen: &str,
        last_seen: &str,
    ) -> FlowRow {
        FlowRow {
            watched: watched.parse().unwrap(),
            endpoint: endpoint.parse().unwrap(),
            protocol: 6,
            port: 443,
            service: service.to_string(),
            direction: "outbound".into(),
            packets,
            bytes: packets * 100,
            first_seen: first_seen.to_string(),
            last_seen: last_seen.to_string(),
            tcp_flags: 0x02,
            origin: "feed".into(),
        }
    }

    /// A snapshot of sensor `s1` on `eth1` whose counters are its flows'.
    fn snapshot(start: &str, end: &str, flows: Vec<FlowRow>) -> Report {
        let mut services: BTreeMap<String, ServiceRow> = BTreeMap::new();
        for flow in &flows {
            add_service_counters(
                &mut services,
                &ServiceRow {
                    service: flow.service.clone(),
                    packets: flow.packets,
                    bytes: flow.bytes,
                    packets_outbound: flow.packets,
                    packets_inbound: 0,
                    bytes_outbound: flow.bytes,
                    bytes_inbound: 0,
                    flows: 0,
                    flows_learned: 0,
                    unique_sources: 0,
                    share: 0.0,
                    first_seen: None,
                    last_seen: None,
                },
            )
            .unwrap();
        }
        let packets: u64 = flows.iter().map(|f| f.packets).sum();
        let bytes: u64 = flows.iter().map(|f| f.bytes).sum();
        Report {
            schema: SCHEMA.to_string(),
            start: start.to_string(),
            end: end.to_string(),
            sensor: "s1".to_string(),
            interfaces: vec!["eth1".to_string()],
            pseudonym_key_id: None,
            totals: Totals {
                packets: packets + 10,
                bytes: bytes + 1000,
                ipv4: packets + 10,
                ipv6: 0,
                other: 0,
                malformed: 1,
                watched: packets,
                matched: packets,
                ..Totals::default()
            },
            malformed: BTreeMap::from([("ipv4_truncated".to_string(), 1)]),
            flow_table: FlowTable {
                inserts: flows.len() as u64,
                evictions: 0,
                insert_failures: 0,
                drains: 60,
                recycles: 0,
            },
            feeds: vec![FeedOrigin {
                name: "bundled".to_string(),
                sha256: "ab".repeat(32),
                prefixes: BTreeMap::new(),
                loaded_at: None,
            }],
            services: services.into_values().collect(),
            flows,
            top_sources: Vec::new(),
            top_endpoints: Vec::new(),
            snapshot: Some(SnapshotInfo {
                interval_seconds: 3600,
                instance: "test".to_string(),
                program_attached_at: start.to_string(),
                watched: vec!["175.45.176.0/22".to_string()],
                previous: None,
                coverage: Coverage {
                    restarts: 0,
                    gap_before_seconds: 0.0,
                    partial: false,
                    counter_reset: false,
                },
                pseudonym_key_id: None,
            }),
            merged_from: Vec::new(),
            learning: None,
        }
    }

    /// `classifier-20261124T190000Z.json` for a start of 2026-11-24T19:00:00Z.
    fn name_for(start: &str) -> String {
        let stamp: String = start
            .chars()
            .take(19)
            .filter(|c| c.is_ascii_digit() || *c == 'T')
            .collect();
        format!("classifier-{stamp}Z.json")
    }

    fn write_report(path: &Path, report: &Report) -> String {
        let bytes = serde_json::to_vec_pretty(report).unwrap();
        std::fs::write(path, &bytes).unwrap();
        sha256_hex(&bytes)
    }

    /// Writes `reports` into `folder` as a chain, named by their starts.
    fn write_chain(folder: &TempFolder, reports: Vec<Report>) -> Vec<PathBuf> {
        let mut previous: Option<PreviousSnapshot> = None;
        let mut paths = Vec::new();
        for mut report in reports {
            let name = name_for(&report.start);
            if let Some(info) = report.snapshot.as_mut() {
                info.previous = previous.clone();
            }
            let path = folder.file(&name);
            let sha256 = write_report(&path, &report);
            previous = Some(PreviousSnapshot { file: name, sha256 });
            paths.push(path);
        }
        paths
    }

    /// Three hourly snapshots, 19:00 to 22:00.
    fn three_hours() -> Vec<Report> {
        vec![
            snapshot(
                "2026-11-24T19:00:00Z",
                "2026-11-24T20:00:00Z",
                vec![flow(
                    "175.45.176.1",
                    "198.51.100.1",
                    NORDVPN,
                    5,
                    "2026-11-24T19:10:00.25Z",
                    "2026-11-24T19:59:59Z",
                )],
            ),
            snapshot(
                "2026-11-24T20:00:00Z",
                "2026-11-24T21:00:00Z",
                vec![flow(
                    "175.45.176.2",
                    "198.51.100.2",
                    TOR,
                    7,
                    "2026-11-24T20:05:00Z",
                    "2026-11-24T20:06:00Z",
                )],
            ),
            snapshot(
                "2026-11-24T21:00:00Z",
                "2026-11-24T22:00:00Z",
                vec![flow(
                    "175.45.176.3",
                    "198.51.100.3",
                    TOR,
                    11,
                    "2026-11-24T21:05:00Z",
                    "2026-11-24T21:06:00Z",
                )],
            ),
        ]
    }

    fn service<'a>(report: &'a Report, name: &str) -> &'a ServiceRow {
        report
            .services
            .iter()
            .find(|row| row.service == name)
            .unwrap()
    }

    #[test]
    fn learning_sections_merge_counts_per_interval_and_the_latest_endpoints() {
        let endpoint = |address: &str, expires_at: &str| crate::learn::LearnedEndpoint {
            address: address.parse().unwrap(),
            service: "psiphon".into(),
            domain: "psiphon.ca".into(),
            name: "a.psiphon.ca".into(),
            watched: "175.45.176.1".parse().unwrap(),
            resolver: "175.45.176.53".parse().unwrap(),
            how: "dns".into(),
            learned_at: "2026-11-24T19:30:00Z".into(),
            expires_at: expires_at.into(),
            expires_at_unix_ns: 0,
        };
        let learning = |learned: u64, per_interval: bool, endpoints| crate::report::Learning {
            domain_feeds: vec![("domains.txt".into(), "ab".into())],
            stats: crate::learn::LearnStats {
                learned,
                ..Default::default()
            },
            handed_over: learned * 2,
            ring_drops: 0,
            throttled: 0,
            endpoints,
            stats_per_interval: per_interval,
            stats_cover_snapshots: None,
        };
        let mut reports = three_hours();
        // Written before counts were per interval: its counts are left out.
        reports[0].learning = Some(learning(
            5,
            false,
            vec![endpoint("192.0.2.1", "2026-11-24T21:00:00Z")],
        ));
        reports[1].learning = Some(learning(
            2,
            true,
            vec![endpoint("192.0.2.2", "2026-11-24T22:00:00Z")],
        ));
        reports[2].learning = Some(learning(
            3,
            true,
            vec![endpoint("192.0.2.3", "2026-11-24T23:00:00Z")],
        ));
        let folder = TempFolder::new("merge-learning");
        write_chain(&folder, reports);
        let merged = merge_folder(&folder, &TimeRange::default()).report;
        let section = merged.learning.as_ref().expect("a learning section");
        assert_eq!(section.stats.learned, 5);
        assert_eq!(section.handed_over, 20);
        assert!(section.stats_per_interval);
        // The older snapshot's counts are left out: they cover 2 of 3.
        assert_eq!(section.stats_cover_snapshots, Some(2));
        assert!(
            merged.render(crate::report::ReportFormat::Table).contains(
                "the counts below cover 2 of the 3 snapshots merged (the others had learning off"
            ),
            "{}",
            merged.render(crate::report::ReportFormat::Table)
        );
        assert_eq!(section.domain_feeds.len(), 1);
        let addresses: Vec<String> = section
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(addresses, ["192.0.2.3"], "the latest snapshot's endpoints");

        // Only older snapshots: the counts are unknown, and say so.
        let mut reports = three_hours();
        reports[0].learning = Some(learning(5, false, Vec::new()));
        let folder = TempFolder::new("merge-learning-old");
        write_chain(&folder, reports);
        let merged = merge_folder(&folder, &TimeRange::default()).report;
        let table = merged.render(crate::report::ReportFormat::Table);
        let section = merged.learning.expect("a learning section");
        assert!(!section.stats_per_interval);
        assert_eq!(section.stats_cover_snapshots, Some(0));
        assert!(
            table.contains("DNS, TLS and address counts not known")
                && !table.contains("DNS responses to watched hosts"),
            "{table}"
        );

        // Learning on in every snapshot: their counts cover all, unsaid.
        let mut reports = three_hours();
        for (report, learned) in reports.iter_mut().zip([1, 2, 3]) {
            report.learning = Some(learning(learned, true, Vec::new()));
        }
        let folder = TempFolder::new("merge-learning-all");
        write_chain(&folder, reports);
        let merged = merge_folder(&folder, &TimeRange::default()).report;
        let section = merged.learning.as_ref().expect("a learning section");
        assert_eq!(section.stats.learned, 6);
        assert_eq!(section.stats_cover_snapshots, None);
        assert!(
            !merged
                .render(crate::report::ReportFormat::Table)
                .contains("the counts below cover")
        );
    }

    fn merge_folder(folder: &TempFolder, range: &TimeRange) -> MergedHistory {
        merge_paths(std::slice::from_ref(&folder.0), range).unwrap()
    }

    /// The snapshots checked and the notes of an intact first chain.
    fn intact(chains: &[FolderChain]) -> (usize, Vec<String>) {
        match &chains[0].check {
            ChainCheck::Intact {
                snapshots, notes, ..
            } => (*snapshots, notes.clone()),
            broken => panic!("expected intact, got {broken:?}"),
        }
    }

    fn broken(chains: &[FolderChain]) -> (String, String) {
        match &chains[0].check {
            ChainCheck::Broken { file, problem } => (file.clone(), problem.clone()),
            intact => panic!("expected a break, got {intact:?}"),
        }
    }

    #[test]
    fn a_fleet_merges_sources_seen_by_two_sensors_once_and_keeps_each_sensor_apart() {
        let first = TempFolder::new("fleet-a");
        let second = TempFolder::new("fleet-b");
        let hour = ("2026-11-24T19:00:00Z", "2026-11-24T20:00:00Z");
        let shared = |endpoint| {
            flow(
                "175.45.176.1",
                endpoint,
                NORDVPN,
                3,
                "2026-11-24T19:10:00Z",
                "2026-11-24T19:20:00Z",
            )
        };
        let mut a = snapshot(
            hour.0,
            hour.1,
            vec![
                shared("198.51.100.1"),
                flow(
                    "175.45.176.2",
                    "198.51.100.9",
                    TOR,
                    2,
                    "2026-11-24T19:30:00Z",
                    "2026-11-24T19:31:00Z",
                ),
            ],
        );
        a.sensor = "sensor-a".into();
        // The same hour on another link: the same source, another endpoint.
        let mut b = snapshot(hour.0, hour.1, vec![shared("198.51.100.7")]);
        b.sensor = "sensor-b".into();
        write_chain(&first, vec![a]);
        write_chain(&second, vec![b]);

        let merged = merge_paths(&[first.0.clone(), second.0.clone()], &TimeRange::default())
            .expect("merge");
        assert_eq!(merged.report.sensor, "sensor-a,sensor-b");
        assert_eq!(service(&merged.report, NORDVPN).unique_sources, 1);
        assert_eq!(service(&merged.report, NORDVPN).flows, 2);
        assert_eq!(service(&merged.report, NORDVPN).packets, 6);
        assert_eq!(merged.report.top_sources.len(), 2);
        let sensors: Vec<(&str, u64, u64)> = merged
            .by_sensor
            .iter()
            .map(|report| {
                let nordvpn = service(report, NORDVPN);
                (
                    report.sensor.as_str(),
                    nordvpn.packets,
                    report.totals.matched,
                )
            })
            .collect();
        assert_eq!(sensors, [("sensor-a", 3, 5), ("sensor-b", 3, 3)]);

        let csv = services_csv(&merged.report, &merged.by_sensor).expect("csv");
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("sensor,service,flows,"), "{csv}");
        assert!(lines[1].starts_with("sensor-a,nordvpn,1,"), "{csv}");
        assert!(
            lines.iter().any(|line| line.starts_with("*,nordvpn,2,")),
            "{csv}"
        );
        let json: serde_json::Value = serde_json::from_str(&by_sensor_json(&merged)).expect("json");
        assert_eq!(json["by_sensor"][1]["sensor"], "sensor-b");
        assert_eq!(json["services"][0]["unique_sources"], 1);
    }

    #[test]
    fn merge_sums_counts_and_counts_spanning_flows_and_sources_once() {
        let folder = TempFolder::new("merge");
        let spanning = |packets, first: &str, last: &str| {
            flow(
                "175.45.176.1",
                "198.51.100.1",
                NORDVPN,
                packets,
                first,
                last,
            )
        };
        let mut late = spanning(4, "2026-11-24T20:00:01Z", "2026-11-24T20:30:00Z");
        late.tcp_flags = 0x10;
        write_chain(
            &folder,
            vec![
                snapshot(
                    "2026-11-24T19:00:00Z",
                    "2026-11-24T20:00:00Z",
                    vec![
                        spanning(3, "2026-11-24T19:03:00.5Z", "2026-11-24T19:59:00Z"),
                        flow(
                            "175.45.176.2",
                            "198.51.100.9",
                            TOR,
                            2,
                            "2026-11-24T19:30:00Z",
                            "2026-11-24T19:31:00Z",
                        ),
                    ],
                ),
                snapshot(
                    "2026-11-24T20:00:00Z",
                    "2026-11-24T21:00:00Z",
                    vec![
                        late,
                        // The same source with another endpoint: a new flow.
                        flow(
                            "175.45.176.1",
                            "198.51.100.5",
                            NORDVPN,
                            1,
                            "2026-11-24T20:10:00Z",
                            "2026-11-24T20:41:00Z",
                        ),
                    ],
                ),
            ],
        );

        let merged = merge_folder(&folder, &TimeRange::default());
        let report = &merged.report;
        assert_eq!(report.start, "2026-11-24T19:00:00Z");
        assert_eq!(report.end, "2026-11-24T21:00:00Z");
        assert_eq!(report.sensor, "s1");
        assert_eq!(report.interfaces, ["eth1"]);
        assert!(report.snapshot.is_none());
        assert_eq!(report.totals.matched, 3 + 2 + 4 + 1);
        assert_eq!(report.totals.packets, 10 + 20);
        assert_eq!(report.malformed["ipv4_truncated"], 2);
        assert_eq!(report.flow_table.drains, 120);
        assert_eq!(report.feeds.len(), 1, "the same feed is listed once");

        assert_eq!(report.flows.len(), 3, "the spanning flow counts once");
        let spanned = &report.flows[0];
        assert_eq!(spanned.endpoint.to_string(), "198.51.100.1");
        assert_eq!(spanned.packets, 7);
        assert_eq!(spanned.bytes, 700);
        assert_eq!(spanned.first_seen, "2026-11-24T19:03:00.5Z");
        assert_eq!(spanned.last_seen, "2026-11-24T20:30:00Z");
        assert_eq!(spanned.tcp_flags, 0x12);

        let nordvpn = service(report, NORDVPN);
        assert_eq!(nordvpn.flows, 2);
        assert_eq!(nordvpn.unique_sources, 1, "one source in two snapshots");
        assert_eq!(nordvpn.packets, 8);
        assert_eq!(nordvpn.packets_outbound, 8);
        assert_eq!(
            nordvpn.first_seen.as_deref(),
            Some("2026-11-24T19:03:00.5Z")
        );
        assert_eq!(nordvpn.last_seen.as_deref(), Some("2026-11-24T20:41:00Z"));
        assert!((nordvpn.share - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(service(report, TOR).unique_sources, 1);

        assert_eq!(report.top_sources[0].address.to_string(), "175.45.176.1");
        assert_eq!(report.top_sources[0].packets, 8);
        assert_eq!(report.top_sources[0].flows, 2);
        assert_eq!(report.top_endpoints[0].address.to_string(), "198.51.100.1");
        assert_eq!(merged.counts.used, 2);

        let table = report.render(ReportFormat::Table);
        assert!(table.contains("2026-11-24 19:03 .. 20:41"), "{table}");
        assert!(table.contains("top watched sources"), "{table}");
        assert!(table.contains("top endpoints"), "{table}");
    }

    #[test]
    fn from_to_keeps_whole_snapshots_and_skips_partial_overlaps() {
        let folder = TempFolder::new("range");
        write_chain(&folder, three_hours());

        let range =
            TimeRange::parse(Some("2026-11-24T19:30:00Z"), Some("2026-11-24T22:00:00Z")).unwrap();
        let merged = merge_folder(&folder, &range);
        assert_eq!(merged.report.start, "2026-11-24T20:00:00Z");
        assert_eq!(merged.report.end, "2026-11-24T22:00:00Z");
        assert_eq!(merged.report.totals.matched, 7 + 11);
        assert_eq!(merged.counts.used, 2);
        assert_eq!(merged.counts.partial, 1);
        assert_eq!(merged.counts.outside, 0);

        let range = TimeRange::parse(Some("2026-11-24"), Some("2026-11-24T20:00:00Z")).unwrap();
        let merged = merge_folder(&folder, &range);
        assert_eq!(merged.report.totals.matched, 5);
        assert_eq!(merged.counts.outside, 2);

        let error = TimeRange::parse(Some("yesterday"), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--from \"yesterday\""), "{error}");
        assert!(
            error.contains("RFC 3339") && error.contains("2026-11-24"),
            "{error}"
        );
        let error = TimeRange::parse(None, Some("2026-13-01"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--to"), "{error}");
        let range =
            TimeRange::parse(Some("2026-11-25"), Some("2026-11-26T00:00:00+01:00")).unwrap();
        assert_eq!(
            range.from,
            Some(time::macros::datetime!(2026-11-25 0:00 UTC))
        );
        assert_eq!(
            range.to,
            Some(time::macros::datetime!(2026-11-25 23:00 UTC))
        );

        let error = merge_paths(
            std::slice::from_ref(&folder.0),
            &TimeRange::parse(Some("2026-11-24T19:30:00Z"), Some("2026-11-24T20:30:00Z")).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("none of the 3 snapshots"), "{error}");
    }

    #[test]
    fn identical_copies_and_overlapping_files_are_not_counted_twice() {
        let chain = TempFolder::new("dup-chain");
        let paths = write_chain(&chain, three_hours());
        let other = TempFolder::new("dup-other");
        // A byte-identical copy under another name.
        std::fs::copy(&paths[0], other.file("copy-of-first.json")).unwrap();
        // The same sensor and interface, 19:30-20:30: overlaps, starts later.
        let overlapping = snapshot(
            "2026-11-24T19:30:00Z",
            "2026-11-24T20:30:00Z",
            vec![flow(
                "175.45.176.9",
                "198.51.100.9",
                TOR,
                1000,
                "2026-11-24T19:40:00Z",
                "2026-11-24T19:41:00Z",
            )],
        );
        write_report(
            &other.file("classifier-20261124T193000Z.json"),
            &overlapping,
        );
        // Another sensor at the same time: a fleet, counted.
        let mut fleet = overlapping.clone();
        fleet.sensor = "s2".to_string();
        fleet.flows[0].packets = 100;
        fleet.services[0].packets = 100;
        write_report(&other.file("classifier-20261124T193000Z-1.json"), &fleet);

        let merged = merge_paths(
            &[
                chain.0.clone(),
                other.file("copy-of-first.json"),
                other.0.clone(),
            ],
            &TimeRange::default(),
        )
        .unwrap();
        assert_eq!(merged.counts.duplicates, 1);
        assert_eq!(merged.counts.overlapping, 1);
        assert_eq!(merged.counts.used, 4);
        assert_eq!(merged.report.sensor, "s1,s2");
        assert_eq!(service(&merged.report, NORDVPN).packets, 5);
        assert_eq!(service(&merged.report, TOR).packets, 7 + 11 + 100);
        let line = merged.counts.coverage_line();
        assert!(
            line.contains("4 used") && line.contains("1 identical"),
            "{line}"
        );
        assert!(line.contains("1 overlapping"), "{line}");
    }

    #[test]
    fn time_no_snapshot_covers_is_in_the_coverage_line() {
        let folder = TempFolder::new("uncovered");
        let paths = write_chain(&folder, three_hours());
        let whole = merge_folder(&folder, &TimeRange::default());
        assert_eq!(whole.counts.uncovered_seconds, 0.0);
        std::fs::remove_file(&paths[1]).unwrap();
        let line = merge_folder(&folder, &TimeRange::default())
            .counts
            .coverage_line();
        assert!(
            line.ends_with("restarts 0, gaps 0.0 s, not covered by any snapshot 3600.0 s"),
            "{line}"
        );
    }

    #[test]
    fn a_merged_report_saved_among_its_snapshots_is_not_counted_twice() {
        let folder = TempFolder::new("merged-among");
        let hour = |sensor: &str, interface: &str, packets: u64| {
            let mut report = snapshot(
                "2026-11-24T19:00:00Z",
                "2026-11-24T20:00:00Z",
                vec![flow(
                    "175.45.176.9",
                    "198.51.100.9",
                    TOR,
                    packets,
                    "2026-11-24T19:10:00Z",
                    "2026-11-24T19:11:00Z",
                )],
            );
            report.sensor = sensor.to_string();
            report.interfaces = vec![interface.to_string()];
            if let Some(info) = report.snapshot.as_mut() {
                info.pseudonym_key_id = Some("0123456789abcdef".to_string());
            }
            report
        };
        // Two sensors, and a second interface of the first one.
        write_report(
            &folder.file("classifier-20261124T190000Z.json"),
            &hour("s1", "eth1", 3),
        );
        write_report(
            &folder.file("classifier-20261124T190000Z-1.json"),
            &hour("s1", "eth2", 5),
        );
        write_report(
            &folder.file("classifier-20261124T190000Z-2.json"),
            &hour("s2", "eth1", 7),
        );
        let first = merge_folder(&folder, &TimeRange::default());
        assert_eq!(service(&first.report, TOR).packets, 3 + 5 + 7);
        assert_eq!(first.report.sensor, "s1,s2");

        // `classifier report FOLDER --format json -o FOLDER/classifier-day.json`:
        // a folder's merged report is not one of its snapshots.
        write_report(&folder.file("classifier-day.json"), &first.report);
        let again = merge_folder(&folder, &TimeRange::default());
        assert_eq!(again.report, first.report);
        assert_eq!(again.counts.used, 3);
        assert_eq!(again.by_sensor.len(), 2);

        // It carries its snapshots' key. Named on the command line beside
        // them, it lists only snapshots read beside it (`merged_from`):
        // they are used instead, each with its own detail.
        assert_eq!(
            first.report.pseudonym_key_id.as_deref(),
            Some("0123456789abcdef")
        );
        let both = merge_paths(
            &[folder.file("classifier-day.json"), folder.0.clone()],
            &TimeRange::default(),
        )
        .unwrap();
        assert_eq!(service(&both.report, TOR).packets, 3 + 5 + 7);
        assert_eq!(both.counts.used, 3);
        assert_eq!(both.counts.overlapping, 1);
        assert_eq!(both.intervals.len(), 3);
        // Beside snapshots of real addresses, its pseudonyms are refused.
        let mut raw = hour("s3", "eth1", 1);
        if let Some(info) = raw.snapshot.as_mut() {
            info.pseudonym_key_id = None;
        }
        let raw_folder = TempFolder::new("merged-raw");
        write_report(&raw_folder.file("classifier-20261124T190000Z.json"), &raw);
        let error = merge_paths(
            &[folder.file("classifier-day.json"), raw_folder.0.clone()],
            &TimeRange::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("pseudonym keys (0123456789abcdef vs none)"),
            "{error}"
        );
        let mut plain = first.report.clone();
        plain.pseudonym_key_id = None;
        let unkeyed = TempFolder::new("merged-unkeyed");
        write_report(&unkeyed.file("day.json"), &plain);
        for name in ["a.json", "b.json"] {
            let mut one = hour("s1", "eth1", 3);
            if let Some(info) = one.snapshot.as_mut() {
                info.pseudonym_key_id = None;
            }
            if name == "b.json" {
                one.sensor = "s2".to_string();
            }
            write_report(&unkeyed.file(name), &one);
        }
        let merged = merge_paths(
            &[
                unkeyed.file("a.json"),
                unkeyed.file("b.json"),
                unkeyed.file("day.json"),
            ],
            &TimeRange::default(),
        )
        .unwrap();
        // The merged report, which may hold more, is kept.
        assert_eq!(merged.counts.used, 1);
        assert_eq!(merged.counts.overlapping, 2);
        assert_eq!(service(&merged.report, TOR).packets, 3 + 5 + 7);

        // A folder of merged reports only (daily roll-ups) says so.
        let rollups = TempFolder::new("rollups");
        write_report(&rollups.file("classifier-day.json"), &plain);
        let error = merge_paths(std::slice::from_ref(&rollups.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{} holds only merged reports (1 without a snapshot section), which a folder read skips: name them as files to merge them",
                rollups.0.display()
            )
        );
        let by_name = merge_paths(
            &[rollups.file("classifier-day.json")],
            &TimeRange::default(),
        )
        .unwrap();
        assert_eq!(by_name.report.totals, plain.totals);
    }

    #[test]
    fn verify_skips_a_merged_report_in_the_folder() {
        let folder = TempFolder::new("verify-merged");
        write_chain(&folder, three_hours());
        let merged = merge_folder(&folder, &TimeRange::default());
        write_report(&folder.file("classifier-all.json"), &merged.report);
        let (snapshots, notes) = intact(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(snapshots, 3);
        assert_eq!(
            notes,
            &[
                "classifier-all.json: a merged report, not a snapshot (no snapshot section): skipped"
            ]
        );
    }

    #[test]
    fn a_time_past_year_9999_in_utc_is_refused_naming_the_file() {
        let folder = TempFolder::new("far-future");
        let report = snapshot(
            "9999-12-31T23:30:00-01:00",
            "9999-12-31T23:45:00-01:00",
            Vec::new(),
        );
        let path = folder.file("classifier-99991231T233000Z.json");
        write_report(&path, &report);
        let error = merge_paths(std::slice::from_ref(&path), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("classifier-99991231T233000Z.json") && error.contains("start"),
            "{error}"
        );
        let (file, problem) = broken(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(file, "classifier-99991231T233000Z.json");
        assert!(problem.contains("start"), "{problem}");
    }

    #[test]
    fn overlap_keeps_the_earlier_then_the_longer_snapshot() {
        let folder = TempFolder::new("overlap-ties");
        let short = snapshot("2026-11-24T19:00:00Z", "2026-11-24T19:30:00Z", Vec::new());
        let mut long = snapshot("2026-11-24T19:00:00Z", "2026-11-24T20:00:00Z", Vec::new());
        long.totals.packets = 999;
        write_report(&folder.file("classifier-20261124T190000Z.json"), &short);
        write_report(&folder.file("classifier-20261124T190000Z-1.json"), &long);
        let merged = merge_folder(&folder, &TimeRange::default());
        assert_eq!(merged.report.totals.packets, 999);
        assert_eq!(merged.counts.overlapping, 1);
    }

    #[test]
    fn mixed_pseudonym_keys_are_refused() {
        let folder = TempFolder::new("keys");
        let mut reports = three_hours();
        for report in &mut reports[1..] {
            if let Some(info) = report.snapshot.as_mut() {
                info.pseudonym_key_id = Some("0123456789abcdef".to_string());
            }
        }
        write_chain(&folder, reports);
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("classifier-20261124T190000Z.json"),
            "{error}"
        );
        assert!(
            error.contains("classifier-20261124T200000Z.json"),
            "{error}"
        );
        assert!(
            error.contains("pseudonym keys (none vs 0123456789abcdef)"),
            "{error}"
        );

        // Within one key the range merges.
        let range = TimeRange::parse(Some("2026-11-24T20:00:00Z"), None).unwrap();
        assert_eq!(merge_folder(&folder, &range).counts.used, 2);
    }

    #[test]
    fn verify_passes_on_an_intact_chain_and_notes_a_pruned_start() {
        let folder = TempFolder::new("verify-intact");
        let paths = write_chain(&folder, three_hours());
        let chains = verify_paths(std::slice::from_ref(&folder.0)).unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(
            chains[0].check,
            ChainCheck::Intact {
                snapshots: 3,
                start: "2026-11-24T19:00:00Z".to_string(),
                end: "2026-11-24T22:00:00Z".to_string(),
                notes: Vec::new(),
            }
        );
        assert!(
            chains[0]
                .to_string()
                .starts_with("chain intact: 3 snapshots in ")
        );

        // Pruning the oldest file leaves a note, not a break.
        std::fs::remove_file(&paths[0]).unwrap();
        let (snapshots, notes) = intact(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(snapshots, 2);
        assert!(notes[0].contains("pruned"), "{notes:?}");
    }

    #[test]
    fn verify_names_the_file_after_an_edited_one() {
        let folder = TempFolder::new("verify-edited");
        let paths = write_chain(&folder, three_hours());
        let mut edited: Report =
            serde_json::from_slice(&std::fs::read(&paths[1]).unwrap()).unwrap();
        edited.totals.packets += 1;
        let edited_sha = write_report(&paths[1], &edited);

        let chains = verify_paths(std::slice::from_ref(&folder.0)).unwrap();
        assert!(chains[0].is_broken());
        let (file, problem) = broken(&chains);
        assert_eq!(file, "classifier-20261124T210000Z.json");
        assert!(
            problem.starts_with(&format!(
                "previous snapshot should be classifier-20261124T200000Z.json with sha256 {edited_sha}, found classifier-20261124T200000Z.json with sha256 "
            )),
            "{problem}"
        );
        assert!(problem.contains("edited"), "{problem}");
    }

    #[test]
    fn verify_names_the_file_after_a_deleted_one() {
        let folder = TempFolder::new("verify-deleted");
        let paths = write_chain(&folder, three_hours());
        std::fs::remove_file(&paths[1]).unwrap();
        let (file, problem) = broken(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(file, "classifier-20261124T210000Z.json");
        assert!(
            problem.contains("should be classifier-20261124T190000Z.json"),
            "{problem}"
        );
        assert!(
            problem.contains("classifier-20261124T200000Z.json is missing"),
            "{problem}"
        );
    }

    #[test]
    fn verify_names_a_renamed_or_reordered_file() {
        let folder = TempFolder::new("verify-renamed");
        let paths = write_chain(&folder, three_hours());
        std::fs::rename(&paths[2], folder.file("classifier-20261124T183000Z.json")).unwrap();
        let (file, problem) = broken(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(file, "classifier-20261124T183000Z.json");
        assert!(problem.contains("renamed"), "{problem}");

        // A snapshot whose name matches its start but that starts before
        // its predecessor ends.
        let folder = TempFolder::new("verify-order");
        let mut reports = three_hours();
        reports[2].start = "2026-11-24T20:30:00Z".to_string();
        write_chain(&folder, reports);
        let (file, problem) = broken(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(file, "classifier-20261124T203000Z.json");
        assert!(problem.contains("out of time order"), "{problem}");
    }

    #[test]
    fn verify_refuses_a_second_chain_start() {
        let folder = TempFolder::new("verify-restart");
        let paths = write_chain(&folder, three_hours());
        let mut restarted: Report =
            serde_json::from_slice(&std::fs::read(&paths[2]).unwrap()).unwrap();
        if let Some(info) = restarted.snapshot.as_mut() {
            info.previous = None;
        }
        write_report(&paths[2], &restarted);
        let (file, problem) = broken(&verify_paths(std::slice::from_ref(&folder.0)).unwrap());
        assert_eq!(file, "classifier-20261124T210000Z.json");
        assert!(problem.contains("found none"), "{problem}");
    }

    #[test]
    fn snapshot_names_sort_by_start_then_counter() {
        let mut names = vec![
            "classifier-20261124T190000Z-10.json",
            "classifier-20261124T190000Z-2.json",
            "classifier-20261124T200000Z.json",
            "classifier-20261124T190000Z.json",
        ];
        names.sort_by_key(|name| name_order(name));
        assert_eq!(
            names,
            [
                "classifier-20261124T190000Z.json",
                "classifier-20261124T190000Z-2.json",
                "classifier-20261124T190000Z-10.json",
                "classifier-20261124T200000Z.json",
            ]
        );
        assert!(SnapshotName::parse("classifier-2026-11-24.json").is_none());
        assert!(!is_snapshot_file_name(
            ".classifier-20261124T190000Z.json.tmp"
        ));
    }

    #[test]
    fn csv_has_the_header_and_one_row_per_service() {
        let folder = TempFolder::new("csv");
        write_chain(&folder, three_hours());
        let merged = merge_folder(&folder, &TimeRange::default());
        let text = services_csv(&merged.report, &[]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "service,flows,share,unique_sources,packets,bytes,packets_outbound,\
             packets_inbound,bytes_outbound,bytes_inbound,first_seen,last_seen"
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1],
            "tor,2,0.6666666666666666,2,18,1800,18,0,1800,0,\
             2026-11-24T20:05:00Z,2026-11-24T21:06:00Z"
        );
    }

    #[test]
    fn a_merged_report_named_after_its_folder_is_still_read() {
        // Sensor s1's folder, and beside its snapshot a merged report of
        // s1 and s2 (`report s1 s2 -o s1/classifier-day.json`).
        let folder = TempFolder::new("named-after-folder");
        let hour = three_hours().remove(0);
        write_report(&folder.file(&name_for(&hour.start)), &hour);
        let mut other = hour.clone();
        other.sensor = "s2".to_string();
        let other_folder = TempFolder::new("named-after-folder-s2");
        write_report(&other_folder.file(&name_for(&other.start)), &other);
        let both = merge_paths(
            &[folder.0.clone(), other_folder.0.clone()],
            &TimeRange::default(),
        )
        .unwrap();
        let day = folder.file("classifier-day.json");
        write_report(&day, &both.report);
        // Named on the command line it is read, whatever the order.
        for paths in [
            [day.clone(), folder.0.clone()],
            [folder.0.clone(), day.clone()],
        ] {
            let merged = merge_paths(&paths, &TimeRange::default()).unwrap();
            assert_eq!(merged.report.sensor, "s1,s2", "{paths:?}");
            assert_eq!(merged.report.totals, both.report.totals, "{paths:?}");
        }
    }

    #[test]
    fn a_merged_report_with_a_gap_overlaps_only_the_snapshots_it_holds() {
        // Hours one and three merged, each with a daemon restart; beside
        // it, the folder without hour three (moved away): the merged report
        // holds what the folder lacks, so it is used; hour one overlaps it,
        // hour two is not in it and still counts.
        let folder = TempFolder::new("merged-gap");
        let hours: Vec<Report> = three_hours()
            .into_iter()
            .map(|mut hour| {
                if let Some(info) = hour.snapshot.as_mut() {
                    info.coverage.restarts = 1;
                }
                hour
            })
            .collect();
        let paths = write_chain(&folder, hours);
        let all = merge_folder(&folder, &TimeRange::default());
        let ends = merge_paths(&[paths[0].clone(), paths[2].clone()], &TimeRange::default())
            .unwrap()
            .report;
        assert_eq!(ends.merged_from.len(), 2);
        let saved = TempFolder::new("merged-gap-saved");
        let ends_path = saved.file("ends.json");
        write_report(&ends_path, &ends);
        // With all three hours beside it, the snapshots are used instead.
        let whole = merge_paths(
            &[ends_path.clone(), folder.0.clone()],
            &TimeRange::default(),
        )
        .unwrap();
        assert_eq!(whole.report.totals, all.report.totals);
        assert_eq!((whole.counts.used, whole.counts.overlapping), (3, 1));
        std::fs::remove_file(&paths[2]).unwrap();
        for paths in [
            [ends_path.clone(), folder.0.clone()],
            [folder.0.clone(), ends_path.clone()],
        ] {
            let merged = merge_paths(&paths, &TimeRange::default()).unwrap();
            assert_eq!(merged.report.totals, all.report.totals, "{paths:?}");
            assert_eq!(merged.counts.used, 2, "{paths:?}");
            assert_eq!(merged.counts.overlapping, 1, "{paths:?}");
            // The merged report's two restarts, and hour two's.
            assert_eq!(merged.counts.restarts, 3, "{paths:?}");
            assert_eq!(merged.counts.uncovered_seconds, 0.0, "{paths:?}");
        }
        // Merged again, it lists the snapshots, not the merged report.
        let again = merge_paths(
            &[ends_path.clone(), paths[1].clone()],
            &TimeRange::default(),
        )
        .unwrap()
        .report;
        let starts: Vec<&str> = again
            .merged_from
            .iter()
            .map(|part| part.start.as_str())
            .collect();
        assert_eq!(
            starts,
            [
                "2026-11-24T19:00:00Z",
                "2026-11-24T21:00:00Z",
                "2026-11-24T20:00:00Z"
            ]
        );
        assert_eq!(again.sensor, "s1");
    }

    #[test]
    fn an_instant_snapshot_does_not_hide_the_interval_it_starts_with() {
        let folder = TempFolder::new("instant");
        let mut hour = three_hours().remove(0);
        write_report(&folder.file("classifier-20261124T190000Z.json"), &hour);
        hour.end = hour.start.clone();
        hour.flows.clear();
        write_report(&folder.file("classifier-20261124T190000Z-1.json"), &hour);
        // Half an hour in, an hour long: overlaps the first.
        let mut late = three_hours().remove(0);
        late.start = "2026-11-24T19:30:00Z".into();
        late.end = "2026-11-24T20:30:00Z".into();
        write_report(&folder.file("classifier-20261124T193000Z.json"), &late);
        let merged = merge_folder(&folder, &TimeRange::default());
        // The instant is inside the hour, and the late one overlaps it.
        assert_eq!((merged.counts.used, merged.counts.overlapping), (1, 2));
        // Beside an hour that starts with it, the instant is inside it.
        let beside = TempFolder::new("instant-beside");
        let mut whole = three_hours().remove(0);
        write_report(&beside.file("classifier-20261124T190000Z.json"), &whole);
        whole.end = whole.start.clone();
        write_report(&beside.file("classifier-20261124T190000Z-1.json"), &whole);
        let merged = merge_folder(&beside, &TimeRange::default());
        assert_eq!((merged.counts.used, merged.counts.overlapping), (1, 1));
    }

    #[test]
    fn a_snapshot_that_ends_before_it_starts_is_refused() {
        let folder = TempFolder::new("reversed");
        let mut hour = three_hours().remove(0);
        hour.end = "2026-11-24T18:59:59Z".to_string();
        let path = folder.file(&name_for(&hour.start));
        write_report(&path, &hour);
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{}: ends (2026-11-24T18:59:59Z) before it starts (2026-11-24T19:00:00Z)",
                path.display()
            )
        );
    }

    #[test]
    fn sums_past_the_largest_count_are_refused_naming_the_files() {
        let largest = u64::MAX.to_string();
        // Totals: a hand-edited snapshot near the largest count; the third
        // file passes it.
        let folder = TempFolder::new("overflow-totals");
        let mut reports = three_hours();
        reports[0].totals.packets = u64::MAX - 30;
        let paths = write_chain(&folder, reports);
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{}: totals.packets added to the sum of {}, {} passes the largest count ({largest}); a hand-edited or corrupt snapshot?",
                paths[2].display(),
                paths[0].display(),
                paths[1].display()
            )
        );
        // A flow's packets, the totals being small.
        let folder = TempFolder::new("overflow-flow");
        let mut reports = three_hours();
        reports[1].flows[0] = reports[0].flows[0].clone();
        reports[0].flows[0].packets = u64::MAX - 1;
        reports[1].flows[0].packets = 2;
        let paths = write_chain(&folder, reports);
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{}: flows[175.45.176.1 outbound 198.51.100.1 port 443 nordvpn].packets added to the sum of {} passes the largest count ({largest}); a hand-edited or corrupt snapshot?",
                paths[1].display(),
                paths[0].display()
            )
        );
        // One flow listed twice in the first file: its own rows pass it.
        let folder = TempFolder::new("overflow-own-rows");
        let mut reports = three_hours();
        let twice = reports[0].flows[0].clone();
        reports[0].flows[0].packets = u64::MAX - 1;
        reports[0].flows.push(FlowRow {
            packets: 2,
            ..twice
        });
        let paths = write_chain(&folder, reports);
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{}: flows[175.45.176.1 outbound 198.51.100.1 port 443 nordvpn].packets summed over the file's own rows passes the largest count ({largest}); a hand-edited or corrupt snapshot?",
                paths[0].display()
            )
        );
        // A service's bytes, and the error is the command's (exit 1).
        let folder = TempFolder::new("overflow-service");
        let mut reports = three_hours();
        reports[1].services[0].bytes = u64::MAX;
        let paths = write_chain(&folder, reports);
        let args = ReportArgs {
            paths: vec![folder.0.clone()],
            from: None,
            to: None,
            format: HistoryFormat::Json,
            by_sensor: false,
            output: None,
            verify: false,
        };
        let error = report(&args).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}: services[tor].bytes added to the sum of {}, {} passes the largest count ({largest}); a hand-edited or corrupt snapshot?",
                paths[2].display(),
                paths[0].display(),
                paths[1].display()
            )
        );
    }

    #[test]
    fn the_output_may_not_be_a_report_being_read() {
        let folder = TempFolder::new("output-is-input");
        let paths = write_chain(&folder, three_hours());
        let before = std::fs::read(&paths[1]).unwrap();
        let args = |inputs: Vec<PathBuf>, output: PathBuf| ReportArgs {
            paths: inputs,
            from: None,
            to: None,
            format: HistoryFormat::Json,
            by_sensor: false,
            output: Some(output),
            verify: false,
        };
        // Named as a file, found in a folder, or reached through another
        // spelling of its path or a symbolic link.
        let link = folder.0.join("link.json");
        std::os::unix::fs::symlink(&paths[1], &link).unwrap();
        let dotted = folder.0.join(".").join(paths[1].file_name().unwrap());
        for (inputs, output) in [
            (vec![paths[1].clone()], paths[1].clone()),
            (vec![folder.0.clone()], paths[1].clone()),
            (vec![folder.0.clone()], dotted),
            (vec![paths[1].clone()], link),
        ] {
            let error = report(&args(inputs, output.clone()))
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!(
                    "-o {}: that is {}, one of the reports being read; choose another file",
                    output.display(),
                    paths[1].display()
                )
            );
            assert_eq!(std::fs::read(&paths[1]).unwrap(), before);
        }
        // A new file in the folder is fine, and so is writing it again:
        // a folder read skips a merged report.
        let day = folder.file("classifier-day.json");
        report(&args(vec![folder.0.clone()], day.clone())).unwrap();
        assert!(day.exists());
        report(&args(vec![folder.0.clone()], day.clone())).unwrap();
        // Nor the folder's daemon state or marker, which are no reports.
        for name in [".classifier-state.json", ".classifier-written"] {
            let reserved = folder.file(name);
            std::fs::write(&reserved, b"state").unwrap();
            let error = report(&args(vec![folder.0.clone()], reserved.clone()))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!(
                    "-o {}: {name} is the name of a snapshot folder's ",
                    reserved.display()
                )),
                "{error}"
            );
            assert_eq!(std::fs::read(&reserved).unwrap(), b"state");
        }
    }

    #[test]
    fn bad_files_are_named_with_line_and_column() {
        let folder = TempFolder::new("bad-json");
        write_chain(&folder, three_hours());
        let bad = folder.file("classifier-20261124T220000Z.json");
        std::fs::write(
            &bad,
            "{\n  \"schema\": \"classifier.report.v1\",\n  oops\n}\n",
        )
        .unwrap();
        let error = merge_paths(std::slice::from_ref(&folder.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&bad.display().to_string()), "{error}");
        assert!(error.contains("line 3 column 3"), "{error}");

        let mut other = three_hours().remove(0);
        other.schema = "classifier.report.v0".to_string();
        write_report(&bad, &other);
        let error = merge_paths(std::slice::from_ref(&bad), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(&bad.display().to_string()), "{error}");
        assert!(error.contains("classifier.report.v0"), "{error}");

        let empty = TempFolder::new("bad-empty");
        let error = merge_paths(std::slice::from_ref(&empty.0), &TimeRange::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("no snapshot files"), "{error}");
        assert!(error.contains(&empty.0.display().to_string()), "{error}");
    }
}
