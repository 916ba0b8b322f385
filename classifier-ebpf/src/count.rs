//! Counting: the per-CPU totals every packet touches, per-service counters
//! and the flow table for matched packets. Userspace drains all three.
//!
//! Totals and per-service counters never depend on the flow table, so they
//! stay exact when it is full.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, generated::bpf_jiffies64},
    programs::XdpContext,
};
use bytemuck::Zeroable;
use classifier_common::{
    CAPTURE_CLOCK_FRAME_LEN, CAPTURE_CLOCK_TIME, ENDPOINT_HINT_VERDICTS, FAMILY_V4, FAMILY_V6,
    FLOW_BUCKET_SLOTS, FlowKey, FlowValue, ORIGIN_FEED, ORIGIN_LEARNED, ORIGIN_PROTOCOL,
    SERVICE_L2TP, Totals, endpoint_hint_index, flow_check, flow_slot, same_flow, slot_tail,
};

use crate::{
    CAPTURE_CLOCK, CAPTURE_CLOCK_ON, FLOW_CACHE, FLOW_CACHE_DRAINED, FLOW_CACHE_MASK, FLOWS,
    NEW_FLOW_EVERY_PACKET, SERVICES, TOTALS, VERDICTS, capture,
    classify::{Watched, classify_v4, classify_v6, either_hinted},
    learn::{self, learned_service, verdict},
    load_time,
    parse::{Packet, Parsed, parse, plain, plain_ipv4_packet},
    protocols::recognise,
};

/// An address as flow keys hold it: 16 bytes, IPv4 mapped.
pub trait KeyAddress: Copy {
    const FAMILY: u8;
    /// The 16 bytes as two words, so they are stored with two word writes
    /// (an IPv4 address's ten zero bytes written byte by byte cost a call
    /// to a `memset` loop).
    fn key_words(self) -> [u64; 2];

    #[inline(always)]
    fn key_bytes(self) -> [u8; 16] {
        bytemuck::cast(self.key_words())
    }
}

impl KeyAddress for u32 {
    const FAMILY: u8 = FAMILY_V4;
    #[inline(always)]
    fn key_words(self) -> [u64; 2] {
        let [a, b, c, d] = self.to_be_bytes();
        [0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])]
    }
}

impl KeyAddress for [u8; 16] {
    const FAMILY: u8 = FAMILY_V6;
    #[inline(always)]
    fn key_words(self) -> [u64; 2] {
        bytemuck::cast(self)
    }
}

#[inline(always)]
pub fn packet(ctx: &XdpContext) {
    // The fast path decides before anything else, so that nothing it read
    // is kept across the counter lookup (only the context and the family).
    let plain_ipv4 = match plain(ctx) {
        Some(plain) if !either_hinted(&plain) => {
            count_plain(ctx, plain.family);
            return;
        }
        Some(plain) => plain.family == FAMILY_V4,
        None => false,
    };
    // Watched traffic and rare frames: kept out of the fast path's way.
    core::hint::cold_path();
    let bytes = frame_bytes(ctx);
    let Some(totals) = totals() else {
        return;
    };
    totals.bytes += bytes;

    // A hinted plain IPv4 frame is read where the fast path found its
    // headers; any other frame is parsed.
    let parsed = match plain_ipv4.then(|| plain_ipv4_packet(ctx)).flatten() {
        Some(packet) => Ok(Parsed::V4(packet)),
        None => parse(ctx),
    };
    match parsed {
        Ok(Parsed::NotIp) => totals.other += 1,
        Ok(Parsed::V4(packet)) => {
            totals.ipv4 += 1;
            if let Some(watched) = classify_v4(&packet) {
                count_watched(ctx, totals, &packet, &watched, bytes);
            }
        }
        Ok(Parsed::V6(packet)) => {
            totals.ipv6 += 1;
            if let Some(watched) = classify_v6(&packet) {
                count_watched(ctx, totals, &packet, &watched, bytes);
            }
        }
        Err(malformed) => {
            count_family(totals, malformed.family);
            if let Some(slot) = totals.malformed.get_mut(malformed.reason) {
                *slot += 1;
            }
        }
    }
}

/// This CPU's totals.
#[inline(always)]
fn totals() -> Option<&'static mut Totals> {
    let totals = TOTALS.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot belongs to this CPU while the program runs.
    Some(unsafe { &mut *totals })
}

/// The frame's length; on a replay, the capture's (a frame longer than
/// BPF_PROG_TEST_RUN hands over whole is run cut short; a load-time
/// constant, so a sensor's program keeps only the first line).
#[inline(always)]
fn frame_bytes(ctx: &XdpContext) -> u64 {
    let handed = (ctx.data_end() - ctx.data()) as u64;
    if load_time(&CAPTURE_CLOCK_ON) != 0 {
        return CAPTURE_CLOCK
            .get(CAPTURE_CLOCK_FRAME_LEN)
            .copied()
            .unwrap_or(handed);
    }
    handed
}

