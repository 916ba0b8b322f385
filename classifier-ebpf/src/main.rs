//! The classifier's XDP program: parse the frame, classify its addresses
//! against the watched and endpoint sets, count it. Every packet gets
//! XDP_PASS; this is a passive sensor.
#![no_std]
#![no_main]

mod capture;
mod classify;
mod count;
mod learn;
mod parse;
mod protocols;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use classifier_common::{
    BPF_F_MMAPABLE, CAPTURE_CLOCK_ENTRIES, CAPTURE_FLOW_CAPACITY, CAPTURE_RING_BYTES,
    CaptureConfig, DEFAULT_LEARN_RATE, EndpointHints, EndpointValue, FlowBucket, FlowKey,
    FlowValue, HINT_ENTRIES, LEARN_RING_BYTES, LEARNED_CAPACITY, MAX_SERVICES, RateBudget,
    ServiceCounters, TCP_PROBE_SLOTS, TcpProbeSlot, Totals, V4_LOWER_DECLARED_SIZE, V4_NODE_WIDTH,
    V4_TOP_NODES, V4Node, V4Top, VERDICT_CAPACITY, WATCHED_V4_BLOCKS, WatchedBlock, WatchedHint,
    WatchedHints,
};

// Map names must equal the `MAP_*` constants of classifier-common; the
// loader refuses an object where one is missing. Sizes of the tries and the
// flow table are set by the loader from the feeds and flags.
#[map]
static TOTALS: PerCpuArray<Totals> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SERVICES: PerCpuArray<ServiceCounters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> = LruPerCpuHashMap::with_max_entries(65_536, 0);
#[map]
static FLOW_CACHE: PerCpuArray<FlowBucket> = PerCpuArray::with_max_entries(1, 0);
/// The flow clock's stamp before which a cached flow's counts have been
/// drained (`classifier_common::MAP_FLOW_CACHE_DRAINED`).
#[map]
static FLOW_CACHE_DRAINED: Array<u64> = Array::with_max_entries(1, 0);
/// Flows of watched addresses whose other end is in no feed but whose
/// packets showed a service (a VPN protocol): flow key with direction 0 →
/// service id. Shared by all CPUs (a flow's two directions may arrive on
/// different ones); consulted only for such flows.
#[map]
static VERDICTS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(VERDICT_CAPACITY, 0);
/// Packets that can teach userspace something (`LearnRecord`s).
#[map]
static LEARN_EVENTS: RingBuf = RingBuf::with_byte_size(LEARN_RING_BYTES, 0);
/// Endpoints userspace learned (key bytes, IPv4 mapped) → service id;
/// consulted when no feed names the other end. Userspace expires them.
#[map]
static LEARNED: HashMap<[u8; 16], u32> = HashMap::with_max_entries(LEARNED_CAPACITY, 0);
/// Which endpoints may have a learned entry or flows with a verdict
/// (`classifier_common::MAP_ENDPOINT_HINTS`).
#[map]
static ENDPOINT_HINTS: Array<EndpointHints> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Records handed over this second (`LEARN_RATE` a second at most).
#[map]
static LEARN_BUDGET: Array<RateBudget> = Array::with_max_entries(1, 0);
/// The first bytes of matched packets (evidence captures).
#[map]
static CAPTURE_EVENTS: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);
/// What to capture; all zero (the default) captures nothing.
#[map]
static CAPTURE_CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);
/// Packets captured this second (`CaptureConfig::rate` a second at most).
#[map]
static CAPTURE_BUDGET: Array<RateBudget> = Array::with_max_entries(1, 0);
/// Packets captured per flow (`CaptureConfig::per_flow` at most).
#[map]
static CAPTURE_FLOWS: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(CAPTURE_FLOW_CAPACITY, 0);
/// Payload segments handed over per TCP flow and direction.
#[map]
static TCP_PROBES: PerCpuArray<TcpProbeSlot> = PerCpuArray::with_max_entries(TCP_PROBE_SLOTS, 0);
#[map]
static WATCHED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(256, 0);
#[map]
static ENDPOINTS_V6: LpmTrie<[u8; 16], EndpointValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static CAPTURE_CLOCK: Array<u64> = Array::with_max_entries(CAPTURE_CLOCK_ENTRIES, BPF_F_MMAPABLE);

