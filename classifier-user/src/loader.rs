//! Loader: load the embedded XDP object, size and fill its maps from the
//! validated feeds, attach it to interfaces and detach it again. Hands the
//! loaded `Sensor` to `drain` and `testrun`.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, Map,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{Extension, Program, ProgramError, ProgramFd, Xdp, XdpMode, xdp::XdpLinkId},
};
use classifier_common::{
    CAPTURE_CLOCK_FRAME_LEN, CAPTURE_CLOCK_TIME, EndpointValue, FlowBucket, FlowCacheShape,
    GLOBAL_CAPTURE_CLOCK, GLOBAL_FLOW_CACHE_MASK, GLOBAL_LEARN_RATE, GLOBAL_NEW_FLOW_EVERY_PACKET,
    GLOBAL_VERDICT, MAP_CAPTURE_BUDGET, MAP_CAPTURE_CLOCK, MAP_CAPTURE_CONFIG, MAP_CAPTURE_EVENTS,
    MAP_CAPTURE_FLOWS, MAP_ENDPOINT_HINTS, MAP_ENDPOINTS_V6, MAP_FLOW_CACHE,
    MAP_FLOW_CACHE_DRAINED, MAP_FLOWS, MAP_LEARN_BUDGET, MAP_LEARN_EVENTS, MAP_LEARNED,
    MAP_SERVICES, MAP_TCP_PROBES, MAP_TOTALS, MAP_V4_LOWER, MAP_V4_TOP, MAP_VERDICTS,
    MAP_WATCHED_HINT, MAP_WATCHED_V6, MAX_SERVICES, PROGRAM_NAME, V4_LOWER_DECLARED_SIZE,
    WATCHED_24_ALL, WATCHED_24_NONE, WATCHED_24_SOME, WATCHED_V4_BLOCKS, WATCHED_V4_WALK,
    WatchedBlock, WatchedHint, WatchedHints, hint_index_v4, hint_index_v6,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    drain::{CounterMaps, DrainError},
    feeds::{EndpointFeed, WatchedSet},
    object_file::{ObjectError, ValueSize, with_value_sizes},
    v4_table::{V4_LOWER_MAX_BYTES, V4Lower, V4Table},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The XDP object, built by `cargo xtask build` (empty when the crate was
/// built without it, e.g. by a plain `cargo check`).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier-ebpf.o"));

/// Default flow-table capacity (keys; each holds one value per CPU).
pub const DEFAULT_FLOW_CAPACITY: u32 = 65_536;
/// Kernel memory of a flow table (an LRU per-CPU hash) of `flows`
/// entries, about: per entry its key and the hash element's header (88
/// bytes) and one value per possible CPU.
pub fn flow_table_bytes(flows: u32) -> u64 {
    const KEY_AND_ELEMENT: u64 = 88;
    let cpus = aya::util::nr_cpus().map_or(1, |cpus| cpus.max(1)) as u64;
    u64::from(flows) * (KEY_AND_ELEMENT + size_of::<classifier_common::FlowValue>() as u64 * cpus)
}

/// Default flow-cache slots per CPU (96 bytes each).
pub const DEFAULT_FLOW_CACHE_SLOTS: u32 = 16_384;
/// The protocol services every service table starts with (ids 1 to 6).
const PROTOCOL_SERVICE_COUNT: usize = classifier_common::PROTOCOL_SERVICES.len();

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this classifier binary was built without its XDP object; build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("cannot load the XDP object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error(
        "--flow-capacity {flows}: the kernel cannot make a flow table that large \
         (about {mib} MiB of kernel memory on this machine): {source}"
    )]
    FlowTable {
        flows: u32,
        mib: u64,
        source: std::io::Error,
    },
    #[error("the XDP object has no map {0} (object and loader disagree)")]
    MissingMap(&'static str),
    #[error("the XDP object has no program {PROGRAM_NAME}")]
    MissingProgram,
    #[error("the kernel refused the XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error("cannot fill map {map}: {source}")]
    Fill {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot map {map} into memory to fill it: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `total`: the services that would take ids (the protocol services
    /// aside); `feed`: the endpoint feed's; `more`: the others (named only
    /// by the domain feed, or kept from feeds before a reload).
    #[error(
        "the endpoint feed has {feed} services{}; at most {} fit beside the {} protocol services",
        match more {
            0 => String::new(),
            more => format!(
                " and {more} more are named only by the domain feed (learning; --no-learn leaves them out) or by feeds before a reload, {total} in all"
            ),
        },
        MAX_SERVICES as usize - 1 - PROTOCOL_SERVICE_COUNT,
        PROTOCOL_SERVICE_COUNT
    )]
    TooManyServices {
        total: usize,
        feed: usize,
        more: usize,
    },
    #[error(
        "the endpoint feed has {prefixes} {family} prefixes but the capacity is {capacity} (raise --endpoint-capacity-{family})"
    )]
    OverCapacity {
        family: &'static str,
        prefixes: usize,
        capacity: u32,
    },
    #[error(transparent)]
    ObjectFile(#[from] ObjectError),
    #[error(
        "the IPv4 table of the watched set and endpoint feed needs more than {} MiB below its first level, more than the kernel's verifier lets a program address in one map value",
        V4_LOWER_MAX_BYTES >> 20
    )]
    V4TableTooLarge,
    #[error("interface {iface}: {problem}")]
    Attach { iface: String, problem: String },
}

