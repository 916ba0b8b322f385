//! Stream mode: a different frame on every run, one BPF_PROG_TEST_RUN call
//! each, so caches and the flow table see what a real link brings (random
//! addresses, new flows) instead of one frame repeated. The floor and ours
//! alternate frame by frame over the same frames; each run's time is the
//! kernel's (whole nanoseconds, summed over the stream).
//!
//! Both programs must be attached somewhere while this runs: a test run of
//! a detached XDP program swaps it into the kernel's XDP dispatcher and out
//! again, waiting for RCU each time (milliseconds per frame).

use std::os::fd::BorrowedFd;

use anyhow::{Result, ensure};
use classifier_user::testrun::run_repeated;

use crate::{Measurement, XDP_PASS, median};

/// Runs `streams` (one per round) through the floor and ours, alternating
/// which goes first; the ratio is the median of the rounds' ratios.
pub fn compare_stream(
    floor: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    streams: &[Vec<Vec<u8>>],
) -> Result<Measurement> {
    compare_stream_with(floor, ours, streams, || Ok(()))
}

/// [`compare_stream`], calling `before_round` before each round (untimed).
pub fn compare_stream_with(
    floor: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    streams: &[Vec<Vec<u8>>],
    mut before_round: impl FnMut() -> Result<()>,
) -> Result<Measurement> {
    let mut floor_ns = Vec::new();
    let mut ours_ns = Vec::new();
    let mut ratios = Vec::new();
    for (round, frames) in streams.iter().enumerate() {
        before_round()?;
        let (mut floor_sum, mut ours_sum) = (0u64, 0u64);
        for frame in frames {
            let floor_first = round % 2 == 0;
            for is_floor in [floor_first, !floor_first] {
                let program = if is_floor { floor } else { ours };
                let (verdict, ns) = run_repeated(program, frame, 1)?;
                ensure!(
                    verdict == XDP_PASS,
                    "a program returned {verdict}, not XDP_PASS"
                );
                if is_floor {
                    floor_sum += u64::from(ns);
                } else {
                    ours_sum += u64::from(ns);
                }
            }
        }
        let count = frames.len().max(1) as f64;
        floor_ns.push(floor_sum as f64 / count);
        ours_ns.push(ours_sum as f64 / count);
        ratios.push(ours_sum as f64 / floor_sum.max(1) as f64);
    }
    Ok(Measurement {
        floor_ns: median(&mut floor_ns),
        ours_ns: median(&mut ours_ns),
        ratio: median(&mut ratios),
    })
}
