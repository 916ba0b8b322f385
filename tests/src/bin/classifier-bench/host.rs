//! Userspace figures: draining a full flow table into a report, and the
//! daemon (`classifier run`) loading a large feed, at rest and with a full
//! flow table: time, peak and resident memory.

use std::{
    io::{BufRead, BufReader},
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use classifier_tests::{classifier_binary, frames::FrameSpec, netns::VethLink};
use classifier_user::{
    drain::{self, Ledger},
    flow_clock::FlowClock,
    loader::Sensor,
    report::{Report, ReportContext},
    testrun::run_repeated,
};
use time::OffsetDateTime;

use crate::XDP_PASS;

/// Runs `count` frames through `program`, each a new flow: a watched
/// source of 175.45.176.0/22 to 203.0.113.77 (an endpoint of every bench
/// feed), the endpoint port and the source's low bits making the key. The
/// program must be attached somewhere (test runs are then cheap).
pub fn fill_flows(program: BorrowedFd<'_>, count: u32) -> Result<()> {
    ensure!(count <= 1 << 26, "at most 2^26 distinct flows");
    let template = FrameSpec::udp("175.45.176.0", "203.0.113.77", 40000, 0)
        .payload(18)
        .build();
    let mut frame = template.clone();
    for flow in 0..count {
        // IPv4 source at 26..30 (its last two octets), UDP destination port
        // at 36..38; the program checks no checksums.
        let source_low = 0xb000 | (flow >> 16) as u16;
        frame[28..30].copy_from_slice(&source_low.to_be_bytes());
        frame[36..38].copy_from_slice(&((flow & 0xffff) as u16).to_be_bytes());
        let (verdict, _) = run_repeated(program, &frame, 1)?;
        ensure!(verdict == XDP_PASS, "the program returned {verdict}");
    }
    Ok(())
}

/// Draining a full flow table into a report, in seconds per step.
pub struct DrainFigures {
    /// Reading every map from the kernel into the ledger (per-flow deltas),
    /// as the daemon drains.
    pub read_s: f64,
    /// Building the report from the ledger.
    pub report_s: f64,
    /// Flows in the report.
    pub flows: usize,
}

impl DrainFigures {
    pub fn total_s(&self) -> f64 {
        self.read_s + self.report_s
    }
}

pub fn drain_and_report(sensor: &Sensor) -> Result<DrainFigures> {
    let started = Instant::now();
    let mut ledger = Ledger::default();
    drain::read_into(sensor, &mut ledger, FlowClock::kernel()?)?;
    let read_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let report = Report::build(
        &ledger,
        &sensor.services,
        ReportContext {
            start: now,
            end: now,
            sensor: "bench".into(),
            interfaces: Vec::new(),
            feeds: Vec::new(),
        },
    );
    let report_s = started.elapsed().as_secs_f64();
    Ok(DrainFigures {
        read_s,
        report_s,
        flows: report.flows.len(),
    })
}

pub struct DaemonFigures {
    /// From start to "counting" (feed read, maps filled, attached).
    pub load_s: f64,
    /// Peak resident memory up to then.
    pub peak_mb: f64,
    pub rest_mb: f64,
    pub full_mb: f64,
}

/// Starts `classifier run` on the sensor side of `link` with `feed`, and
/// measures it at rest, then with `flows` flows created in its table and
/// drained twice. The calling thread must be in the sensor namespace (the
/// daemon inherits it).
pub fn daemon(
    link: &VethLink,
    feed: &Path,
    flows: u32,
    flow_capacity: u32,
) -> Result<DaemonFigures> {
    let started = Instant::now();
    let mut child = Command::new(classifier_binary())
        .args(["run", "--iface", &link.sensor_iface, "--interval", "1s"])
        .arg("--endpoints")
        .arg(feed)
        .args(["--flow-capacity", &flow_capacity.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start classifier run")?;
    let result = measure_daemon(&mut child, started, flows);
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    let figures = result?;
    ensure!(status.success(), "classifier run exited with {status}");
    Ok(figures)
}

fn measure_daemon(child: &mut Child, started: Instant, flows: u32) -> Result<DaemonFigures> {
    let stderr = child.stderr.take().context("no stderr")?;
    let (counting_tx, counting_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("counting") {
                let _ = counting_tx.send(());
            }
        }
    });
    if counting_rx.recv_timeout(Duration::from_secs(120)).is_err() {
        bail!("classifier run did not start counting within 120 s");
    }
    let load_s = started.elapsed().as_secs_f64();
    let rest_mb = memory_mb(child.id(), "VmRSS")?;
    let peak_mb = memory_mb(child.id(), "VmHWM")?;
    let program = crate::newest_loaded_program(classifier_common::PROGRAM_NAME)?;
    fill_flows(program.as_fd(), flows)?;
    // Two drains, so its ledger holds every flow.
    std::thread::sleep(Duration::from_millis(2500));
    Ok(DaemonFigures {
        load_s,
        peak_mb,
        rest_mb,
        full_mb: memory_mb(child.id(), "VmRSS")?,
    })
}

fn memory_mb(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}
