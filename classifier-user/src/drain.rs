//! Drain: read the per-CPU maps, sum them over CPUs, and keep cumulative
//! counts in userspace (`Ledger`). Hands the ledger to `report`.
//!
//! Kernel counters only ever grow, so totals and per-service counters are
//! simply the latest reading. Flow-table entries can vanish (LRU eviction)
//! and come back from zero: the ledger keeps what it already drained for a
//! flow and adds only what the kernel gained since, treating a value that
//! went down (or a changed first-seen time) as a new entry.

use std::collections::HashMap;

use aya::maps::{PerCpuArray, PerCpuHashMap, PerCpuValues};
use classifier_common::{
    FlowKey, FlowValue, MAP_FLOWS, MAP_SERVICES, MAP_TOTALS, MAX_SERVICES, ServiceCounters, Totals,
};

use crate::loader::{Sensor, error_chain};

#[derive(Debug, thiserror::Error)]
#[error("cannot read map {map}: {problem}")]
pub struct DrainError {
    map: &'static str,
    problem: String,
}

fn drain_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DrainError {
    move |error| DrainError {
        map,
        problem: error_chain(&error),
    }
}

/// One flow as the kernel holds it, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSample {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub service: u16,
    pub tcp_flags: u8,
}

/// Everything the kernel counted, summed over CPUs.
#[derive(Debug, Clone)]
pub struct KernelReading {
    pub totals: Totals,
    /// Indexed by service id.
    pub services: Vec<ServiceCounters>,
    pub flows: Vec<(FlowKey, FlowSample)>,
}

fn sum_totals(values: &PerCpuValues<Totals>) -> Totals {
    let mut sum: Totals = bytemuck::Zeroable::zeroed();
    for cpu in values.iter() {
        sum.packets += cpu.packets;
        sum.bytes += cpu.bytes;
        sum.ipv4 += cpu.ipv4;
        sum.ipv6 += cpu.ipv6;
        sum.other += cpu.other;
        sum.watched += cpu.watched;
        sum.matched += cpu.matched;
        sum.flow_inserts += cpu.flow_inserts;
        sum.flow_insert_failures += cpu.flow_insert_failures;
        for (total, count) in sum.malformed.iter_mut().zip(cpu.malformed) {
            *total += count;
        }
    }
    sum
}

fn sum_services(values: &PerCpuValues<ServiceCounters>) -> ServiceCounters {
    let mut sum: ServiceCounters = bytemuck::Zeroable::zeroed();
    for cpu in values.iter() {
        for direction in 0..classifier_common::DIRECTIONS {
            sum.packets[direction] += cpu.packets[direction];
            sum.bytes[direction] += cpu.bytes[direction];
        }
    }
    sum
}

fn sum_flow(values: &PerCpuValues<FlowValue>) -> Option<FlowSample> {
    let mut sample: Option<FlowSample> = None;
    for cpu in values.iter().filter(|cpu| cpu.packets > 0) {
        let sum = sample.get_or_insert(FlowSample {
            packets: 0,
            bytes: 0,
            first_seen_ns: u64::MAX,
            last_seen_ns: 0,
            service: cpu.service,
            tcp_flags: 0,
        });
        sum.packets += cpu.packets;
        sum.bytes += cpu.bytes;
        sum.first_seen_ns = sum.first_seen_ns.min(cpu.first_seen_ns);
        sum.last_seen_ns = sum.last_seen_ns.max(cpu.last_seen_ns);
        sum.tcp_flags |= cpu.tcp_flags;
    }
    sample
}

fn map<'a>(sensor: &'a Sensor, name: &'static str) -> Result<&'a aya::maps::Map, DrainError> {
    sensor.ebpf.map(name).ok_or(DrainError {
        map: name,
        problem: "missing from the object".into(),
    })
}

/// Reads every counter map once.
pub fn read(sensor: &Sensor) -> Result<KernelReading, DrainError> {
    let totals: PerCpuArray<_, Totals> =
        PerCpuArray::try_from(map(sensor, MAP_TOTALS)?).map_err(drain_error(MAP_TOTALS))?;
    let totals = sum_totals(&totals.get(&0, 0).map_err(drain_error(MAP_TOTALS))?);

    let service_map: PerCpuArray<_, ServiceCounters> =
        PerCpuArray::try_from(map(sensor, MAP_SERVICES)?).map_err(drain_error(MAP_SERVICES))?;
    let service_count = u32::try_from(sensor.services.len() + 1).unwrap_or(MAX_SERVICES);
    let mut services = Vec::with_capacity(service_count as usize);
    for id in 0..service_count.min(MAX_SERVICES) {
        let values = service_map.get(&id, 0).map_err(drain_error(MAP_SERVICES))?;
        services.push(sum_services(&values));
    }

    let flow_map: PerCpuHashMap<_, FlowKey, FlowValue> =
        PerCpuHashMap::try_from(map(sensor, MAP_FLOWS)?).map_err(drain_error(MAP_FLOWS))?;
    let mut flows = Vec::new();
    for entry in flow_map.iter() {
        match entry {
            Ok((key, values)) => {
                if let Some(sample) = sum_flow(&values) {
                    flows.push((key, sample));
                }
            }
            // An entry evicted between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(error) => return Err(drain_error(MAP_FLOWS)(error)),
        }
    }
    Ok(KernelReading {
        totals,
        services,
        flows,
    })
}

