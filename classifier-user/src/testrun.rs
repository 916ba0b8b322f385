//! BPF_PROG_TEST_RUN: runs the loaded program over a frame given from
//! userspace, exactly as if it had arrived on an interface. Used by tests,
//! the pcap command and benchmarks.

use aya::programs::{TestRun, TestRunOptions};

use crate::loader::{LoadError, Sensor, error_chain};

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("BPF_PROG_TEST_RUN failed on a {len}-byte frame: {problem}")]
    Run { len: usize, problem: String },
}

/// Smallest frame the kernel accepts for an XDP test run (an Ethernet header).
pub const MIN_TEST_FRAME: usize = 14;

/// Runs the program once over `frame`; returns its XDP verdict.
pub fn run_frame(sensor: &Sensor, frame: &[u8]) -> Result<u32, TestRunError> {
    let program = sensor.program()?;
    let options = TestRunOptions {
        data_in: Some(frame),
        repeat: 1,
        ..Default::default()
    };
    program
        .test_run(options)
        .map(|result| result.return_value)
        .map_err(|error| TestRunError::Run {
            len: frame.len(),
            problem: error_chain(&error),
        })
}
