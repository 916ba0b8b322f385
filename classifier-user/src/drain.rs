//! Drain: read the per-CPU maps, sum them over CPUs, and keep cumulative
//! counts in userspace (`Ledger`). Hands the ledger to `report`.
//!
//! Kernel counters only ever grow, so totals and per-service counters are
//! the latest reading minus a base. Flow-table entries can vanish (LRU
//! eviction) and come back from zero: the ledger keeps what it already
//! drained for a flow and adds only what the kernel gained since, treating
//! a table value that went down (or a changed first-seen time) as a new
//! entry. Flow-cache slots are taken slot by slot against the slot's own
//! last reading: a slot whose check or first-seen time changed holds a new
//! flow (claimed, or recycled after a drain read the old one's final
//! counts), and a value that looks lower (read mid-update) keeps its
//! baseline.

use std::{collections::HashMap, os::fd::AsFd};

use foldhash::fast::RandomState;

use aya::maps::{IterableMap, Map, PerCpuArray, PerCpuHashMap, PerCpuValues};
use classifier_common::{
    FlowCacheShape, FlowKey, FlowSlot, FlowValue, MAP_FLOW_CACHE, MAP_FLOW_CACHE_DRAINED,
    MAP_FLOWS, MAP_SERVICES, MAP_TOTALS, MAX_SERVICES, RECYCLE_MARGIN_TICKS, ServiceCounters,
    Totals, flow_check, flow_slot, slot_tail,
};

use crate::{
    bpf_sys::visit_per_cpu_batched,
    flow_clock::FlowClock,
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
    pub ip_bytes: u64,
    /// flow-clock stamps (ticks on a sensor, Unix ns on a replay).
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub service: u16,
    pub tcp_flags: u8,
    /// `classifier_common::ORIGIN_*`: what named the service.
    pub origin: u8,
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
    /// The flow cache's claimed slots one by one, with their
    /// [`CachePosition`]s (what the ledger takes deltas of).
    pub cache_slots: Vec<(CachePosition, FlowSlot)>,
    /// Flow-cache slots in use, over all CPUs.
    pub cache_slots_used: usize,
}

/// A flow-cache slot on one CPU: `index * cpus + cpu`.
pub type CachePosition = usize;

impl KernelReading {
    /// Flows from the LRU table, then from the cache (a key can be in both).
    pub fn all_flows(&self) -> impl Iterator<Item = &(FlowKey, FlowSample)> {
        self.flows.iter().chain(&self.cached_flows)
    }
}

