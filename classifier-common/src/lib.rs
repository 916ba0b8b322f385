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
/// LRU per-CPU hash of [`FlowKey`] to [`FlowValue`]: the flows that found
/// their [`MAP_FLOW_CACHE`] slot taken.
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU array of [`FlowBucket`]s ([`FlowCacheShape`]): a direct-mapped
/// flow cache, slot `flow_slot(flow_check(key))`. Buckets rather than one
/// slot per entry, so that a new flow's first packet reads its slot and not
/// also the slot's pointer in a table of one per slot. A slot is claimed by
/// the first flow that hashes to it and keeps it until a drain has read its
/// final counts: a new flow may then take it over (recycle it) once the
/// flow in it has been idle since before the tick in
/// [`MAP_FLOW_CACHE_DRAINED`].
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// Array, one `u64`: a flow-clock stamp (ticks) published by the daemon
/// after each complete drain, or with snapshots once a checkpoint holding
/// the drain is on disk (the tick the drain started at, less
/// [`RECYCLE_MARGIN_TICKS`]). A flow-cache slot whose flow was last seen
/// before it holds counts the daemon has already read, so the program may
/// give the slot to a new flow. 0 (the default, and always on a replay)
/// recycles nothing.
pub const MAP_FLOW_CACHE_DRAINED: &str = "FLOW_CACHE_DRAINED";
/// Ticks the daemon holds back from the tick its drain started at before
/// publishing it in [`MAP_FLOW_CACHE_DRAINED`]: a CPU that read the tick
/// counter just before the drain began may still be writing the flow's
/// slot (a virtual CPU can be paused between the two).
pub const RECYCLE_MARGIN_TICKS: u64 = 2;
/// The program's `.bss.watched` section, one [`WatchedHints`]: a global
/// the program reads in place (an address built in at load time, no map
/// lookup), which the loader fills before the program is attached.
pub const MAP_WATCHED_HINT: &str = ".bss.watched";
/// The program's `.bss.v4top` section, one [`V4Top`]: the IPv4 table's
/// first level as a global the program reads in place (no map lookup),
/// which the loader fills before the program is attached.
pub const MAP_V4_TOP: &str = ".bss.v4top";
/// The program's `.bss.v4lower` section: the IPv4 table's levels below the
/// first, one after the other: the second-level [`V4Node`]s, the /24
/// [`V4Leaf`]s and the [`V4Runs`] ([`V4_LOWER_GLOBALS`] say how many of
/// each and where they start). One global, so the program walks it with
/// plain loads from an address built in at load time (no map lookup); an
/// array of each kind cost a lookup per level, each storing its index on
/// the stack and loading it back. The object declares the section
/// [`V4_LOWER_DECLARED_SIZE`] bytes long; the loader sets the table's size
/// in its copy of the object before loading it, and fills it before the
/// program is attached.
pub const MAP_V4_LOWER: &str = ".bss.v4lower";
/// The size of [`MAP_V4_LOWER`] in the object file.
pub const V4_LOWER_DECLARED_SIZE: usize = 8;
/// Load-time globals of the program describing [`MAP_V4_LOWER`]'s value, in
/// this order: nodes, leaves, where the leaves start (bytes), runs
/// elements, where they start. The program checks every index against
/// them, which is also how the verifier knows each read is inside the value.
pub const V4_LOWER_GLOBALS: [&str; 5] = [
    "V4_NODE_COUNT",
    "V4_LEAF_COUNT",
    "V4_LEAVES_AT",
    "V4_RUN_COUNT",
    "V4_RUNS_AT",
];
/// LPM trie of IPv6 watched prefixes (`u32` value, always 1).
pub const MAP_WATCHED_V6: &str = "WATCHED_V6";
/// LPM trie of IPv6 endpoint prefixes to [`EndpointValue`].
pub const MAP_ENDPOINTS_V6: &str = "ENDPOINTS_V6";
/// Array (mmapable) of [`CAPTURE_CLOCK_ENTRIES`] `u64`s, read when the
/// program was loaded with [`GLOBAL_CAPTURE_CLOCK`] set, written by
/// `classifier pcap` before each frame: the frame's time in Unix ns
/// ([`CAPTURE_CLOCK_TIME`]), and its length ([`CAPTURE_CLOCK_FRAME_LEN`]),
/// which the program counts instead of what the test run hands it (a frame
/// longer than BPF_PROG_TEST_RUN passes whole is run cut short).
pub const MAP_CAPTURE_CLOCK: &str = "CAPTURE_CLOCK";
pub const CAPTURE_CLOCK_ENTRIES: u32 = 2;
pub const CAPTURE_CLOCK_TIME: u32 = 0;
pub const CAPTURE_CLOCK_FRAME_LEN: u32 = 1;

