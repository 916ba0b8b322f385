//! The endpoint maps take at least 1,000,000 IPv4 and 262,144 IPv6
//! prefixes, sized from the feed, and classify correctly when full.

use std::net::{Ipv4Addr, Ipv6Addr};

use classifier_tests::{frames::FrameSpec, require_root};
use classifier_user::{
    drain,
    feeds::{Endpoint, EndpointFeed, WatchedSet},
    loader::{Capacities, LoadError, Sensor},
    testrun::run_frame,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const V4_PREFIXES: u32 = 1_000_000;
const V6_PREFIXES: u32 = 262_144;
const SERVICES: u32 = 8;

fn service_of(index: u32) -> String {
    format!("svc{}", index % SERVICES)
}

/// /24s from 0.0.0.0 upwards and /64s under 2001:db8::/32.
fn big_feed() -> EndpointFeed {
    let v4 = (0..V4_PREFIXES).map(|i| Endpoint {
        net: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 8), 24).expect("valid")),
        service: service_of(i),
    });
    let v6 = (0..V6_PREFIXES).map(|i| {
        let address = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64);
        Endpoint {
            net: IpNet::V6(Ipv6Net::new(Ipv6Addr::from(address), 64).expect("valid")),
            service: service_of(i + 1),
        }
    });
    EndpointFeed::from_endpoints(v4.chain(v6))
}

#[test]
fn a_million_ipv4_and_262144_ipv6_prefixes_load_and_match() {
    if !require_root() {
        return;
    }
    let feed = big_feed();
    assert_eq!(feed.count(true), V4_PREFIXES as usize);
    assert_eq!(feed.count(false), V6_PREFIXES as usize);
    let watched =
        WatchedSet::from_arguments(&["175.45.176.0/22".into(), "2001:db8:aa::/48".into()], &[])
            .expect("watched");
    let sensor = Sensor::load(&watched, &feed, Capacities::default()).expect("a full feed loads");

    // The last /24 and the last /64, each of a known service.
    let last_v4 = Ipv4Addr::from(((V4_PREFIXES - 1) << 8) | 77);
    let last_v6 =
        Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(V6_PREFIXES - 1) << 64) | 5);
    let frames = [
        FrameSpec::udp("175.45.176.1", &last_v4.to_string(), 1, 443).build(),
        FrameSpec::udp("2001:db8:aa::1", &last_v6.to_string(), 1, 443).build(),
    ];
    for frame in &frames {
        assert_eq!(run_frame(&sensor, frame).expect("test run"), 2);
    }
    let reading = drain::read(&sensor).expect("drain");
    assert_eq!(reading.totals.matched, 2);
    let v4_service = sensor
        .services
        .id(&service_of(V4_PREFIXES - 1))
        .expect("id") as usize;
    let v6_service = sensor.services.id(&service_of(V6_PREFIXES)).expect("id") as usize;
    assert_eq!(reading.services[v4_service].packets[0], 1);
    assert_eq!(reading.services[v6_service].packets[0], 1);
    assert_eq!(reading.all_flows().count(), 2);
}

#[test]
fn a_feed_larger_than_the_capacity_flag_is_refused_with_the_numbers() {
    let feed = EndpointFeed::from_endpoints((0..10u32).map(|i| Endpoint {
        net: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 8), 24).expect("valid")),
        service: "svc".into(),
    }));
    let capacities = Capacities {
        endpoints_v4: Some(5),
        ..Capacities::default()
    };
    let error = Sensor::load(&WatchedSet::default(), &feed, capacities)
        .err()
        .expect("refused");
    assert!(matches!(
        error,
        LoadError::OverCapacity {
            prefixes: 10,
            capacity: 5,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "the endpoint feed has 10 v4 prefixes but the capacity is 5 (raise --endpoint-capacity-v4)"
    );
}

#[test]
fn watched_sets_of_256_prefixes_per_family_load_and_match() {
    if !require_root() {
        return;
    }
    let mut watched: Vec<String> = (0..256).map(|i| format!("10.{i}.0.0/16")).collect();
    watched.extend((0..256).map(|i| format!("2001:db8:{i:x}::/48")));
    let watched = WatchedSet::from_arguments(&watched, &[]).expect("watched");
    assert_eq!((watched.v4.len(), watched.v6.len()), (256, 256));
    let feed = EndpointFeed::from_sources(&[("test".into(), classifier_tests::TEST_FEED.into())])
        .expect("feed");
    let sensor = Sensor::load(&watched, &feed, Capacities::default()).expect("loads");
    for frame in [
        FrameSpec::udp("10.255.1.2", "198.51.100.10", 1, 443).build(),
        FrameSpec::udp("2001:db8:ff::9", "2001:db8:e0::5", 1, 443).build(),
        FrameSpec::udp("11.0.0.1", "198.51.100.10", 1, 443).build(),
    ] {
        assert_eq!(run_frame(&sensor, &frame).expect("test run"), 2);
    }
    let reading = drain::read(&sensor).expect("drain");
    assert_eq!(reading.totals.watched, 2);
    assert_eq!(reading.totals.matched, 2);
}