fn sum_totals(values: &PerCpuValues<Totals>) -> Totals {
    values
        .iter()
        .fold(bytemuck::Zeroable::zeroed(), |sum, cpu| {
            totals_plus(&sum, cpu)
        })
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

impl FlowSample {
    /// One CPU's value.
    fn of(value: &FlowValue) -> Self {
        Self {
            packets: value.packets,
            bytes: value.bytes,
            ip_bytes: value.ip_bytes,
            first_seen_ns: value.first_seen_ns,
            last_seen_ns: value.last_seen_ns,
            service: value.service,
            tcp_flags: value.tcp_flags,
            origin: value.origin,
        }
    }

    /// Adds another CPU's value of the same flow (service and origin stay
    /// the first CPU's).
    fn add(&mut self, value: &FlowValue) {
        self.packets += value.packets;
        self.bytes += value.bytes;
        self.ip_bytes += value.ip_bytes;
        self.first_seen_ns = self.first_seen_ns.min(value.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(value.last_seen_ns);
        self.tcp_flags |= value.tcp_flags;
    }
}

/// A flow's values summed over the CPUs that counted it; `None` when none did.
fn sum_flow<'a>(values: impl Iterator<Item = &'a FlowValue>) -> Option<FlowSample> {
    let mut sample: Option<FlowSample> = None;
    for cpu in values.filter(|cpu| cpu.packets > 0) {
        match &mut sample {
            Some(sum) => sum.add(cpu),
            None => sample = Some(FlowSample::of(cpu)),
        }
    }
    sample
}

/// The maps the program counts into, taken out of the loaded object or
/// opened from their pins: all a drain needs.
#[derive(Debug)]
pub struct CounterMaps {
    pub(crate) totals: Map,
    pub(crate) services: Map,
    pub(crate) flows: Map,
    pub(crate) flow_cache: Map,
    pub(crate) flow_cache_drained: Map,
}

impl CounterMaps {
    /// Their names in the object (and their pins' file names).
    pub const NAMES: [&'static str; 5] = [
        MAP_TOTALS,
        MAP_SERVICES,
        MAP_FLOWS,
        MAP_FLOW_CACHE,
        MAP_FLOW_CACHE_DRAINED,
    ];

    /// Takes the counter maps out of a loaded object (the program keeps
    /// using them; the object keeps the feed maps).
    pub(crate) fn take_from(ebpf: &mut aya::Ebpf) -> Option<Self> {
        Some(Self {
            totals: ebpf.take_map(MAP_TOTALS)?,
            services: ebpf.take_map(MAP_SERVICES)?,
            flows: ebpf.take_map(MAP_FLOWS)?,
            flow_cache: ebpf.take_map(MAP_FLOW_CACHE)?,
            flow_cache_drained: ebpf.take_map(MAP_FLOW_CACHE_DRAINED)?,
        })
    }

    /// In [`Self::NAMES`] order.
    pub fn all(&self) -> [(&'static str, &Map); 5] {
        [
            (MAP_TOTALS, &self.totals),
            (MAP_SERVICES, &self.services),
            (MAP_FLOWS, &self.flows),
            (MAP_FLOW_CACHE, &self.flow_cache),
            (MAP_FLOW_CACHE_DRAINED, &self.flow_cache_drained),
        ]
    }

    /// Lets the program give flow-cache slots to new flows when the flow in
    /// them was last seen before `drain_started_tick` (less
    /// [`RECYCLE_MARGIN_TICKS`]): call it only after a drain that started
    /// at that tick (the kernel's tick counter, `flow_clock::TickCounter`)
    /// has been folded into the ledger whole, which has then read every
    /// such slot's final counts, and, when a later daemon may resume from
    /// a checkpoint, after a checkpoint holding that drain is on disk.
    /// Only the daemon that owns the ledger may call it.
    pub fn allow_recycling(&mut self, drain_started_tick: u64) -> Result<(), DrainError> {
        let mut drained: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(&mut self.flow_cache_drained)
                .map_err(drain_error(MAP_FLOW_CACHE_DRAINED))?;
        let before = drain_started_tick.saturating_sub(RECYCLE_MARGIN_TICKS);
        drained
            .set(0, before, 0)
            .map_err(drain_error(MAP_FLOW_CACHE_DRAINED))
    }
}

/// Reads every counter map of a loaded sensor once.
pub fn read(sensor: &Sensor) -> Result<KernelReading, DrainError> {
    read_counters(&sensor.counters, sensor.services.len())
}

/// Reads every counter map of a loaded sensor once into `ledger` (see
/// [`drain_into`]).
pub fn read_into(sensor: &Sensor, ledger: &mut Ledger, clock: FlowClock) -> Result<(), DrainError> {
    drain_into(&sensor.counters, sensor.services.len(), ledger, clock)
}

/// Reads every counter map once; `services` is how many services the
/// program was loaded with.
pub fn read_counters(maps: &CounterMaps, services: usize) -> Result<KernelReading, DrainError> {
    let (totals, services) = read_totals_and_services(maps, services)?;
    let cpus = cpus()?;
    let mut flows = Vec::new();
    visit_flow_table(&flow_table(maps)?, cpus, |key, sample| {
        flows.push((*key, *sample));
    })?;
    let mut cache_slots = Vec::new();
    let cache_slots_used = visit_flow_cache(&maps.flow_cache, cpus, |position, slot| {
        cache_slots.push((position, *slot));
    })?;
    let mut by_key: HashMap<FlowKey, FlowSample, RandomState> = HashMap::default();
    for (_, slot) in &cache_slots {
        by_key
            .entry(slot.key)
            .and_modify(|sample| sample.add(&slot.value))
            .or_insert_with(|| FlowSample::of(&slot.value));
    }
    Ok(KernelReading {
        totals,
        services,
        flows,
        cached_flows: by_key.into_iter().collect(),
        cache_slots_used,
        cache_slots,
    })
}

/// Reads every counter map once straight into `ledger`: what
/// [`read_counters`] then [`Ledger::absorb`] do, without holding the whole
/// reading (about 100 bytes a flow: 100 MB for a million flows). A failure
/// part way leaves the ledger consistent (each flow is folded whole against
/// its own baseline) and the next drain catches up.
pub fn drain_into(
    maps: &CounterMaps,
    services: usize,
    ledger: &mut Ledger,
    clock: FlowClock,
) -> Result<(), DrainError> {
    let (totals, services) = read_totals_and_services(maps, services)?;
    ledger.absorb_counters(totals, services);
    let cpus = cpus()?;
    let table = flow_table(maps)?;
    let table_capacity = table
        .map()
        .info()
        .map_err(drain_error(MAP_FLOWS))?
        .max_entries();
    ledger.make_room(table_capacity);
    ledger.next_drain();
    let table_flows = visit_flow_table(&table, cpus, |key, sample| {
        ledger.absorb_table_flow(key, sample, clock);
    })?;
    ledger.table_read_whole();
    let cache_slots_used = visit_flow_cache(&maps.flow_cache, cpus, |position, slot| {
        ledger.absorb_cache_slot(position, slot, clock);
    })?;
    ledger.count_live_flows(table_flows + cache_slots_used);
    Ok(())
}

fn cpus() -> Result<usize, DrainError> {
    aya::util::nr_cpus().map_err(|(path, error)| DrainError {
        map: MAP_FLOWS,
        problem: format!("{path}: {error}"),
    })
}

/// The totals and the per-service counters, summed over CPUs.
fn read_totals_and_services(
    maps: &CounterMaps,
    services: usize,
) -> Result<(Totals, Vec<ServiceCounters>), DrainError> {
    let totals: PerCpuArray<_, Totals> =
        PerCpuArray::try_from(&maps.totals).map_err(drain_error(MAP_TOTALS))?;
    let totals = sum_totals(&totals.get(&0, 0).map_err(drain_error(MAP_TOTALS))?);

    let service_map: PerCpuArray<_, ServiceCounters> =
        PerCpuArray::try_from(&maps.services).map_err(drain_error(MAP_SERVICES))?;
    let service_count = u32::try_from(services + 1).unwrap_or(MAX_SERVICES);
    let mut services = Vec::with_capacity(service_count as usize);
    for id in 0..service_count.min(MAX_SERVICES) {
        let values = service_map.get(&id, 0).map_err(drain_error(MAP_SERVICES))?;
        services.push(sum_services(&values));
    }
    Ok((totals, services))
}

/// The LRU flow table, typed.
type FlowTable<'a> = PerCpuHashMap<&'a aya::maps::MapData, FlowKey, FlowValue>;

fn flow_table(maps: &CounterMaps) -> Result<FlowTable<'_>, DrainError> {
    PerCpuHashMap::try_from(&maps.flows).map_err(drain_error(MAP_FLOWS))
}

/// Visits every flow of the LRU table, summed over `cpus`; returns how many.
fn visit_flow_table(
    flow_map: &FlowTable<'_>,
    cpus: usize,
    mut visit: impl FnMut(&FlowKey, &FlowSample),
) -> Result<usize, DrainError> {
    let mut flows = 0;
    let batched = visit_per_cpu_batched::<FlowKey, FlowValue>(
        flow_map.map().fd().as_fd(),
        cpus,
        1,
        |key, values| {
            if let Some(sample) = sum_flow(values.iter()) {
                flows += 1;
                visit(key, &sample);
            }
        },
    )
    .map_err(batch_error(MAP_FLOWS))?;
    if !batched {
        for (key, sample) in read_flow_table_by_key(flow_map)? {
            flows += 1;
            visit(&key, &sample);
        }
    }
    Ok(flows)
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
    flow_map: &FlowTable<'_>,
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

/// Visits the flow cache's claimed slots one by one, with their
/// [`CachePosition`]s; returns how many slots hold a flow. A slot whose
/// check does not agree with its key, its tail or its position was being
/// claimed while we read it: it is left for the next reading, but counts
/// as holding a flow (the old one or the new), so that a claim caught in
/// the middle never looks like an eviction.
fn visit_flow_cache(
    cache: &Map,
    cpus: usize,
    mut visit: impl FnMut(CachePosition, &FlowSlot),
) -> Result<usize, DrainError> {
    let Map::PerCpuArray(map) = cache else {
        return Err(DrainError {
            map: MAP_FLOW_CACHE,
            problem: "not a per-CPU array".into(),
        });
    };
    let info = map.info().map_err(drain_error(MAP_FLOW_CACHE))?;
    let shape = FlowCacheShape::of_map(info.value_size(), info.max_entries()).ok_or_else(|| {
        DrainError {
            map: MAP_FLOW_CACHE,
            problem: format!(
                "{} values of {} bytes are no flow-cache shape",
                info.max_entries(),
                info.value_size()
            ),
        }
    })?;
    let mask = shape.slots() - 1;
    let bucket_slots = shape.bucket_slots as usize;
    let mut occupied = 0;
    let batched = visit_per_cpu_batched::<u32, FlowSlot>(
        map.fd().as_fd(),
        cpus,
        bucket_slots,
        |bucket, slots| {
            let first = *bucket * shape.bucket_slots;
            for (cpu, cpu_slots) in slots.chunks_exact(bucket_slots).enumerate() {
                for (index, slot) in (first..).zip(cpu_slots) {
                    if slot.check != 0 || slot.value.slot_tail != 0 {
                        occupied += 1;
                    }
                    if trusted(slot, index, mask) {
                        visit(index as usize * cpus + cpu, slot);
                    }
                }
            }
        },
    )
    .map_err(batch_error(MAP_FLOW_CACHE))?;
    if !batched {
        return Err(DrainError {
            map: MAP_FLOW_CACHE,
            problem: "the kernel cannot read it in batches (BPF_MAP_LOOKUP_BATCH)".into(),
        });
    }
    Ok(occupied)
}

/// Whether a slot read at `index` holds a whole claim (see `FlowSlot`).
fn trusted(slot: &FlowSlot, index: u32, mask: u32) -> bool {
    slot.check != 0
        && slot.check == flow_check(&slot.key)
        && slot.value.slot_tail == slot_tail(slot.check)
        && flow_slot(slot.check, mask) == index
        && slot.value.packets > 0
}

/// A flow as the ledger keeps it. Times are Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowRecord {
    /// Counted since the ledger's base.
    pub packets: u64,
    pub bytes: u64,
    /// IP bytes (header and payload), for IPFIX.
    pub ip_bytes: u64,
    pub first_seen_unix_ns: i64,
    pub last_seen_unix_ns: i64,
    pub service: u16,
    pub tcp_flags: u8,
    /// `classifier_common::ORIGIN_*`: what named the service.
    pub origin: u8,
    /// The LRU table's value at the last drain, to take deltas against
    /// (flow-cache slots have theirs in [`Ledger`], slot by slot).
    table: Baseline,
    /// `packets` and `bytes` when the last snapshot was cut.
    marked_packets: u64,
    marked_bytes: u64,
}
// One per flow ever seen: a million flows take 128 MB with their keys.
const _: () = assert!(size_of::<FlowRecord>() == 88);

pub use crate::flow_records::FlowRecords;

/// A bit per flow record, by its position in [`FlowRecords`].
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, position: usize) {
        let word = position / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (position % 64);
    }

    /// Sets every bit `other` has.
    fn add(&mut self, other: &Self) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (word, theirs) in self.0.iter_mut().zip(&other.0) {
            *word |= theirs;
        }
    }

    fn get(&self, position: usize) -> bool {
        self.0
            .get(position / 64)
            .is_some_and(|word| word >> (position % 64) & 1 == 1)
    }
}

