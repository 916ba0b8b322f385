//! BPF_PROG_TEST_RUN: runs the loaded program over a frame given from
//! userspace, exactly as if it had arrived on an interface. Used by tests,
//! the pcap command and benchmarks.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    BPF_F_TEST_XDP_LIVE_FRAMES, bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type,
};

use crate::{
    bpf_sys::bpf,
    loader::{LoadError, Sensor, error_chain},
};

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
    run_repeated(program_fd(sensor)?, frame, 1)
        .map(|(verdict, _)| verdict)
        .map_err(|error| TestRunError::Run {
            len: frame.len(),
            problem: error.to_string(),
        })
}

/// The loaded classifier program's file descriptor, for [`run_repeated`].
pub fn program_fd(sensor: &Sensor) -> Result<BorrowedFd<'_>, TestRunError> {
    let program = sensor.program()?;
    program
        .fd()
        .map(AsFd::as_fd)
        .map_err(|error| TestRunError::Run {
            len: 0,
            problem: error_chain(&error),
        })
}

/// Runs the XDP program `fd` `repeat` times over `frame` in one
/// BPF_PROG_TEST_RUN call; returns its verdict and the kernel's mean
/// nanoseconds per run (the syscall itself is not in that time).
pub fn run_repeated(fd: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    // Zero the whole union: the kernel refuses non-zero bytes it does not know.
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the `test` member of a zeroed union.
    let test = unsafe { &mut attr.test };
    test.prog_fd = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
    test.data_in = frame.as_ptr() as u64;
    test.data_size_in = u32::try_from(frame.len()).map_err(io::Error::other)?;
    test.repeat = repeat;
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: the kernel filled the `test` member.
    let test = unsafe { &attr.test };
    Ok((test.retval, test.duration))
}

/// Sends `frame` `repeat` times out of interface `if_index` (of the calling
/// thread's network namespace) with BPF_F_TEST_XDP_LIVE_FRAMES: the kernel
/// runs `fd`, which must return XDP_TX, on each copy and transmits it. A
/// traffic generator for benchmarks, several million frames a second.
pub fn transmit_live(
    fd: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    if_index: u32,
) -> io::Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel wants data_end to be the
    // frame's length.
    let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
    let context: [u32; 6] = [0, len, 0, if_index, 0, 0];
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the `test` member of a zeroed union.
    let test = unsafe { &mut attr.test };
    test.prog_fd = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
    test.data_in = frame.as_ptr() as u64;
    test.data_size_in = len;
    test.ctx_in = context.as_ptr() as u64;
    test.ctx_size_in = u32::try_from(std::mem::size_of_val(&context)).map_err(io::Error::other)?;
    test.repeat = repeat;
    test.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(())
}

/// Attaches XDP program `fd` to interface `if_index` (of the calling
/// thread's network namespace) in driver mode with a BPF link; it stays
/// attached until the returned descriptor is closed.
pub fn attach_xdp_link(fd: BorrowedFd<'_>, if_index: u32) -> io::Result<OwnedFd> {
    crate::bpf_sys::link_create(fd, if_index, bpf_attach_type::BPF_XDP as u32, 0)
}

/// Loads a two-instruction XDP program that returns `verdict`: the floor
/// that benchmarks measure the classifier against.
pub fn load_constant_xdp(verdict: u32) -> io::Result<OwnedFd> {
    // r0 = verdict; exit
    load_xdp_instructions(&[0xb7 | (u64::from(verdict) << 32), 0x95])
}

/// Loads an XDP program given as raw BPF instructions (map references by
/// descriptor, which must stay open until it returns).
pub(crate) fn load_xdp_instructions(instructions: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the program-load member of a zeroed union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    load.insn_cnt = u32::try_from(instructions.len()).map_err(io::Error::other)?;
    load.insns = instructions.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
