//! Least privilege: after attaching, the daemon keeps only the
//! capabilities a feed reload needs; it runs, counts and cleans up as an
//! unprivileged user with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; and
//! without CAP_PERFMON the verifier refuses the program (it computes the
//! frame length as `data_end - data`, a pointer subtraction the verifier
//! allows only with CAP_PERFMON): the daemon exits non-zero with the
//! verifier's log, leaving no pin and no attachment. A snapshot or
//! capture folder the daemon can no longer write into once its
//! capabilities are dropped is refused at start the same way.

use std::{
    os::unix::fs::{PermissionsExt, chown},
    path::Path,
};

use classifier_tests::{
    daemon::{Daemon, TestMount, services, temp_dir, write_feed},
    frames::FrameSpec,
    netns::VethLink,
    path_str as text, require_root,
};

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

/// A field of /proc/PID/status ("CapEff", "Uid", …).
fn status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in status"))
}

fn mask(pid: u32, field: &str) -> u64 {
    u64::from_str_radix(&status(pid, field), 16).expect("hex mask")
}

/// Each thread's name and `field` mask: capabilities are per thread.
fn thread_masks(pid: u32, field: &str) -> Vec<(String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the daemon's threads")
        .map(|task| {
            let path = task.expect("a thread").path();
            let status = std::fs::read_to_string(path.join("status")).expect("status");
            let value = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}:")))
                    .map(|value| value.trim().to_string())
                    .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
            };
            let mask = u64::from_str_radix(&value(field), 16).expect("hex mask");
            (value("Name"), mask)
        })
        .collect()
}

#[test]
fn a_root_daemon_drops_every_capability_but_what_reloads_need() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("caps-root");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("capsroot").expect("namespaces and veth");
    // With IPFIX export, which sends from threads of its own.
    let daemon = Daemon::start(
        &link,
        &feed,
        &["--pin-path", text(&pins.path), "--ipfix", "127.0.0.1:4739"],
    );
    let pid = daemon.pid();
    let kept = CAP_BPF | CAP_NET_ADMIN | CAP_PERFMON;
    assert_eq!(mask(pid, "CapEff"), kept, "effective set after attach");
    assert_eq!(mask(pid, "CapPrm"), kept, "permitted set after attach");
    assert_eq!(mask(pid, "CapInh"), 0);
    // The main thread and the IPFIX sender (which may not have named
    // itself yet).
    let threads = thread_masks(pid, "CapEff");
    assert!(threads.len() >= 2, "{threads:?}");
    for (field, expected) in [("CapEff", kept), ("CapPrm", kept), ("CapInh", 0)] {
        for (name, mask) in thread_masks(pid, field) {
            assert_eq!(mask, expected, "{field} of thread {name}");
        }
    }
    assert!(daemon.said("dropped every capability but CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"));
    link.send(&[FrameSpec::udp("175.45.176.1", "198.51.100.10", 1, 443).build()])
        .expect("send");
    let (report, log) = daemon.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 1);
    assert!(
        log.iter().all(|line| !line.contains("cannot remove")),
        "{log:?}"
    );
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// setpriv arguments: user nobody with exactly `caps` (e.g. "+bpf,+net_admin").
fn unprivileged(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        format!("--bounding-set=-all,{caps}"),
        "--".into(),
    ]
}

