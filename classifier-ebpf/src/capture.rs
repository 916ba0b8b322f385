//! Evidence captures: the first bytes of matched packets (watched address
//! and known endpoint) go to userspace through a ring buffer, which writes
//! them to pcapng files. At most `per_flow` packets of each flow (counted
//! in a table all CPUs share; a packet over the rate takes no turn) and at
//! most `rate` packets a second in all; the ones over the rate, and those
//! that find the ring buffer full, are counted. Off (the default) it costs matched packets one array
//! read.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use classifier_common::{CAPTURE_MAX_BYTES, CaptureRecord, Totals};

use crate::{
    CAPTURE_BUDGET, CAPTURE_CONFIG, CAPTURE_EVENTS, CAPTURE_FLOWS,
    classify::Watched,
    count::{KeyAddress, clock_ns, flow_key},
    learn::within_budget,
    parse::Packet,
};

/// Captures the frame's first bytes when the configuration asks for this
/// packet of the flow `key`.
#[inline(always)]
pub fn matched<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
    service: u32,
    frame_len: u64,
) {
    let Some(config) = CAPTURE_CONFIG.get(0) else {
        return;
    };
    if config.bytes == 0 || frame_len == 0 {
        return;
    }
    let key = &flow_key(packet, watched, watched.direction);
    // The flow's first `per_flow` captured packets; CPUs racing on one
    // flow may pass one more. A packet the rate refuses takes none of the
    // flow's turns, so its next packet may still be captured.
    let count = CAPTURE_FLOWS.get_ptr_mut(key);
    // SAFETY: a map value, read once here and written once below.
    let captured = count.map_or(0, |count| unsafe { *count });
    if captured >= config.per_flow {
        return;
    }
    let now = clock_ns();
    if !within_budget(&CAPTURE_BUDGET, config.rate, now) {
        totals.capture_throttled += 1;
        return;
    }
    match count {
        // SAFETY: as above.
        Some(count) => unsafe { *count = captured + 1 },
        // A full table evicts the oldest flow's count.
        None => {
            let _ = CAPTURE_FLOWS.insert(key, 1, 0);
        }
    }
    let wanted = config.bytes as usize;
    let len = if (frame_len as usize) < wanted {
        frame_len as usize
    } else {
        wanted
    };
    // 1..=CAPTURE_MAX_BYTES in a form the verifier follows (a power of two).
    let len = ((len.wrapping_sub(1)) & (CAPTURE_MAX_BYTES - 1)) + 1;
    let Some(mut entry) = CAPTURE_EVENTS.reserve::<CaptureRecord>(0) else {
        totals.capture_drops += 1;
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned entry; the
    // helper copies `len` (1..=CAPTURE_MAX_BYTES, within the frame) bytes.
    let copied = unsafe {
        (*record).time_ns = now;
        (*record).frame_len = frame_len as u32;
        (*record).len = len as u32;
        (*record).service = service as u16;
        (*record).direction = watched.direction;
        bpf_xdp_load_bytes(ctx.ctx, 0, (*record).data.as_mut_ptr().cast(), len as u32)
    };
    if copied != 0 {
        entry.discard(0);
        totals.capture_drops += 1;
        return;
    }
    entry.submit(0);
    totals.capture_records += 1;
}