/// What a table entry's delta is taken against: its counts at the last
/// drain, and the low half of its first-seen stamp, which tells an entry
/// evicted and created again from the old one. (Packed into the record's
/// padding: the ledger holds one record per flow ever seen. Two entries of
/// one flow whose first-seen stamps differ by a multiple of 2^32, 50 days
/// of ticks at HZ=1000 or 4.3 s of a replay's nanoseconds, to the stamp,
/// with the second holding at least as many packets as the first, would be
/// taken for one.)
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Baseline {
    packets: u64,
    bytes: u64,
    ip_bytes: u64,
    first_seen_low: u32,
}

impl From<&FlowSample> for Baseline {
    fn from(sample: &FlowSample) -> Self {
        Self {
            packets: sample.packets,
            bytes: sample.bytes,
            ip_bytes: sample.ip_bytes,
            first_seen_low: sample.first_seen_ns as u32,
        }
    }
}

/// A flow-cache slot's counts at the last drain, and which flow they were
/// of: its check, and its first-seen time (a flow that claims the slot
/// again after a drain read it starts later than it was last seen).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
struct SlotBaseline {
    check: u64,
    first_seen_ns: u64,
    packets: u64,
    bytes: u64,
    ip_bytes: u64,
}

impl SlotBaseline {
    fn of(slot: &FlowSlot) -> Self {
        Self {
            check: slot.check,
            first_seen_ns: slot.value.first_seen_ns,
            packets: slot.value.packets,
            bytes: slot.value.bytes,
            ip_bytes: slot.value.ip_bytes,
        }
    }
}

/// What a flow gained since a baseline: packets, bytes, IP bytes.
type Gain = (u64, u64, u64);

/// Counts drained from the kernel since a base: zero (the program's
/// attachment) or a [`Checkpoint`] a snapshot was cut at.
///
/// How the drain loses no increment: the kernel's counters only ever grow
/// (nothing is reset or swapped), so a reading taken while traffic flows
/// is a consistent lower bound of every counter, and whatever a CPU adds
/// after it is read shows up in the next reading's difference. Counts are
/// always `reading - base`; a snapshot is `counts now - counts at the last
/// cut`, so consecutive snapshots add up to exactly what the kernel counted.
/// A flow's packets land in the interval whose closing drain first saw
/// them: a flow spanning a boundary is split at that drain (its first- and
/// last-seen times stay the flow's own).
#[derive(Debug, Clone)]
pub struct Ledger {
    pub totals: Totals,
    pub services: Vec<ServiceCounters>,
    pub flows: FlowRecords,
    /// Flow keys alive in the kernel at the last drain (LRU table entries
    /// plus claimed cache slots).
    pub live_flows: usize,
    /// Flow-table entries the kernel evicted to make room, since the base.
    pub flow_evictions: u64,
    pub drains: u64,
    /// The kernel's own counters at the last drain: since the program was
    /// attached (metrics show these; they never go down).
    pub kernel_totals: Totals,
    pub kernel_services: Vec<ServiceCounters>,
    pub kernel_evictions: u64,
    /// Every flow-cache slot's last reading, by [`CachePosition`].
    cache_slots: Vec<SlotBaseline>,
    /// The flows the last drain that read the whole LRU table found in it...
    in_table: Bits,
    /// ...and those found by the drain under way. A checkpoint keeps the
    /// table baselines of both: more than needed is harmless, one missing
    /// would count it again.
    in_table_now: Bits,
    base: KernelCounters,
    mark: Mark,
    /// Frames counted in userspace because the kernel cannot run them
    /// (`classifier pcap`: frames shorter than an Ethernet header).
    outside_kernel: Totals,
}

/// Kernel counters summed over CPUs, as a base or a mark.
#[derive(Debug, Clone)]
struct KernelCounters {
    totals: Totals,
    services: Vec<ServiceCounters>,
    evictions: u64,
}

impl Default for KernelCounters {
    fn default() -> Self {
        Self {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            evictions: 0,
        }
    }
}

/// The ledger's counts when the last snapshot was cut.
#[derive(Debug, Clone, Default)]
struct Mark {
    counts: KernelCounters,
    drains: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            flows: FlowRecords::default(),
            live_flows: 0,
            flow_evictions: 0,
            drains: 0,
            kernel_totals: bytemuck::Zeroable::zeroed(),
            kernel_services: Vec::new(),
            kernel_evictions: 0,
            cache_slots: Vec::new(),
            in_table: Bits::default(),
            in_table_now: Bits::default(),
            base: KernelCounters::default(),
            mark: Mark::default(),
            outside_kernel: bytemuck::Zeroable::zeroed(),
        }
    }
}