/// A folder every user may write into.
fn open_to_all(path: &Path) {
    std::fs::create_dir_all(path).expect("folder");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

#[test]
fn an_unprivileged_user_with_cap_bpf_cap_net_admin_and_cap_perfmon_runs_the_sensor() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("caps-user");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let snapshots = dir.join("snapshots");
    for folder in [&dir, &pins.path, &snapshots] {
        open_to_all(folder);
    }
    let link = VethLink::create("capsuser").expect("namespaces and veth");
    let wrapper = unprivileged("+bpf,+net_admin,+perfmon");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = Daemon::start_wrapped(
        &link,
        &wrapper,
        &[
            "--endpoints",
            text(&feed),
            "--watch",
            "175.45.176.0/22",
            "--pin-path",
            text(&pins.path),
            "--snapshot-dir",
            text(&snapshots),
            "--snapshot-interval",
            "1s",
        ],
    );
    let pid = daemon.pid();
    assert!(
        status(pid, "Uid").starts_with("65534"),
        "{}",
        status(pid, "Uid")
    );
    let kept = CAP_BPF | CAP_NET_ADMIN | CAP_PERFMON;
    assert_eq!(mask(pid, "CapEff"), kept);
    assert_eq!(mask(pid, "CapPrm"), kept);
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|_| FrameSpec::udp("175.45.176.9", "198.51.100.200", 5, 443).build())
        .collect();
    link.send(&frames).expect("send");
    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(services(&report)["gamma"]["packets"], 10);
    let written = std::fs::read_dir(&snapshots).expect("snapshots").count();
    assert!(written >= 2, "{written} files in the snapshot folder");
    assert!(!pins.path.join(&link.sensor_iface).exists(), "pins removed");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_program_the_verifier_refuses_leaves_no_pin_and_no_attachment() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("caps-verifier");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    open_to_all(&dir);
    open_to_all(&pins.path);
    let link = VethLink::create("capsverif").expect("namespaces and veth");
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &link.sensor.name])
        .args(unprivileged("+bpf,+net_admin"))
        .arg(classifier_tests::classifier_binary())
        .args([
            "run",
            "--iface",
            &link.sensor_iface,
            "--metrics-addr",
            "off",
        ])
        .args(["--endpoints", text(&feed), "--pin-path", text(&pins.path)])
        .output()
        .expect("run classifier");
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains("the kernel refused the XDP program") && error.contains("Verifier output"),
        "{error}"
    );
    // Without CAP_PERFMON the verifier refuses arithmetic on packet
    // pointers (the first such instruction: the fast path's length check).
    assert!(
        error.contains("pointer arithmetic with it prohibited for !root"),
        "{error}"
    );
    assert_nothing_left(&link, &pins.path);
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `classifier run` on `link` as root with `args`, expecting it to
/// exit at start; its stderr. Asserts it left no pin and no attachment.
/// One still running after 30 s is stopped (SIGTERM) and fails the test.
fn refused_at_start(link: &VethLink, pins: &Path, feed: &Path, args: &[&str]) -> String {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &link.sensor.name])
        .arg(classifier_tests::classifier_binary())
        .args(["run", "--iface", &link.sensor_iface])
        .args(["--metrics-addr", "off", "--stats-socket", "off"])
        .args(["--endpoints", text(feed), "--pin-path", text(pins)])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run classifier");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let still_running = child.try_wait().expect("wait").is_none();
    if still_running {
        // `ip netns exec` execs the daemon: the child is the daemon.
        // SAFETY: a plain signal to the child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let output = child.wait_with_output().expect("wait");
    let error = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!still_running, "still running after 30 s: {error}");
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert_nothing_left(link, pins);
    error
}

