//! `cargo xtask demo`: the main job on a built-in default, with no NIC and
//! no traffic at hand. Two network namespaces joined by a veth pair (no
//! address but loopback's, no route, IPv6 off), `classifier run` with the
//! bundled feed and the default watched range on the sensor side,
//! `classifier generate` writing the study-shaped mix from the peer side,
//! live counters while it runs, snapshots into `./demo-out/`, then the
//! `report` table, checked against what was generated. Everything it
//! creates is removed when it ends, also on Ctrl-C or an error.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The demo's snapshot interval: several snapshots in half a minute.
const SNAPSHOT_INTERVAL: &str = "5s";

/// Namespaces, veth and BPF filesystem the demo made; removed on drop.
struct Network {
    sensor: String,
    peer: String,
    sensor_iface: String,
    peer_iface: String,
    pins: PathBuf,
    pins_mounted: bool,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip (iproute2)")?;
    ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Network {
    fn create() -> Result<Self> {
        let id = std::process::id();
        let mut network = Self {
            sensor: format!("clsdemo-s-{id}"),
            peer: format!("clsdemo-p-{id}"),
            sensor_iface: format!("demo{:x}s", id % 0xffff),
            peer_iface: format!("demo{:x}p", id % 0xffff),
            pins: std::env::temp_dir().join(format!("classifier-demo-{id}")),
            pins_mounted: false,
        };
        for namespace in [&network.sensor, &network.peer] {
            ip(&["netns", "add", namespace])?;
            for key in ["all", "default"] {
                ip(&[
                    "netns",
                    "exec",
                    namespace,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
                ])?;
            }
        }
        ip(&[
            "link",
            "add",
            &network.sensor_iface,
            "netns",
            &network.sensor,
            "type",
            "veth",
            "peer",
            "name",
            &network.peer_iface,
            "netns",
            &network.peer,
        ])?;
        ip(&[
            "-n",
            &network.sensor,
            "link",
            "set",
            &network.sensor_iface,
            "up",
        ])?;
        ip(&[
            "-n",
            &network.peer,
            "link",
            "set",
            &network.peer_iface,
            "up",
        ])?;
        ip(&["-n", &network.sensor, "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&network.pins)?;
        mount_bpf_fs(&network.pins)?;
        network.pins_mounted = true;
        Ok(network)
    }

    fn in_namespace(&self, namespace: &str, binary: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]).arg(binary);
        command
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Removing the namespaces removes the veth; unmounting the BPF
        // filesystem removes any pin, so no program stays attached.
        for namespace in [&self.sensor, &self.peer] {
            if let Err(error) = ip(&["netns", "del", namespace]) {
                eprintln!("demo: {error}");
            }
        }
        if self.pins_mounted
            && let Ok(target) = CString::new(self.pins.as_os_str().as_bytes())
        {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.pins);
    }
}

fn mount_bpf_fs(at: &Path) -> Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    ensure!(
        result == 0,
        "mount the BPF filesystem at {}: {}",
        at.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, signal: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Runs the demo; `Ok` only when the report matches the generated mix.
pub fn demo(binary: &Path, duration: Duration, seed: u64) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // Ctrl-C reaches the children too (they stop cleanly); the demo itself
    // only notes it, stops waiting and cleans up.
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("install the Ctrl-C handler")?;

    let out = std::env::current_dir()?.join("demo-out");
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("remove the previous {}", out.display()))?;
    }
    let work = std::env::temp_dir().join(format!("classifier-demo-work-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_demo(binary, duration, seed, &out, &work, &interrupted);
    let _ = std::fs::remove_dir_all(&work);
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted; everything the demo created was removed");
    }
    result
}