/// A fast-path frame: its bytes and its family.
#[inline(always)]
fn count_plain(ctx: &XdpContext, family: u8) {
    // Read before the lookup, which clobbers the registers the frame's
    // bounds are in: kept in one register instead of read again.
    let bytes = frame_bytes(ctx);
    if let Some(totals) = totals() {
        totals.bytes += bytes;
        count_family(totals, family);
    }
}

#[inline(always)]
fn count_family(totals: &mut Totals, family: u8) {
    match family {
        FAMILY_V4 => totals.ipv4 += 1,
        FAMILY_V6 => totals.ipv6 += 1,
        _ => totals.other += 1,
    }
}

/// The key of `packet`'s flow in `direction` (0 for what verdicts and TCP
/// probes are keyed by), written as five whole words (`FlowKey` is 8-byte
/// aligned, so it is compared in words too). Built where a map needs it:
/// most watched packets whose other end no feed names need none.
#[inline(always)]
pub fn flow_key<A: KeyAddress>(packet: &Packet<A>, watched: &Watched<A>, direction: u8) -> FlowKey {
    let [watched_0, watched_1] = watched.watched.key_words();
    let [endpoint_0, endpoint_1] = watched.endpoint.key_words();
    let tail = FlowKey::tail_word(watched.port, A::FAMILY, packet.protocol, direction);
    bytemuck::cast([watched_0, watched_1, endpoint_0, endpoint_1, tail])
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the flow key is copied to the stack again and the program exceeds the BPF stack"
)]
fn count_watched<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
    bytes: u64,
) {
    totals.watched += 1;

    learn::dns_response(ctx, totals, packet, watched);
    let mut service = watched.service;
    let mut origin = ORIGIN_FEED;
    if service == 0 {
        // No feed names the other end (a feed match wins): an endpoint
        // userspace learned, else a verdict an earlier packet of the flow
        // taught, or this packet's protocol. Each hash lookup only where
        // the endpoint's hint byte says it may find something (most such
        // traffic finds nothing).
        let endpoint_words = watched.endpoint.key_words();
        let endpoint_hint = endpoint_hint_index(endpoint_words);
        let hints = learn::endpoint_hints();
        service = learned_service(hints, endpoint_words, endpoint_hint);
        origin = ORIGIN_LEARNED;
        if service == 0 {
            service = match verdict(hints, packet, watched, endpoint_hint) {
                Some(verdict) => verdict,
                None => {
                    let recognised = recognise(ctx, packet);
                    if recognised != 0 {
                        // The hint first, so no reader finds the verdict
                        // without it. A full table evicts the oldest
                        // verdict; a failed insert only loses the verdict
                        // for later packets.
                        learn::mark_hint(hints, ENDPOINT_HINT_VERDICTS, endpoint_hint);
                        let key = &flow_key(packet, watched, 0);
                        let _ = VERDICTS.insert(key, &recognised, 0);
                    }
                    recognised
                }
            };
            if service == 0 {
                learn::tcp_segment(ctx, totals, packet, watched);
                return;
            }
            // Verdicts for the protocol services come from their
            // signatures; any other from a name learning read.
            origin = if service <= SERVICE_L2TP {
                ORIGIN_PROTOCOL
            } else {
                ORIGIN_LEARNED
            };
        }
    }
    totals.matched += 1;
    if let Some(counters) = SERVICES.get_ptr_mut(service) {
        // SAFETY: per-CPU slot, as above.
        let counters = unsafe { &mut *counters };
        let direction = (watched.direction & 1) as usize;
        if let Some(packets) = counters.packets.get_mut(direction) {
            *packets += 1;
        }
        if let Some(total) = counters.bytes.get_mut(direction) {
            *total += bytes;
        }
    }

    count_flow(totals, packet, watched, service, origin, bytes, flow_time());
    capture::matched(ctx, totals, packet, watched, service, bytes);
}