/// LRU hash (shared by all CPUs) of [`FlowKey`] with direction 0 to a
/// service id (`u32`): the verdicts flows of watched addresses whose other
/// end is in no feed earned from their packets (a VPN protocol). Consulted
/// only for such flows.
pub const MAP_VERDICTS: &str = "VERDICTS";
/// Entries of [`MAP_VERDICTS`].
pub const VERDICT_CAPACITY: u32 = 65_536;
/// Ring buffer of [`LearnRecord`]s: packets of watched hosts that can teach
/// userspace an endpoint (DNS responses).
pub const MAP_LEARN_EVENTS: &str = "LEARN_EVENTS";
/// Bytes of [`MAP_LEARN_EVENTS`] (a power of two of pages): about 490
/// records of 2,104 bytes (8 of ring header).
pub const LEARN_RING_BYTES: u32 = 1 << 20;
/// Hash of endpoint address (16 bytes, IPv4 mapped) to service id: the
/// endpoints userspace learned, consulted when no feed names the other end.
pub const MAP_LEARNED: &str = "LEARNED";
/// Entries of [`MAP_LEARNED`].
pub const LEARNED_CAPACITY: u32 = 65_536;
/// One [`EndpointHints`] (mmapable array of one value): which endpoints
/// may have a learned entry ([`ENDPOINT_HINT_LEARNED`], kept by userspace)
/// and which may have flows with a verdict ([`ENDPOINT_HINT_VERDICTS`], set
/// by whoever stores a verdict, never cleared). A packet whose endpoint's
/// byte is 0 skips that hash lookup.
pub const MAP_ENDPOINT_HINTS: &str = "ENDPOINT_HINTS";
/// [`EndpointHints`] index of the learned endpoints' hint.
pub const ENDPOINT_HINT_LEARNED: u32 = 0;
/// [`EndpointHints`] index of the verdicts' hint.
pub const ENDPOINT_HINT_VERDICTS: u32 = 1;
/// Per-CPU array of [`TcpProbeSlot`]s: the payload segments handed over so
/// far per TCP flow and direction, in the slot `flow_slot` picks for the
/// flow key's check (direction 0). A flow whose slot another flow took
/// since starts again from its next segment.
pub const MAP_TCP_PROBES: &str = "TCP_PROBES";
/// Slots of [`MAP_TCP_PROBES`] on each CPU (a power of two).
pub const TCP_PROBE_SLOTS: u32 = 8_192;

/// What [`MAP_TCP_PROBES`] holds for one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TcpProbeSlot {
    /// [`flow_check`] of the flow's key with direction 0; 0 for a slot no
    /// flow has used.
    pub check: u64,
    /// Segments handed over, by direction (`DIR_*`).
    pub segments: [u16; DIRECTIONS],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<TcpProbeSlot>() == 16);
/// Array (shared by all CPUs), one [`RateBudget`]: the records handed
/// over in the current second, against [`GLOBAL_LEARN_RATE`].
pub const MAP_LEARN_BUDGET: &str = "LEARN_BUDGET";
/// Ring buffer of [`CaptureRecord`]s: the first bytes of matched packets,
/// for evidence captures (`--capture-dir`).
pub const MAP_CAPTURE_EVENTS: &str = "CAPTURE_EVENTS";
/// Bytes of [`MAP_CAPTURE_EVENTS`]: about 14,900 records.
pub const CAPTURE_RING_BYTES: u32 = 1 << 22;
/// Array, one [`CaptureConfig`]: what to capture (all zero: nothing).
/// Pinned, so an adopting daemon sets its own.
pub const MAP_CAPTURE_CONFIG: &str = "CAPTURE_CONFIG";
/// Array (shared by all CPUs), one [`RateBudget`]: captured packets in the
/// current second, against [`CaptureConfig::rate`].
pub const MAP_CAPTURE_BUDGET: &str = "CAPTURE_BUDGET";
/// LRU hash (shared by all CPUs) of [`FlowKey`] to the packets of the flow
/// captured so far, against [`CaptureConfig::per_flow`].
pub const MAP_CAPTURE_FLOWS: &str = "CAPTURE_FLOWS";
/// Entries of [`MAP_CAPTURE_FLOWS`].
pub const CAPTURE_FLOW_CAPACITY: u32 = 65_536;