/// How to attach: `auto` tries native (driver) mode and falls back to
/// generic (skb) mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Map sizes; `None` sizes a map from the loaded feed.
#[derive(Debug, Clone, Copy)]
pub struct Capacities {
    pub endpoints_v4: Option<u32>,
    pub endpoints_v6: Option<u32>,
    pub flows: u32,
    /// Rounded up to a power of two.
    pub flow_cache_slots: u32,
    /// Packets handed to userspace to learn from per second, at most; 0
    /// hands none over.
    pub learn_rate: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            endpoints_v4: None,
            endpoints_v6: None,
            flows: DEFAULT_FLOW_CAPACITY,
            flow_cache_slots: DEFAULT_FLOW_CACHE_SLOTS,
            learn_rate: classifier_common::DEFAULT_LEARN_RATE,
        }
    }
}

/// Loads the program with `load`, retrying when the kernel interrupted the
/// verifier (EAGAIN: a signal arrived while it ran; libbpf retries the same
/// way).
fn load_retrying(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), LoadError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Ok(()) => return Ok(()),
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                log::warn!(
                    "the kernel interrupted the verifier (attempt {attempt} of {ATTEMPTS}); loading again"
                );
                attempt += 1;
            }
            Err(error) => return Err(LoadError::Program(error)),
        }
    }
}

/// The maps a daemon's program shares with the program it replaces (a
/// feed reload): the loader reuses their pins under `maps/` (creates and
/// pins them at the first load). The counters; what flows taught (the
/// verdicts and learning maps, which the daemon also opens by path); each
/// flow's turns so far (packets captured, TCP segments handed over for
/// learning), so a reload does not start them again; the capture and
/// learning budgets of the current second, so a reload does not grant a
/// second's worth more; and the capture ring and setting.
pub const KEPT_MAPS: [&str; 15] = [
    MAP_TOTALS,
    MAP_SERVICES,
    MAP_FLOWS,
    MAP_FLOW_CACHE,
    MAP_FLOW_CACHE_DRAINED,
    MAP_VERDICTS,
    MAP_LEARN_EVENTS,
    MAP_LEARNED,
    MAP_ENDPOINT_HINTS,
    MAP_TCP_PROBES,
    MAP_LEARN_BUDGET,
    MAP_CAPTURE_EVENTS,
    MAP_CAPTURE_CONFIG,
    MAP_CAPTURE_BUDGET,
    MAP_CAPTURE_FLOWS,
];

/// The maps each program gets afresh: the feeds (filled from them at load)
/// and the replay clock (read only by `classifier pcap`'s program).
pub const REBUILT_MAPS: [&str; 6] = [
    MAP_WATCHED_HINT,
    MAP_V4_TOP,
    MAP_V4_LOWER,
    MAP_WATCHED_V6,
    MAP_ENDPOINTS_V6,
    MAP_CAPTURE_CLOCK,
];

/// A daemon's program: where its counters are pinned, and how it runs.
pub struct Pinned<'a> {
    /// The counter maps (every map of [`KEPT_MAPS`]) live at
    /// `maps_dir/NAME`.
    pub maps_dir: &'a Path,
    /// `Some`: loaded as an extension replacing this function of this
    /// program (libxdp's dispatcher, `--xdp-dispatcher`), not as an XDP
    /// program attached by itself.
    pub extension_of: Option<(ProgramFd, &'static str)>,
}

/// How the program ends after counting a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A sensor: every packet goes on to the stack.
    Pass,
    /// Benchmarks only: measures the program without the stack behind it.
    Drop,
}

/// How the program is set up: as a sensor ([`ProgramSetup::SENSOR`]), or
/// for a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramSetup {
    pub verdict: Verdict,
    /// Benchmarks only: every matched packet counts as the first of a new
    /// flow (`classifier_common::GLOBAL_NEW_FLOW_EVERY_PACKET`).
    pub new_flow_every_packet: bool,
}

impl ProgramSetup {
    pub const SENSOR: Self = Self {
        verdict: Verdict::Pass,
        new_flow_every_packet: false,
    };
}

/// What flows are stamped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Clock {
    /// The kernel's monotonic clock: a sensor.
    Kernel = 0,
    /// The time userspace writes into the capture clock: a replay.
    Capture = 1,
}

/// The capture clock of a sensor loaded with [`Sensor::load_for_capture`],
/// mapped into memory: setting it costs a store, not a syscall.
pub struct CaptureClock {
    address: *mut u64,
}

impl CaptureClock {
    /// Flows the program counts from now on are stamped `unix_ns`.
    pub fn set(&mut self, unix_ns: i64) {
        self.write(CAPTURE_CLOCK_TIME, unix_ns as u64);
    }

    /// The next frame counts as `len` bytes, whatever part of it the test
    /// run hands the program.
    pub fn set_frame_len(&mut self, len: usize) {
        self.write(CAPTURE_CLOCK_FRAME_LEN, len as u64);
    }

    fn write(&mut self, entry: u32, value: u64) {
        // SAFETY: `address` is a live shared mapping of the map's values
        // (CAPTURE_CLOCK_ENTRIES u64s, within one page); the program only
        // reads them while a test run we start is running.
        unsafe { std::ptr::write_volatile(self.address.add(entry as usize), value) };
    }
}