/// `op` applied to every counter of `a` and `b` (Totals is all u64s).
fn totals_fieldwise(a: &Totals, b: &Totals, op: impl Fn(u64, u64) -> u64) -> Totals {
    let mut out = *a;
    let fields: &mut [u64] = bytemuck::cast_slice_mut(std::slice::from_mut(&mut out));
    let others: &[u64] = bytemuck::cast_slice(std::slice::from_ref(b));
    for (value, other) in fields.iter_mut().zip(others) {
        *value = op(*value, *other);
    }
    out
}

/// `a - b`, field by field (never below zero).
pub fn totals_minus(a: &Totals, b: &Totals) -> Totals {
    totals_fieldwise(a, b, u64::saturating_sub)
}

/// `a + b`, field by field.
fn totals_plus(a: &Totals, b: &Totals) -> Totals {
    totals_fieldwise(a, b, u64::wrapping_add)
}

/// `a - b` per service and field; services missing from `b` count from zero.
pub fn services_minus(a: &[ServiceCounters], b: &[ServiceCounters]) -> Vec<ServiceCounters> {
    a.iter()
        .enumerate()
        .map(|(id, counters)| {
            let mut out = *counters;
            if let Some(minus) = b.get(id) {
                for direction in 0..classifier_common::DIRECTIONS {
                    out.packets[direction] =
                        out.packets[direction].saturating_sub(minus.packets[direction]);
                    out.bytes[direction] =
                        out.bytes[direction].saturating_sub(minus.bytes[direction]);
                }
            }
            out
        })
        .collect()
}

impl Ledger {
    /// A ledger that counts from a checkpoint: what was already reported
    /// (by a snapshot another daemon wrote) is not counted again. `None`
    /// when the checkpoint names a flow-cache slot at or past
    /// `cache_positions` (the program's slots over all CPUs): it is not
    /// this program's, or it is corrupt.
    pub fn resume(checkpoint: &Checkpoint, cache_positions: u64) -> Option<Self> {
        if checkpoint
            .slots
            .iter()
            .any(|slot| slot.position >= cache_positions)
        {
            return None;
        }
        // The kernel's counters start at the checkpoint's, so a cut before
        // any drain succeeds checkpoints the same place again (not zero).
        let mut ledger = Self {
            base: KernelCounters {
                totals: checkpoint.totals,
                services: checkpoint.services.clone(),
                evictions: checkpoint.evictions,
            },
            kernel_totals: checkpoint.totals,
            kernel_services: checkpoint.services.clone(),
            kernel_evictions: checkpoint.evictions,
            ..Self::default()
        };
        for flow in &checkpoint.flows {
            let (position, record) =
                ledger
                    .flows
                    .position_or_insert_with(&flow.key, || FlowRecord {
                        first_seen_unix_ns: i64::MAX,
                        last_seen_unix_ns: i64::MIN,
                        ..FlowRecord::default()
                    });
            record.table = flow.table;
            // Until a drain reads the table, its entries are the
            // checkpoint's.
            ledger.in_table.set(position);
        }
        for slot in &checkpoint.slots {
            let position = usize::try_from(slot.position).unwrap_or(usize::MAX);
            if let Some(baseline) = ledger.cache_slot(position) {
                *baseline = slot.baseline;
            }
        }
        Some(ledger)
    }

    /// Folds in a reading; `clock` turns its flow stamps into Unix time.
    pub fn absorb(&mut self, reading: KernelReading, clock: FlowClock) {
        let live_flows = reading.flows.len() + reading.cache_slots_used;
        self.absorb_counters(reading.totals, reading.services);
        self.next_drain();
        self.flows.reserve(
            (reading.flows.len() + reading.cached_flows.len()).saturating_sub(self.flows.len()),
        );
        for (key, sample) in &reading.flows {
            self.absorb_table_flow(key, sample, clock);
        }
        self.table_read_whole();
        for (position, slot) in &reading.cache_slots {
            self.absorb_cache_slot(*position, slot, clock);
        }
        self.count_live_flows(live_flows);
    }

    /// Takes the kernel's totals and per-service counters of a reading.
    fn absorb_counters(&mut self, totals: Totals, services: Vec<ServiceCounters>) {
        self.totals = totals_plus(
            &totals_minus(&totals, &self.base.totals),
            &self.outside_kernel,
        );
        self.services = services_minus(&services, &self.base.services);
        self.kernel_totals = totals;
        self.kernel_services = services;
    }

    /// Room for the flows the table may hold (those inserted and not known
    /// to be evicted, at most `table_capacity`), so that folding them in
    /// grows the ledger once rather than doubling it step by step.
    fn make_room(&mut self, table_capacity: u32) {
        let expected = self
            .kernel_totals
            .flow_inserts
            .saturating_sub(self.kernel_totals.flow_recycles)
            .saturating_sub(self.kernel_evictions)
            .min(u64::from(table_capacity));
        let expected = usize::try_from(expected).unwrap_or(usize::MAX);
        self.flows
            .reserve(expected.saturating_sub(self.flows.len()));
    }

    /// Starts folding a reading's flows.
    fn next_drain(&mut self) {
        self.drains += 1;
        // What a drain that failed part way found stays checkpointed.
        let unfinished = std::mem::take(&mut self.in_table_now);
        self.in_table.add(&unfinished);
    }

    /// The drain under way has read the whole LRU table: what it found
    /// there is what the table holds.
    fn table_read_whole(&mut self) {
        self.in_table = std::mem::take(&mut self.in_table_now);
    }

    /// Ends folding a reading: `live_flows` flow keys were alive in the
    /// kernel (LRU table entries plus claimed cache slots).
    fn count_live_flows(&mut self, live_flows: usize) {
        self.live_flows = live_flows;
        // Inserts are read before the flow table, so flows created between
        // the two reads could make this dip: it never goes down. A recycled
        // cache slot is an insert that lost nothing (the drain had read the
        // flow it replaced).
        self.kernel_evictions = self.kernel_evictions.max(
            self.kernel_totals
                .flow_inserts
                .saturating_sub(self.kernel_totals.flow_recycles)
                .saturating_sub(live_flows as u64),
        );
        self.flow_evictions = self.kernel_evictions.saturating_sub(self.base.evictions);
    }

    /// Folds one flow of the LRU table in: what it gained since the table
    /// last showed it.
    fn absorb_table_flow(&mut self, key: &FlowKey, sample: &FlowSample, clock: FlowClock) {
        let (position, record) = self
            .flows
            .position_or_insert_with(key, || new_record(sample, clock));
        let (gain, baseline) = gained(&record.table, sample);
        record.table = baseline;
        self.in_table_now.set(position);
        if keeps_service(record, sample) {
            add(record, sample, gain, clock);
        } else {
            add_relabelled(&mut self.flows, key, sample, gain, clock);
        }
    }

