//! Learning: the few packets of watched hosts that can teach which
//! endpoints serve which service go to userspace through a ring buffer,
//! and what userspace learned comes back as host entries the classifier
//! consults when no feed names the other end: DNS responses (UDP or TCP
//! from port 53) to a watched host, and the first payload segments of TCP
//! flows whose other end no feed names, up to `LEARN_BYTES` of each.
//! At most `LEARN_RATE` records a second (of `clock_ns`) are handed
//! over, all CPUs together; the rest are counted as throttled. A full ring
//! buffer drops the record and counts it.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, maps::Array, programs::XdpContext};
use classifier_common::{
    DIR_INBOUND, DIRECTIONS, ENDPOINT_HINT_LEARNED, ENDPOINT_HINT_VERDICTS, EndpointHints,
    LEARN_BYTES, LEARN_DNS, LEARN_TCP, LEARN_TCP_SEGMENTS, LearnRecord, RateBudget,
    TCP_PROBE_SLOTS, Totals, flow_check, flow_slot,
};

use crate::{
    ENDPOINT_HINTS, LEARN_BUDGET, LEARN_EVENTS, LEARN_RATE, LEARNED, TCP_PROBES, VERDICTS,
    classify::Watched,
    count::{KeyAddress, clock_ns, flow_key},
    load_time,
    parse::{MAX_FRAME, Packet},
};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
pub const PORT_DNS: u16 = 53;

/// Both endpoint hints (one lookup for all a packet asks of them); `None`
/// only if the map were missing its value, which then hints nothing.
#[inline(always)]
pub fn endpoint_hints() -> Option<*mut EndpointHints> {
    ENDPOINT_HINTS.get_ptr_mut(0)
}

/// The service userspace learned for `endpoint` (key bytes, hint index
/// `hint`), or 0.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the key is copied to the stack again"
)]
pub fn learned_service(hints: Option<*mut EndpointHints>, endpoint: [u64; 2], hint: usize) -> u32 {
    if !hinted(hints, ENDPOINT_HINT_LEARNED, hint) {
        return 0;
    }
    let endpoint: [u8; 16] = bytemuck::cast(endpoint);
    // SAFETY: a map value, read once.
    LEARNED
        .get_ptr(&endpoint)
        .map_or(0, |service| unsafe { *service })
}

/// The verdict stored for the flow `key` (direction 0) whose endpoint has
/// hint index `hint`.
#[inline(always)]
pub fn verdict<A: KeyAddress>(
    hints: Option<*mut EndpointHints>,
    packet: &Packet<A>,
    watched: &Watched<A>,
    hint: usize,
) -> Option<u32> {
    if !hinted(hints, ENDPOINT_HINT_VERDICTS, hint) {
        return None;
    }
    let key = &flow_key(packet, watched, 0);
    // SAFETY: a map value, read once.
    VERDICTS.get_ptr(key).map(|verdict| unsafe { *verdict })
}

/// Whether the endpoint hint `which` has its byte `index` set.
#[inline(always)]
fn hinted(hints: Option<*mut EndpointHints>, which: u32, index: usize) -> bool {
    // SAFETY: the map's value, valid while the program runs; read once.
    hints
        .and_then(|hints| unsafe { (*hints).hints.get(which as usize) })
        .and_then(|hint| hint.bytes.get(index))
        .is_some_and(|&set| set != 0)
}

/// Sets the byte `index` of the endpoint hint `which`.
#[inline(always)]
pub fn mark_hint(hints: Option<*mut EndpointHints>, which: u32, index: usize) {
    if let Some(hints) = hints {
        // SAFETY: the map's value, valid while the program runs; a byte
        // store, which no other CPU's store can undo but a clearing.
        unsafe {
            if let Some(set) = (*hints)
                .hints
                .get_mut(which as usize)
                .and_then(|hint| hint.bytes.get_mut(index))
            {
                core::ptr::write_volatile(set, 1);
            }
        }
    }
}