/// Counts the packet in its flow: the flow cache first (a known flow costs
/// a hash, an array slot and a compare; a new one claims an empty slot, or
/// one whose flow the daemon has drained since it was last seen), else the
/// LRU table.
#[inline(always)]
fn count_flow<A: KeyAddress>(
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
    service: u32,
    origin: u8,
    bytes: u64,
    now: u64,
) {
    let key = &benchmarked(flow_key(packet, watched, watched.direction), totals);
    let check = flow_check(key);
    let index = flow_slot(check, load_time(&FLOW_CACHE_MASK));
    // A cache of fewer slots than a bucket is one smaller bucket
    // (`FlowCacheShape`): the index is at most the mask, a load-time
    // constant the verifier knows, which keeps the read inside it.
    let bucket = FLOW_CACHE.get_ptr_mut(index / FLOW_BUCKET_SLOTS);
    // SAFETY: a per-CPU value belongs to this CPU while the program runs.
    let slot = bucket
        .and_then(|bucket| unsafe { &mut *bucket }.get_mut((index % FLOW_BUCKET_SLOTS) as usize));
    if let Some(slot) = slot {
        if slot.check == check && same_flow(&slot.key, key) {
            update_flow(&mut slot.value, packet, service, origin, bytes, now);
            return;
        }
        let empty = slot.check == 0;
        if empty || drained_before(slot.value.last_seen_ns) {
            // Volatile writes keep their order: the tail, key and value
            // (field by field, in place: a whole value on the stack would
            // exceed the BPF stack), then the check that makes readers
            // trust the slot (`FlowSlot`).
            // SAFETY: valid, exclusively borrowed fields.
            unsafe {
                core::ptr::write_volatile(&mut slot.value.slot_tail, slot_tail(check));
                core::ptr::write_volatile(&mut slot.key, *key);
                claim_flow(&mut slot.value, packet, service, origin, bytes, now);
                core::ptr::write_volatile(&mut slot.check, check);
            }
            totals.flow_inserts += 1;
            if !empty {
                totals.flow_recycles += 1;
            }
            return;
        }
    }

    // Taken by another flow: the LRU table.
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the value of an LRU per-CPU hash belongs to this CPU.
        update_flow(unsafe { &mut *flow }, packet, service, origin, bytes, now);
        return;
    }
    let mut flow: FlowValue = Zeroable::zeroed();
    update_flow(&mut flow, packet, service, origin, bytes, now);
    match FLOWS.insert(key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => totals.flow_inserts += 1,
        // Another CPU created the key between our lookup and insert.
        Err(_) => match FLOWS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(existing) => update_flow(
                unsafe { &mut *existing },
                packet,
                service,
                origin,
                bytes,
                now,
            ),
            None => totals.flow_insert_failures += 1,
        },
    }
}

/// The flow key, unless a benchmark measures new flows
/// (`classifier_common::GLOBAL_NEW_FLOW_EVERY_PACKET`): then one no earlier
/// packet on this CPU had, since every packet counted in a flow adds one
/// to this CPU's inserts or failed inserts unless it found its flow.
#[inline(always)]
fn benchmarked(key: FlowKey, totals: &Totals) -> FlowKey {
    if load_time(&NEW_FLOW_EVERY_PACKET) == 0 {
        return key;
    }
    let mut words: [u64; 5] = bytemuck::cast(key);
    words[2] ^= totals.flow_inserts + totals.flow_insert_failures + 1;
    bytemuck::cast(words)
}

/// Whether a flow last seen at `last_seen` has had its final counts read
/// by a drain (`classifier_common::MAP_FLOW_CACHE_DRAINED`; never while
/// nothing was published).
#[inline(always)]
fn drained_before(last_seen: u64) -> bool {
    FLOW_CACHE_DRAINED
        .get(0)
        .is_some_and(|drained| last_seen < *drained)
}

/// The time flows are stamped with: the kernel's tick counter (jiffies,
/// which the verifier turns into a load; a clock read is a helper call,
/// about 15 ns a matched packet). Userspace converts ticks to Unix time
/// (`classifier_user::flow_clock`). A capture replayed by `classifier pcap`
/// stamps flows with the frame's own Unix time in ns instead (a load-time
/// constant: the branch not taken is removed).
#[inline(always)]
fn flow_time() -> u64 {
    if load_time(&CAPTURE_CLOCK_ON) != 0 {
        CAPTURE_CLOCK.get(CAPTURE_CLOCK_TIME).copied().unwrap_or(0)
    } else {
        // SAFETY: bpf_jiffies64 has no preconditions.
        unsafe { bpf_jiffies64() }
    }
}

/// The time in ns, for rate budgets and captured packets (the few packets
/// that need one): coarse (tick-resolution) CLOCK_MONOTONIC, or the
/// capture's time on a replay.
#[inline(always)]
pub fn clock_ns() -> u64 {
    if load_time(&CAPTURE_CLOCK_ON) != 0 {
        CAPTURE_CLOCK.get(CAPTURE_CLOCK_TIME).copied().unwrap_or(0)
    } else {
        // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

/// A new flow's first packet, written into a value with volatile writes.
#[inline(always)]
unsafe fn claim_flow<A>(
    flow: &mut FlowValue,
    packet: &Packet<A>,
    service: u32,
    origin: u8,
    bytes: u64,
    now: u64,
) {
    use core::ptr::write_volatile as put;
    // SAFETY: the caller's exclusively borrowed value.
    unsafe {
        put(&mut flow.packets, 1);
        put(&mut flow.bytes, bytes);
        put(&mut flow.ip_bytes, u64::from(packet.ip_len));
        put(&mut flow.first_seen_ns, now);
        put(&mut flow.last_seen_ns, now);
        put(&mut flow.service, service as u16);
        put(&mut flow.tcp_flags, packet.tcp_flags);
        put(&mut flow.origin, origin);
    }
}

#[inline(always)]
fn update_flow<A>(
    flow: &mut FlowValue,
    packet: &Packet<A>,
    service: u32,
    origin: u8,
    bytes: u64,
    now: u64,
) {
    if flow.packets == 0 {
        flow.first_seen_ns = now;
    }
    flow.packets += 1;
    flow.bytes += bytes;
    flow.ip_bytes += u64::from(packet.ip_len);
    flow.last_seen_ns = now;
    flow.service = service as u16;
    flow.origin = origin;
    flow.tcp_flags |= packet.tcp_flags;
}
