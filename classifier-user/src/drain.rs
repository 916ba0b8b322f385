//! Drain: read the per-CPU maps, sum them over CPUs, and keep cumulative
//! counts in userspace (`Ledger`). Hands the ledger to `report`.
//!
//! Kernel counters only ever grow, so totals and per-service counters are
//! simply the latest reading. Flow-table entries can vanish (LRU eviction)
//! and come back from zero: the ledger keeps what it already drained for a
//! flow and adds only what the kernel gained since, treating a value that
//! went down (or a changed first-seen time) as a new entry.

use std::{collections::HashMap, os::fd::AsFd};

use aya::maps::{IterableMap, PerCpuArray, PerCpuHashMap, PerCpuValues};
use classifier_common::{
    FlowKey, FlowSlot, FlowValue, MAP_FLOW_CACHE, MAP_FLOWS, MAP_SERVICES, MAP_TOTALS,
    MAX_SERVICES, ServiceCounters, Totals, flow_check, flow_slot,
};

use crate::{
    bpf_sys::visit_per_cpu_batched,
    loader::{Sensor, error_chain},
};

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
    /// From the LRU table.
    pub flows: Vec<(FlowKey, FlowSample)>,
    /// From the flow cache, summed over the CPUs that hold each key.
    pub cached_flows: Vec<(FlowKey, FlowSample)>,
    /// Flow-cache slots in use, over all CPUs.
    pub cache_slots_used: usize,
}

impl KernelReading {
    /// Flows from the LRU table, then from the cache (a key can be in both).
    pub fn all_flows(&self) -> impl Iterator<Item = &(FlowKey, FlowSample)> {
        self.flows.iter().chain(&self.cached_flows)
    }
}

fn sum_totals(values: &PerCpuValues<Totals>) -> Totals {
    let mut sum: Totals = bytemuck::Zeroable::zeroed();
    for cpu in values.iter() {
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

fn sum_flow<'a>(values: impl Iterator<Item = &'a FlowValue>) -> Option<FlowSample> {
    let mut sample: Option<FlowSample> = None;
    for cpu in values.filter(|cpu| cpu.packets > 0) {
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
    let cpus = aya::util::nr_cpus().map_err(|(path, error)| DrainError {
        map: MAP_FLOWS,
        problem: format!("{path}: {error}"),
    })?;
    let mut flows = Vec::new();
    let batched = visit_per_cpu_batched::<FlowKey, FlowValue>(
        flow_map.map().fd().as_fd(),
        cpus,
        |key, values| {
            if let Some(sample) = sum_flow(values.iter()) {
                flows.push((*key, sample));
            }
        },
    )
    .map_err(batch_error(MAP_FLOWS))?;
    if !batched {
        flows = read_flow_table_by_key(&flow_map)?;
    }
    let (cached_flows, cache_slots_used) = read_flow_cache(sensor, cpus)?;
    Ok(KernelReading {
        totals,
        services,
        flows,
        cached_flows,
        cache_slots_used,
    })
}

fn batch_error(map: &'static str) -> impl Fn(std::io::Error) -> DrainError {
    move |error| DrainError {
        map,
        problem: format!("batch lookup: {error}"),
    }
}

/// The flow table one key at a time (two syscalls per entry), for kernels
/// without batch operations on it.
fn read_flow_table_by_key(
    flow_map: &PerCpuHashMap<&aya::maps::MapData, FlowKey, FlowValue>,
) -> Result<Vec<(FlowKey, FlowSample)>, DrainError> {
    let mut flows = Vec::new();
    for entry in flow_map.iter() {
        match entry {
            Ok((key, values)) => {
                if let Some(sample) = sum_flow(values.iter()) {
                    flows.push((key, sample));
                }
            }
            // An entry evicted between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(error) => return Err(drain_error(MAP_FLOWS)(error)),
        }
    }
    Ok(flows)
}

/// The flow cache's claimed slots, grouped by key. A slot whose check does
/// not match its key (or its position) was being claimed while we read it;
/// it is left for the next reading.
fn read_flow_cache(
    sensor: &Sensor,
    cpus: usize,
) -> Result<(Vec<(FlowKey, FlowSample)>, usize), DrainError> {
    let cache: PerCpuArray<_, FlowSlot> =
        PerCpuArray::try_from(map(sensor, MAP_FLOW_CACHE)?).map_err(drain_error(MAP_FLOW_CACHE))?;
    let mask = cache.len() - 1;
    let mut by_key: HashMap<FlowKey, Vec<FlowValue>> = HashMap::new();
    let mut used = 0;
    let mut take = |index: u32, slots: &[FlowSlot]| {
        for slot in slots {
            let trusted = slot.check != 0
                && slot.check == flow_check(&slot.key)
                && flow_slot(slot.check, mask) == index
                && slot.value.packets > 0;
            if trusted {
                used += 1;
                by_key.entry(slot.key).or_default().push(slot.value);
            }
        }
    };
    let batched =
        visit_per_cpu_batched::<u32, FlowSlot>(cache.map().fd().as_fd(), cpus, |index, slots| {
            take(*index, slots)
        })
        .map_err(batch_error(MAP_FLOW_CACHE))?;
    if !batched {
        for index in 0..cache.len() {
            let slots = cache.get(&index, 0).map_err(drain_error(MAP_FLOW_CACHE))?;
            take(index, &slots);
        }
    }
    let flows = by_key
        .into_iter()
        .filter_map(|(key, values)| Some((key, sum_flow(values.iter())?)))
        .collect();
    Ok((flows, used))
}

/// A flow as the ledger keeps it. Times are Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_unix_ns: i64,
    pub last_seen_unix_ns: i64,
    pub service: u16,
    pub tcp_flags: u8,
    /// The LRU table's and the flow cache's values at the last drain, to
    /// take deltas against.
    table: Baseline,
    cache: Baseline,
}

/// What a delta is taken against: a source's counts at the last drain, and
/// the first-seen time that tells a recreated table entry from the old one.
/// (The ledger holds one record per flow ever seen, so records stay small.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Baseline {
    packets: u64,
    bytes: u64,
    first_seen_ns: u64,
}

