//! Counting: the per-CPU totals every packet touches, per-service counters
//! and the flow table for matched packets. Userspace drains all three.
//!
//! Totals and per-service counters never depend on the flow table, so they
//! stay exact when it is full.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, programs::XdpContext};
use bytemuck::Zeroable;
use classifier_common::{FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, Totals};

use crate::{
    FLOWS, SERVICES, TOTALS,
    classify::{Watched, classify},
    parse::{Packet, Parsed, parse},
};

#[inline(always)]
pub fn packet(ctx: &XdpContext) {
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot belongs to this CPU while the program runs.
    let totals = unsafe { &mut *totals };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    totals.packets += 1;
    totals.bytes += bytes;

    match parse(ctx) {
        Ok(Parsed::NotIp) => totals.other += 1,
        Ok(Parsed::Ip(packet)) => {
            count_family(totals, packet.family);
            if let Some(watched) = classify(&packet) {
                totals.watched += 1;
                if let Some(service) = watched.service {
                    totals.matched += 1;
                    count_match(totals, &packet, &watched, service, bytes);
                }
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

#[inline(always)]
fn count_family(totals: &mut Totals, family: u8) {
    match family {
        FAMILY_V4 => totals.ipv4 += 1,
        FAMILY_V6 => totals.ipv6 += 1,
        _ => totals.other += 1,
    }
}

#[inline(always)]
fn count_match(totals: &mut Totals, packet: &Packet, watched: &Watched, service: u32, bytes: u64) {
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

    let mut key: FlowKey = Zeroable::zeroed();
    key.watched = watched.watched;
    key.endpoint = watched.endpoint;
    key.port = watched.port;
    key.family = packet.family;
    key.protocol = packet.protocol;
    key.direction = watched.direction;

    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the value of an LRU per-CPU hash belongs to this CPU.
        update_flow(unsafe { &mut *flow }, packet, service, bytes, now);
        return;
    }
    let mut flow: FlowValue = Zeroable::zeroed();
    update_flow(&mut flow, packet, service, bytes, now);
    match FLOWS.insert(key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => totals.flow_inserts += 1,
        // Another CPU created the key between our lookup and insert.
        Err(_) => match FLOWS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(existing) => update_flow(unsafe { &mut *existing }, packet, service, bytes, now),
            None => totals.flow_insert_failures += 1,
        },
    }
}

#[inline(always)]
fn update_flow(flow: &mut FlowValue, packet: &Packet, service: u32, bytes: u64, now: u64) {
    if flow.packets == 0 {
        flow.first_seen_ns = now;
    }
    flow.packets += 1;
    flow.bytes += bytes;
    flow.last_seen_ns = now;
    flow.service = service as u16;
    flow.tcp_flags |= packet.tcp_flags;
}