    /// Folds one flow-cache slot in: what it gained since this position's
    /// last reading, or all of it when it holds another flow than then (or
    /// the same flow claiming the slot anew after it was recycled).
    fn absorb_cache_slot(&mut self, position: CachePosition, slot: &FlowSlot, clock: FlowClock) {
        let Some(last) = self.cache_slot(position) else {
            return;
        };
        let value = &slot.value;
        let same_flow = last.check == slot.check && last.first_seen_ns == value.first_seen_ns;
        let gain = if !same_flow {
            (value.packets, value.bytes, value.ip_bytes)
        } else if value.packets < last.packets {
            // Counts only grow: keep the higher baseline.
            return;
        } else {
            (
                value.packets - last.packets,
                value.bytes.saturating_sub(last.bytes),
                value.ip_bytes.saturating_sub(last.ip_bytes),
            )
        };
        *last = SlotBaseline::of(slot);
        let sample = FlowSample::of(value);
        let record = self.record(&slot.key, &sample, clock);
        if keeps_service(record, &sample) {
            add(record, &sample, gain, clock);
        } else {
            add_relabelled(&mut self.flows, &slot.key, &sample, gain, clock);
        }
    }

    /// The baseline of a flow-cache position (the positions grow as the
    /// cache is seen; `None` only for a position no cache can have).
    fn cache_slot(&mut self, position: CachePosition) -> Option<&mut SlotBaseline> {
        if position >= self.cache_slots.len() {
            let positions = position.checked_add(1)?;
            self.cache_slots
                .resize(positions, bytemuck::Zeroable::zeroed());
        }
        self.cache_slots.get_mut(position)
    }

    /// A flow's record, new (with the sample's times) if it has none.
    fn record(&mut self, key: &FlowKey, sample: &FlowSample, clock: FlowClock) -> &mut FlowRecord {
        self.flows
            .get_or_insert_with(key, || new_record(sample, clock))
    }

    /// Counts a frame too short to have an Ethernet header, which the kernel
    /// cannot be given (BPF_PROG_TEST_RUN refuses it): as the program would,
    /// `other` and `ethernet_truncated`. Shows from the next [`Self::absorb`].
    pub fn count_runt(&mut self, frame_len: u64) {
        let runt = &mut self.outside_kernel;
        runt.other += 1;
        runt.bytes += frame_len;
        runt.malformed[classifier_common::MALFORMED_ETHERNET_TRUNCATED] += 1;
    }

    /// The totals since the last cut (or the base).
    pub fn totals_since_mark(&self) -> Totals {
        totals_minus(&self.totals, &self.mark.counts.totals)
    }

    /// The counts since the last cut (or the base), as a ledger of their
    /// own: what one snapshot reports.
    pub fn since_mark(&self) -> Ledger {
        let mark = &self.mark.counts;
        let flows = self
            .flows
            .iter()
            .filter(|(_, record)| record.packets > record.marked_packets)
            .map(|(key, record)| {
                let mut interval = *record;
                interval.packets = record.packets - record.marked_packets;
                interval.bytes = record.bytes.saturating_sub(record.marked_bytes);
                (*key, interval)
            })
            .collect();
        Ledger {
            totals: totals_minus(&self.totals, &mark.totals),
            services: services_minus(&self.services, &mark.services),
            flows,
            live_flows: self.live_flows,
            flow_evictions: self.flow_evictions.saturating_sub(mark.evictions),
            drains: self.drains - self.mark.drains,
            kernel_totals: self.kernel_totals,
            kernel_services: self.kernel_services.clone(),
            kernel_evictions: self.kernel_evictions,
            ..Self::default()
        }
    }

    /// Cuts here: the next [`Self::since_mark`] starts from now. Returns
    /// the checkpoint a later daemon resumes from (the kernel's counters
    /// and the live flows' baselines as of the last drain).
    pub fn cut(&mut self) -> Checkpoint {
        self.mark = Mark {
            counts: KernelCounters {
                totals: self.totals,
                services: self.services.clone(),
                evictions: self.flow_evictions,
            },
            drains: self.drains,
        };
        let mut flows = Vec::new();
        for (position, (key, record)) in self.flows.iter_mut().enumerate() {
            record.marked_packets = record.packets;
            record.marked_bytes = record.bytes;
            if self.in_table.get(position) || self.in_table_now.get(position) {
                flows.push(CheckpointFlow {
                    key: *key,
                    table: record.table,
                    _pad: 0,
                });
            }
        }
        let slots = self
            .cache_slots
            .iter()
            .enumerate()
            .filter(|(_, baseline)| baseline.check != 0)
            .map(|(position, baseline)| CheckpointSlot {
                position: position as u64,
                baseline: *baseline,
            })
            .collect();
        Checkpoint {
            totals: self.kernel_totals,
            services: self.kernel_services.clone(),
            evictions: self.kernel_evictions,
            flows,
            slots,
        }
    }
}

/// The kernel's counters at a snapshot cut, and the baselines of the flows
/// alive then: a later daemon adopting the same program counts from here.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub totals: Totals,
    pub services: Vec<ServiceCounters>,
    pub evictions: u64,
    pub flows: Vec<CheckpointFlow>,
    pub slots: Vec<CheckpointSlot>,
}

/// One live flow's baselines in a [`Checkpoint`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CheckpointFlow {
    key: FlowKey,
    table: Baseline,
    _pad: u32,
}

/// One claimed flow-cache slot's baseline in a [`Checkpoint`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CheckpointSlot {
    position: u64,
    baseline: SlotBaseline,
}

/// [`CheckpointText::layout`] of this build: 2 when flow-cache slots got
/// baselines of their own, 3 when table baselines kept only the low half of
/// the first-seen stamp (a checkpoint without the field is layout 1). A
/// layout-2 checkpoint is read too (its program is the same); layout 1 is
/// refused, and no program it could resume is adopted (older pins).
const CHECKPOINT_LAYOUT: u32 = 3;

/// A table baseline as a layout-2 checkpoint holds it.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CheckpointFlowV2 {
    key: FlowKey,
    packets: u64,
    bytes: u64,
    ip_bytes: u64,
    first_seen_ns: u64,
}

impl From<CheckpointFlowV2> for CheckpointFlow {
    fn from(old: CheckpointFlowV2) -> Self {
        Self {
            key: old.key,
            table: Baseline {
                packets: old.packets,
                bytes: old.bytes,
                ip_bytes: old.ip_bytes,
                first_seen_low: old.first_seen_ns as u32,
            },
            _pad: 0,
        }
    }
}

/// A [`Checkpoint`] as JSON: the kernel structures as hex of their bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckpointText {
    #[serde(default = "first_checkpoint_layout")]
    pub layout: u32,
    pub totals: String,
    pub services: String,
    pub evictions: u64,
    pub flows: String,
    #[serde(default)]
    pub slots: String,
}

fn first_checkpoint_layout() -> u32 {
    1
}

fn to_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    text
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
            _ => None,
        })
        .collect()
}

fn pod_vec<T: bytemuck::Pod>(text: &str) -> Option<Vec<T>> {
    let bytes = from_hex(text)?;
    if bytes.len() % std::mem::size_of::<T>() != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect(),
    )
}