// Load-time constants (names in classifier-common's `GLOBAL_*`); read
// through `load_time` so the compiler does not fold the defaults in.
#[unsafe(no_mangle)]
static FLOW_CACHE_MASK: u32 = 0;
#[unsafe(no_mangle)]
static VERDICT: u32 = xdp_action::XDP_PASS;
#[unsafe(no_mangle)]
static CAPTURE_CLOCK_ON: u32 = 0;
#[unsafe(no_mangle)]
static LEARN_RATE: u32 = DEFAULT_LEARN_RATE;
#[unsafe(no_mangle)]
static NEW_FLOW_EVERY_PACKET: u32 = 0;
// What `V4_LOWER`'s value holds (`classifier_common::V4_LOWER_GLOBALS`).
#[unsafe(no_mangle)]
static V4_NODE_COUNT: u32 = 0;
#[unsafe(no_mangle)]
static V4_LEAF_COUNT: u32 = 0;
#[unsafe(no_mangle)]
static V4_LEAVES_AT: u32 = 0;
#[unsafe(no_mangle)]
static V4_RUN_COUNT: u32 = 0;
#[unsafe(no_mangle)]
static V4_RUNS_AT: u32 = 0;

#[inline(always)]
fn load_time(global: &'static u32) -> u32 {
    // SAFETY: a valid static; the loader may have rewritten its value.
    unsafe { core::ptr::read_volatile(global) }
}

/// The watched prefilter (`classifier_common::MAP_WATCHED_HINT`): a global,
/// so reading it costs no map lookup (the verifier builds its address into
/// the program). Mutable and exported only so the compiler cannot assume
/// the zeroes it starts with: the loader fills it before the program is
/// attached, and the program only reads it.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.watched")]
static mut WATCHED_HINT: WatchedHints = WatchedHints {
    v4: WatchedHint {
        entries: [0; HINT_ENTRIES],
    },
    v6: WatchedHint {
        entries: [0; HINT_ENTRIES],
    },
    v4_blocks: [WatchedBlock { slash24: [0; 256] }; WATCHED_V4_BLOCKS],
};

#[inline(always)]
fn watched_hints() -> &'static WatchedHints {
    // SAFETY: only userspace writes the global, before the program runs.
    unsafe { &*core::ptr::addr_of!(WATCHED_HINT) }
}

/// The IPv4 table's first level (`classifier_common::MAP_V4_TOP`): a
/// global like the prefilter, for the same reason (the walk's first step
/// takes no map lookup).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.v4top")]
static mut V4_TOP: V4Top = V4Top {
    nodes: [V4Node {
        entries: [0; V4_NODE_WIDTH],
    }; V4_TOP_NODES as usize],
};

#[inline(always)]
fn v4_top() -> &'static V4Top {
    // SAFETY: only userspace writes the global, before the program runs.
    unsafe { &*core::ptr::addr_of!(V4_TOP) }
}

/// The IPv4 table below its first level (`classifier_common::MAP_V4_LOWER`):
/// a global like the first level, declared [`V4_LOWER_DECLARED_SIZE`] bytes
/// long; the loader sets the section's size to the table's in its copy of
/// the object, so the global the kernel makes holds the whole table.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.v4lower")]
static mut V4_LOWER: [u64; V4_LOWER_DECLARED_SIZE / 8] = [0; V4_LOWER_DECLARED_SIZE / 8];

/// The address of the IPv4 table's lower levels, as a bare address: the
/// table is larger than the global the compiler sees, so reads into it go
/// through an address the compiler cannot bound.
#[inline(always)]
fn v4_lower() -> *const u8 {
    core::ptr::with_exposed_provenance(core::ptr::addr_of!(V4_LOWER).expose_provenance())
}

// Inlined into the entry the macro wraps it in: left to LLVM, a larger body
// becomes a BPF-to-BPF call, which costs every packet a call and a return.
#[xdp]
#[inline(always)]
pub fn classifier(ctx: XdpContext) -> u32 {
    count::packet(&ctx);
    load_time(&VERDICT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