impl Drop for CaptureClock {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `Sensor::capture_clock`.
        unsafe { libc::munmap(self.address.cast(), page_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Service names by the id the kernel counts them under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    names: Vec<String>,
}

impl LoadError {
    /// The refusal of `table` (built from `feed`'s services and perhaps
    /// others), with the counts it gives.
    pub fn too_many_services(table: &ServiceTable, feed: &EndpointFeed) -> Self {
        // A feed service named as a protocol service shares its id.
        let feed_only = ServiceTable::new(feed.services()).len();
        Self::TooManyServices {
            total: table.len().saturating_sub(PROTOCOL_SERVICE_COUNT),
            feed: feed_only.saturating_sub(PROTOCOL_SERVICE_COUNT),
            more: table.len().saturating_sub(feed_only),
        }
    }
}

impl ServiceTable {
    /// The protocol services (`classifier_common::PROTOCOL_SERVICES`, ids
    /// 1 to 6), then `names` they do not already hold, in order.
    pub fn new(names: Vec<String>) -> Self {
        let mut table: Vec<String> = classifier_common::PROTOCOL_SERVICES
            .iter()
            .map(|name| (*name).to_string())
            .collect();
        for name in names {
            if !table.contains(&name) {
                table.push(name);
            }
        }
        Self { names: table }
    }

    /// Id 0 is never assigned.
    pub fn name(&self, id: u32) -> Option<&str> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.names.get(index).map(String::as_str)
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|index| u32::try_from(index + 1).ok())
    }

    /// The names in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// This table with the services of `names` it lacks appended: ids that
    /// counters already hold keep their meaning across a feed reload (a
    /// service dropped from the feed keeps its id and its counts).
    pub fn extended_with(&self, names: Vec<String>) -> Self {
        let mut extended = self.names.clone();
        for name in names {
            if !extended.contains(&name) {
                extended.push(name);
            }
        }
        Self { names: extended }
    }