impl Checkpoint {
    pub fn to_text(&self) -> CheckpointText {
        CheckpointText {
            layout: CHECKPOINT_LAYOUT,
            totals: to_hex(bytemuck::bytes_of(&self.totals)),
            services: to_hex(bytemuck::cast_slice(&self.services)),
            evictions: self.evictions,
            flows: to_hex(bytemuck::cast_slice(&self.flows)),
            slots: to_hex(bytemuck::cast_slice(&self.slots)),
        }
    }

    /// `None` when the text is not a checkpoint of this build's layout.
    pub fn from_text(text: &CheckpointText) -> Option<Self> {
        let flows = match text.layout {
            CHECKPOINT_LAYOUT => pod_vec(&text.flows)?,
            2 => pod_vec::<CheckpointFlowV2>(&text.flows)?
                .into_iter()
                .map(CheckpointFlow::from)
                .collect(),
            _ => return None,
        };
        let totals = pod_vec::<Totals>(&text.totals)?;
        let [totals] = totals.as_slice() else {
            return None;
        };
        Some(Self {
            totals: *totals,
            services: pod_vec(&text.services)?,
            evictions: text.evictions,
            flows,
            slots: pod_vec(&text.slots)?,
        })
    }
}

/// Packets and bytes a table entry gained since its last sample, and the
/// new baseline. An entry whose packets went down or whose first-seen time
/// changed was evicted and created again: all of it is new.
fn gained(last: &Baseline, sample: &FlowSample) -> (Gain, Baseline) {
    let (last_packets, last_bytes, last_ip_bytes) = (last.packets, last.bytes, last.ip_bytes);
    let recreated = last_packets != 0
        && (sample.packets < last_packets || sample.first_seen_ns as u32 != last.first_seen_low);
    if recreated {
        (
            (sample.packets, sample.bytes, sample.ip_bytes),
            sample.into(),
        )
    } else {
        (
            (
                sample.packets - last_packets,
                sample.bytes.saturating_sub(last_bytes),
                sample.ip_bytes.saturating_sub(last_ip_bytes),
            ),
            sample.into(),
        )
    }
}

/// The record of a flow first seen in `sample`: nothing counted yet, the
/// sample's times.
fn new_record(sample: &FlowSample, clock: FlowClock) -> FlowRecord {
    FlowRecord {
        first_seen_unix_ns: clock.unix_ns(sample.first_seen_ns),
        last_seen_unix_ns: clock.unix_ns(sample.last_seen_ns),
        service: sample.service,
        origin: sample.origin,
        ..FlowRecord::default()
    }
}

/// Whether what `sample` gained goes to the flow's own `record`: it has
/// counted nothing yet, or it counted for the service the sample names.
fn keeps_service(record: &FlowRecord, sample: &FlowSample) -> bool {
    record.packets == 0 || record.service == sample.service
}

/// The key of a flow's record for `service` when the flow's service changed
/// after it had counted (a reload moved its endpoint to another service, or
/// a learned endpoint changed service): the kernel's key with the service
/// in its padding, which the kernel keeps zero. Each service so keeps the
/// packets counted for it, in the exit report as in the snapshots.
pub fn relabelled_key(key: &FlowKey, service: u16) -> FlowKey {
    let mut relabelled = *key;
    let [low, high] = service.wrapping_add(1).to_le_bytes();
    relabelled._pad = [low, high, 0];
    relabelled
}

/// Adds `gain` to the record of the flow `key` under the sample's service.
fn add_relabelled(
    flows: &mut FlowRecords,
    key: &FlowKey,
    sample: &FlowSample,
    gain: Gain,
    clock: FlowClock,
) {
    if gain.0 == 0 {
        return;
    }
    let record = flows.get_or_insert_with(&relabelled_key(key, sample.service), || {
        new_record(sample, clock)
    });
    add(record, sample, gain, clock);
}

