//! Flow-table pressure: with more flows than the flow cache and the LRU
//! table hold, the first flows keep their cache slots, the least recently
//! seen of the rest are evicted and counted, and totals and per-service
//! counters stay exact (they never depend on the flow tables).

use classifier_tests::{TEST_FEED, frames::FrameSpec, require_root};
use classifier_user::{
    drain::{self, Ledger},
    feeds::{EndpointFeed, WatchedSet},
    loader::{Capacities, Sensor},
    testrun::run_frame,
};

#[test]
fn a_full_flow_table_evicts_counts_it_and_keeps_service_counts_exact() {
    if !require_root() {
        return;
    }
    const CAPACITY: u32 = 16;
    const CACHE_SLOTS: u32 = 4;
    const FLOWS: u16 = 100;
    // One CPU, so each flow has one cache slot to claim.
    classifier_tests::pin_to_cpu(0).expect("pin to CPU 0");
    let feed = EndpointFeed::from_sources(&[("test".into(), TEST_FEED.into())]).expect("feed");
    let capacities = Capacities {
        flows: CAPACITY,
        flow_cache_slots: CACHE_SLOTS,
        ..Capacities::default()
    };
    let sensor = Sensor::load(
        &WatchedSet::from_arguments(&[], &[]).expect("default"),
        &feed,
        capacities,
    )
    .expect("loads");
    let mut ledger = Ledger::default();
    for port in 0..FLOWS {
        let frame = FrameSpec::udp("175.45.176.1", "203.0.113.5", 40000, 1000 + port).build();
        for _ in 0..3 {
            assert_eq!(run_frame(&sensor, &frame).expect("test run"), 2);
        }
    }
    let reading = drain::read(&sensor).expect("drain");
    assert!(
        (1..=CACHE_SLOTS as usize).contains(&reading.cache_slots_used),
        "{} cache slots used",
        reading.cache_slots_used
    );
    let cached = reading.cache_slots_used;
    ledger.absorb(reading, 0);

    let delta = sensor.services.id("delta").expect("delta") as usize;
    assert_eq!(ledger.services[delta].packets, [3 * u64::from(FLOWS), 0]);
    assert_eq!(ledger.totals.matched, 3 * u64::from(FLOWS));
    assert_eq!(ledger.totals.flow_inserts, u64::from(FLOWS));
    assert!(
        ledger.live_flows > cached && ledger.live_flows <= cached + CAPACITY as usize,
        "{} live flows",
        ledger.live_flows
    );
    assert_eq!(
        ledger.flow_evictions,
        u64::from(FLOWS) - ledger.live_flows as u64
    );
    assert_eq!(ledger.totals.flow_insert_failures, 0);
    // Every flow still in the table has all three of its packets.
    assert!(ledger.flows.values().all(|flow| flow.packets == 3));

    // Read straight into a ledger, as the daemon drains: the same counts.
    let mut streamed = Ledger::default();
    drain::read_into(&sensor, &mut streamed, 0).expect("drain");
    assert_eq!(streamed.flows, ledger.flows);
    assert_eq!(
        streamed.services[delta].packets,
        ledger.services[delta].packets
    );
    assert_eq!(streamed.totals.matched, ledger.totals.matched);
    assert_eq!(streamed.live_flows, ledger.live_flows);
    assert_eq!(streamed.flow_evictions, ledger.flow_evictions);
}