    /// Name to id, for filling maps.
    pub fn ids(&self) -> HashMap<&str, u32> {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| Some((name.as_str(), u32::try_from(index + 1).ok()?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// An interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    pub(crate) link: XdpLinkId,
}

/// The loaded program, its maps, and where it is attached.
pub struct Sensor {
    pub(crate) ebpf: Ebpf,
    /// Taken out of `ebpf` once filled; `ebpf` keeps the feed maps.
    pub(crate) counters: CounterMaps,
    pub services: ServiceTable,
    pub attachments: Vec<Attachment>,
    /// Flow-cache slots per CPU (a power of two).
    pub flow_cache_slots: u32,
}

impl Sensor {
    /// Loads the program with maps sized for the feeds, and fills them.
    /// Nothing is attached yet.
    pub fn load(
        watched: &WatchedSet,
        endpoints: &EndpointFeed,
        capacities: Capacities,
    ) -> Result<Self, LoadError> {
        Self::load_as(watched, endpoints, capacities, ProgramSetup::SENSOR)
    }

    /// [`Sensor::load`] with the program set up as `setup` says: as a
    /// sensor, or as a benchmark asks (to drop after counting, to count
    /// every matched packet as a new flow).
    pub fn load_as(
        watched: &WatchedSet,
        endpoints: &EndpointFeed,
        capacities: Capacities,
        setup: ProgramSetup,
    ) -> Result<Self, LoadError> {
        let services = ServiceTable::new(endpoints.services());
        Self::load_with(
            watched,
            endpoints,
            capacities,
            setup,
            Clock::Kernel,
            services,
            None,
        )
    }

    /// [`Sensor::load`] whose counter maps live at `maps_dir/NAME` on a BPF
    /// filesystem: created and pinned there when absent, and reused when a
    /// running sensor already pinned them, so a new program (a feed reload)
    /// counts on in the same counters. `services` keeps the ids of the
    /// services the counters already hold (new ones are appended).
    pub fn load_pinned(
        watched: &WatchedSet,
        endpoints: &EndpointFeed,
        capacities: Capacities,
        services: ServiceTable,
        pinned: Pinned<'_>,
    ) -> Result<Self, LoadError> {
        Self::load_with(
            watched,
            endpoints,
            capacities,
            ProgramSetup::SENSOR,
            Clock::Kernel,
            services,
            Some(pinned),
        )
    }

    /// [`Sensor::load`] for replaying a capture: flows are stamped with the
    /// time written through [`Sensor::capture_clock`] (each frame's own).
    /// `services`: the feed's, and any others learning may name.
    pub fn load_for_capture(
        watched: &WatchedSet,
        endpoints: &EndpointFeed,
        capacities: Capacities,
        services: ServiceTable,
    ) -> Result<Self, LoadError> {
        Self::load_with(
            watched,
            endpoints,
            capacities,
            ProgramSetup::SENSOR,
            Clock::Capture,
            services,
            None,
        )
    }

    /// The learning maps (the ring buffer and the learned endpoints), taken
    /// out of the loader's hands; `None` if taken before.
    pub fn take_learn_maps(&mut self) -> Option<(Map, Map, Map, Map)> {
        let events = self.ebpf.take_map(MAP_LEARN_EVENTS)?;
        let learned = self.ebpf.take_map(MAP_LEARNED)?;
        let verdicts = self.ebpf.take_map(MAP_VERDICTS)?;
        let hints = self.ebpf.take_map(MAP_ENDPOINT_HINTS)?;
        Some((events, learned, verdicts, hints))
    }

    fn load_with(
        watched: &WatchedSet,
        endpoints: &EndpointFeed,
        capacities: Capacities,
        setup: ProgramSetup,
        clock: Clock,
        services: ServiceTable,
        pinned: Option<Pinned<'_>>,
    ) -> Result<Self, LoadError> {
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        if services.len() >= MAX_SERVICES as usize {
            return Err(LoadError::too_many_services(&services, endpoints));
        }
        let v4_count = endpoints.count(true);
        let v6_count = endpoints.count(false);
        capacity("v4", v4_count, capacities.endpoints_v4)?;
        let v6_capacity = capacity("v6", v6_count, capacities.endpoints_v6)?;
        let table = v4_table(watched, endpoints, &services);
        let lower = table.lower().ok_or(LoadError::V4TableTooLarge)?;
        let cache_slots = capacities
            .flow_cache_slots
            .clamp(1, 1 << 24)
            .next_power_of_two();
        let cache_mask = cache_slots - 1;
        let cache = FlowCacheShape::of(cache_slots);
        let object = with_value_sizes(
            EBPF_OBJECT,
            &[
                ValueSize {
                    map: MAP_V4_LOWER,
                    declared: V4_LOWER_DECLARED_SIZE,
                    loaded: lower.value_size,
                },
                ValueSize {
                    map: MAP_FLOW_CACHE,
                    declared: size_of::<FlowBucket>(),
                    loaded: cache.value_size(),
                },
            ],
        )?;
        let verdict = match setup.verdict {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
        };
        let new_flow_every_packet = u32::from(setup.new_flow_every_packet);

        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        let extension_of = pinned
            .as_ref()
            .and_then(|pinned| pinned.extension_of.as_ref());
        if extension_of.is_some() {
            loader.extension(PROGRAM_NAME);
        }
        if let Some(dir) = pinned.as_ref().map(|pinned| pinned.maps_dir) {
            for name in KEPT_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        for (name, value) in &lower.globals {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader
            .override_global(GLOBAL_FLOW_CACHE_MASK, &cache_mask, true)
            .override_global(GLOBAL_VERDICT, &verdict, true)
            .override_global(GLOBAL_CAPTURE_CLOCK, &(clock as u32), true)
            .override_global(GLOBAL_LEARN_RATE, &capacities.learn_rate, true)
            .override_global(GLOBAL_NEW_FLOW_EVERY_PACKET, &new_flow_every_packet, true)
            .map_max_entries(MAP_FLOW_CACHE, cache.buckets)
            .map_max_entries(MAP_ENDPOINTS_V6, v6_capacity)
            .map_max_entries(MAP_WATCHED_V6, watched.v6.len().max(256) as u32)
            .map_max_entries(MAP_FLOWS, capacities.flows.max(1))
            .load(object.bytes())
            .map_err(|error| match error {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })
                    if name == MAP_FLOWS =>
                {
                    LoadError::FlowTable {
                        flows: capacities.flows,
                        mib: flow_table_bytes(capacities.flows) / (1 << 20),
                        source: io_error,
                    }
                }
                other => LoadError::Object(other),
            })?;

        for name in classifier_common::ALL_MAPS {
            if ebpf.map(name).is_none() {
                return Err(LoadError::MissingMap(name));
            }
        }
        let program = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::MissingProgram)?;
        match extension_of {
            None => {
                let program: &mut Xdp = program.try_into().map_err(LoadError::Program)?;
                load_retrying(|| program.load())?;
            }
            Some((target, function)) => {
                let program: &mut Extension = program.try_into().map_err(LoadError::Program)?;
                load_retrying(|| {
                    let target = target
                        .try_clone()
                        .map_err(|io_error| aya::sys::SyscallError {
                            call: "dup",
                            io_error,
                        })?;
                    program.load(target, function)
                })?;
            }
        }

        let counters =
            CounterMaps::take_from(&mut ebpf).ok_or(LoadError::MissingMap("counters"))?;
        let mut sensor = Self {
            ebpf,
            counters,
            services,
            attachments: Vec::new(),
            flow_cache_slots: cache_slots,
        };
        sensor.fill_watched(watched)?;
        sensor.fill_endpoints_v6(endpoints)?;
        sensor.fill_global(MAP_V4_TOP, table.top.as_ref())?;
        sensor.fill_v4_lower(&lower)?;
        Ok(sensor)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, LoadError> {
        self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))
    }

    /// Writes `value` into the program global `name` (a data section,
    /// which aya makes an array of one value); the program reads it in
    /// place.
    fn fill_global<V: aya::Pod>(&mut self, name: &'static str, value: &V) -> Result<(), LoadError> {
        let mut global: Array<_, V> =
            Array::try_from(self.map_mut(name)?).map_err(|source| fill_error(name, source))?;
        global
            .set(0, value, 0)
            .map_err(|source| fill_error(name, source))
    }

    /// Writes the IPv4 table's lower levels into their global, whose size
    /// the loader set to theirs (one write of the whole value).
    fn fill_v4_lower(&mut self, lower: &V4Lower<'_>) -> Result<(), LoadError> {
        let mut value = Vec::with_capacity(lower.value_size as usize);
        for part in lower.parts {
            value.extend_from_slice(part);
        }
        value.resize(lower.value_size as usize, 0);
        let Map::Array(global) = self.map_mut(MAP_V4_LOWER)? else {
            return Err(LoadError::MissingMap(MAP_V4_LOWER));
        };
        crate::bpf_sys::set_only_value(global.fd().as_fd(), &value).map_err(|io_error| {
            fill_error(
                MAP_V4_LOWER,
                aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error,
                }),
            )
        })
    }

    fn fill_watched(&mut self, watched: &WatchedSet) -> Result<(), LoadError> {
        let v6 = watched
            .v6
            .iter()
            .map(|net| (net.prefix_len(), net.network().octets(), 1u32));
        fill_trie(&mut self.ebpf, MAP_WATCHED_V6, v6)?;

        self.fill_global(MAP_WATCHED_HINT, watched_hints(watched).as_ref())
    }

    fn fill_endpoints_v6(&mut self, endpoints: &EndpointFeed) -> Result<(), LoadError> {
        let ids = self.services.ids();
        let value = |service: &str| EndpointValue {
            service: ids[service],
        };
        let v6 = endpoints
            .endpoints
            .iter()
            .filter_map(|endpoint| match endpoint.net {
                IpNet::V6(net) => Some((
                    net.prefix_len(),
                    net.network().octets(),
                    value(&endpoint.service),
                )),
                IpNet::V4(_) => None,
            });
        fill_trie(&mut self.ebpf, MAP_ENDPOINTS_V6, v6)
    }

    pub(crate) fn program(&self) -> Result<&Xdp, LoadError> {
        self.any_program()?.try_into().map_err(LoadError::Program)
    }

    /// The program, loaded as XDP or as an extension.
    pub fn any_program(&self) -> Result<&Program, LoadError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(LoadError::MissingProgram)
    }

    pub(crate) fn any_program_mut(&mut self) -> Result<&mut Program, LoadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::MissingProgram)
    }

    pub(crate) fn program_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::MissingProgram)?
            .try_into()
            .map_err(LoadError::Program)
    }

    /// Maps the capture clock (see [`Sensor::load_for_capture`]).
    pub fn capture_clock(&self) -> Result<CaptureClock, LoadError> {
        let name = MAP_CAPTURE_CLOCK;
        let Some(Map::Array(data)) = self.ebpf.map(name) else {
            return Err(LoadError::MissingMap(name));
        };
        // SAFETY: a fresh shared mapping of the map's fd (one page holds
        // its one u64); unmapped by `CaptureClock`'s drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(LoadError::Mmap {
                map: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(CaptureClock {
            address: address.cast(),
        })
    }

    /// Attaches to `iface`; returns the mode it got ("native" or "generic").
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&'static str, LoadError> {
        let attach_error = |problem: String| LoadError::Attach {
            iface: iface.to_string(),
            problem,
        };
        let if_index =
            interface_index(iface).ok_or_else(|| attach_error("no such interface".into()))?;
        let program = self.program_mut()?;
        let tries: &[&'static str] = match mode {
            AttachMode::Auto => &["native", "generic"],
            AttachMode::Native => &["native"],
            AttachMode::Generic => &["generic"],
        };
        let mut failures = Vec::new();
        for name in tries {
            match program.attach_to_if_index(if_index, xdp_mode(name)) {
                Ok(link) => {
                    if !failures.is_empty() {
                        log::warn!("{iface}: {}; fell back to {name} mode", failures.join("; "));
                    }
                    self.attachments.push(Attachment {
                        iface: iface.to_string(),
                        mode: name,
                        link,
                    });
                    return Ok(name);
                }
                Err(error) => failures.push(format!("{name} mode failed: {}", error_chain(&error))),
            }
        }
        Err(attach_error(format!(
            "cannot attach XDP: {}",
            failures.join("; ")
        )))
    }

    /// See [`CounterMaps::allow_recycling`]: only for whoever owns the
    /// ledger this sensor's drains go into.
    pub fn allow_recycling(&mut self, drain_started_tick: u64) -> Result<(), DrainError> {
        self.counters.allow_recycling(drain_started_tick)
    }

    /// Detaches from every interface; the maps stay readable.
    pub fn detach_all(&mut self) {
        let attachments = std::mem::take(&mut self.attachments);
        let Ok(program) = self.program_mut() else {
            return;
        };
        for attachment in attachments {
            if let Err(error) = program.detach(attachment.link) {
                log::error!(
                    "{}: cannot detach: {}",
                    attachment.iface,
                    error_chain(&error)
                );
            }
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The IPv4 table for the watched set and the feed's IPv4 endpoints.
fn v4_table(watched: &WatchedSet, endpoints: &EndpointFeed, services: &ServiceTable) -> V4Table {
    let ids = services.ids();
    let v4_endpoints: Vec<(Ipv4Net, u16)> = endpoints
        .endpoints
        .iter()
        .filter_map(|endpoint| match endpoint.net {
            // Ids are below MAX_SERVICES, checked above.
            IpNet::V4(net) => Some((net, ids[endpoint.service.as_str()] as u16)),
            IpNet::V6(_) => None,
        })
        .collect();
    V4Table::build(&watched.v4, &v4_endpoints)
}

fn fill_trie<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: impl Iterator<Item = (u8, K, V)>,
) -> Result<(), LoadError> {
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut trie: LpmTrie<_, K, V> =
        LpmTrie::try_from(map).map_err(|source| fill_error(name, source))?;
    for (prefix_len, address, value) in entries {
        trie.insert(&Key::new(u32::from(prefix_len), address), value, 0)
            .map_err(|source| fill_error(name, source))?;
    }
    Ok(())
}

fn fill_error(map: &'static str, source: aya::maps::MapError) -> LoadError {
    LoadError::Fill { map, source }
}

fn capacity(family: &'static str, prefixes: usize, flag: Option<u32>) -> Result<u32, LoadError> {
    let needed = u32::try_from(prefixes).unwrap_or(u32::MAX).max(1);
    match flag {
        Some(capacity) if (capacity as usize) < prefixes => Err(LoadError::OverCapacity {
            family,
            prefixes,
            capacity,
        }),
        Some(capacity) => Ok(capacity.max(1)),
        None => Ok(needed),
    }
}

/// The watched prefilter of both families, on the heap (128 KiB).
pub fn watched_hints(watched: &WatchedSet) -> Box<WatchedHints> {
    let mut hints: Box<WatchedHints> = bytemuck::zeroed_box();
    mark_watched_v4(&mut hints, &watched.v4);
    mark_watched_v6(&mut hints.v6, &watched.v6);
    hints
}

/// Sets the prefilter entries for IPv4, every /16 that a watched prefix
/// touches, and their blocks of /24s: a /24 inside a watched prefix of /24
/// or shorter is all watched, one holding only longer watched prefixes
/// some. /16s with the same /24s share a block; /16s beyond the last
/// block get [`WATCHED_V4_WALK`] (the IPv4 table decides).
fn mark_watched_v4(hints: &mut WatchedHints, prefixes: &[Ipv4Net]) {
    let mut slash16s: BTreeMap<u32, WatchedBlock> = BTreeMap::new();
    for net in prefixes {
        let first = u32::from(net.network());
        let len = net.prefix_len();
        let slash16_count = 1u32 << 16u8.saturating_sub(len);
        for slash16 in (first >> 16)..(first >> 16) + slash16_count {
            let block = slash16s.entry(slash16).or_insert(WatchedBlock {
                slash24: [WATCHED_24_NONE; 256],
            });
            if len <= 16 {
                block.slash24 = [WATCHED_24_ALL; 256];
                continue;
            }
            let third = ((first >> 8) & 0xff) as usize;
            let slash24_count = 1usize << 24u8.saturating_sub(len);
            for slash24 in &mut block.slash24[third..third + slash24_count] {
                if len <= 24 {
                    *slash24 = WATCHED_24_ALL;
                } else if *slash24 == WATCHED_24_NONE {
                    *slash24 = WATCHED_24_SOME;
                }
            }
        }
    }
    let mut blocks: HashMap<WatchedBlock, u8> = HashMap::new();
    for (slash16, block) in slash16s {
        let next = blocks.len();
        let entry = match blocks.get(&block) {
            Some(&entry) => entry,
            None if next < WATCHED_V4_BLOCKS => {
                hints.v4_blocks[next] = block;
                let entry = u8::try_from(next + 1).expect("at most 254 blocks");
                blocks.insert(block, entry);
                entry
            }
            None => WATCHED_V4_WALK,
        };
        hints.v4.entries[hint_index_v4((slash16 << 16).to_be_bytes())] = entry;
    }
}

/// Sets the prefilter entries for IPv6: the folded first 32 bits of every
/// address a watched prefix covers; prefixes shorter than /16 set every
/// entry.
fn mark_watched_v6(hint: &mut WatchedHint, prefixes: &[Ipv6Net]) {
    for net in prefixes {
        if net.prefix_len() < 16 {
            hint.entries.fill(1);
            break;
        }
        let base = u32::from_be_bytes(net.network().octets()[..4].try_into().expect("4 bytes"));
        let variable_bits = 32u8.saturating_sub(net.prefix_len());
        for low in 0..(1u32 << variable_bits) {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&(base | low).to_be_bytes());
            hint.entries[hint_index_v6(&octets)] = 1;
        }
    }
}

