//! Live counters for operators without BPF privileges. Reading pinned maps
//! takes CAP_BPF (unprivileged BPF is off on most hosts), so `classifier
//! run` also serves them on a local socket, read-only: every connection
//! gets one JSON document (`classifier.live.v1`: the pinned description,
//! the kernel's counters and the report `classifier stats --json` prints)
//! and is closed; nothing a client sends is read. Who may connect is the
//! socket file's permission: owner and one group the operator chooses
//! (`--stats-group`), mode 0660.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    os::unix::{
        ffi::OsStrExt as _,
        fs::{FileTypeExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use classifier_common::{ServiceCounters, Totals};
use serde::{Deserialize, Serialize};

use crate::{
    drain::{self, Ledger},
    flow_clock::FlowClock,
    pins::{self, PinnedCounters, SensorMeta},
    pseudonym::Pseudonymizer,
    report::{Report, ReportContext},
    run::sensor_name,
    snapshot::{now_unix_ns, unix_ns_to_time},
};

pub const SCHEMA: &str = "classifier.live.v1";
/// Where sockets go unless `--stats-socket` says otherwise: one per
/// interface set, named like its pin folder (`eth1+eth2.sock`).
pub const RUNTIME_DIR: &str = "/run/classifier";
/// Longest a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("stats socket {path}: {problem}")]
    Socket { path: PathBuf, problem: String },
    #[error("--stats-group {0}: no such group")]
    NoGroup(String),
    #[error(transparent)]
    Drain(#[from] drain::DrainError),
    #[error(transparent)]
    Clock(#[from] crate::flow_clock::ClockError),
    #[error(transparent)]
    Pin(#[from] pins::PinError),
}

fn socket_error(path: &Path, problem: impl std::fmt::Display) -> LiveError {
    LiveError::Socket {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// One reading of a running sensor, as the socket sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStats {
    pub schema: String,
    pub meta: SensorMeta,
    /// The kernel's counters, cumulative since the program was attached.
    pub totals: Totals,
    /// Indexed by service id (0: none; `meta.services[i]` is id `i + 1`).
    pub services: Vec<ServiceCounters>,
    pub evictions: u64,
    /// Flows in the kernel's table now.
    pub live_flows: u64,
    /// What `classifier stats --json` prints: cumulative since attach,
    /// flows and sources from the kernel's table now.
    pub report: Report,
    /// The key id when the report's watched addresses are pseudonyms.
    pub pseudonym_key_id: Option<String>,
}

impl LiveStats {
    /// Reads the pinned counters; `key` pseudonymizes the report's
    /// watched addresses.
    pub fn read(pinned: &PinnedCounters, key: Option<&Pseudonymizer>) -> Result<Self, LiveError> {
        let meta = &pinned.meta;
        let mut ledger = Ledger::default();
        drain::drain_into(
            &pinned.counters,
            meta.services.len(),
            &mut ledger,
            FlowClock::kernel()?,
        )?;
        let mut report = Report::build(
            &ledger,
            &meta.service_table(),
            ReportContext {
                start: unix_ns_to_time(meta.attached_at_unix_ns),
                end: unix_ns_to_time(now_unix_ns()),
                // The daemon's name; this process's is the host's.
                sensor: meta.sensor.clone().unwrap_or_else(sensor_name),
                interfaces: meta.interfaces.clone(),
                feeds: meta.feeds.clone(),
            },
        );
        if let Some(key) = key {
            key.apply(&mut report);
        }
        Ok(Self {
            schema: SCHEMA.into(),
            meta: meta.clone(),
            totals: ledger.kernel_totals,
            services: ledger.kernel_services,
            evictions: ledger.kernel_evictions,
            live_flows: ledger.live_flows as u64,
            report,
            pseudonym_key_id: key.map(|key| key.key_id.clone()),
        })
    }
}

/// The default socket of the interface set whose pins are in `pin_dir`.
pub fn default_socket(pin_dir: &Path) -> PathBuf {
    let set = pin_dir
        .file_name()
        .map_or_else(|| "classifier".into(), |name| name.to_os_string());
    let mut name = set;
    name.push(".sock");
    Path::new(RUNTIME_DIR).join(name)
}

/// A group by name or number.
pub fn group_id(group: &str) -> Result<u32, LiveError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| LiveError::NoGroup(group.into()))?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r fills `entry` (pointing into `buffer`) and `found`.
    let status = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return Err(LiveError::NoGroup(group.into()));
    }
    Ok(entry.gr_gid)
}

/// The bound socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct LiveSocket {
    pub path: PathBuf,
    pub listener: tokio::net::UnixListener,
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket at `path` (making its folder, mode 0755, if missing),
/// owned by group `gid` with mode 0660, or 0600 without a group. A stale
/// socket left by a killed daemon is replaced; one that answers is
/// another daemon's and is refused, as is anything at `path` that is not a
/// socket (a mistyped path never costs a file).
pub fn bind(path: &Path, gid: Option<u32>) -> Result<LiveSocket, LiveError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(|error| socket_error(path, error))?;
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(socket_error(
                path,
                format!(
                    "it is {}, not a socket: left as it is (choose another --stats-socket)",
                    file_kind(&metadata)
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(socket_error(
                path,
                "another classifier run serves it (choose another --stats-socket)",
            ));
        }
        std::fs::remove_file(path).map_err(|error| socket_error(path, error))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|error| socket_error(path, error))?;
    let socket = LiveSocket {
        path: path.to_path_buf(),
        listener,
    };
    if let Some(gid) = gid {
        let name =
            CString::new(path.as_os_str().as_bytes()).map_err(|error| socket_error(path, error))?;
        // SAFETY: chown with a NUL-terminated path; uid -1 keeps the owner.
        if unsafe { libc::chown(name.as_ptr(), u32::MAX, gid) } != 0 {
            return Err(socket_error(
                path,
                format!(
                    "cannot give it to group {gid}: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| socket_error(path, error))?;
    Ok(socket)
}

/// Answers every connection with one reading of the pins in `pin_dir`,
/// one at a time (a reading walks the flow table). Runs until the daemon
/// ends.
pub async fn serve(socket: &LiveSocket, pin_dir: PathBuf, key: Option<Pseudonymizer>) {
    let pin_dir = Arc::new(pin_dir);
    let key = Arc::new(key);
    loop {
        let stream = match socket.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                log::warn!("stats socket {}: {error}", socket.path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (pin_dir, key) = (pin_dir.clone(), key.clone());
        let answered =
            tokio::task::spawn_blocking(move || answer(stream, &pin_dir, key.as_ref().as_ref()))
                .await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(error)) => log::warn!("stats socket: {error}"),
            Err(error) => log::warn!("stats socket: {error}"),
        }
    }
}

/// Writes one reading to a client; a slow or vanished client holds the
/// next one up for at most 10 s.
fn answer(
    stream: tokio::net::UnixStream,
    pin_dir: &Path,
    key: Option<&Pseudonymizer>,
) -> Result<(), String> {
    let pinned = pins::open_counters_at(pin_dir).map_err(|error| error.to_string())?;
    let stats = LiveStats::read(&pinned, key)
        .map_err(|error| format!("cannot read the counters: {error}"))?;
    let bytes = serde_json::to_vec(&stats).map_err(|error| error.to_string())?;
    let mut stream = stream.into_std().map_err(|error| error.to_string())?;
    let written = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
        .and_then(|()| stream.write_all(&bytes));
    if let Err(error) = written {
        log::debug!("stats socket: client went away: {error}");
    }
    Ok(())
}

/// One reading from the socket at `path`.
pub fn fetch(path: &Path) -> Result<LiveStats, LiveError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|error| {
        let hint = match error.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (ask for membership of the group `classifier run --stats-group` names, or run as root)"
            }
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is classifier run running? it serves this socket unless --stats-socket off)"
            }
            _ => "",
        };
        socket_error(path, format!("{error}{hint}"))
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|error| socket_error(path, error))?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|error| socket_error(path, error))?;
    let _ = stream.flush();
    if bytes.is_empty() {
        return Err(socket_error(
            path,
            "the daemon closed the connection without an answer (see its log)",
        ));
    }
    let stats: LiveStats = serde_json::from_slice(&bytes)
        .map_err(|error| socket_error(path, format!("not a {SCHEMA} answer: {error}")))?;
    if stats.schema != SCHEMA {
        return Err(socket_error(
            path,
            format!("answers {}, this build reads {SCHEMA}", stats.schema),
        ));
    }
    Ok(stats)
}

