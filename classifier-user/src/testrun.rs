//! BPF_PROG_TEST_RUN: runs the loaded program over a frame given from
//! userspace, exactly as if it had arrived on an interface. Used by tests,
//! the pcap command and benchmarks.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    BPF_F_TEST_XDP_LIVE_FRAMES, bpf_attach_type, bpf_attr, bpf_cmd, bpf_map_type, bpf_prog_type,
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

/// Loads the cheapest program that does what the non-watched path must, as
/// issue 6 describes it ("parsing plus one per-CPU array update"), written
/// in raw BPF so no compiler stands between the recipe and the machine:
/// bounds-check an Ethernet and IPv4 header, read the ethertype, compare
/// the source address (and with `both_addresses` the destination too, as
/// replies to a watched host need) with one watched IPv4 prefix, and add
/// the packet and its bytes to a per-CPU array's one value (two `u64`). It
/// returns XDP_PASS. Benchmarks measure it beside the empty program to
/// show what the non-watched path's floor is on the machine they run on.
/// Returns the program and its counters (packets, bytes).
pub fn load_parse_and_count_xdp(
    watched: ipnet::Ipv4Net,
    both_addresses: bool,
) -> io::Result<(OwnedFd, OwnedFd)> {
    let counters = create_per_cpu_array(4, 16, 1)?;
    // Loads read the frame's bytes in the machine's byte order.
    let prefix = u32::from_ne_bytes(watched.network().octets()) as i32;
    let mask = u32::from_ne_bytes(watched.netmask().octets()) as i32;
    let ipv4 = i32::from(u16::from_ne_bytes([0x08, 0x00]));
    let map = u32::try_from(counters.as_raw_fd()).map_err(io::Error::other)? as i32;
    // (instruction, whether it jumps to `pass`, the second-to-last one)
    let mut code = vec![
        (insn(0x61, 2, 1, 0, 0), false),   // r2 = ctx->data
        (insn(0x61, 3, 1, 4, 0), false),   // r3 = ctx->data_end
        (insn(0xbf, 4, 2, 0, 0), false),   // r4 = r2
        (insn(0x07, 4, 0, 0, 34), false),  // r4 += 14 + 20
        (insn(0x2d, 4, 3, 0, 0), true),    // if r4 > r3 goto pass
        (insn(0x69, 4, 2, 12, 0), false),  // r4 = the ethertype, frame order
        (insn(0x55, 4, 0, 0, ipv4), true), // if r4 != htons(0x0800) goto pass
    ];
    let address_offsets: &[i16] = if both_addresses { &[26, 30] } else { &[26] };
    for offset in address_offsets {
        code.extend([
            (insn(0x61, 4, 2, *offset, 0), false), // r4 = the address
            (insn(0x54, 4, 0, 0, mask), false),    // w4 &= mask
            (insn(0x16, 4, 0, 0, prefix), true),   // if w4 == prefix goto pass
        ]);
    }
    code.extend([
        (insn(0xbf, 6, 3, 0, 0), false),   // r6 = data_end
        (insn(0x1f, 6, 2, 0, 0), false),   // r6 -= data (the frame's bytes)
        (insn(0x62, 10, 0, -4, 0), false), // *(u32 *)(r10 - 4) = 0 (the key)
        (insn(0xbf, 2, 10, 0, 0), false),  // r2 = r10
        (insn(0x07, 2, 0, 0, -4), false),  // r2 += -4
        (insn(0x18, 1, 1, 0, map), false), // r1 = the counters (a map fd)
        (0, false),                        // (its second half)
        (insn(0x85, 0, 0, 0, 1), false),   // call bpf_map_lookup_elem
        (insn(0x15, 0, 0, 0, 0), true),    // if r0 == 0 goto pass
        (insn(0x79, 1, 0, 0, 0), false),   // r1 = packets
        (insn(0x07, 1, 0, 0, 1), false),   // r1 += 1
        (insn(0x7b, 0, 1, 0, 0), false),   // packets = r1
        (insn(0x79, 1, 0, 8, 0), false),   // r1 = bytes
        (insn(0x0f, 1, 6, 0, 0), false),   // r1 += r6
        (insn(0x7b, 0, 1, 8, 0), false),   // bytes = r1
        (insn(0xb7, 0, 0, 0, 2), false),   // pass: r0 = XDP_PASS
        (insn(0x95, 0, 0, 0, 0), false),   // exit
    ]);
    // A jump's offset counts the instructions after it up to its target.
    let pass = code.len() - 2;
    let instructions: Vec<u64> = code
        .iter()
        .enumerate()
        .map(|(at, &(instruction, to_pass))| match to_pass {
            true => instruction | u64::from((pass - at - 1) as u16) << 16,
            false => instruction,
        })
        .collect();
    Ok((load_xdp_instructions(&instructions)?, counters))
}

/// A per-CPU array map of `entries` values.
fn create_per_cpu_array(key_size: u32, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the map-create member of a zeroed union.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY as u32;
    create.key_size = key_size;
    create.value_size = value_size;
    create.max_entries = entries;
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One BPF instruction: opcode, destination and source registers, offset
/// and immediate.
fn insn(code: u8, dst: u8, src: u8, offset: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst) << 8
        | u64::from(src) << 12
        | u64::from(offset as u16) << 16
        | u64::from(imm as u32) << 32
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
