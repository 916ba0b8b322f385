//! The contract between the XDP program and userspace: map names, map key and
//! value layouts, and the numeric constants both sides agree on. Nothing else.
//!
//! Addresses are always `[u8; 16]` in network byte order; IPv4 addresses are
//! stored IPv4-mapped (`::ffff:a.b.c.d`) so one key shape serves both families.
//! Ports are `u16` in host byte order.
#![no_std]

use core::mem::size_of;

use bytemuck::{Pod, Zeroable};

// ---- map names (the static's identifier in the eBPF crate) ---------------

/// Per-CPU array, one [`Totals`] entry.
pub const MAP_TOTALS: &str = "TOTALS";
/// Per-CPU array of [`ServiceCounters`], indexed by service id.
pub const MAP_SERVICES: &str = "SERVICES";
/// LRU per-CPU hash of [`FlowKey`] to [`FlowValue`].
pub const MAP_FLOWS: &str = "FLOWS";
/// Array, one [`WatchedHint`] per family (index [`HINT_V4`], [`HINT_V6`]).
pub const MAP_WATCHED_HINT: &str = "WATCHED_HINT";
/// LPM trie of IPv4 watched prefixes (`u32` value, always 1).
pub const MAP_WATCHED_V4: &str = "WATCHED_V4";
/// LPM trie of IPv6 watched prefixes (`u32` value, always 1).
pub const MAP_WATCHED_V6: &str = "WATCHED_V6";
/// LPM trie of IPv4 endpoint prefixes to [`EndpointValue`].
pub const MAP_ENDPOINTS_V4: &str = "ENDPOINTS_V4";
/// LPM trie of IPv6 endpoint prefixes to [`EndpointValue`].
pub const MAP_ENDPOINTS_V6: &str = "ENDPOINTS_V6";

/// Every map the program declares, for checks that the object and the
/// loader agree.
pub const ALL_MAPS: [&str; 8] = [
    MAP_TOTALS,
    MAP_SERVICES,
    MAP_FLOWS,
    MAP_WATCHED_HINT,
    MAP_WATCHED_V4,
    MAP_WATCHED_V6,
    MAP_ENDPOINTS_V4,
    MAP_ENDPOINTS_V6,
];

/// The XDP program's name in the object.
pub const PROGRAM_NAME: &str = "classifier";

// ---- numeric constants -----------------------------------------------------

/// Flow direction: watched address is the source, endpoint the destination.
pub const DIR_OUTBOUND: u8 = 0;
/// Flow direction: endpoint is the source, watched address the destination.
pub const DIR_INBOUND: u8 = 1;
pub const DIRECTIONS: usize = 2;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Service ids index [`MAP_SERVICES`]; id 0 is never assigned.
pub const MAX_SERVICES: u32 = 1024;

/// Most VLAN tags (802.1Q / 802.1ad) parsed before a frame counts as
/// [`MALFORMED_VLAN_TOO_DEEP`].
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers walked before a packet counts as
/// [`MALFORMED_IPV6_EXT_TOO_DEEP`].
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

// Malformed reasons: indices into `Totals::malformed`.
pub const MALFORMED_ETHERNET_TRUNCATED: usize = 0;
pub const MALFORMED_VLAN_TRUNCATED: usize = 1;
pub const MALFORMED_VLAN_TOO_DEEP: usize = 2;
pub const MALFORMED_IPV4_TRUNCATED: usize = 3;
pub const MALFORMED_IPV4_BAD_HEADER: usize = 4;
pub const MALFORMED_IPV6_TRUNCATED: usize = 5;
pub const MALFORMED_IPV6_BAD_HEADER: usize = 6;
pub const MALFORMED_IPV6_EXT_TRUNCATED: usize = 7;
pub const MALFORMED_IPV6_EXT_TOO_DEEP: usize = 8;
pub const MALFORMED_L4_TRUNCATED: usize = 9;
/// Number of reasons in use; `Totals::malformed` has room for more.
pub const MALFORMED_REASONS: usize = 10;
pub const MALFORMED_SLOTS: usize = 16;