/// The socket `classifier stats` reads: `path` itself, or the one socket in
/// it when it is a folder.
pub fn find_socket(path: &Path) -> Result<PathBuf, LiveError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|error| socket_error(path, error))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|entry| entry.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    sockets.sort();
    match sockets.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(socket_error(
            path,
            "no stats socket here: is classifier run running? (as root, `classifier stats` reads the pins instead)",
        )),
        _ => Err(socket_error(
            path,
            format!(
                "several sensors serve stats here, name one with --socket: {}",
                sockets
                    .iter()
                    .map(|s| s.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// "a file", "a folder", "a symbolic link" or "something else".
fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_file() {
        "a file"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempFolder;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_never_a_file() {
        let folder = TempFolder::new("live-bind");
        let path = folder.file("stats.sock");

        // A socket nobody serves any more (a killed daemon's) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = bind(&path, None).unwrap();
        // One that answers is another daemon's.
        let error = bind(&path, None).unwrap_err().to_string();
        assert!(
            error.contains("another classifier run serves it"),
            "{error}"
        );
        drop(socket);

        // A mistyped path that names someone's file is left alone.
        std::fs::write(&path, b"notes").unwrap();
        let error = bind(&path, None).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "stats socket {}: it is a file, not a socket: left as it is (choose another --stats-socket)",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"notes");
    }
}
