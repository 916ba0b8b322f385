//! Flow-table pressure: with more flows than the flow cache and the LRU
//! table hold, the first flows keep their cache slots, the least recently
//! seen of the rest are evicted and counted, and totals and per-service
//! counters stay exact (they never depend on the flow tables).

use classifier_tests::{TEST_FEED, frames::FrameSpec, require_root};
use classifier_user::{
    drain::{self, Ledger},
    feeds::{EndpointFeed, WatchedSet},
    flow_clock::FlowClock,
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
    ledger.absorb(reading, FlowClock::UNIX_NS);

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
    drain::read_into(&sensor, &mut streamed, FlowClock::UNIX_NS).expect("drain");
    assert_eq!(streamed.flows, ledger.flows);
    assert_eq!(
        streamed.services[delta].packets,
        ledger.services[delta].packets
    );
    assert_eq!(streamed.totals.matched, ledger.totals.matched);
    assert_eq!(streamed.live_flows, ledger.live_flows);
    assert_eq!(streamed.flow_evictions, ledger.flow_evictions);
}

/// A flow-cache slot goes to a new flow only once a drain has read the
/// flow in it and that flow has been idle since before the drain: before
/// that, a new flow of the same slot goes to the LRU table. Every flow keeps
/// every packet across the hand-over.
#[test]
fn idle_cache_slots_are_recycled_only_after_a_drain_read_them() {
    if !require_root() {
        return;
    }
    // One slot on the one CPU the test runs on: every flow wants it.
    classifier_tests::pin_to_cpu(0).expect("pin to CPU 0");
    let feed = EndpointFeed::from_sources(&[("test".into(), TEST_FEED.into())]).expect("feed");
    let capacities = Capacities {
        flow_cache_slots: 1,
        ..Capacities::default()
    };
    let mut sensor = Sensor::load(
        &WatchedSet::from_arguments(&[], &[]).expect("default"),
        &feed,
        capacities,
    )
    .expect("loads");
    let send = |sensor: &Sensor, port: u16, packets: usize| {
        let frame = FrameSpec::udp("175.45.176.1", "203.0.113.5", 40000, port).build();
        for _ in 0..packets {
            assert_eq!(run_frame(sensor, &frame).expect("test run"), 2);
        }
    };
    let ticks = classifier_user::flow_clock::TickCounter::load().expect("tick counter");
    let clock = FlowClock::kernel().expect("clock");
    let mut ledger = Ledger::default();
    let packets_of = |ledger: &Ledger, port: u16| {
        ledger
            .flows
            .iter()
            .find(|(key, _)| key.port == port)
            .map_or(0, |(_, flow)| flow.packets)
    };

    send(&sensor, 1, 3);
    // Nothing drained yet: the second flow goes to the LRU table.
    send(&sensor, 2, 2);
    // Let the first flow age past the margin, then drain and publish.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = ticks.now().expect("tick");
    drain::read_into(&sensor, &mut ledger, clock).expect("drain");
    assert_eq!(ledger.totals.flow_recycles, 0);
    sensor.allow_recycling(started).expect("publish");

    // The third flow takes the first one's slot.
    send(&sensor, 3, 4);
    // The slot's flow is now the third, seen after the drain: the first
    // flow, back again, goes to the LRU table.
    send(&sensor, 1, 1);
    drain::read_into(&sensor, &mut ledger, clock).expect("drain");
    assert_eq!(ledger.totals.flow_recycles, 1);
    assert_eq!(ledger.totals.flow_inserts, 4);
    assert_eq!(ledger.totals.matched, 10);
    assert_eq!(
        [1, 2, 3].map(|port| packets_of(&ledger, port)),
        [3 + 1, 2, 4]
    );
    assert_eq!(ledger.live_flows, 3, "one slot and two table entries");
    assert_eq!(ledger.flow_evictions, 0);
}

/// The program stamps flows with the kernel's tick counter; the drain turns
/// ticks into Unix time. A flow's first and last packets, 200 ms apart,
/// come out at the wall-clock times they were sent, to within a tick.
#[test]
fn flow_times_are_the_wall_clock_to_the_tick() {
    if !require_root() {
        return;
    }
    let ticks = classifier_user::flow_clock::Ticks::calibrated().expect("calibrates");
    if let Some(hz) = configured_hz() {
        assert_eq!(
            ticks.tick_ns,
            (1_000_000_000 + hz / 2) / hz,
            "CONFIG_HZ={hz}"
        );
    }
    let tick = i64::try_from(ticks.tick_ns).expect("tick");
    let feed = EndpointFeed::from_sources(&[("test".into(), TEST_FEED.into())]).expect("feed");
    let sensor = Sensor::load(
        &WatchedSet::from_arguments(&[], &[]).expect("default"),
        &feed,
        Capacities::default(),
    )
    .expect("loads");
    let frame = FrameSpec::udp("175.45.176.1", "203.0.113.5", 40000, 443).build();
    let now = classifier_user::snapshot::now_unix_ns;
    let first_sent = now();
    run_frame(&sensor, &frame).expect("test run");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let last_sent = now();
    run_frame(&sensor, &frame).expect("test run");
    let drained = now();

    let mut ledger = Ledger::default();
    drain::read_into(&sensor, &mut ledger, FlowClock::kernel().expect("clock")).expect("drain");
    let flow = ledger.flows.values().next().expect("one flow");
    assert_eq!(flow.packets, 2);
    let within = |stamp: i64, from: i64, to: i64| from - 2 * tick <= stamp && stamp <= to + tick;
    assert!(
        within(flow.first_seen_unix_ns, first_sent, last_sent),
        "first seen {} for a packet sent at {first_sent} (tick {tick} ns)",
        flow.first_seen_unix_ns
    );
    assert!(
        within(flow.last_seen_unix_ns, last_sent, drained),
        "last seen {} for a packet sent at {last_sent} (tick {tick} ns)",
        flow.last_seen_unix_ns
    );
}

/// CONFIG_HZ from the running kernel's configuration, where it is exposed.
fn configured_hz() -> Option<u64> {
    let output = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ=")?.parse().ok())
}
