//! Flow times. On a sensor the program stamps flows with the kernel's tick
//! counter (jiffies, a plain load: reading a clock is a helper call, about
//! 15 ns a matched packet here); a replay stamps them with each frame's
//! capture time in Unix nanoseconds. [`FlowClock`] turns a stamp into Unix
//! time.
//!
//! Ticks become CLOCK_MONOTONIC through a calibration made once per process:
//! two tiny XDP programs run with BPF_PROG_TEST_RUN return the tick
//! counter's two halves, read between two readings of CLOCK_MONOTONIC_COARSE
//! (the clock the kernel updates on the same tick). The tick length comes
//! from watching ten ticks go by (CONFIG_HZ is not exposed; about 40 ms
//! at HZ=250), the offset from the tick's start. Flow times are as fine as
//! the tick (4 ms at HZ=250), as they were with the coarse clock the
//! program read before.

use std::{io, os::fd::AsFd, sync::OnceLock};

use crate::testrun::{MIN_TEST_FRAME, load_xdp_instructions, run_repeated};

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot calibrate the kernel's tick clock (flow times): {0}")]
pub struct ClockError(String);

/// Unix time of a flow stamp: `stamp * scale_ns + offset_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowClock {
    scale_ns: u64,
    offset_ns: i128,
}

impl FlowClock {
    /// Stamps that are Unix nanoseconds already (a replay's capture clock).
    pub const UNIX_NS: Self = Self {
        scale_ns: 1,
        offset_ns: 0,
    };

    /// A sensor's tick stamps, converted with the wall clock as it is now.
    pub fn kernel() -> Result<Self, ClockError> {
        Ok(Ticks::calibrated()?.flow_clock())
    }

    /// Stamps that are CLOCK_MONOTONIC nanoseconds (tests of the ledger).
    pub fn monotonic_ns(monotonic_to_unix_ns: i128) -> Self {
        Self {
            scale_ns: 1,
            offset_ns: monotonic_to_unix_ns,
        }
    }

    /// The Unix time of `stamp`, in ns.
    pub fn unix_ns(&self, stamp: u64) -> i64 {
        let unix = i128::from(stamp) * i128::from(self.scale_ns) + self.offset_ns;
        i64::try_from(unix).unwrap_or(i64::MAX)
    }
}

/// The kernel tick counter's relation to CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    /// Length of a tick (the kernel's TICK_NSEC).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC at the start of tick 0 (`ticks * tick_ns + this`).
    pub offset_ns: i128,
}

impl Ticks {
    /// The process's calibration, made on first use.
    pub fn calibrated() -> Result<Self, ClockError> {
        static CALIBRATION: OnceLock<Result<Ticks, ClockError>> = OnceLock::new();
        CALIBRATION.get_or_init(calibrate).clone()
    }

    /// The conversion of tick stamps to Unix time, now.
    pub fn flow_clock(&self) -> FlowClock {
        FlowClock {
            scale_ns: self.tick_ns,
            offset_ns: self.offset_ns + crate::drain::monotonic_to_unix_ns(),
        }
    }
}

/// The kernel's tick counter, read when asked: the daemon reads it as each
/// drain starts, to tell the program which flow-cache slots that drain
/// will have read (`drain::CounterMaps::allow_recycling`).
pub struct TickCounter(Probe);

impl TickCounter {
    pub fn load() -> Result<Self, ClockError> {
        Probe::load().map(Self).map_err(probe_failed)
    }

    /// The counter now (a flow stamp).
    pub fn now(&self) -> Result<u64, ClockError> {
        self.0
            .read()
            .map(|reading| reading.ticks)
            .map_err(probe_failed)
    }
}

fn probe_failed(error: io::Error) -> ClockError {
    ClockError(format!("BPF_PROG_TEST_RUN of a probe: {error}"))
}

/// One reading of the tick counter, and CLOCK_MONOTONIC_COARSE unchanged
/// around it (so both belong to the same tick).
#[derive(Debug, Clone, Copy)]
struct Reading {
    ticks: u64,
    coarse_ns: i128,
}

/// The kernel's tick counter, read by two loaded probe programs.
struct Probe {
    low: std::os::fd::OwnedFd,
    high: std::os::fd::OwnedFd,
}

/// BPF_FUNC_jiffies64, which the verifier inlines as a load.
const HELPER_JIFFIES64: u64 = 118;

