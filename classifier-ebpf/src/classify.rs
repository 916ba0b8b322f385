//! Classification: is either address watched, and is the other end a known
//! endpoint of which service. The watched check runs first and is one byte
//! test per address for almost all traffic; only addresses whose hint entry
//! is set reach a lookup.
//!
//! IPv4: the hint entry and its block of /24s answer "watched?" (the IPv4
//! table only for /24s that hold longer watched prefixes); the IPv4 table
//! (layout in classifier-common) answers "which service?" for the other
//! end. IPv6: the hint, then LPM tries.

use aya_ebpf::maps::lpm_trie::Key;
use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, V4_ENTRY_INDEX_MASK, V4_ENTRY_KIND_SHIFT, V4_ENTRY_LEAF,
    V4_ENTRY_NODE, V4_ENTRY_VALUE, V4_VALUE_SERVICE_MASK, V4_VALUE_WATCHED, V4Leaf, V4Node, V4Runs,
    WATCHED_24_ALL, WATCHED_24_SOME, hint_index_v6, rank_upto,
};

use crate::{
    ENDPOINTS_V6, V4_LEAF_COUNT, V4_LEAVES_AT, V4_NODE_COUNT, V4_RUN_COUNT, V4_RUNS_AT, WATCHED_V6,
    load_time,
    parse::{Packet, Plain},
    v4_lower, v4_top, watched_hints,
};

/// A packet with a watched address, seen from that address's side.
pub struct Watched<A> {
    pub direction: u8,
    pub watched: A,
    pub endpoint: A,
    /// The endpoint's port.
    pub port: u16,
    /// The endpoint's service id; 0 when the other end is no known endpoint.
    pub service: u32,
}

/// The IPv4 table's value for `addr`: [`V4_VALUE_WATCHED`] | service id.
#[inline(always)]
fn v4_value(addr: u32) -> u16 {
    let top = addr >> 14;
    let Some(node) = v4_top().nodes.get((top >> 6) as usize) else {
        return 0;
    };
    let Some(&entry) = node.entries.get((top & 63) as usize) else {
        return 0;
    };
    if entry >> V4_ENTRY_KIND_SHIFT == V4_ENTRY_VALUE {
        return entry as u16;
    }
    let lower = v4_lower();
    let mut entry = entry;
    if entry >> V4_ENTRY_KIND_SHIFT == V4_ENTRY_NODE {
        let Some(node) = lower_item::<V4Node>(
            lower,
            entry & V4_ENTRY_INDEX_MASK,
            0,
            load_time(&V4_NODE_COUNT),
        ) else {
            return 0;
        };
        let Some(&next) = node.entries.get(((addr >> 8) & 63) as usize) else {
            return 0;
        };
        entry = next;
    }
    if entry >> V4_ENTRY_KIND_SHIFT != V4_ENTRY_LEAF {
        return entry as u16;
    }
    let Some(leaf) = lower_item::<V4Leaf>(
        lower,
        entry & V4_ENTRY_INDEX_MASK,
        load_time(&V4_LEAVES_AT),
        load_time(&V4_LEAF_COUNT),
    ) else {
        return 0;
    };
    let offset = addr & 0xff;
    let word = (offset >> 6) as usize;
    let (Some(&active), Some(&starts)) = (leaf.active.get(word), leaf.starts.get(word)) else {
        return 0;
    };
    let run = active + rank_upto(starts, offset & 63);
    match lower_item::<V4Runs>(
        lower,
        run >> 2,
        load_time(&V4_RUNS_AT),
        load_time(&V4_RUN_COUNT),
    ) {
        Some(runs) => runs.values.get((run & 3) as usize).copied().unwrap_or(0),
        None => 0,
    }
}

/// Element `index` of the array of `T`s that starts `at` bytes into the
/// lower levels' global and holds `count` elements (both load-time
/// globals); `None` past its end. The check against the count is also what
/// shows the verifier that the read stays inside the global.
#[inline(always)]
fn lower_item<T>(lower: *const u8, index: u32, at: u32, count: u32) -> Option<&'static T> {
    if index >= count {
        return None;
    }
    let offset = at as usize + index as usize * size_of::<T>();
    // SAFETY: the loader sized the global to hold `count` `T`s from `at`
    // (`classifier_common::MAP_V4_LOWER`), and only userspace writes it.
    Some(unsafe { &*lower.wrapping_add(offset).cast::<T>() })
}

