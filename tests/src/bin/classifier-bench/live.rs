//! Live: frames per second through a veth pair into the program attached
//! on the sensor side, against the empty program attached the same way.
//! The generator is BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES and
//! an XDP_TX program on the peer side, one thread per CPU; the receiving
//! veth runs its XDP program on the same CPU as the frame's sender, so the
//! time to send N frames covers receiving them too.

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::Barrier,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use classifier_tests::netns::VethLink;
use classifier_user::{
    drain,
    loader::{AttachMode, Sensor, interface_index},
    testrun::{attach_xdp_link, load_constant_xdp, transmit_live},
};

use crate::median;

const XDP_TX: u32 = 3;

/// Frames per second (millions) for one receiver, median over rounds, and
/// the median of per-round ratios ours / empty.
pub struct LiveFigures {
    pub empty_mpps: f64,
    pub ours_mpps: f64,
    pub ratio: f64,
}

/// What runs on the sensor side for one measurement.
pub enum Receiver<'a> {
    Empty(BorrowedFd<'a>),
    Ours(&'a mut Sensor),
}

pub struct LiveBench<'a> {
    pub link: &'a VethLink,
    pub generator: std::os::fd::OwnedFd,
    pub frame: Vec<u8>,
    pub frames_per_cpu: u32,
    pub cpus: usize,
}

impl<'a> LiveBench<'a> {
    pub fn new(
        link: &'a VethLink,
        frame: Vec<u8>,
        frames_per_cpu: u32,
        cpus: usize,
    ) -> Result<Self> {
        Ok(Self {
            link,
            generator: load_constant_xdp(XDP_TX).context("load the XDP_TX generator")?,
            frame,
            frames_per_cpu,
            cpus,
        })
    }

    /// Rounds of empty, ours, ours, empty; the calling thread must be in
    /// the sensor namespace. Checks that ours counted every frame sent.
    pub fn compare(
        &self,
        empty: BorrowedFd<'_>,
        ours: &mut Sensor,
        rounds: usize,
    ) -> Result<LiveFigures> {
        let mut empty_rates = Vec::new();
        let mut ours_rates = Vec::new();
        let mut ratios = Vec::new();
        let counted_before = drain::read(ours)?.totals.packets();
        let mut sent = 0u64;
        for _ in 0..rounds {
            let empty_first = self.rate(Receiver::Empty(empty))?;
            let ours_first = self.rate(Receiver::Ours(ours))?;
            let ours_second = self.rate(Receiver::Ours(ours))?;
            let empty_second = self.rate(Receiver::Empty(empty))?;
            sent += 2 * self.frames_per_cpu as u64 * self.cpus as u64;
            ratios.push((ours_first + ours_second) / (empty_first + empty_second));
            empty_rates.extend([empty_first, empty_second]);
            ours_rates.extend([ours_first, ours_second]);
        }
        let counted = drain::read(ours)?.totals.packets() - counted_before;
        ensure!(
            counted == sent,
            "live: {sent} frames sent but the program counted {counted}"
        );
        Ok(LiveFigures {
            empty_mpps: median(&mut empty_rates),
            ours_mpps: median(&mut ours_rates),
            ratio: median(&mut ratios),
        })
    }

    /// Attaches `receiver` on the sensor side, sends, detaches; millions of
    /// frames per second.
    fn rate(&self, receiver: Receiver<'_>) -> Result<f64> {
        let sensor_if = interface_index(&self.link.sensor_iface)
            .with_context(|| format!("no interface {}", self.link.sensor_iface))?;
        match receiver {
            Receiver::Empty(program) => {
                let _attached =
                    attach_xdp_link(program, sensor_if).context("attach the empty program")?;
                self.send()
            }
            Receiver::Ours(sensor) => {
                sensor.attach(&self.link.sensor_iface, AttachMode::Native)?;
                let rate = self.send();
                sensor.detach_all();
                rate
            }
        }
    }

    /// One sender per CPU in the peer namespace, started together; millions
    /// of frames per second over all of them.
    fn send(&self) -> Result<f64> {
        let start = Barrier::new(self.cpus);
        let generator = self.generator.as_fd();
        let elapsed = std::thread::scope(|scope| -> Result<f64> {
            let senders: Vec<_> = (0..self.cpus)
                .map(|cpu| {
                    let start = &start;
                    scope.spawn(move || -> Result<f64> {
                        self.link.peer.enter_on_this_thread()?;
                        classifier_tests::pin_to_cpu(cpu)?;
                        let peer_if =
                            interface_index(&self.link.peer_iface).context("no peer interface")?;
                        start.wait();
                        let began = Instant::now();
                        transmit_live(generator, &self.frame, self.frames_per_cpu, peer_if)
                            .context("live-frames test run")?;
                        Ok(began.elapsed().as_secs_f64())
                    })
                })
                .collect();
            let mut longest: f64 = 0.0;
            for sender in senders {
                let seconds = sender
                    .join()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
                longest = longest.max(seconds);
            }
            Ok(longest)
        })?;
        Ok(self.frames_per_cpu as f64 * self.cpus as f64 / elapsed / 1e6)
    }
}