/// Every map the program declares, for checks that the object and the
/// loader agree.
pub const ALL_MAPS: [&str; 21] = [
    MAP_TOTALS,
    MAP_SERVICES,
    MAP_FLOWS,
    MAP_FLOW_CACHE,
    MAP_FLOW_CACHE_DRAINED,
    MAP_WATCHED_HINT,
    MAP_V4_TOP,
    MAP_V4_LOWER,
    MAP_WATCHED_V6,
    MAP_ENDPOINTS_V6,
    MAP_CAPTURE_CLOCK,
    MAP_VERDICTS,
    MAP_LEARN_EVENTS,
    MAP_LEARNED,
    MAP_TCP_PROBES,
    MAP_LEARN_BUDGET,
    MAP_CAPTURE_EVENTS,
    MAP_CAPTURE_CONFIG,
    MAP_CAPTURE_BUDGET,
    MAP_CAPTURE_FLOWS,
    MAP_ENDPOINT_HINTS,
];

/// `BPF_F_MMAPABLE`: the IPv4 table's arrays are filled through a mapping.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The XDP program's name in the object.
pub const PROGRAM_NAME: &str = "classifier";

/// Load-time constants of the program (globals in `.rodata`, set by the
/// loader): the flow cache's slot mask (slots − 1, slots a power of two)…
pub const GLOBAL_FLOW_CACHE_MASK: &str = "FLOW_CACHE_MASK";
/// …and the verdict after counting: `XDP_PASS` for a sensor, `XDP_DROP`
/// only for benchmarks that measure the program without the stack behind it.
pub const GLOBAL_VERDICT: &str = "VERDICT";
/// …and the clock: 0 stamps flows with the kernel's monotonic clock (a
/// sensor); 1 with the time in [`MAP_CAPTURE_CLOCK`] (replaying a capture).
/// A load-time constant, so the verifier removes the branch not taken.
pub const GLOBAL_CAPTURE_CLOCK: &str = "CAPTURE_CLOCK_ON";
/// …and, for benchmarks only, 1 to count every matched packet as the first
/// of a new flow: its flow key is varied by this CPU's count of flow
/// inserts and failed inserts, so a frame repeated by BPF_PROG_TEST_RUN
/// measures a new flow with the program warm. 0 (a sensor) lets the
/// verifier remove the branch.
pub const GLOBAL_NEW_FLOW_EVERY_PACKET: &str = "NEW_FLOW_EVERY_PACKET";
/// …and the most packets handed to userspace to learn from per second
/// (of the flows' clock), all CPUs together; more are counted in
/// `Totals::learn_throttled` and not handed over.
pub const GLOBAL_LEARN_RATE: &str = "LEARN_RATE";
/// The default of [`GLOBAL_LEARN_RATE`]: about 4 MiB/s of payload.
pub const DEFAULT_LEARN_RATE: u32 = 2_000;

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

// ---- protocol services ---------------------------------------------------

/// Services recognised by their packets rather than by a list (VPN
/// protocols, on watched traffic whose other end is in no feed). They hold
/// the first service ids, in this order, in every service table; feed
/// services follow.
pub const PROTOCOL_SERVICES: [&str; 6] = ["wireguard", "openvpn", "ipsec", "pptp", "gre", "l2tp"];
pub const SERVICE_WIREGUARD: u32 = 1;
pub const SERVICE_OPENVPN: u32 = 2;
pub const SERVICE_IPSEC: u32 = 3;
pub const SERVICE_PPTP: u32 = 4;
pub const SERVICE_GRE: u32 = 5;
pub const SERVICE_L2TP: u32 = 6;

// ---- learning ------------------------------------------------------------

/// Bytes of a packet's payload a [`LearnRecord`] holds at most.
pub const LEARN_BYTES: usize = 2048;
/// [`LearnRecord::kind`]: a DNS response to a watched host.
pub const LEARN_DNS: u8 = 1;
/// [`LearnRecord::kind`]: one of the first payload segments of a TCP flow
/// of a watched host whose other end no feed names (a TLS ClientHello, a
/// server's certificate).
pub const LEARN_TCP: u8 = 2;
/// Payload segments per direction of such a flow handed over at most.
pub const LEARN_TCP_SEGMENTS: u32 = 6;

/// One packet handed to userspace to learn from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LearnRecord {
    /// [`LEARN_DNS`].
    pub kind: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// `DIR_OUTBOUND` (from the watched host) or `DIR_INBOUND`.
    pub direction: u8,
    /// The other end's port.
    pub port: u16,
    pub _pad: [u8; 2],
    /// Bytes of `payload` that hold the packet's transport payload.
    pub len: u32,
    /// The watched host and the other end (16 bytes, IPv4 mapped).
    pub watched: [u8; 16],
    pub server: [u8; 16],
    pub _pad2: [u8; 4],
    pub payload: [u8; LEARN_BYTES],
}
const _: () = assert!(size_of::<LearnRecord>() == 48 + LEARN_BYTES);

/// Most bytes of a packet a [`CaptureRecord`] holds (a power of two).
pub const CAPTURE_MAX_BYTES: usize = 256;

