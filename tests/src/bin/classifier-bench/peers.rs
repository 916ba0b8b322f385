//! Peers on the same frames in the same run: xdp-filter (Debian's
//! xdp-tools), whose XDP program is test-run exactly like ours, and
//! ndpiReader (libndpi-bin) classifying a pcap of the frames on one core.
//! Missing tools are installed with apt-get, as `cargo xtask setup` does
//! for the toolchain.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Makes sure `program` is on PATH, installing `package` if not.
pub fn require_tool(program: &str, package: &str) -> Result<()> {
    let found = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if found(program) {
        return Ok(());
    }
    eprintln!("bench: {program} is missing; installing {package} with apt-get");
    for args in [&["update", "-q"][..], &["install", "-y", "-q", package][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run apt-get {}", args.join(" ")))?;
        ensure!(
            status.success(),
            "apt-get {} failed ({status})",
            args.join(" ")
        );
    }
    ensure!(
        found(program),
        "{package} installed but {program} is still not on PATH"
    );
    Ok(())
}

/// The BPF filesystem at /sys/fs/bpf, where xdp-filter pins its maps:
/// mounted for the bench if nothing had mounted it, and unmounted on drop.
pub struct BpfFs {
    mounted_here: bool,
}

impl BpfFs {
    pub fn require() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let mounted = mounts
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some("/sys/fs/bpf"));
        if !mounted {
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        }
        Ok(Self {
            mounted_here: !mounted,
        })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if self.mounted_here
            && let Err(error) = run(Command::new("umount").arg("/sys/fs/bpf"))
        {
            eprintln!("bench: cannot unmount /sys/fs/bpf: {error}");
        }
    }
}

/// xdp-filter loaded on `iface` (of the calling thread's network
/// namespace) as a plain XDP program, so it can be test-run, with one IP
/// and one port rule so its lookups run; unloaded on drop.
pub struct XdpFilter {
    iface: String,
    /// Dropped after the unload (fields drop after `Drop::drop`).
    _bpffs: BpfFs,
}

impl XdpFilter {
    pub fn load(iface: &str) -> Result<Self> {
        require_tool("xdp-filter", "xdp-tools")?;
        let bpffs = BpfFs::require()?;
        // Without libxdp's dispatcher the program is a plain XDP program (a
        // dispatcher's component is an extension, which cannot be test-run).
        run(Command::new("xdp-filter")
            .args(["load", "-m", "skb", iface])
            .env("LIBXDP_SKIP_DISPATCHER", "1"))?;
        let filter = Self {
            iface: iface.to_string(),
            _bpffs: bpffs,
        };
        run(Command::new("xdp-filter").args(["ip", "192.0.2.200"]))?;
        run(Command::new("xdp-filter").args(["port", "9"]))?;
        Ok(filter)
    }

    /// Its program (all features, allow policy: frames that match no rule
    /// pass, as ours do).
    pub fn program(&self) -> Result<aya::programs::ProgramFd> {
        crate::newest_loaded_program("xdpfilt_alw_all")
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Err(error) = run(Command::new("xdp-filter").args(["unload", &self.iface])) {
            eprintln!(
                "bench: cannot unload xdp-filter from {}: {error}",
                self.iface
            );
        }
    }
}

/// Writes `frames` to a pcap at `path`, one microsecond apart.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut writer = PcapWriter::new(std::io::BufWriter::new(file))?;
    for (number, frame) in frames.iter().enumerate() {
        let timestamp = Duration::from_micros(number as u64);
        let len = u32::try_from(frame.len())?;
        writer.write_packet(&PcapPacket::new(timestamp, len, frame))?;
    }
    Ok(())
}

/// `classifier pcap`'s own throughput over `pcap` (the frames-per-second
/// figure it logs: reading and running every frame, not loading the feed).
pub fn classifier_pcap_pps(pcap: &Path) -> Result<f64> {
    let output = Command::new(classifier_tests::classifier_binary())
        .args(["pcap", "--format", "json"])
        .arg(pcap)
        .output()
        .context("run classifier pcap")?;
    let log = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "classifier pcap failed: {log}");
    let line = log
        .lines()
        .find(|line| line.contains("frames per second"))
        .context("no 'frames per second' line in classifier pcap's log")?;
    line.split(": ")
        .last()
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("no number in classifier pcap's throughput line")
}

/// ndpiReader's own throughput figure over `pcap`, packets per second; it
/// runs on this thread's CPU (its affinity is inherited).
pub fn ndpi_pps(pcap: &Path) -> Result<f64> {
    require_tool("ndpiReader", "libndpi-bin")?;
    let output = Command::new("ndpiReader")
        .arg("-i")
        .arg(pcap)
        .stdin(Stdio::null())
        .output()
        .context("run ndpiReader")?;
    ensure!(
        output.status.success(),
        "ndpiReader failed ({})",
        output.status
    );
    let text = String::from_utf8_lossy(&output.stdout);
    // "nDPI throughput:       69.61 K pps / 44.61 Mb/sec"
    let line = text
        .lines()
        .find(|line| line.contains("nDPI throughput:"))
        .context("no 'nDPI throughput' line in ndpiReader's output")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pps_at = words
        .iter()
        .position(|word| *word == "pps")
        .context("no pps in ndpiReader's throughput line")?;
    let (number, scale) = match words.get(pps_at - 1) {
        Some(&"K") => (words[pps_at - 2], 1e3),
        Some(&"M") => (words[pps_at - 2], 1e6),
        Some(&"G") => (words[pps_at - 2], 1e9),
        Some(number) => (*number, 1.0),
        None => bail!("unexpected throughput line: {line}"),
    };
    let value: f64 = number
        .parse()
        .with_context(|| format!("unexpected throughput line: {line}"))?;
    Ok(value * scale)
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