fn run_demo(
    binary: &Path,
    duration: Duration,
    seed: u64,
    out: &Path,
    work: &Path,
    interrupted: &AtomicBool,
) -> Result<()> {
    let network = Network::create()?;
    println!(
        "demo: namespaces {} and {} joined by veth {} <-> {} (no route out)",
        network.sensor, network.peer, network.sensor_iface, network.peer_iface
    );
    let log_path = work.join("run.log");
    let log = std::fs::File::create(&log_path)?;
    let mut daemon = Running(
        network
            .in_namespace(&network.sensor, binary)
            .args(["run", "--iface", &network.sensor_iface])
            .arg("--pin-path")
            .arg(&network.pins)
            .arg("--snapshot-dir")
            .arg(out)
            .args([
                "--snapshot-interval",
                SNAPSHOT_INTERVAL,
                "--interval",
                "500ms",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start classifier run")?,
    );
    wait_for_log(&log_path, "counting;", &mut daemon, interrupted)?;
    println!(
        "demo: classifier run attached (bundled feed, watched 175.45.176.0/22), snapshots every {SNAPSHOT_INTERVAL} into {}",
        out.display()
    );

    let plan_path = work.join("plan.json");
    let generator = network
        .in_namespace(&network.peer, binary)
        .args(["generate", "--iface", &network.peer_iface])
        .args(["--seed", &seed.to_string()])
        .args([
            "--duration",
            &humantime::format_duration(duration).to_string(),
        ])
        .arg("--plan")
        .arg(&plan_path)
        .stdout(Stdio::null())
        .spawn()
        .context("start classifier generate")?;
    let mut generator = Running(generator);
    let mut stats = Running(
        Command::new(binary)
            .arg("stats")
            .arg("--pin-path")
            .arg(&network.pins)
            .args(["--watch", "2"])
            .spawn()
            .context("start classifier stats")?,
    );
    let deadline = Instant::now() + duration + Duration::from_secs(120);
    let generated = loop {
        if interrupted.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(status) = generator.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the generator did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        generated.success(),
        "classifier generate failed ({generated})"
    );
    // Let the last frames be counted and drained, then stop the live view.
    std::thread::sleep(Duration::from_millis(1200));
    signal(&stats.0, libc::SIGTERM);
    let _ = stats.0.wait();
    signal(&daemon.0, libc::SIGTERM);
    let stopped = daemon.0.wait()?;
    if !stopped.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("classifier run exited with {stopped}:\n{log}");
    }
    drop(network);

    println!("\ndemo: classifier report {}\n", out.display());
    let status = Command::new(binary).arg("report").arg(out).status()?;
    ensure!(status.success(), "classifier report failed ({status})");
    let output = Command::new(binary)
        .arg("report")
        .arg(out)
        .args(["--format", "json"])
        .output()?;
    ensure!(
        output.status.success(),
        "classifier report --format json failed"
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("report JSON")?;
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan_path)?)?;
    compare(&report, &plan)?;
    html_report(binary, out, work)
}