/// What evidence captures take: the first `bytes` of each matched packet
/// (0: capture nothing), at most `rate` packets a second in all, and the
/// first `per_flow` packets of each flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CaptureConfig {
    pub bytes: u32,
    pub rate: u32,
    pub per_flow: u32,
    pub _pad: u32,
}

/// One captured packet's first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CaptureRecord {
    /// The flows' clock (CLOCK_MONOTONIC, coarse), ns.
    pub time_ns: u64,
    /// The frame's length on the wire (its bytes from the Ethernet header).
    pub frame_len: u32,
    /// Bytes of `data` that hold the frame's start.
    pub len: u32,
    pub service: u16,
    pub direction: u8,
    pub _pad: [u8; 5],
    pub data: [u8; CAPTURE_MAX_BYTES],
}
const _: () = assert!(size_of::<CaptureRecord>() == 24 + CAPTURE_MAX_BYTES);

/// The value of [`MAP_LEARN_BUDGET`] and [`MAP_CAPTURE_BUDGET`]: the
/// second (of the flows' clock) the count is for, and the records passed
/// on in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RateBudget {
    pub second: u64,
    pub used: u64,
}

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

// ---- the IPv4 table -----------------------------------------------------------
//
// One lookup answers both questions about an IPv4 address: is it watched, and
// which service's endpoint is it. A multibit trie with strides 18, 6 and 8:
// the top 18 bits pick an entry of the first level (`V4_TOP_NODES` nodes of
// `V4_NODE_WIDTH` entries), the next 6 an entry of a second-level node, the
// last 8 an address in a /24 leaf. An entry holds either the value for its
// whole block or the index of the node or leaf below. A leaf marks where runs
// of equal values start in a 256-bit bitmap; an address's value is the run
// its rank (set bits up to it) points at. Built in userspace, where a
// reference longest-prefix match checks it.

/// Entries per node (6 bits).
pub const V4_NODE_WIDTH: usize = 64;
/// First-level nodes: 18 bits = 12 bits of node, 6 of entry.
pub const V4_TOP_NODES: u32 = 1 << 12;
/// Entry kind, in the top two bits of an entry.
pub const V4_ENTRY_KIND_SHIFT: u32 = 30;
/// The low 16 bits are the block's [value](V4_VALUE_WATCHED).
pub const V4_ENTRY_VALUE: u32 = 0;
/// The low 30 bits index a second-level node (in [`MAP_V4_LOWER`]).
pub const V4_ENTRY_NODE: u32 = 1;
/// The low 30 bits index a leaf (in [`MAP_V4_LOWER`]).
pub const V4_ENTRY_LEAF: u32 = 2;
pub const V4_ENTRY_INDEX_MASK: u32 = (1 << V4_ENTRY_KIND_SHIFT) - 1;
/// A value's bit for "watched"; its low bits are the endpoint service id
/// (0: not an endpoint).
pub const V4_VALUE_WATCHED: u16 = 1 << 15;
pub const V4_VALUE_SERVICE_MASK: u16 = V4_VALUE_WATCHED - 1;
/// Run values per [`V4Runs`] element.
pub const V4_RUNS_PER_ELEMENT: usize = 4;

/// A node of the IPv4 table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct V4Node {
    pub entries: [u32; V4_NODE_WIDTH],
}
const _: () = assert!(size_of::<V4Node>() == 256);

/// The IPv4 table's first level ([`MAP_V4_TOP`]): entry `a >> 14` of an
/// address `a` (host order) is entry `(a >> 14) % 64` of node `a >> 20`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct V4Top {
    pub nodes: [V4Node; V4_TOP_NODES as usize],
}
const _: () = assert!(size_of::<V4Top>() == 1 << 20);

/// A /24 of the IPv4 table. Bit `i` of `starts` (word `i / 64`) is set when
/// a new run starts at address `i` (never at 0). The value of address `i` is
/// run number `active[i / 64]` plus the set bits of word `i / 64` up to and
/// including bit `i % 64`, where `active[w]` is the run in effect just
/// before word `w` (for `w = 0`: the leaf's first run).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct V4Leaf {
    pub starts: [u64; 4],
    pub active: [u32; 4],
}
const _: () = assert!(size_of::<V4Leaf>() == 48);

/// Run values, packed four to an element (8-byte array elements).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct V4Runs {
    pub values: [u16; V4_RUNS_PER_ELEMENT],
}
const _: () = assert!(size_of::<V4Runs>() == 8);

/// Set bits of `word` up to and including bit `bit`.
#[inline(always)]
pub const fn rank_upto(word: u64, bit: u32) -> u32 {
    let mask = (2u64 << (bit & 63)).wrapping_sub(1);
    popcount(word & mask)
}

