//! The classifier's XDP program: parse the frame, classify its addresses
//! against the watched and endpoint sets, count it. Every packet gets
//! XDP_PASS; this is a passive sensor.
#![no_std]
#![no_main]

mod classify;
mod count;
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruPerCpuHashMap, PerCpuArray},
    programs::XdpContext,
};
use classifier_common::{
    EndpointValue, FlowKey, FlowValue, MAX_SERVICES, ServiceCounters, Totals, WatchedHint,
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
static WATCHED_HINT: Array<WatchedHint> = Array::with_max_entries(2, 0);
#[map]
static WATCHED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(256, 0);
#[map]
static WATCHED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(256, 0);
#[map]
static ENDPOINTS_V4: LpmTrie<[u8; 4], EndpointValue> = LpmTrie::with_max_entries(1, 0);
#[map]
static ENDPOINTS_V6: LpmTrie<[u8; 16], EndpointValue> = LpmTrie::with_max_entries(1, 0);

#[xdp]
pub fn classifier(ctx: XdpContext) -> u32 {
    count::packet(&ctx);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