/// The HTML report of the demo's snapshots (`demo-out/report.html`) and
/// its screenshot for the README (`docs/report.png`), taken by headless
/// Chromium in a network namespace of its own. Without Chromium (it is
/// installed when missing, as root) the screenshot is skipped with a note.
fn html_report(binary: &Path, out: &Path, work: &Path) -> Result<()> {
    let page = work.join("report.html");
    let status = Command::new(binary)
        .arg("report")
        .arg(out)
        .args(["--format", "html", "--output"])
        .arg(&page)
        .status()?;
    ensure!(status.success(), "classifier report --format html failed");
    let kept = out.join("report.html");
    std::fs::copy(&page, &kept).with_context(|| format!("write {}", kept.display()))?;
    println!("demo: HTML report written to {}", kept.display());

    if let Err(error) = crate::ensure_tool("chromium", "chromium") {
        println!("demo: no screenshot of the HTML report ({error:#})");
        return Ok(());
    }
    let screenshot = crate::workspace_root().join("docs/report.png");
    if let Some(parent) = screenshot.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let output = Command::new("timeout")
        .args(["120", "unshare", "--net", "chromium", "--headless"])
        .args(["--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join("chromium-profile").display()
        ))
        .args(["--window-size=1000,1500", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .context("run chromium")?;
    ensure!(
        output.status.success(),
        "chromium could not take the screenshot: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("demo: screenshot of it written to {}", screenshot.display());
    Ok(())
}

fn wait_for_log(
    path: &Path,
    text: &str,
    daemon: &mut Running,
    interrupted: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return Ok(());
        }
        if let Some(status) = daemon.0.try_wait()? {
            bail!("classifier run exited with {status}:\n{log}");
        }
        ensure!(
            Instant::now() < deadline && !interrupted.load(Ordering::SeqCst),
            "classifier run did not start counting:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Compares the report with the generated plan: per service flows within
/// one, and Psiphon's packets either attributed through its certificate or
/// watched but unattributed (before the certificate).
fn compare(report: &Value, plan: &Value) -> Result<()> {
    let reported: BTreeMap<String, &Value> = report["services"]
        .as_array()
        .context("services")?
        .iter()
        .filter_map(|row| Some((row["service"].as_str()?.to_string(), row)))
        .collect();
    let planned = plan["services"].as_object().context("plan services")?;
    let total_flows: u64 = planned.values().filter_map(|s| s["flows"].as_u64()).sum();
    println!(
        "\ndemo: generated mix vs report (shares of attributed flows)\n{:<18} {:>10} {:>10} {:>9} {:>9}",
        "service", "generated", "reported", "flows", "sources"
    );
    let mut mismatches = Vec::new();
    let mut rows: Vec<(&String, &Value)> = planned.iter().collect();
    rows.sort_by_key(|(_, s)| std::cmp::Reverse(s["flows"].as_u64().unwrap_or(0)));
    for (name, expected) in rows {
        let flows = expected["flows"].as_u64().unwrap_or(0);
        let row = reported.get(name);
        let got = row.and_then(|r| r["flows"].as_u64()).unwrap_or(0);
        let share = |f: u64| 100.0 * f as f64 / total_flows.max(1) as f64;
        let reported_share = row.and_then(|r| r["share"].as_f64()).unwrap_or(0.0) * 100.0;
        println!(
            "{name:<18} {:>9.1}% {:>9.1}% {got:>4}/{flows:<4} {:>4}/{:<4}",
            share(flows),
            reported_share,
            row.and_then(|r| r["unique_sources"].as_u64()).unwrap_or(0),
            expected["unique_sources"].as_u64().unwrap_or(0)
        );
        if got.abs_diff(flows) > 1 {
            mismatches.push(format!("{name}: {got} flows reported, {flows} generated"));
        }
    }
    let psiphon = &plan["psiphon"];
    let psiphon_packets = psiphon["packets_outbound"].as_u64().unwrap_or(0)
        + psiphon["packets_inbound"].as_u64().unwrap_or(0);
    let totals = &report["totals"];
    let unattributed =
        totals["watched"].as_u64().unwrap_or(0) - totals["matched"].as_u64().unwrap_or(0);
    let learned = reported.get("psiphon");
    let learned_flows = learned.and_then(|r| r["flows"].as_u64()).unwrap_or(0);
    let learned_packets = learned.and_then(|r| r["packets"].as_u64()).unwrap_or(0);
    println!(
        "\ndemo: Psiphon (5.1 % of the watched hosts' conversations in the study): {} conversations, {psiphon_packets} packets of TLS to {}, a Cloudflare address no address list can name. The server's certificate names psiphon3.net, which the domain feed lists: the sensor read it and attributed {learned_flows} flows ({learned_packets} packets, from the certificate on) to Psiphon; {unattributed} packets before it (handshakes) stay watched but not matched. Cloudflare itself is not learned as a Psiphon endpoint (shared hosting).",
        psiphon["conversations"],
        plan["psiphon_server"].as_str().unwrap_or("?")
    );
    if unattributed + learned_packets != psiphon_packets {
        mismatches.push(format!(
            "{unattributed} watched packets without a service and {learned_packets} Psiphon packets, {psiphon_packets} Psiphon packets generated"
        ));
    }
    if learned_flows == 0 {
        mismatches.push("no Psiphon flow was attributed through its certificate".into());
    }
    if !mismatches.is_empty() {
        bail!(
            "the report does not match the generated mix: {}",
            mismatches.join("; ")
        );
    }
    println!("demo: the report matches the generated mix (every service within one flow).");
    Ok(())
}