/// Population count without a popcount instruction (BPF has none).
#[inline(always)]
pub const fn popcount(word: u64) -> u32 {
    let x = word - ((word >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// Entries of a [`WatchedHint`]: one per value of [`hint_index_v4`] and
/// [`hint_index_v6`].
pub const HINT_ENTRIES: usize = 65_536;

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
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Totals {
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
    /// Packets handed to userspace to learn from ([`LearnRecord`]s).
    pub learn_records: u64,
    /// Packets that would have been handed over but the ring buffer was
    /// full (or the copy failed).
    pub learn_drops: u64,
    /// Packets that would have been handed over but the second's budget
    /// ([`GLOBAL_LEARN_RATE`]) was spent.
    #[cfg_attr(feature = "user", serde(default))]
    pub learn_throttled: u64,
    /// Matched packets copied into [`MAP_CAPTURE_EVENTS`]…
    #[cfg_attr(feature = "user", serde(default))]
    pub capture_records: u64,
    /// …that did not fit (the ring buffer was full)…
    #[cfg_attr(feature = "user", serde(default))]
    pub capture_drops: u64,
    /// …and not copied: the second's budget was spent.
    #[cfg_attr(feature = "user", serde(default))]
    pub capture_throttled: u64,
    /// Flow-cache slots given to a new flow after a drain had read the
    /// counts of the idle flow in them (also counted in `flow_inserts`;
    /// unlike an eviction, the flow replaced was drained first).
    #[cfg_attr(feature = "user", serde(default))]
    pub flow_recycles: u64,
    pub malformed: [u64; MALFORMED_SLOTS],
}
const _: () = assert!(size_of::<Totals>() == 15 * 8 + MALFORMED_SLOTS * 8);

impl Totals {
    /// Every packet: each counts in exactly one family, so the kernel keeps
    /// no separate counter (one add fewer per packet).
    pub const fn packets(&self) -> u64 {
        self.ipv4 + self.ipv6 + self.other
    }
}

/// Per-service counters, indexed by direction ([`DIR_OUTBOUND`], [`DIR_INBOUND`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ServiceCounters {
    pub packets: [u64; DIRECTIONS],
    pub bytes: [u64; DIRECTIONS],
}
const _: () = assert!(size_of::<ServiceCounters>() == 32);

/// Flow-table key: (watched address, endpoint address, protocol, endpoint
/// port, direction). Aligned to 8 so it hashes and compares as five words.
#[repr(C, align(8))]
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

impl FlowKey {
    /// The key's last word: `port`, `family`, `protocol`, `direction` and
    /// the zero padding, laid out as the fields are. The program writes its
    /// keys as five whole words: fields stored one by one and then read as
    /// a word (to hash it) cannot be forwarded from the store buffer, and
    /// the read waits for the stores to reach the cache.
    #[inline(always)]
    pub const fn tail_word(port: u16, family: u8, protocol: u8, direction: u8) -> u64 {
        let [port_0, port_1] = port.to_ne_bytes();
        u64::from_ne_bytes([port_0, port_1, family, protocol, direction, 0, 0, 0])
    }
}

/// Flow-table value. Times are stamps of the flow clock: the kernel's tick
/// counter (jiffies) on a sensor, Unix ns on a replay (`classifier pcap`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FlowValue {
    pub packets: u64,
    /// Frame bytes (what reports count).
    pub bytes: u64,
    /// IP bytes: header and payload, by the IP header's own length (what
    /// IPFIX's octetDeltaCount counts).
    pub ip_bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub service: u16,
    /// OR of the TCP flags seen (FIN=0x01 … CWR=0x80).
    pub tcp_flags: u8,
    /// What named the service: [`ORIGIN_FEED`], [`ORIGIN_LEARNED`] or
    /// [`ORIGIN_PROTOCOL`].
    pub origin: u8,
    /// In a flow-cache slot, [`slot_tail`] of the slot's check, written
    /// before anything else when a flow claims the slot; 0 in the LRU
    /// table. See [`FlowSlot`].
    pub slot_tail: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 48);

/// [`FlowValue::origin`]: an endpoint feed listed the other end.
pub const ORIGIN_FEED: u8 = 0;
/// Learning named it: a learned endpoint (DNS, TLS) or a TLS name's verdict.
pub const ORIGIN_LEARNED: u8 = 1;
/// A VPN protocol's signature (the protocol services).
pub const ORIGIN_PROTOCOL: u8 = 2;

/// A flow-cache slot. Empty while `check` is 0. A flow claims it (empty,
/// or recycled: see [`MAP_FLOW_CACHE_DRAINED`]) by writing
/// `value.slot_tail` first, then `key` and the rest of `value`, then
/// `check` (= `flow_check(&key)`) last. A reader copies the slot from its
/// first byte to its last, so it trusts a slot only when `check` agrees
/// with `key` and with the tail: a copy that began before a claim and
/// caught any of its writes also caught the new tail, and one that began
/// after saw all of them. A slot it does not trust waits for the next
/// reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FlowSlot {
    pub check: u64,
    pub key: FlowKey,
    pub value: FlowValue,
}
const _: () = assert!(size_of::<FlowSlot>() == 96);