impl From<&FlowSample> for Baseline {
    fn from(sample: &FlowSample) -> Self {
        Self {
            packets: sample.packets,
            bytes: sample.bytes,
            first_seen_ns: sample.first_seen_ns,
        }
    }
}

/// Where a flow sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Entries can be evicted and come back from zero.
    Table,
    /// Claimed slots are never cleared: values only grow.
    Cache,
}

/// Cumulative counts since the program was loaded.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub totals: Totals,
    pub services: Vec<ServiceCounters>,
    pub flows: HashMap<FlowKey, FlowRecord>,
    /// Flow keys alive in the kernel at the last drain (LRU table entries
    /// plus claimed cache slots).
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

const EMPTY_BASELINE: Baseline = Baseline {
    packets: 0,
    bytes: 0,
    first_seen_ns: 0,
};

impl Ledger {
    /// Folds in a reading; `monotonic_to_unix_ns` is added to kernel times.
    pub fn absorb(&mut self, reading: KernelReading, monotonic_to_unix_ns: i128) {
        self.totals = reading.totals;
        self.services = reading.services;
        self.live_flows = reading.flows.len() + reading.cache_slots_used;
        let incoming = reading.flows.len() + reading.cached_flows.len();
        self.drains += 1;
        let table = reading.flows.into_iter().map(|flow| (Source::Table, flow));
        let cache = reading
            .cached_flows
            .into_iter()
            .map(|flow| (Source::Cache, flow));
        self.flows
            .reserve(incoming.saturating_sub(self.flows.len()));
        for (source, (key, sample)) in table.chain(cache) {
            let to_unix =
                |ns: u64| i64::try_from(i128::from(ns) + monotonic_to_unix_ns).unwrap_or(i64::MAX);
            let record = self.flows.entry(key).or_insert(FlowRecord {
                packets: 0,
                bytes: 0,
                first_seen_unix_ns: to_unix(sample.first_seen_ns),
                last_seen_unix_ns: to_unix(sample.last_seen_ns),
                service: sample.service,
                tcp_flags: 0,
                table: EMPTY_BASELINE,
                cache: EMPTY_BASELINE,
            });
            let last = match source {
                Source::Table => &mut record.table,
                Source::Cache => &mut record.cache,
            };
            let (packets, bytes, baseline) = gained(source, last, &sample);
            *last = baseline;
            record.packets += packets;
            record.bytes += bytes;
            record.first_seen_unix_ns =
                record.first_seen_unix_ns.min(to_unix(sample.first_seen_ns));
            record.last_seen_unix_ns = record.last_seen_unix_ns.max(to_unix(sample.last_seen_ns));
            record.service = sample.service;
            record.tcp_flags |= sample.tcp_flags;
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

/// Packets and bytes a flow gained since the last sample from the same
/// source. A table entry whose packets went down or whose first-seen time
/// changed was evicted and created again: all of it is new. Cache sums only
/// grow; one that looks lower missed a slot being claimed and gains nothing.
fn gained(source: Source, last: &Baseline, sample: &FlowSample) -> (u64, u64, Baseline) {
    let recreated = source == Source::Table
        && last.packets != 0
        && (sample.packets < last.packets || sample.first_seen_ns != last.first_seen_ns);
    if recreated {
        (sample.packets, sample.bytes, sample.into())
    } else if sample.packets < last.packets {
        // Keep the higher baseline, so nothing is counted twice.
        (0, 0, *last)
    } else {
        (
            sample.packets - last.packets,
            sample.bytes.saturating_sub(last.bytes),
            sample.into(),
        )
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
        cached_reading(flows, Vec::new())
    }

    fn cached_reading(
        flows: Vec<(FlowKey, FlowSample)>,
        cached_flows: Vec<(FlowKey, FlowSample)>,
    ) -> KernelReading {
        KernelReading {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            cache_slots_used: cached_flows.len(),
            flows,
            cached_flows,
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

    #[test]
    fn a_flow_in_both_the_cache_and_the_table_adds_up_without_double_counting() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            cached_reading(
                vec![(key(1), sample(2, 30, 40))],
                vec![(key(1), sample(4, 10, 20))],
            ),
            0,
        );
        // The cache sum grows; the table entry is evicted and comes back.
        ledger.absorb(
            cached_reading(
                vec![(key(1), sample(1, 50, 60))],
                vec![(key(1), sample(7, 10, 55))],
            ),
            0,
        );
        // A cache sum that looks lower (a slot missed mid-claim) adds nothing
        // and does not lower the baseline.
        ledger.absorb(
            cached_reading(Vec::new(), vec![(key(1), sample(5, 10, 55))]),
            0,
        );
        ledger.absorb(
            cached_reading(Vec::new(), vec![(key(1), sample(8, 10, 70))]),
            0,
        );
        let record = ledger.flows[&key(1)];
        assert_eq!(record.packets, 2 + 1 + 8);
        assert_eq!(record.first_seen_unix_ns, 10);
        assert_eq!(record.last_seen_unix_ns, 70);
        assert_eq!(ledger.live_flows, 1);
    }
}