/// A flow as the ledger keeps it. Times are Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_unix_ns: i128,
    pub last_seen_unix_ns: i128,
    pub service: u16,
    pub tcp_flags: u8,
    /// The kernel's values at the last drain, to take deltas against.
    kernel: FlowSample,
}

/// Cumulative counts since the program was loaded.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub totals: Totals,
    pub services: Vec<ServiceCounters>,
    pub flows: HashMap<FlowKey, FlowRecord>,
    /// Flow-table keys alive at the last drain.
    pub live_flows: usize,
    pub drains: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            flows: HashMap::new(),
            live_flows: 0,
            drains: 0,
        }
    }
}

impl Ledger {
    /// Folds in a reading; `monotonic_to_unix_ns` is added to kernel times.
    pub fn absorb(&mut self, reading: KernelReading, monotonic_to_unix_ns: i128) {
        self.totals = reading.totals;
        self.services = reading.services;
        self.live_flows = reading.flows.len();
        self.drains += 1;
        let to_unix = |ns: u64| i128::from(ns) + monotonic_to_unix_ns;
        for (key, sample) in reading.flows {
            let record = self.flows.entry(key).or_insert(FlowRecord {
                packets: 0,
                bytes: 0,
                first_seen_unix_ns: to_unix(sample.first_seen_ns),
                last_seen_unix_ns: to_unix(sample.last_seen_ns),
                service: sample.service,
                tcp_flags: 0,
                kernel: FlowSample {
                    packets: 0,
                    bytes: 0,
                    ..sample
                },
            });
            let recreated = sample.packets < record.kernel.packets
                || sample.first_seen_ns != record.kernel.first_seen_ns;
            let base = if recreated {
                FlowSample {
                    packets: 0,
                    bytes: 0,
                    ..sample
                }
            } else {
                record.kernel
            };
            record.packets += sample.packets - base.packets;
            record.bytes += sample.bytes.saturating_sub(base.bytes);
            record.last_seen_unix_ns = record.last_seen_unix_ns.max(to_unix(sample.last_seen_ns));
            record.service = sample.service;
            record.tcp_flags |= sample.tcp_flags;
            record.kernel = sample;
        }
    }

    /// Flow-table entries the kernel evicted to make room (keys it created
    /// that are no longer there).
    pub fn flow_evictions(&self) -> u64 {
        self.totals
            .flow_inserts
            .saturating_sub(self.live_flows as u64)
    }
}

/// Nanoseconds to add to a CLOCK_MONOTONIC time to get Unix time, now.
pub fn monotonic_to_unix_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into a valid timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            port,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    fn reading(flows: Vec<(FlowKey, FlowSample)>) -> KernelReading {
        KernelReading {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            flows,
        }
    }

    fn sample(packets: u64, first: u64, last: u64) -> FlowSample {
        FlowSample {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            service: 1,
            tcp_flags: 0,
        }
    }

    #[test]
    fn flows_accumulate_deltas_across_drains_and_evictions() {
        let mut ledger = Ledger::default();
        ledger.absorb(reading(vec![(key(1), sample(3, 10, 20))]), 1_000);
        ledger.absorb(reading(vec![(key(1), sample(5, 10, 30))]), 1_000);
        // Evicted and recreated with fewer packets than before.
        ledger.absorb(reading(vec![(key(1), sample(2, 40, 50))]), 1_000);
        // Evicted and recreated with more packets: the first-seen time tells.
        ledger.absorb(reading(vec![(key(1), sample(9, 60, 70))]), 1_000);
        let record = ledger.flows[&key(1)];
        assert_eq!(record.packets, 5 + 2 + 9);
        assert_eq!(record.bytes, 1600);
        assert_eq!(record.first_seen_unix_ns, 1_010);
        assert_eq!(record.last_seen_unix_ns, 1_070);
        assert_eq!(ledger.drains, 4);
    }
}