/// Slots in one value of [`MAP_FLOW_CACHE`].
pub const FLOW_BUCKET_SLOTS: u32 = 256;
/// One value of [`MAP_FLOW_CACHE`].
pub type FlowBucket = [FlowSlot; FLOW_BUCKET_SLOTS as usize];
// The kernel's largest per-CPU value (PCPU_MIN_UNIT_SIZE).
const _: () = assert!(size_of::<FlowBucket>() <= 32 * 1024);

/// How [`MAP_FLOW_CACHE`] holds a cache of a power of two of slots per
/// CPU: buckets of [`FLOW_BUCKET_SLOTS`] slots, or one bucket of all the
/// slots when there are fewer (the loader sets the value size, so slot
/// `i` is always slot `i % FLOW_BUCKET_SLOTS` of bucket
/// `i / FLOW_BUCKET_SLOTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCacheShape {
    pub buckets: u32,
    pub bucket_slots: u32,
}

impl FlowCacheShape {
    /// The shape of a cache of `slots` slots (a power of two, at least 1).
    pub const fn of(slots: u32) -> Self {
        let bucket_slots = if slots < FLOW_BUCKET_SLOTS {
            slots
        } else {
            FLOW_BUCKET_SLOTS
        };
        Self {
            buckets: slots / bucket_slots,
            bucket_slots,
        }
    }

    /// The shape of a loaded cache map, from its value size and entries;
    /// `None` when they are not a shape [`Self::of`] gives.
    pub fn of_map(value_size: u32, max_entries: u32) -> Option<Self> {
        let slot = size_of::<FlowSlot>() as u32;
        if !value_size.is_multiple_of(slot) {
            return None;
        }
        let slots = max_entries
            .checked_mul(value_size / slot)
            .filter(|slots| slots.is_power_of_two())?;
        let shape = Self::of(slots);
        (shape.value_size() == value_size && shape.buckets == max_entries).then_some(shape)
    }

    pub const fn slots(self) -> u32 {
        self.buckets * self.bucket_slots
    }

    /// The bytes of one value.
    pub const fn value_size(self) -> u32 {
        self.bucket_slots * size_of::<FlowSlot>() as u32
    }
}

/// A flow key's hash, never 0 (0 marks an empty [`FlowSlot`]). Every
/// matched packet computes it before it can find its slot, so it is built
/// for a short dependency chain: the five words are multiplied each by a
/// constant of their own (independent multiplies the CPU runs side by
/// side), XORed together, and the result mixed once (the high bits folded
/// down, so an IPv4 address's last octet, in a word's top byte, reaches
/// the slot index).
#[inline(always)]
pub fn flow_check(key: &FlowKey) -> u64 {
    const FACTORS: [u64; 5] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0xd6e8_feb8_6659_fd93,
        0xff51_afd7_ed55_8ccd,
    ];
    let words: [u64; 5] = bytemuck::cast(*key);
    let mut hash = words
        .iter()
        .zip(FACTORS)
        .fold(0, |hash, (word, factor)| hash ^ word.wrapping_mul(factor));
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 32;
    hash | 1
}

/// What a flow-cache slot's `value.slot_tail` holds for a slot claimed by
/// a key with this check: the check's high half (the slot index comes from
/// lower bits, so two flows of one slot differ here as much as anywhere).
#[inline(always)]
pub const fn slot_tail(check: u64) -> u32 {
    (check >> 32) as u32
}

/// The flow-cache slot of a key with this check, under the slot mask.
#[inline(always)]
pub const fn flow_slot(check: u64, mask: u32) -> u32 {
    ((check >> 8) as u32) & mask
}

/// Whether two keys are equal, word by word.
#[inline(always)]
pub fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    let a: [u64; 5] = bytemuck::cast(*a);
    let b: [u64; 5] = bytemuck::cast(*b);
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// Value of the endpoint tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EndpointValue {
    pub service: u32,
}
const _: () = assert!(size_of::<EndpointValue>() == 4);