/// Whether either address of a fast-path frame has its hint entry set: the
/// fast path's only question.
#[inline(always)]
pub fn either_hinted(plain: &Plain) -> bool {
    let hints = watched_hints();
    let hint = if plain.family == FAMILY_V4 {
        &hints.v4
    } else {
        &hints.v6
    };
    hint.is_set(plain.src_hint) || hint.is_set(plain.dst_hint)
}

/// `None` for IPv4 traffic without a watched address (the common case).
#[inline(always)]
pub fn classify_v4(packet: &Packet<u32>) -> Option<Watched<u32>> {
    let src_watched = is_watched_v4(packet.src);
    let dst_watched = is_watched_v4(packet.dst);
    if !src_watched && !dst_watched {
        return None;
    }
    let dst_service = if src_watched {
        endpoint_service_v4(packet.dst)
    } else {
        0
    };
    let src_service = if dst_service == 0 && dst_watched {
        endpoint_service_v4(packet.src)
    } else {
        0
    };
    Some(orient(
        packet,
        src_watched,
        dst_service,
        dst_watched,
        src_service,
    ))
}

/// Whether `addr` (host order) is watched: its prefilter entry, then the
/// entry's block of /24s; the IPv4 table only where those do not decide
/// (`classifier_common::WatchedHints`).
#[inline(always)]
fn is_watched_v4(addr: u32) -> bool {
    match watched_hints().v4_slash24(addr) {
        WATCHED_24_ALL => true,
        WATCHED_24_SOME => v4_value(addr) & V4_VALUE_WATCHED != 0,
        _ => false,
    }
}

#[inline(always)]
fn endpoint_service_v4(addr: u32) -> u32 {
    u32::from(v4_value(addr) & V4_VALUE_SERVICE_MASK)
}

/// `None` for IPv6 traffic without a watched address.
#[inline(always)]
pub fn classify_v6(packet: &Packet<[u8; 16]>) -> Option<Watched<[u8; 16]>> {
    let src_watched = is_watched_v6(&packet.src);
    let dst_watched = is_watched_v6(&packet.dst);
    if !src_watched && !dst_watched {
        return None;
    }
    let dst_service = if src_watched {
        endpoint_service_v6(&packet.dst)
    } else {
        0
    };
    let src_service = if dst_service == 0 && dst_watched {
        endpoint_service_v6(&packet.src)
    } else {
        0
    };
    Some(orient(
        packet,
        src_watched,
        dst_service,
        dst_watched,
        src_service,
    ))
}

#[inline(always)]
fn is_watched_v6(addr: &[u8; 16]) -> bool {
    watched_hints().v6.is_set(hint_index_v6(addr)) && WATCHED_V6.get(Key::new(128, *addr)).is_some()
}

#[inline(always)]
fn endpoint_service_v6(addr: &[u8; 16]) -> u32 {
    ENDPOINTS_V6
        .get(Key::new(128, *addr))
        .map_or(0, |value| value.service)
}

/// Outbound when the source is watched and the destination a known
/// endpoint; else inbound when the destination is watched and the source an
/// endpoint; else unmatched, seen from the watched side (the source's when
/// both are watched, but the receiver's for a DNS answer: a resolver inside
/// the watched range answering the host that asked). Services count only
/// towards a watched side.
#[inline(always)]
fn orient<A: Copy>(
    packet: &Packet<A>,
    src_watched: bool,
    dst_service: u32,
    dst_watched: bool,
    src_service: u32,
) -> Watched<A> {
    let outbound_service = if src_watched { dst_service } else { 0 };
    let inbound_service = if dst_watched { src_service } else { 0 };
    let answer_to_watched = dst_watched && packet.src_port == crate::learn::PORT_DNS;
    let outbound =
        outbound_service != 0 || (src_watched && inbound_service == 0 && !answer_to_watched);
    if outbound {
        Watched {
            direction: DIR_OUTBOUND,
            watched: packet.src,
            endpoint: packet.dst,
            port: packet.dst_port,
            service: outbound_service,
        }
    } else {
        Watched {
            direction: DIR_INBOUND,
            watched: packet.dst,
            endpoint: packet.src,
            port: packet.src_port,
            service: inbound_service,
        }
    }
}