/// Hands a DNS response sent to a watched host to userspace.
#[inline(always)]
pub fn dns_response<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
) {
    if watched.direction != DIR_INBOUND
        || packet.src_port != PORT_DNS
        || !(packet.protocol == PROTO_UDP || packet.protocol == PROTO_TCP)
    {
        return;
    }
    hand_over(ctx, totals, packet, watched, LEARN_DNS);
}

/// Hands the first `LEARN_TCP_SEGMENTS` payload segments in each direction
/// of a TCP flow whose other end no feed names to userspace (a ClientHello
/// names its server; a TLS 1.2 server's certificate names it too). Each
/// CPU counts them in a slot of its own per flow (`TCP_PROBES`): an array
/// slot costs every later segment of the flow a hash and a load, where a
/// hash table's lookup cost it tens of nanoseconds.
#[inline(always)]
pub fn tcp_segment<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
) {
    if packet.protocol != PROTO_TCP || packet.payload_end <= packet.payload_start {
        return;
    }
    let check = flow_check(&flow_key(packet, watched, 0));
    let Some(slot) = TCP_PROBES.get_ptr_mut(flow_slot(check, TCP_PROBE_SLOTS - 1)) else {
        return;
    };
    // SAFETY: a per-CPU slot belongs to this CPU while the program runs.
    let slot = unsafe { &mut *slot };
    if slot.check != check {
        // A flow this slot has not seen since it last held another.
        slot.check = check;
        slot.segments = [0; DIRECTIONS];
    }
    let Some(seen) = slot.segments.get_mut((watched.direction & 1) as usize) else {
        return;
    };
    if u32::from(*seen) < LEARN_TCP_SEGMENTS {
        *seen += 1;
        hand_over(ctx, totals, packet, watched, LEARN_TCP);
    }
}

/// Copies the packet's payload (at most `LEARN_BYTES`) into a record.
#[inline(always)]
fn hand_over<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
    kind: u8,
) {
    if packet.payload_end <= packet.payload_start || packet.payload_end == MAX_FRAME {
        return;
    }
    let len = packet.payload_end - packet.payload_start;
    let len = if len > LEARN_BYTES { LEARN_BYTES } else { len };
    // 1..=LEARN_BYTES in a form the verifier follows (the helper refuses a
    // length that may be zero); LEARN_BYTES is a power of two.
    let len = ((len - 1) & (LEARN_BYTES - 1)) + 1;
    if !within_budget(&LEARN_BUDGET, load_time(&LEARN_RATE), clock_ns()) {
        totals.learn_throttled += 1;
        return;
    }
    let Some(mut entry) = LEARN_EVENTS.reserve::<LearnRecord>(0) else {
        totals.learn_drops += 1;
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned entry; the
    // helper copies `len` (1..=LEARN_BYTES) bytes of the frame into it.
    let copied = unsafe {
        (*record).kind = kind;
        (*record).family = A::FAMILY;
        (*record).protocol = packet.protocol;
        (*record).direction = watched.direction;
        (*record).port = watched.port;
        (*record).len = len as u32;
        (*record).watched = watched.watched.key_bytes();
        (*record).server = watched.endpoint.key_bytes();
        bpf_xdp_load_bytes(
            ctx.ctx,
            packet.payload_start as u32,
            (*record).payload.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        totals.learn_drops += 1;
        return;
    }
    entry.submit(0);
    totals.learn_records += 1;
}

/// Whether the budget of `rate` records for the second of `now` (ns, the
/// budgets' clock) has room, taking one if so. CPUs share the budget without a lock: ones racing at a second's
/// turn may pass a few records more than the rate.
#[inline(always)]
pub fn within_budget(budget: &Array<RateBudget>, rate: u32, now: u64) -> bool {
    let Some(budget) = budget.get_ptr_mut(0) else {
        return false;
    };
    let second = now / 1_000_000_000;
    // SAFETY: the array's only value, valid while the program runs.
    unsafe {
        if (*budget).second != second {
            (*budget).second = second;
            (*budget).used = 0;
        }
        if (*budget).used >= u64::from(rate) {
            return false;
        }
        (*budget).used += 1;
    }
    true
}