/// A 65,536-entry prefilter over watched prefixes: if an address's entry is
/// 0 it is not watched, and no table or trie lookup is needed; an address
/// whose entry is 1 is looked up. The entry of an address is
/// [`hint_index_v4`] or [`hint_index_v6`]. Bytes rather than bits: testing
/// a byte is a load, testing a bit a load, two shifts and a mask, and every
/// packet tests two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WatchedHint {
    pub entries: [u8; HINT_ENTRIES],
}
const _: () = assert!(size_of::<WatchedHint>() == 65_536);

/// The value of [`MAP_WATCHED_HINT`]: the prefilter of each family, and
/// the IPv4 prefilter's /24 detail.
///
/// An IPv4 entry says more than "look it up": 0, no watched address in
/// the /16; [`WATCHED_V4_WALK`], ask the IPv4 table; any other value `k`,
/// the /16's watched /24s are `v4_blocks[k - 1]`. So the watched side of a
/// packet is known from two loads, with no table walk, unless a watched
/// prefix longer than /24 lies in its /24 (or the blocks ran out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct WatchedHints {
    pub v4: WatchedHint,
    pub v6: WatchedHint,
    pub v4_blocks: [WatchedBlock; WATCHED_V4_BLOCKS],
}

/// Distinct /24 patterns the IPv4 prefilter can hold (entries 1 to 254;
/// /16s with the same pattern share a block).
pub const WATCHED_V4_BLOCKS: usize = 254;
/// An IPv4 prefilter entry whose /16 holds watched addresses but names no
/// block: the IPv4 table decides.
pub const WATCHED_V4_WALK: u8 = 255;
/// A /24 in a [`WatchedBlock`]: no watched address…
pub const WATCHED_24_NONE: u8 = 0;
/// …every address watched…
pub const WATCHED_24_ALL: u8 = 1;
/// …or some: the IPv4 table decides.
pub const WATCHED_24_SOME: u8 = 2;

/// One /16's /24s, a byte each ([`WATCHED_24_NONE`], [`WATCHED_24_ALL`],
/// [`WATCHED_24_SOME`]), indexed by the address's third octet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct WatchedBlock {
    pub slash24: [u8; 256],
}

impl WatchedHint {
    /// Whether the entry at `index` is set (an index past the end is not).
    #[inline(always)]
    pub fn is_set(&self, index: usize) -> bool {
        self.entries.get(index).is_some_and(|entry| *entry != 0)
    }
}

impl WatchedHints {
    /// The block an IPv4 prefilter entry names: `None` for 0 (nothing
    /// watched) and [`WATCHED_V4_WALK`].
    #[inline(always)]
    pub fn v4_block(&self, entry: u8) -> Option<&WatchedBlock> {
        match entry {
            0 | WATCHED_V4_WALK => None,
            block => self.v4_blocks.get(usize::from(block) - 1),
        }
    }

    /// What the IPv4 prefilter says of `addr` (host order): its /24's byte
    /// ([`WATCHED_24_NONE`], [`WATCHED_24_ALL`] or [`WATCHED_24_SOME`]);
    /// an entry of [`WATCHED_V4_WALK`] leaves every /24 to the table.
    #[inline(always)]
    pub fn v4_slash24(&self, addr: u32) -> u8 {
        let entry = self
            .v4
            .entries
            .get(hint_index_v4_loaded(addr.to_be()))
            .copied()
            .unwrap_or(0);
        match self.v4_block(entry) {
            Some(block) => block
                .slash24
                .get(((addr >> 8) & 0xff) as usize)
                .copied()
                .unwrap_or(WATCHED_24_NONE),
            None if entry == WATCHED_V4_WALK => WATCHED_24_SOME,
            None => WATCHED_24_NONE,
        }
    }
}

/// One byte per [`endpoint_hint_index`]: 1 where an endpoint with that
/// index may be in the hash map the hint stands for. Bytes, not bits, so
/// that the program and userspace set them with plain stores (setting a
/// bit is a read and a write, and two CPUs could lose one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EndpointHint {
    pub bytes: [u8; ENDPOINT_HINT_BYTES],
}

/// The value of [`MAP_ENDPOINT_HINTS`]: both hints in one value, so that a
/// packet asking both questions looks the map up once. Indexed by
/// [`ENDPOINT_HINT_LEARNED`] and [`ENDPOINT_HINT_VERDICTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EndpointHints {
    pub hints: [EndpointHint; 2],
}
/// Bytes of an [`EndpointHint`]: one per value of [`endpoint_hint_index`].
pub const ENDPOINT_HINT_BYTES: usize = 65_536;
const _: () = assert!(size_of::<EndpointHint>() == 65_536);

/// The [`EndpointHint`] byte of an endpoint, from its key bytes (16, IPv4
/// mapped) taken as two native-order words: a multiplicative hash of both,
/// so that learned endpoints spread over the hint instead of sharing a /16
/// with busy traffic.
#[inline(always)]
pub const fn endpoint_hint_index(words: [u64; 2]) -> usize {
    let hash = (words[0] ^ words[1].rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> 48) as usize
}