/// Adds what a flow gained to its record (and the sample's service,
/// origin, times and flags).
fn add(record: &mut FlowRecord, sample: &FlowSample, gain: Gain, clock: FlowClock) {
    record.service = sample.service;
    record.origin = sample.origin;
    let (packets, bytes, ip_bytes) = gain;
    if packets == 0 {
        return;
    }
    record.packets += packets;
    record.bytes += bytes;
    record.ip_bytes += ip_bytes;
    record.first_seen_unix_ns = record
        .first_seen_unix_ns
        .min(clock.unix_ns(sample.first_seen_ns));
    record.last_seen_unix_ns = record
        .last_seen_unix_ns
        .max(clock.unix_ns(sample.last_seen_ns));
    record.tcp_flags |= sample.tcp_flags;
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

    use crate::test_support::port_key as key;

    /// Flow-cache slots over all CPUs of the programs these tests resume.
    const SLOTS: u64 = 1024;

    fn reading(flows: Vec<(FlowKey, FlowSample)>) -> KernelReading {
        cached_reading(flows, Vec::new())
    }

    /// A reading with flow-cache slots: (position, key, sample).
    fn cached_reading(
        flows: Vec<(FlowKey, FlowSample)>,
        slots: Vec<(CachePosition, FlowKey, FlowSample)>,
    ) -> KernelReading {
        let cache_slots: Vec<(CachePosition, FlowSlot)> = slots
            .into_iter()
            .map(|(position, key, sample)| (position, slot(key, sample)))
            .collect();
        KernelReading {
            totals: bytemuck::Zeroable::zeroed(),
            services: Vec::new(),
            cache_slots_used: cache_slots.len(),
            flows,
            cached_flows: Vec::new(),
            cache_slots,
        }
    }

    fn slot(key: FlowKey, sample: FlowSample) -> FlowSlot {
        let check = flow_check(&key);
        FlowSlot {
            check,
            key,
            value: FlowValue {
                packets: sample.packets,
                bytes: sample.bytes,
                ip_bytes: sample.ip_bytes,
                first_seen_ns: sample.first_seen_ns,
                last_seen_ns: sample.last_seen_ns,
                service: sample.service,
                tcp_flags: sample.tcp_flags,
                origin: sample.origin,
                slot_tail: slot_tail(check),
            },
        }
    }

    fn sample(packets: u64, first: u64, last: u64) -> FlowSample {
        FlowSample {
            packets,
            bytes: packets * 100,
            ip_bytes: packets * 86,
            first_seen_ns: first,
            last_seen_ns: last,
            service: 1,
            tcp_flags: 0,
            origin: 0,
        }
    }

    #[test]
    fn flows_accumulate_deltas_across_drains_and_evictions() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            reading(vec![(key(1), sample(3, 10, 20))]),
            FlowClock::monotonic_ns(1_000),
        );
        ledger.absorb(
            reading(vec![(key(1), sample(5, 10, 30))]),
            FlowClock::monotonic_ns(1_000),
        );
        // Evicted and recreated with fewer packets than before.
        ledger.absorb(
            reading(vec![(key(1), sample(2, 40, 50))]),
            FlowClock::monotonic_ns(1_000),
        );
        // Evicted and recreated with more packets: the first-seen time tells.
        ledger.absorb(
            reading(vec![(key(1), sample(9, 60, 70))]),
            FlowClock::monotonic_ns(1_000),
        );
        let record = ledger.flows[&key(1)];
        assert_eq!(record.packets, 5 + 2 + 9);
        assert_eq!(record.bytes, 1600);
        assert_eq!(record.first_seen_unix_ns, 1_010);
        assert_eq!(record.last_seen_unix_ns, 1_070);
        assert_eq!(ledger.drains, 4);
    }

    #[test]
    fn a_flow_whose_service_changes_keeps_each_services_packets() {
        // A reload moves the flow's endpoint from service 1 to service 2
        // (the kernel's value then names 2), and a later one moves it back.
        let with_service = |mut sample: FlowSample, service| {
            sample.service = service;
            sample
        };
        let clock = FlowClock::monotonic_ns(1_000);
        let mut ledger = Ledger::default();
        // In the table, and in a cache slot.
        let cached = |sample| cached_reading(Vec::new(), vec![(7, key(2), sample)]);
        ledger.absorb(reading(vec![(key(1), sample(3, 10, 20))]), clock);
        ledger.absorb(cached(sample(4, 10, 20)), clock);
        ledger.absorb(
            reading(vec![(key(1), with_service(sample(8, 10, 30), 2))]),
            clock,
        );
        ledger.absorb(cached(with_service(sample(6, 10, 30), 2)), clock);
        ledger.absorb(reading(vec![(key(1), sample(9, 10, 40))]), clock);
        let counted = |key: FlowKey| ledger.flows.get(&key).map(|r| (r.service, r.packets));
        assert_eq!(counted(key(1)), Some((1, 3 + 1)));
        assert_eq!(counted(relabelled_key(&key(1), 2)), Some((2, 5)));
        assert_eq!(counted(key(2)), Some((1, 4)));
        assert_eq!(counted(relabelled_key(&key(2), 2)), Some((2, 2)));
        let total: u64 = ledger.flows.values().map(|r| r.packets).sum();
        assert_eq!(total, 9 + 6);
        // A row per service; two flows.
        let report = crate::report::Report::build(
            &ledger,
            &crate::loader::ServiceTable::new(Vec::new()),
            crate::report::ReportContext {
                start: time::OffsetDateTime::UNIX_EPOCH,
                end: time::OffsetDateTime::UNIX_EPOCH,
                sensor: "s".into(),
                interfaces: Vec::new(),
                feeds: Vec::new(),
            },
        );
        assert_eq!(report.flows.len(), 4);
        assert_eq!(report.distinct_flows(), 2);
    }

    #[test]
    fn a_flow_in_both_the_cache_and_the_table_adds_up_without_double_counting() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            cached_reading(
                vec![(key(1), sample(2, 30, 40))],
                vec![(3, key(1), sample(4, 10, 20))],
            ),
            FlowClock::UNIX_NS,
        );
        // The slot grows; the table entry is evicted and comes back.
        ledger.absorb(
            cached_reading(
                vec![(key(1), sample(1, 50, 60))],
                vec![(3, key(1), sample(7, 10, 55))],
            ),
            FlowClock::UNIX_NS,
        );
        // A slot that looks lower adds nothing and does not lower the
        // baseline.
        ledger.absorb(
            cached_reading(Vec::new(), vec![(3, key(1), sample(5, 10, 55))]),
            FlowClock::UNIX_NS,
        );
        ledger.absorb(
            cached_reading(Vec::new(), vec![(3, key(1), sample(8, 10, 70))]),
            FlowClock::UNIX_NS,
        );
        let record = ledger.flows[&key(1)];
        assert_eq!(record.packets, 2 + 1 + 8);
        assert_eq!(record.first_seen_unix_ns, 10);
        assert_eq!(record.last_seen_unix_ns, 70);
        assert_eq!(ledger.live_flows, 1);
    }

    #[test]
    fn recycled_cache_slots_count_each_flow_they_held_once() {
        let mut ledger = Ledger::default();
        let drains = [
            // Flow 1 on two CPUs (positions 0 and 1), flow 2 elsewhere.
            [
                (0, key(1), sample(5, 10, 20)),
                (1, key(1), sample(2, 12, 18)),
                (4, key(2), sample(1, 11, 11)),
            ],
            // Position 1 recycled by flow 3; flow 1 still grows on position
            // 0 (a sum over CPUs would have looked lower, gaining nothing).
            [
                (0, key(1), sample(6, 10, 40)),
                (1, key(3), sample(3, 30, 35)),
                (4, key(2), sample(1, 11, 11)),
            ],
            // Flow 1 takes position 4 over from flow 2 (first seen later
            // than flow 2 was last seen), and grows on position 0.
            [
                (0, key(1), sample(7, 10, 50)),
                (1, key(3), sample(4, 30, 45)),
                (4, key(1), sample(2, 48, 52)),
            ],
        ];
        for slots in drains {
            ledger.absorb(
                cached_reading(Vec::new(), slots.to_vec()),
                FlowClock::UNIX_NS,
            );
        }
        assert_eq!(ledger.flows[&key(1)].packets, 7 + 2 + 2);
        assert_eq!(ledger.flows[&key(1)].bytes, 1100);
        assert_eq!(ledger.flows[&key(1)].first_seen_unix_ns, 10);
        assert_eq!(ledger.flows[&key(1)].last_seen_unix_ns, 52);
        assert_eq!(ledger.flows[&key(2)].packets, 1);
        assert_eq!(ledger.flows[&key(3)].packets, 4);
        // The same flow claiming a slot anew: told apart by its first-seen
        // time, though its check is the slot's old one.
        ledger.absorb(
            cached_reading(Vec::new(), vec![(4, key(1), sample(1, 60, 60))]),
            FlowClock::UNIX_NS,
        );
        assert_eq!(ledger.flows[&key(1)].packets, 12);
    }

    #[test]
    fn torn_cache_slots_are_not_trusted() {
        let whole = slot(key(1), sample(1, 10, 10));
        let mask = u32::MAX >> 8;
        let index = flow_slot(whole.check, mask);
        assert!(trusted(&whole, index, mask));
        assert!(!trusted(&whole, index ^ 1, mask));
        // A recycle caught after its tail was written, before its check.
        let mut torn = whole;
        torn.value.slot_tail ^= 1;
        assert!(!trusted(&torn, index, mask));
        let mut torn = whole;
        torn.key.port = 9;
        assert!(!trusted(&torn, index, mask));
        let mut empty = whole;
        empty.check = 0;
        assert!(!trusted(&empty, index, mask));
    }

    fn totals_with(ipv4: u64, inserts: u64) -> Totals {
        let mut totals: Totals = bytemuck::Zeroable::zeroed();
        totals.ipv4 = ipv4;
        totals.flow_inserts = inserts;
        totals
    }

    fn full_reading(ipv4: u64, flows: Vec<(FlowKey, FlowSample)>) -> KernelReading {
        let mut reading = reading(flows);
        reading.totals = totals_with(ipv4, reading.flows.len() as u64);
        reading
    }

    #[test]
    fn cuts_split_counts_exactly_and_a_resumed_ledger_counts_only_what_came_after() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            full_reading(10, vec![(key(1), sample(4, 10, 20))]),
            FlowClock::UNIX_NS,
        );
        let first = ledger.since_mark();
        let checkpoint = ledger.cut();
        assert_eq!(first.totals.ipv4, 10);
        assert_eq!(first.flows[&key(1)].packets, 4);

        // The flow spans the cut: its later packets land in the next interval.
        ledger.absorb(
            full_reading(
                25,
                vec![(key(1), sample(9, 10, 40)), (key(2), sample(2, 30, 35))],
            ),
            FlowClock::UNIX_NS,
        );
        let second = ledger.since_mark();
        assert_eq!(second.totals.ipv4, 15);
        assert_eq!(second.flows[&key(1)].packets, 5);
        assert_eq!(second.flows[&key(2)].packets, 2);
        assert_eq!(second.drains, 1);

        // Another daemon resumes from the first cut's checkpoint, through text.
        let text = serde_json::to_string(&checkpoint.to_text()).unwrap();
        let checkpoint = Checkpoint::from_text(&serde_json::from_str(&text).unwrap()).unwrap();
        let mut resumed = Ledger::resume(&checkpoint, SLOTS).unwrap();
        resumed.absorb(
            full_reading(
                25,
                vec![(key(1), sample(9, 10, 40)), (key(2), sample(2, 30, 35))],
            ),
            FlowClock::UNIX_NS,
        );
        let interval = resumed.since_mark();
        assert_eq!(interval.totals.ipv4, 15);
        assert_eq!(interval.flows[&key(1)].packets, 5);
        assert_eq!(interval.flows[&key(1)].first_seen_unix_ns, 10);
        assert_eq!(interval.flows[&key(2)].packets, 2);
        assert_eq!(interval.flows.len(), 2);
    }

    #[test]
    fn a_checkpoint_of_another_layout_is_refused() {
        let text = CheckpointText {
            layout: CHECKPOINT_LAYOUT,
            totals: "00ff".into(),
            services: String::new(),
            evictions: 0,
            flows: String::new(),
            slots: String::new(),
        };
        assert!(Checkpoint::from_text(&text).is_none());
        // One written before slots had baselines of their own.
        let mut ledger = Ledger::default();
        ledger.absorb(full_reading(1, Vec::new()), FlowClock::UNIX_NS);
        let mut text = serde_json::to_value(ledger.cut().to_text()).unwrap();
        assert!(Checkpoint::from_text(&serde_json::from_value(text.clone()).unwrap()).is_some());
        text.as_object_mut().unwrap().remove("layout");
        assert!(Checkpoint::from_text(&serde_json::from_value(text).unwrap()).is_none());
    }

    #[test]
    fn checkpointed_table_baselines_follow_what_the_table_holds() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            reading(vec![
                (key(1), sample(3, 10, 20)),
                (key(2), sample(1, 15, 15)),
            ]),
            FlowClock::UNIX_NS,
        );
        let checkpoint = ledger.cut();
        let checkpointed = |checkpoint: &Checkpoint| -> Vec<FlowKey> {
            checkpoint.flows.iter().map(|flow| flow.key).collect()
        };
        assert_eq!(checkpointed(&checkpoint), [key(1), key(2)]);
        // A resumed daemon that cuts before its first drain checkpoints the
        // same baselines.
        let mut resumed = Ledger::resume(&checkpoint, SLOTS).unwrap();
        assert_eq!(resumed.cut().flows, checkpoint.flows);
        // A drain that fails after reading flow 2 only: flow 1 may still be
        // in the table, so its baseline stays in the next checkpoint.
        resumed.next_drain();
        resumed.absorb_table_flow(&key(2), &sample(2, 15, 25), FlowClock::UNIX_NS);
        assert_eq!(checkpointed(&resumed.cut()), [key(1), key(2)]);
        // A whole drain without flow 1 (evicted): it leaves the checkpoint.
        resumed.absorb(
            reading(vec![(key(2), sample(4, 15, 30))]),
            FlowClock::UNIX_NS,
        );
        let checkpoint = resumed.cut();
        assert_eq!(checkpointed(&checkpoint), [key(1), key(2)][1..]);
        assert_eq!({ checkpoint.flows[0].table.packets }, 4);
    }

    #[test]
    fn a_checkpoint_naming_a_slot_past_the_cache_is_refused_not_allocated_for() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            cached_reading(Vec::new(), vec![(5, key(1), sample(4, 10, 20))]),
            FlowClock::UNIX_NS,
        );
        let mut checkpoint = ledger.cut();
        assert!(Ledger::resume(&checkpoint, 6).is_some());
        assert!(Ledger::resume(&checkpoint, 5).is_none());
        // A corrupt position would have made the ledger grow to it.
        checkpoint.slots[0].position = 1 << 50;
        assert!(Ledger::resume(&checkpoint, SLOTS).is_none());
    }

    #[test]
    fn a_layout_2_checkpoint_is_read() {
        let old = CheckpointFlowV2 {
            key: key(7),
            packets: 5,
            bytes: 500,
            ip_bytes: 430,
            first_seen_ns: (9 << 32) | 77,
        };
        let mut ledger = Ledger::default();
        ledger.absorb(full_reading(1, Vec::new()), FlowClock::UNIX_NS);
        let mut text = ledger.cut().to_text();
        text.layout = 2;
        text.flows = to_hex(bytemuck::bytes_of(&old));
        let checkpoint = Checkpoint::from_text(&text).expect("layout 2 is read");
        let mut resumed = Ledger::resume(&checkpoint, SLOTS).unwrap();
        // The same table entry, grown by two packets: only those count.
        resumed.absorb(
            reading(vec![(key(7), sample(7, (9 << 32) | 77, 90))]),
            FlowClock::UNIX_NS,
        );
        assert_eq!(resumed.since_mark().flows[&key(7)].packets, 2);
    }

    #[test]
    fn a_resumed_ledger_takes_cache_slots_from_their_checkpointed_baselines() {
        let mut ledger = Ledger::default();
        ledger.absorb(
            cached_reading(Vec::new(), vec![(5, key(1), sample(4, 10, 20))]),
            FlowClock::UNIX_NS,
        );
        let text = serde_json::to_string(&ledger.cut().to_text()).unwrap();
        let checkpoint = Checkpoint::from_text(&serde_json::from_str(&text).unwrap()).unwrap();
        let mut resumed = Ledger::resume(&checkpoint, SLOTS).unwrap();
        resumed.absorb(
            cached_reading(
                Vec::new(),
                vec![
                    (5, key(1), sample(6, 10, 30)),
                    (6, key(2), sample(1, 25, 25)),
                ],
            ),
            FlowClock::UNIX_NS,
        );
        let interval = resumed.since_mark();
        assert_eq!(interval.flows[&key(1)].packets, 2);
        assert_eq!(interval.flows[&key(2)].packets, 1);
    }
}