/// Asserts that no pin of `link`'s interface is left under `pins` and
/// that no XDP program is attached to it.
fn assert_nothing_left(link: &VethLink, pins: &Path) {
    assert!(
        !pins.join(&link.sensor_iface).exists(),
        "no pin left behind"
    );
    let shown = std::process::Command::new("ip")
        .args(["-n", &link.sensor.name, "link", "show", &link.sensor_iface])
        .output()
        .expect("ip link show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(!shown.contains("xdp"), "no XDP program attached: {shown}");
}

#[test]
fn a_folder_closed_to_the_daemon_once_its_capabilities_are_dropped_is_refused_at_start() {
    if !require_root() {
        return;
    }
    let dir = temp_dir("caps-folders");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let link = VethLink::create("capsdirs").expect("namespaces and veth");

    // Another user's folder: root wrote into it through CAP_DAC_OVERRIDE,
    // which the daemon drops once attached.
    let snapshots = dir.join("snapshots");
    std::fs::create_dir(&snapshots).expect("folder");
    std::fs::set_permissions(&snapshots, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    chown(&snapshots, Some(65534), Some(65534)).expect("chown");
    let error = refused_at_start(
        &link,
        &pins.path,
        &feed,
        &["--snapshot-dir", text(&snapshots)],
    );
    assert!(
        error.contains(&format!(
            "classifier: snapshot folder {}: cannot create a file in it: Permission denied (os error 13); once attached the daemon keeps no CAP_DAC_OVERRIDE, so the folder's own permissions must let uid 0 write into it",
            snapshots.display()
        )),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(&snapshots).expect("folder").count(), 0);

    // A read-only file system.
    let evidence = TestMount::tmpfs(&dir.join("evidence"), 1 << 20);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro", text(&evidence.path)])
        .status()
        .expect("mount");
    assert!(remounted.success());
    let error = refused_at_start(
        &link,
        &pins.path,
        &feed,
        &["--capture-dir", text(&evidence.path)],
    );
    assert!(
        error.contains(&format!(
            "classifier: --capture-dir {}: cannot create a file in it: Read-only file system (os error 30)",
            evidence.path.display()
        )),
        "{error}"
    );
    drop(evidence);
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}

/// `classifier stats --json` run through `wrapper`; its output.
fn stats_as(wrapper: &[String], args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(&wrapper[0]);
    command
        .args(&wrapper[1..])
        .arg(classifier_tests::classifier_binary())
        .arg("stats")
        .args(args);
    command.output().expect("run classifier stats")
}

#[test]
fn a_user_without_bpf_privileges_reads_live_counters_through_the_stats_socket() {
    use std::os::unix::fs::MetadataExt;
    if !require_root() {
        return;
    }
    // A group no user has: only processes given it explicitly are members.
    const GROUP: &str = "4242";
    let dir = temp_dir("caps-socket");
    let feed = write_feed(&dir);
    let pins = TestMount::bpf(&dir.join("bpf"));
    let socket = dir.join("run").join("sensor.sock");
    let link = VethLink::create("capssock").expect("namespaces and veth");
    let daemon = Daemon::start(
        &link,
        &feed,
        &[
            "--pin-path",
            text(&pins.path),
            "--stats-socket",
            text(&socket),
            "--stats-group",
            GROUP,
        ],
    );
    assert!(daemon.said(&format!(
        "serving live counters at {} to group {GROUP}",
        socket.display()
    )));
    let metadata = std::fs::metadata(&socket).expect("the socket exists");
    assert_eq!(metadata.mode() & 0o777, 0o660, "mode of the socket");
    assert_eq!(metadata.gid().to_string(), GROUP, "group of the socket");

    let frames: Vec<Vec<u8>> = (0..7)
        .map(|_| FrameSpec::udp("175.45.176.1", "198.51.100.10", 1, 443).build())
        .collect();
    link.send(&frames).expect("send");
    std::thread::sleep(std::time::Duration::from_millis(300));

    // Root reads the pins; nobody in the group reads the socket (no
    // capabilities at all); nobody outside it is refused.
    let as_root = stats_as(
        &["env".to_string()],
        &["--json", "--pin-path", text(&pins.path)],
    );
    assert!(as_root.status.success(), "{as_root:?}");
    let member = |groups: &str| {
        vec![
            "setpriv".to_string(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            groups.to_string(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--".into(),
        ]
    };
    let as_member = stats_as(
        &member(&format!("--groups={GROUP}")),
        &["--json", "--socket", text(&socket)],
    );
    assert!(as_member.status.success(), "{as_member:?}");
    let parse = |output: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&output.stdout).expect("a JSON report")
    };
    let (root_report, member_report) = (parse(&as_root), parse(&as_member));
    assert_eq!(services(&member_report)["alpha"]["packets"], 7);
    assert_eq!(services(&root_report)["alpha"]["packets"], 7);
    assert_eq!(member_report["totals"], root_report["totals"]);
    // Seen times convert the kernel's monotonic clock at each reading
    // (nanoseconds of jitter); every count must be equal.
    let counts = |report: &serde_json::Value| {
        let mut rows = report["services"].clone();
        for row in rows.as_array_mut().expect("rows") {
            let row = row.as_object_mut().expect("row");
            row.remove("first_seen");
            row.remove("last_seen");
        }
        rows
    };
    assert_eq!(counts(&member_report), counts(&root_report));

    // The table view through the socket, given the folder that holds it.
    let view = stats_as(
        &member(&format!("--groups={GROUP}")),
        &["--socket", text(&dir.join("run"))],
    );
    let shown = String::from_utf8_lossy(&view.stdout);
    assert!(view.status.success(), "{view:?}");
    assert!(
        shown
            .lines()
            .any(|line| line.starts_with("alpha") && line.contains(" 7 ")),
        "{shown}"
    );

    let outsider = stats_as(
        &member("--clear-groups"),
        &["--json", "--socket", text(&socket)],
    );
    let error = String::from_utf8_lossy(&outsider.stderr);
    assert_eq!(outsider.status.code(), Some(1), "{error}");
    assert!(
        error.contains("Permission denied") && error.contains("--stats-group"),
        "{error}"
    );
    assert!(outsider.stdout.is_empty());

    let (report, _) = daemon.stop(libc::SIGTERM);
    assert_eq!(services(&report)["alpha"]["packets"], 7);
    assert!(!socket.exists(), "the socket is removed at exit");
    drop(pins);
    let _ = std::fs::remove_dir_all(dir);
}