/// The interface's index, or `None` when it does not exist.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The XDP mode an attach mode's name stands for (`native`, `generic`: the
/// names `run` reports and pins record).
pub fn xdp_mode(name: &str) -> XdpMode {
    if name == "generic" {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    }
}

/// Locked memory was the BPF map budget before Linux 5.11; harmless after.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!("cannot raise RLIMIT_MEMLOCK; fine on Linux 5.11 and later");
    }
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use classifier_common::{FLOW_BUCKET_SLOTS, FlowSlot, HINT_ENTRIES, TcpProbeSlot};

    use crate::object_file::AlignedObject;

    /// Every map is either handed over at a reload or built afresh, and
    /// the counters are handed over: a map added to the program needs a
    /// decision here.
    #[test]
    fn every_map_is_kept_or_rebuilt_at_a_reload() {
        let mut sorted: Vec<&str> = KEPT_MAPS.iter().chain(&REBUILT_MAPS).copied().collect();
        sorted.sort_unstable();
        let mut all = classifier_common::ALL_MAPS.to_vec();
        all.sort_unstable();
        assert_eq!(sorted, all);
        for name in CounterMaps::NAMES {
            assert!(KEPT_MAPS.contains(&name), "{name}");
        }
    }

    fn watched_hints_v4(prefixes: &[Ipv4Net]) -> Box<WatchedHints> {
        let mut hints: Box<WatchedHints> = bytemuck::zeroed_box();
        mark_watched_v4(&mut hints, prefixes);
        hints
    }

    fn nets(texts: &[&str]) -> Vec<Ipv4Net> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    /// What the program reads for `addr`: the entry, and the /24's byte of
    /// the entry's block (`None` for an entry naming no block).
    fn watched_v4(hints: &WatchedHints, addr: &str) -> (u8, Option<u8>) {
        let addr: std::net::Ipv4Addr = addr.parse().unwrap();
        let entry = hints.v4.entries[hint_index_v4(addr.octets())];
        let slash24 = hints
            .v4_block(entry)
            .map(|_| hints.v4_slash24(u32::from(addr)));
        (entry, slash24)
    }

    fn watched_hint_v6(prefixes: &[Ipv6Net]) -> Box<WatchedHint> {
        let mut hint: Box<WatchedHint> = bytemuck::zeroed_box();
        mark_watched_v6(&mut hint, prefixes);
        hint
    }

    #[test]
    fn v4_hint_covers_exactly_the_touched_slash16s() {
        let hints = watched_hints_v4(&nets(&["175.45.176.0/22", "10.0.0.0/15"]));
        let set: Vec<usize> = (0..HINT_ENTRIES).filter(|i| hints.v4.is_set(*i)).collect();
        // The first octet is the low byte (the frame's byte order).
        assert_eq!(set, [10, (1 << 8) + 10, (45 << 8) + 175]);
    }

    #[test]
    fn v4_blocks_say_which_slash24s_are_watched_and_are_shared() {
        let hints = watched_hints_v4(&nets(&[
            "175.45.176.0/22",
            "175.45.200.128/25",
            "175.45.201.0/24",
            "175.45.201.9/32",
            "10.0.0.0/15",
            "172.16.0.0/12",
        ]));
        let (entry, _) = watched_v4(&hints, "175.45.176.1");
        for (addr, slash24) in [
            ("175.45.179.255", WATCHED_24_ALL),
            ("175.45.180.0", WATCHED_24_NONE),
            ("175.45.175.255", WATCHED_24_NONE),
            // A /25 leaves its /24 to the table; a /32 inside a watched /24
            // does not.
            ("175.45.200.1", WATCHED_24_SOME),
            ("175.45.201.9", WATCHED_24_ALL),
        ] {
            assert_eq!(watched_v4(&hints, addr), (entry, Some(slash24)), "{addr}");
        }
        assert_eq!(watched_v4(&hints, "175.46.176.1"), (0, None));
        // Every /16 of 10.0.0.0/15 and 172.16.0.0/12 is all watched: one block.
        let (all, _) = watched_v4(&hints, "10.0.0.0");
        for addr in ["10.1.255.255", "172.16.0.1", "172.31.128.7"] {
            assert_eq!(
                watched_v4(&hints, addr),
                (all, Some(WATCHED_24_ALL)),
                "{addr}"
            );
        }
        assert_ne!(all, entry);
        assert_eq!(
            hints.v4_blocks[2..],
            [bytemuck::Zeroable::zeroed(); WATCHED_V4_BLOCKS - 2]
        );
    }

    #[test]
    fn v4_slash16s_beyond_the_last_block_leave_it_to_the_table() {
        // 300 /16s, each with its own pattern of two watched /24s.
        let texts: Vec<String> = (0..300u32)
            .map(|i| {
                let (a, b) = (10 + i / 256, i % 256);
                format!(
                    "{a}.{b}.{}.0/24,{a}.{b}.{}.0/24",
                    i % 256,
                    (i / 256 + 100) % 256
                )
            })
            .collect();
        let prefixes: Vec<Ipv4Net> = texts
            .iter()
            .flat_map(|pair| pair.split(',').map(|text| text.parse().unwrap()))
            .collect();
        let hints = watched_hints_v4(&prefixes);
        let entries: Vec<u8> = (0..300u32)
            .map(|i| watched_v4(&hints, &format!("{}.{}.0.0", 10 + i / 256, i % 256)).0)
            .collect();
        assert_eq!(
            entries[..WATCHED_V4_BLOCKS],
            (1..=254).collect::<Vec<u8>>()[..]
        );
        assert!(
            entries[WATCHED_V4_BLOCKS..]
                .iter()
                .all(|&entry| entry == WATCHED_V4_WALK)
        );
        assert_eq!(watched_v4(&hints, "10.3.3.9"), (4, Some(WATCHED_24_ALL)));
        assert_eq!(watched_v4(&hints, "10.3.4.9"), (4, Some(WATCHED_24_NONE)));
    }

    #[test]
    fn v6_hint_covers_every_address_of_a_prefix() {
        let net: Ipv6Net = "2001:db8:40::/42".parse().unwrap();
        let hint = watched_hint_v6(&[net]);
        for addr in ["2001:db8:40::1", "2001:db8:7f:ffff::9"] {
            let addr: std::net::Ipv6Addr = addr.parse().unwrap();
            assert!(hint.is_set(hint_index_v6(&addr.octets())), "{addr}");
        }
        assert_eq!((0..HINT_ENTRIES).filter(|i| hint.is_set(*i)).count(), 1);
        let all = watched_hint_v6(&["2000::/3".parse().unwrap()]);
        assert!((0..HINT_ENTRIES).all(|i| all.is_set(i)));
    }

    #[test]
    fn service_ids_start_at_one_with_the_protocol_services() {
        let table = ServiceTable::new(vec!["expressvpn".into(), "pia".into(), "openvpn".into()]);
        assert_eq!(table.name(0), None);
        assert_eq!(table.name(1), Some("wireguard"));
        assert_eq!(table.id("l2tp"), Some(classifier_common::SERVICE_L2TP));
        assert_eq!(table.id("ipsec"), Some(classifier_common::SERVICE_IPSEC));
        // Feed services follow; one named like a protocol shares its id.
        assert_eq!(table.id("expressvpn"), Some(7));
        assert_eq!(table.id("pia"), Some(8));
        assert_eq!(
            table.id("openvpn"),
            Some(classifier_common::SERVICE_OPENVPN)
        );
        assert_eq!(table.name(9), None);
    }

    /// The value size of `map` in `object`, as aya's object parser reads it.
    fn parsed_value_size(object: &[u8], map: &str) -> u32 {
        let parsed = aya_obj::Object::parse(object).expect("the object parses");
        parsed.maps[map].value_size()
    }

    fn resized(
        map: &'static str,
        declared: usize,
        loaded: u32,
    ) -> Result<AlignedObject, ObjectError> {
        with_value_sizes(
            EBPF_OBJECT,
            &[ValueSize {
                map,
                declared,
                loaded,
            }],
        )
    }

    #[test]
    fn the_maps_sized_at_load_time_take_the_sizes_set_in_the_copy_of_the_object() {
        assert!(!EBPF_OBJECT.is_empty(), "built without the XDP object");
        assert_eq!(
            parsed_value_size(EBPF_OBJECT, MAP_V4_LOWER),
            V4_LOWER_DECLARED_SIZE as u32
        );
        let bucket = size_of::<FlowBucket>();
        assert_eq!(
            parsed_value_size(EBPF_OBJECT, MAP_FLOW_CACHE),
            bucket as u32
        );
        let cache = FlowCacheShape::of(4);
        let resized = with_value_sizes(
            EBPF_OBJECT,
            &[
                ValueSize {
                    map: MAP_V4_LOWER,
                    declared: V4_LOWER_DECLARED_SIZE,
                    loaded: 123_456,
                },
                ValueSize {
                    map: MAP_FLOW_CACHE,
                    declared: bucket,
                    loaded: cache.value_size(),
                },
            ],
        )
        .unwrap();
        assert_eq!(parsed_value_size(resized.bytes(), MAP_V4_LOWER), 123_456);
        assert_eq!(
            parsed_value_size(resized.bytes(), MAP_FLOW_CACHE),
            4 * size_of::<FlowSlot>() as u32
        );
        // Nothing else moved.
        assert_eq!(resized.bytes().len(), EBPF_OBJECT.len());
        assert_eq!(
            parsed_value_size(resized.bytes(), MAP_TOTALS),
            parsed_value_size(EBPF_OBJECT, MAP_TOTALS)
        );
    }

    #[test]
    fn resizing_a_map_the_object_declares_otherwise_is_refused_with_its_name() {
        let wrong_size = resized(MAP_FLOW_CACHE, 16, 64).unwrap_err();
        assert!(
            wrong_size.to_string().contains("FLOW_CACHE")
                && wrong_size.to_string().contains("value size 24576"),
            "{wrong_size}"
        );
        let wrong_section_size = resized(MAP_V4_LOWER, 16, 64).unwrap_err();
        assert!(
            wrong_section_size.to_string().contains(".bss.v4lower")
                && wrong_section_size.to_string().contains("of 8 bytes"),
            "{wrong_section_size}"
        );
        let not_bss = resized(".bss.no_such_section", 8, 64).unwrap_err();
        assert!(not_bss.to_string().contains("no such section"), "{not_bss}");
        // A per-CPU array of many entries, not one declared with one value.
        let wrong_kind = resized(MAP_TCP_PROBES, size_of::<TcpProbeSlot>(), 64).unwrap_err();
        assert!(
            wrong_kind.to_string().contains("TCP_PROBES")
                && wrong_kind.to_string().contains("8192 entries"),
            "{wrong_kind}"
        );
        let missing = resized("NO_SUCH_MAP", 8, 64).unwrap_err();
        assert!(
            missing.to_string().contains("NO_SUCH_MAP: no such symbol"),
            "{missing}"
        );
    }

    #[test]
    fn the_flow_cache_is_held_in_buckets_or_in_one_smaller_bucket() {
        let slot = size_of::<FlowSlot>() as u32;
        for (slots, buckets, bucket_slots) in [
            (1, 1, 1),
            (4, 1, 4),
            (FLOW_BUCKET_SLOTS, 1, FLOW_BUCKET_SLOTS),
            (DEFAULT_FLOW_CACHE_SLOTS, 64, FLOW_BUCKET_SLOTS),
            (1 << 24, 1 << 16, FLOW_BUCKET_SLOTS),
        ] {
            let shape = FlowCacheShape::of(slots);
            assert_eq!(
                shape,
                FlowCacheShape {
                    buckets,
                    bucket_slots
                },
                "{slots} slots"
            );
            assert_eq!(shape.slots(), slots);
            assert_eq!(shape.value_size(), bucket_slots * slot);
            // A drain reads the shape back from the map.
            assert_eq!(
                FlowCacheShape::of_map(shape.value_size(), buckets),
                Some(shape)
            );
        }
        // What no loader makes: part slots, a bucket too large, a small
        // bucket among several.
        assert_eq!(FlowCacheShape::of_map(slot + 8, 1), None);
        assert_eq!(
            FlowCacheShape::of_map(2 * FLOW_BUCKET_SLOTS * slot, 1),
            None
        );
        assert_eq!(FlowCacheShape::of_map(4 * slot, 2), None);
        assert_eq!(FlowCacheShape::of_map(3 * slot, 1), None);
        assert_eq!(FlowCacheShape::of_map(0, 1), None);
        assert_eq!(FlowCacheShape::of_map(slot, 0), None);
    }
}