/// Hint entry of an IPv4 address: its /16, first octet in the low byte. That is
/// the low 16 bits of the address loaded from the frame as a little-endian
/// `u32` (see [`hint_index_v4_loaded`]), so the hot path needs no byte swap.
#[inline(always)]
pub const fn hint_index_v4(addr: [u8; 4]) -> usize {
    ((addr[1] as usize) << 8) | addr[0] as usize
}

/// [`hint_index_v4`] of an address loaded from packet memory as a native
/// (little-endian, as on BPF's `bpfel` target) `u32`.
#[inline(always)]
pub const fn hint_index_v4_loaded(addr: u32) -> usize {
    (addr & 0xffff) as usize
}

/// Hint entry of an IPv6 address: its first two 16-bit groups folded together,
/// each taken in the frame's byte order (see [`hint_index_v6_loaded`]).
#[inline(always)]
pub const fn hint_index_v6(addr: &[u8; 16]) -> usize {
    hint_index_v6_loaded(u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]))
}

/// [`hint_index_v6`] of an address whose first four bytes were loaded from
/// packet memory as a native (little-endian) `u32`.
#[inline(always)]
pub const fn hint_index_v6_loaded(first_word: u32) -> usize {
    ((first_word & 0xffff) ^ (first_word >> 16)) as usize
}

#[cfg(feature = "user")]
mod user {
    use super::{
        CaptureConfig, EndpointValue, FlowKey, FlowSlot, FlowValue, ServiceCounters, Totals,
        V4Leaf, V4Node, V4Runs, V4Top, WatchedHint, WatchedHints,
    };

    // SAFETY: each type is `#[repr(C)]`, `Pod` (no padding, any bit pattern
    // valid), as bytemuck's derive has checked.
    unsafe impl aya::Pod for Totals {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FlowSlot {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for WatchedHint {}
    unsafe impl aya::Pod for WatchedHints {}
    unsafe impl aya::Pod for V4Node {}
    unsafe impl aya::Pod for V4Top {}
    unsafe impl aya::Pod for V4Leaf {}
    unsafe impl aya::Pod for V4Runs {}
    unsafe impl aya::Pod for CaptureConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_key(watched: [u8; 4], endpoint: [u8; 4], port: u16) -> FlowKey {
        let mapped = |octets: [u8; 4]| core::net::Ipv4Addr::from(octets).to_ipv6_mapped().octets();
        FlowKey {
            watched: mapped(watched),
            endpoint: mapped(endpoint),
            port,
            family: FAMILY_V4,
            protocol: 17,
            direction: DIR_OUTBOUND,
            _pad: [0; 3],
        }
    }

    #[test]
    fn the_tail_word_is_the_keys_last_eight_bytes() {
        let key = ipv4_key([175, 45, 176, 9], [203, 0, 113, 77], 0xbeef);
        let words: [u64; 5] = bytemuck::cast(key);
        assert_eq!(
            FlowKey::tail_word(0xbeef, FAMILY_V4, 17, DIR_OUTBOUND),
            words[4]
        );
    }

    /// Keys that differ in little (the watched address's last octet and
    /// the port, the endpoint's last two octets, the port) spread over the slots as
    /// well as random ones would: 16,384 random keys in 16,384 slots fill
    /// about 1 - 1/e of them (63.2%); clustering fills fewer.
    #[test]
    fn keys_differing_in_one_field_spread_over_the_slots() {
        const SLOTS: u32 = 1 << 14;
        let families: [fn(u32) -> FlowKey; 3] = [
            |i| {
                ipv4_key(
                    [175, 45, 176, (i & 0xff) as u8],
                    [203, 0, 113, 77],
                    (i >> 8) as u16,
                )
            },
            |i| {
                ipv4_key(
                    [175, 45, 176, 9],
                    [203, 0, (i >> 8) as u8, (i & 0xff) as u8],
                    443,
                )
            },
            |i| ipv4_key([175, 45, 176, 9], [203, 0, 113, 77], i as u16),
        ];
        for (family, key) in families.iter().enumerate() {
            let mut used = [false; SLOTS as usize];
            for i in 0..SLOTS {
                let check = flow_check(&key(i));
                assert_ne!(check, 0);
                used[flow_slot(check, SLOTS - 1) as usize] = true;
            }
            let filled = used.iter().filter(|&&slot| slot).count() as f64 / f64::from(SLOTS);
            assert!(
                filled > 0.61,
                "key family {family} filled {filled:.3} of the slots"
            );
        }
    }
}
