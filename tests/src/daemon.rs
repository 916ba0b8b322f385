//! `classifier run` as a child process in a test's sensor namespace, its
//! log lines followed as they come, and file-system guards (a private BPF
//! filesystem for pins, a small tmpfs that can be filled) removed on drop.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{BufRead, BufReader, Read},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TEST_FEED, TEST_WATCHED, classifier_binary, netns::VethLink};

/// A running `classifier run`, killed on drop if a test fails before it ends.
pub struct Daemon {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
}

impl Daemon {
    /// Starts `classifier run` on the link's sensor side with the test feed
    /// and watched set and a JSON report; a 100 ms drain interval and
    /// metrics off unless `extra` says otherwise. Waits until it counts.
    pub fn start(link: &VethLink, feed: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--endpoints", feed.to_str().expect("UTF-8 path")];
        args.extend(TEST_WATCHED.iter().flat_map(|w| ["--watch", w]));
        args.extend_from_slice(extra);
        Self::start_bundled(link, &args)
    }

    /// [`Self::start`] with the bundled feed and the default watched range
    /// (unless `extra` names others).
    pub fn start_bundled(link: &VethLink, extra: &[&str]) -> Self {
        Self::start_wrapped(link, &[], extra)
    }

    /// [`Self::start_bundled`], run through `wrapper` (a program and its
    /// arguments that execs the rest, e.g. `setpriv … --`) inside the
    /// sensor namespace.
    pub fn start_wrapped(link: &VethLink, wrapper: &[&str], extra: &[&str]) -> Self {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &link.sensor.name])
            .args(wrapper)
            .arg(classifier_binary());
        command.args([
            "run",
            "--iface",
            &link.sensor_iface,
            "--report-format",
            "json",
        ]);
        if !extra.contains(&"--interval") {
            command.args(["--interval", "100ms"]);
        }
        if !extra.contains(&"--metrics-addr") {
            command.args(["--metrics-addr", "off"]);
        }
        // Not the host's /run/classifier, unless a test names a socket.
        if !extra.contains(&"--stats-socket") {
            command.args(["--stats-socket", "off"]);
        }
        command
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start classifier");
        let stderr = child.stderr.take().expect("piped");
        let (sender, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("classifier: {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            stderr_lines,
            stderr_seen: Vec::new(),
        };
        daemon.wait_for("counting;");
        daemon
    }

    /// Waits (up to a minute) for a log line containing `text`, reading
    /// only lines not read before.
    pub fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "classifier never said {text:?}; it said:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// Whether any line read so far contains `text`.
    pub fn said(&self, text: &str) -> bool {
        self.stderr_seen.iter().any(|line| line.contains(text))
    }

    /// The daemon's process id (the wrapper execs it, so it is the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// `signal` (SIGTERM or SIGINT), then the JSON report it prints; the
    /// daemon must exit 0. Its remaining log lines are kept.
    pub fn stop(self, signal: i32) -> (Value, Vec<String>) {
        let (status, report, stderr) = self.stop_with_status(signal);
        assert!(status.success(), "classifier exited with {status}");
        (report, stderr)
    }

    /// As [`Self::stop`], for a daemon whose exit status the test checks.
    pub fn stop_with_status(
        mut self,
        signal: i32,
    ) -> (std::process::ExitStatus, Value, Vec<String>) {
        // Frames are processed in the receiving veth's NAPI poll; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        self.signal(signal);
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)
            .expect("read report");
        let status = self.child.wait().expect("wait");
        self.stderr_seen.extend(self.stderr_lines.try_iter());
        let report = serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("report is not JSON ({error}, exit {status}):\n{stdout}")
        });
        (status, report, std::mem::take(&mut self.stderr_seen))
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_feed(dir: &Path) -> PathBuf {
    let path = dir.join("endpoints.csv");
    std::fs::write(&path, TEST_FEED).expect("write feed");
    path
}

/// The snapshot files (`classifier-*.json`) in `dir`, by name (by time).
pub fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("snapshot folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("classifier-") && name.ends_with(".json")
        })
        .collect();
    files.sort();
    files
}

pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("classifier-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The report's service rows by name.
pub fn services(report: &Value) -> BTreeMap<String, Value> {
    report["services"]
        .as_array()
        .expect("services array")
        .iter()
        .map(|row| {
            (
                row["service"].as_str().expect("name").to_string(),
                row.clone(),
            )
        })
        .collect()
}

/// A file system mounted for a test at a folder it owns, unmounted (lazily,
/// so a daemon still holding it cannot block the cleanup) on drop.
pub struct TestMount {
    pub path: PathBuf,
}

impl TestMount {
    /// A private BPF filesystem: pins there disappear with the test (and
    /// programs attached through pinned links there are detached).
    pub fn bpf(path: &Path) -> Self {
        Self::mount(path, c"bpf", c"")
    }

    /// A tmpfs of `bytes` bytes, to fill up.
    pub fn tmpfs(path: &Path, bytes: usize) -> Self {
        let options = CString::new(format!("size={bytes}")).expect("no NUL");
        Self::mount(path, c"tmpfs", &options)
    }

    fn mount(path: &Path, kind: &std::ffi::CStr, options: &std::ffi::CStr) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: valid NUL-terminated strings.
        let result = unsafe {
            libc::mount(
                kind.as_ptr(),
                target.as_ptr(),
                kind.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            result,
            0,
            "mount {kind:?} at {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