/// Names of the malformed reasons, in index order, as reports show them.
pub const MALFORMED_REASON_NAMES: [&str; MALFORMED_REASONS] = [
    "ethernet_truncated",
    "vlan_truncated",
    "vlan_too_deep",
    "ipv4_truncated",
    "ipv4_bad_header",
    "ipv6_truncated",
    "ipv6_bad_header",
    "ipv6_ext_truncated",
    "ipv6_ext_too_deep",
    "l4_truncated",
];

/// Index of the IPv4 hint in [`MAP_WATCHED_HINT`].
pub const HINT_V4: u32 = 0;
/// Index of the IPv6 hint in [`MAP_WATCHED_HINT`].
pub const HINT_V6: u32 = 1;
pub const HINT_BITS: usize = 65_536;
pub const HINT_WORDS: usize = HINT_BITS / 64;

// ---- map values and keys -----------------------------------------------------

/// Counters every packet touches. Per CPU; userspace sums them.
///
/// Every packet counts in exactly one of `ipv4`, `ipv6` and `other` (by its
/// EtherType after VLAN tags; frames too short to have one count as `other`).
/// `malformed` counts by reason, orthogonally. `watched` counts well-formed
/// packets with a watched source or destination, `matched` those of them whose
/// other end is a known endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub other: u64,
    pub watched: u64,
    pub matched: u64,
    /// Flow-table keys created by this CPU.
    pub flow_inserts: u64,
    /// Flow-table inserts the kernel refused (the packet still counts in
    /// the totals and per-service counters).
    pub flow_insert_failures: u64,
    pub malformed: [u64; MALFORMED_SLOTS],
}
const _: () = assert!(size_of::<Totals>() == 9 * 8 + MALFORMED_SLOTS * 8);

/// Per-service counters, indexed by direction ([`DIR_OUTBOUND`], [`DIR_INBOUND`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ServiceCounters {
    pub packets: [u64; DIRECTIONS],
    pub bytes: [u64; DIRECTIONS],
}
const _: () = assert!(size_of::<ServiceCounters>() == 32);

/// Flow-table key: (watched address, endpoint address, protocol, endpoint
/// port, direction).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub watched: [u8; 16],
    pub endpoint: [u8; 16],
    /// Endpoint's port in host byte order; 0 for protocols without ports and
    /// for non-first fragments.
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Flow-table value. Times are `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub service: u16,
    /// OR of the TCP flags seen (FIN=0x01 … CWR=0x80).
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<FlowValue>() == 40);

/// Value of the endpoint tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EndpointValue {
    pub service: u32,
}
const _: () = assert!(size_of::<EndpointValue>() == 4);

/// A 65,536-bit prefilter over watched prefixes: if an address's bit is clear
/// it is not watched, and no trie lookup is needed. Set bits are confirmed in
/// the watched trie. The bit of an address is [`hint_index_v4`] or
/// [`hint_index_v6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WatchedHint {
    pub words: [u64; HINT_WORDS],
}
const _: () = assert!(size_of::<WatchedHint>() == 8192);

/// Hint bit of an IPv4 address: its /16.
#[inline(always)]
pub const fn hint_index_v4(addr: [u8; 4]) -> usize {
    ((addr[0] as usize) << 8) | addr[1] as usize
}

/// Hint bit of an IPv6 address: its first two 16-bit groups folded together.
#[inline(always)]
pub const fn hint_index_v6(addr: &[u8; 16]) -> usize {
    let hi = ((addr[0] as usize) << 8) | addr[1] as usize;
    let lo = ((addr[2] as usize) << 8) | addr[3] as usize;
    hi ^ lo
}

#[cfg(feature = "user")]
mod user {
    use super::{EndpointValue, FlowKey, FlowValue, ServiceCounters, Totals, WatchedHint};

    // SAFETY: each type is `#[repr(C)]`, `Pod` (no padding, any bit pattern
    // valid), as bytemuck's derive has checked.
    unsafe impl aya::Pod for Totals {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for WatchedHint {}
}