impl Probe {
    fn load() -> io::Result<Self> {
        let call = 0x85 | (HELPER_JIFFIES64 << 32);
        let exit = 0x95;
        let shift_right_32 = 0x77 | (32 << 32);
        Ok(Self {
            // An XDP program's return value is 32 bits: one probe returns
            // the counter's low half, the other its high half.
            low: load_xdp_instructions(&[call, exit])?,
            high: load_xdp_instructions(&[call, shift_right_32, exit])?,
        })
    }

    fn run(program: &std::os::fd::OwnedFd) -> io::Result<u64> {
        let frame = [0u8; MIN_TEST_FRAME];
        run_repeated(program.as_fd(), &frame, 1).map(|(value, _)| u64::from(value))
    }

    fn read(&self) -> io::Result<Reading> {
        loop {
            let before = coarse_ns();
            let high = Self::run(&self.high)?;
            let low = Self::run(&self.low)?;
            let high_again = Self::run(&self.high)?;
            if high == high_again && coarse_ns() == before {
                return Ok(Reading {
                    ticks: high << 32 | low,
                    coarse_ns: before,
                });
            }
        }
    }
}

fn coarse_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Tick changes the calibration watches: 50 (200 ms at 250 Hz), so that a
/// tick the host delays by a millisecond moves the measured rate by well
/// under the 3% within which it is taken as a configured rate (over 10
/// ticks it did not, now and then, on a busy VM).
const CALIBRATION_TICKS: usize = 50;

/// Reads the counter in a loop and keeps the first reading of each new
/// tick: the coarse clock then holds the time the tick was taken, which on
/// a busy CPU is its start plus the interrupt's latency (microseconds), so
/// ten ticks give the tick's length to well under a part in a thousand.
fn calibrate() -> Result<Ticks, ClockError> {
    let probe = Probe::load().map_err(probe_failed)?;
    let start = probe.read().map_err(probe_failed)?;
    let mut previous = start;
    let mut changes = Vec::with_capacity(CALIBRATION_TICKS);
    while changes.len() < CALIBRATION_TICKS {
        let reading = probe.read().map_err(probe_failed)?;
        // Both moved: the kernel advances the counter before the coarse
        // clock, so a reading between the two is not a tick's start.
        if reading.ticks != previous.ticks && reading.coarse_ns != previous.coarse_ns {
            changes.push(reading);
        }
        if reading.coarse_ns - start.coarse_ns > 2_000_000_000 {
            return Err(ClockError(format!(
                "the tick counter moved {} in 2 s",
                reading.ticks.wrapping_sub(start.ticks)
            )));
        }
        previous = reading;
    }
    let (first, last) = (changes[0], changes[CALIBRATION_TICKS - 1]);
    let elapsed = last.coarse_ns - first.coarse_ns;
    let ticks = i128::from(last.ticks.wrapping_sub(first.ticks));
    if elapsed <= 0 || ticks <= 0 {
        return Err(ClockError(format!(
            "{ticks} ticks in {elapsed} ns is no kernel tick rate"
        )));
    }
    let hz = (1_000_000_000 * ticks + elapsed / 2) / elapsed;
    if !(10..=10_000).contains(&hz) {
        return Err(ClockError(format!(
            "{ticks} ticks in {elapsed} ns is no kernel tick rate"
        )));
    }
    // A configured rate (CONFIG_HZ) when one is within 3%.
    let hz = [100, 250, 300, 1000]
        .into_iter()
        .find(|configured| (hz - configured).abs() * 100 <= configured * 3)
        .unwrap_or(hz) as u64;
    // TICK_NSEC of include/vdso/jiffies.h.
    let tick_ns = (1_000_000_000 + hz / 2) / hz;
    // The tick's start is at or a little before the time it was taken.
    let offset_ns = changes
        .iter()
        .map(|reading| reading.coarse_ns - i128::from(reading.ticks) * i128::from(tick_ns))
        .min()
        .unwrap_or_default();
    Ok(Ticks { tick_ns, offset_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_become_unix_time() {
        let clock = FlowClock {
            scale_ns: 4_000_000,
            offset_ns: -1_000,
        };
        assert_eq!(clock.unix_ns(0), -1_000);
        assert_eq!(clock.unix_ns(3), 11_999_000);
        assert_eq!(FlowClock::UNIX_NS.unix_ns(42), 42);
        assert_eq!(FlowClock::monotonic_ns(7).unix_ns(42), 49);
        assert_eq!(FlowClock::UNIX_NS.unix_ns(u64::MAX), i64::MAX);
    }
}
