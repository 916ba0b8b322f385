//! Pins: a running sensor's maps, program and XDP links (as bpf_links) on
//! the BPF filesystem under `--pin-path/<interface set>/`, with a
//! description of what was loaded (`META`). `classifier stats` reads the
//! counters through them from another process; a `classifier run` that
//! finds them adopts the program (no reload, no detach, no gap).
//!
//! Layout of one interface set's folder (`eth1+eth2`):
//! `maps/<MAP>` for every map, `program`, `link-<iface>` per interface and
//! `META` (an array map holding [`SensorMeta`] as JSON), pinned last: a
//! folder with `META` is complete; one without it is a start that died
//! half-way and is cleaned up. `META` is written under a temporary name
//! and renamed over the old one, so it is never missing while it changes.
//!
//! A pinned link keeps the program attached after its daemon exits (or is
//! killed); removing the link's pin and closing its last fd detaches it.

use std::{
    os::{fd::AsFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use classifier_common::{FlowKey, FlowSlot, FlowValue, ServiceCounters, Totals};
use serde::{Deserialize, Serialize};

use crate::{
    drain::CounterMaps,
    feeds::FeedOrigin,
    loader::{KEPT_MAPS, Sensor, ServiceTable, error_chain},
};

/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where distributions mount the BPF filesystem (and where we mount it
/// when nothing has).
const SYSTEM_BPF_FS: &str = "/sys/fs/bpf";
const META: &str = "META";
/// A new description is pinned under this name, then renamed over `META`
/// (rename(2) replaces it in one step: readers never find the folder
/// without one). No dot: the BPF filesystem refuses names with one
/// (EPERM). A leftover from a crash in between is removed by the next
/// write, or with the folder; nothing reads it.
const META_NEXT: &str = "META-next";
/// A link attached again on adoption is pinned under this name, then
/// renamed over the severed link's pin. No interface is called `:next`
/// (Linux refuses a colon in interface names), so it is no link's pin.
const LINK_NEXT: &str = "link-:next";
const META_SCHEMA: &str = "classifier.pins.v1";
/// The description is stored in chunks of this many bytes.
const META_CHUNK: usize = 4096;
const LINK_PREFIX: &str = "link-";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is not on a BPF filesystem (mount one there: mount -t bpf bpf DIR, or choose --pin-path)"
    )]
    NotBpfFs(PathBuf),
    #[error("cannot mount the BPF filesystem at {SYSTEM_BPF_FS}: {0}")]
    Mount(#[source] std::io::Error),
    #[error("{path}: {problem}")]
    Path { path: PathBuf, problem: String },
    #[error(
        "nothing is pinned at {0}: is `classifier run` running (it pins under --pin-path, default /sys/fs/bpf/classifier)?"
    )]
    NothingPinned(PathBuf),
    #[error("{dir} holds several interface sets ({sets}); choose one with --pin-path {dir}/SET")]
    SeveralSets { dir: PathBuf, sets: String },
    #[error(
        "{dir} was pinned by a classifier whose kernel data layout differs (theirs {theirs}, ours {ours}); stop it and remove the folder (detaching it) before starting this version"
    )]
    Layout {
        dir: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error(
        "another classifier run is using the pins in {0}; stop it first, or choose another --pin-path"
    )]
    Busy(PathBuf),
    #[error(
        "the program pinned at {} is not attached to {iface} ({} is missing); remove the folder to start afresh",
        .dir.display(),
        link_path(.dir, .iface).display()
    )]
    MissingLink { dir: PathBuf, iface: String },
    #[error(
        "the program pinned at {dir} no longer runs in libxdp's dispatcher on {iface} (`xdp-loader status {iface}` lists what does); remove the folder to start afresh"
    )]
    NotInDispatcher { dir: PathBuf, iface: String },
    #[error(
        "{iface}: no such interface (the program pinned at {dir} was attached to it; remove the folder to start afresh)"
    )]
    NoInterface { dir: PathBuf, iface: String },
}

fn path_error(path: &Path, problem: impl std::fmt::Display) -> PinError {
    PinError::Path {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// What a pinned program was loaded with: enough for another process to
/// name its counters and for a later daemon to carry on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorMeta {
    pub schema: String,
    /// Random, set at load: tells one loaded program from the next.
    pub instance: String,
    /// The classifier version that loaded it.
    pub version: String,
    /// Sizes of the kernel structures; a daemon adopts only its own layout.
    pub layout: String,
    pub attached_at_unix_ns: i64,
    pub interfaces: Vec<String>,
    /// Attach mode per interface ("native" or "generic").
    pub modes: Vec<String>,
    /// Service names in id order (id n is `services[n - 1]`).
    pub services: Vec<String>,
    pub feeds: Vec<FeedOrigin>,
    pub watched: Vec<String>,
    pub endpoint_prefixes_v4: u64,
    pub endpoint_prefixes_v6: u64,
    /// LRU flow-table capacity, and flow-cache slots over all CPUs.
    pub flow_capacity: u64,
    pub flow_cache_slots: u64,
    /// Feed reloads swapped in, and refused (with the last reason).
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub reload_failures: u64,
    #[serde(default)]
    pub last_reload_error: Option<String>,
    /// When the feeds in force were loaded (the attachment, or the last
    /// reload).
    #[serde(default)]
    pub feeds_loaded_at_unix_ns: i64,
    /// `Some(run priority)`: the program runs in libxdp's dispatcher on
    /// every interface (`--xdp-dispatcher`), held there by the dispatcher's
    /// pins, not by links of ours.
    #[serde(default)]
    pub dispatcher_priority: Option<u32>,
    /// `--sensor-name` (or the host name) of the daemon that wrote it, so
    /// `stats` names the sensor as its reports do.
    #[serde(default)]
    pub sensor: Option<String>,
}

impl SensorMeta {
    pub fn service_table(&self) -> ServiceTable {
        ServiceTable::new(self.services.clone())
    }
}

/// The sizes of everything userspace reads from the kernel, and marks of
/// what changed their meaning at the same size: `flowcheck2` is the flow
/// hash of whole-word keys (a drain checks each cache slot against
/// `flow_check`, so pins left by a program with another hash are refused
/// rather than their slots skipped as untrusted).
pub fn layout() -> String {
    use std::mem::size_of;
    format!(
        "totals{}-services{}-protocols{}-flowkey{}-flowvalue{}-flowslot{}-flowbucket{}-flowclock-ticks-endpointhint{}-recycledslots-flowcheck2",
        size_of::<Totals>(),
        size_of::<ServiceCounters>(),
        classifier_common::PROTOCOL_SERVICES.len(),
        size_of::<FlowKey>(),
        size_of::<FlowValue>(),
        size_of::<FlowSlot>(),
        classifier_common::FLOW_BUCKET_SLOTS,
        size_of::<classifier_common::EndpointHints>()
    )
}

/// A random instance id (16 hex digits).
pub fn new_instance_id() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        // Practically never; time and pid still make a unique id here.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (now ^ u64::from(std::process::id()) << 40).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folder of one interface set: names sorted and joined with `+`.
pub fn interface_set_dir(pin_path: &Path, ifaces: &[String]) -> PathBuf {
    let mut names: Vec<String> = ifaces.iter().map(|iface| pin_name(iface)).collect();
    names.sort();
    names.dedup();
    pin_path.join(names.join("+"))
}

/// An interface's name as pins spell it: the BPF filesystem refuses names
/// with a dot (EPERM), which VLAN interfaces have (`eth0.100`), so a dot
/// becomes a colon, which Linux refuses in interface names: no two
/// interfaces share a spelling.
fn pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

/// Where the link attaching the program to `iface` is pinned in `dir`.
fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{}", pin_name(iface)))
}

fn is_bpf_fs(path: &Path) -> Result<bool, PinError> {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| path_error(path, "path contains a NUL byte"))?;
    // SAFETY: statfs fills a zeroed struct; `name` is NUL-terminated.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(name.as_ptr(), &mut stats) } != 0 {
        return Err(path_error(path, std::io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(stats.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `dir` can hold pins: its nearest existing ancestor must be on
/// a BPF filesystem. When the path is under /sys/fs/bpf and nothing is
/// mounted there, mounts it (as systemd does on most distributions).
pub fn prepare_bpf_fs(dir: &Path) -> Result<(), PinError> {
    let existing = dir
        .ancestors()
        .find(|path| path.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpf_fs(existing)? {
        let system = Path::new(SYSTEM_BPF_FS);
        if !(dir.starts_with(system) && system.is_dir() && !is_bpf_fs(system)?) {
            return Err(PinError::NotBpfFs(dir.to_path_buf()));
        }
        mount_bpf_fs(system)?;
        log::info!("mounted the BPF filesystem at {SYSTEM_BPF_FS}");
    }
    std::fs::create_dir_all(dir).map_err(|error| path_error(dir, error))
}

fn mount_bpf_fs(at: &Path) -> Result<(), PinError> {
    let target = std::ffi::CString::new(at.as_os_str().as_bytes())
        .map_err(|_| path_error(at, "path contains a NUL byte"))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(PinError::Mount(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn write_meta(dir: &Path, meta: &SensorMeta) -> Result<(), PinError> {
    let json = serde_json::to_vec(meta).map_err(|error| path_error(dir, error))?;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    let chunks = bytes.len().div_ceil(META_CHUNK);
    let meta_error =
        |error: &dyn std::error::Error| path_error(&dir.join(META), error_chain(error));
    let mut array = Array::<MapData, [u8; META_CHUNK]>::create(chunks as u32, 0)
        .map_err(|error| meta_error(&error))?;
    for (index, chunk) in bytes.chunks(META_CHUNK).enumerate() {
        let mut value = [0u8; META_CHUNK];
        value[..chunk.len()].copy_from_slice(chunk);
        array
            .set(index as u32, value, 0)
            .map_err(|error| meta_error(&error))?;
    }
    let next = dir.join(META_NEXT);
    match std::fs::remove_file(&next) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(path_error(&next, error)),
    }
    array.pin(&next).map_err(|error| meta_error(&error))?;
    std::fs::rename(&next, dir.join(META)).map_err(|error| path_error(&next, error))
}

/// Reads the description pinned in `dir`; `None` when there is none.
pub fn read_meta(dir: &Path) -> Result<Option<SensorMeta>, PinError> {
    let path = dir.join(META);
    if !path.exists() {
        return Ok(None);
    }
    let meta_error = |error: &dyn std::error::Error| path_error(&path, error_chain(error));
    let data = MapData::from_pin(&path).map_err(|error| meta_error(&error))?;
    let array: Array<MapData, [u8; META_CHUNK]> =
        Array::try_from(Map::Array(data)).map_err(|error| meta_error(&error))?;
    let mut bytes = Vec::new();
    for index in 0..array.len() {
        bytes.extend_from_slice(&array.get(&index, 0).map_err(|error| meta_error(&error))?);
    }
    let len = bytes
        .get(..8)
        .and_then(|head| head.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|len| usize::try_from(len).ok())
        .filter(|len| len.checked_add(8).is_some_and(|end| end <= bytes.len()))
        .ok_or_else(|| path_error(&path, "truncated description"))?;
    let meta: SensorMeta =
        serde_json::from_slice(&bytes[8..8 + len]).map_err(|error| path_error(&path, error))?;
    if meta.schema != META_SCHEMA {
        return Err(path_error(
            &path,
            format!("unknown description schema {}", meta.schema),
        ));
    }
    Ok(Some(meta))
}

fn open_counters(dir: &Path) -> Result<CounterMaps, PinError> {
    let open = |name: &str| {
        let path = dir.join("maps").join(name);
        let data =
            MapData::from_pin(&path).map_err(|error| path_error(&path, error_chain(&error)))?;
        Map::from_map_data(data).map_err(|error| path_error(&path, error_chain(&error)))
    };
    let [totals, services, flows, flow_cache, flow_cache_drained] = CounterMaps::NAMES;
    Ok(CounterMaps {
        totals: open(totals)?,
        services: open(services)?,
        flows: open(flows)?,
        flow_cache: open(flow_cache)?,
        flow_cache_drained: open(flow_cache_drained)?,
    })
}

/// The counters and description of a pinned sensor, opened read-only in
/// spirit (for `stats`): no links are held.
pub struct PinnedCounters {
    pub dir: PathBuf,
    pub meta: SensorMeta,
    pub counters: CounterMaps,
}

/// Opens what `classifier run` pinned under `pin_path` (an interface set's
/// folder, or the folder above it when it holds exactly one set).
pub fn open_counters_at(pin_path: &Path) -> Result<PinnedCounters, PinError> {
    let dir = find_set(pin_path)?;
    let meta = read_meta(&dir)?.ok_or_else(|| PinError::NothingPinned(pin_path.to_path_buf()))?;
    check_layout(&dir, &meta)?;
    let counters = open_counters(&dir)?;
    Ok(PinnedCounters {
        dir,
        meta,
        counters,
    })
}

/// Whether `dir` holds a complete set of pins (its `META`): a folder
/// removed by hand holds none.
pub fn is_pinned(dir: &Path) -> bool {
    dir.join(META).exists()
}

/// The interface set's folder `pin_path` names (itself, also spelled with
/// the interface's dot, or the one set folder under it).
pub fn find_set(pin_path: &Path) -> Result<PathBuf, PinError> {
    if pin_path.join(META).exists() {
        return Ok(pin_path.to_path_buf());
    }
    if let Some(name) = pin_path.file_name().and_then(|name| name.to_str())
        && name.contains('.')
    {
        let spelled = pin_path.with_file_name(pin_name(name));
        if spelled.join(META).exists() {
            return Ok(spelled);
        }
    }
    let Ok(entries) = std::fs::read_dir(pin_path) else {
        return Err(PinError::NothingPinned(pin_path.to_path_buf()));
    };
    let mut sets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join(META).exists())
        .collect();
    sets.sort();
    match sets.len() {
        0 => Err(PinError::NothingPinned(pin_path.to_path_buf())),
        1 => Ok(sets.remove(0)),
        _ => Err(PinError::SeveralSets {
            dir: pin_path.to_path_buf(),
            sets: sets
                .iter()
                .filter_map(|path| path.file_name())
                .map(|name| name.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn check_layout(dir: &Path, meta: &SensorMeta) -> Result<(), PinError> {
    let ours = layout();
    if meta.layout == ours {
        Ok(())
    } else {
        Err(PinError::Layout {
            dir: dir.to_path_buf(),
            theirs: meta.layout.clone(),
            ours,
        })
    }
}

/// A sensor whose program is attached through pinned links: freshly
/// loaded and pinned, or adopted from pins a previous daemon left.
pub struct PinnedSensor {
    pub dir: PathBuf,
    pub meta: SensorMeta,
    pub counters: CounterMaps,
    pub adopted: bool,
    /// Interfaces whose pinned link an adoption found severed (the
    /// interface removed or re-created since) and attached again.
    pub reattached: Vec<String>,
    links: Vec<(String, PinnedLink)>,
}

/// Attaches the pinned program to `iface` again, in the mode it had, and
/// pins the new link at `link_path` in place of a severed one: packets
/// from here on are counted into the same maps.
fn reattach(
    dir: &Path,
    meta: &SensorMeta,
    iface: &str,
    if_index: u32,
    link_path: &Path,
) -> Result<(), PinError> {
    use aya::programs::Xdp;
    use aya_obj::programs::XdpAttachType;
    let program_path = dir.join("program");
    let program_error =
        |error: &dyn std::error::Error| path_error(&program_path, error_chain(error));
    let mode = meta
        .interfaces
        .iter()
        .position(|name| name == iface)
        .and_then(|at| meta.modes.get(at))
        .map_or("native", String::as_str);
    let mut program = Xdp::from_pin(&program_path, XdpAttachType::Interface)
        .map_err(|error| program_error(&error))?;
    let link_error = |error: &dyn std::error::Error| {
        path_error(
            link_path,
            format!(
                "cannot attach the pinned program to {iface} again ({mode} mode): {}",
                error_chain(error)
            ),
        )
    };
    let link_id = program
        .attach_to_if_index(if_index, crate::loader::xdp_mode(mode))
        .map_err(|error| link_error(&error))?;
    let link = program
        .take_link(link_id)
        .map_err(|error| link_error(&error))?;
    let fd_link = FdLink::try_from(link).map_err(|error| link_error(&error))?;
    // Pinned beside the severed link's pin and renamed over it: a failure
    // leaves the old pin, never none.
    let next = dir.join(LINK_NEXT);
    let _ = std::fs::remove_file(&next);
    fd_link.pin(&next).map_err(|error| link_error(&error))?;
    std::fs::rename(&next, link_path).map_err(|error| path_error(link_path, error))?;
    log::warn!(
        "{iface}: the link pinned at {} no longer attached the program (the interface was removed or re-created since); attached it again in {mode} mode: packets in between were not counted",
        link_path.display()
    );
    Ok(())
}

impl PinnedSensor {
    /// Pins a loaded and attached sensor into `dir` (which must be empty
    /// of pins) and lets go of the loader's handles: from here on the pins
    /// keep the program, its maps and its attachments alive.
    pub fn pin(mut sensor: Sensor, dir: &Path, meta: SensorMeta) -> Result<Self, PinError> {
        let maps_dir = dir.join("maps");
        std::fs::create_dir_all(&maps_dir).map_err(|error| path_error(&maps_dir, error))?;
        // The counters and other kept maps were pinned by the loader
        // (`Sensor::load_pinned`).
        pin_feed_maps(&sensor, &maps_dir)?;
        let program_path = dir.join("program");
        let attachments = std::mem::take(&mut sensor.attachments);
        sensor
            .any_program_mut()
            .map_err(|error| path_error(&program_path, error_chain(&error)))?
            .pin(&program_path)
            .map_err(|error| path_error(&program_path, error_chain(&error)))?;
        let mut links = Vec::new();
        for attachment in attachments {
            // Attachments are the XDP program's own (not the dispatcher's).
            let program = sensor
                .program_mut()
                .map_err(|error| path_error(&program_path, error_chain(&error)))?;
            let path = link_path(dir, &attachment.iface);
            let link_error = |error: &dyn std::error::Error| path_error(&path, error_chain(error));
            let link = program
                .take_link(attachment.link)
                .map_err(|error| link_error(&error))?;
            let fd_link = FdLink::try_from(link).map_err(|error| link_error(&error))?;
            let pinned = fd_link.pin(&path).map_err(|error| link_error(&error))?;
            links.push((attachment.iface, pinned));
        }
        write_meta(dir, &meta)?;
        drop(sensor);
        let counters = open_counters(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            counters,
            adopted: false,
            reattached: Vec::new(),
            links,
        })
    }

    /// Adopts the program pinned in `dir` when there is one, attached to
    /// every interface of `ifaces`. A folder without `META` (a start that
    /// died half-way) is cleaned up and `None` returned.
    pub fn adopt(dir: &Path, ifaces: &[String]) -> Result<Option<Self>, PinError> {
        let Some(meta) = read_meta(dir)? else {
            let leftovers =
                std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
            if leftovers {
                log::warn!(
                    "{}: removing the pins of a start that did not finish",
                    dir.display()
                );
                remove_contents(dir)?;
            }
            return Ok(None);
        };
        check_layout(dir, &meta)?;
        let mut links = Vec::new();
        let mut reattached = Vec::new();
        if meta.dispatcher_priority.is_some() {
            let id = pinned_program_id(dir)?;
            for iface in ifaces {
                let member = crate::dispatcher::is_member(iface, id)
                    .map_err(|error| path_error(dir, error))?;
                if !member {
                    return Err(PinError::NotInDispatcher {
                        dir: dir.to_path_buf(),
                        iface: iface.clone(),
                    });
                }
            }
        } else {
            for iface in ifaces {
                let path = link_path(dir, iface);
                if !path.exists() {
                    return Err(PinError::MissingLink {
                        dir: dir.to_path_buf(),
                        iface: iface.clone(),
                    });
                }
                let Some(if_index) = crate::loader::interface_index(iface) else {
                    return Err(PinError::NoInterface {
                        dir: dir.to_path_buf(),
                        iface: iface.clone(),
                    });
                };
                let pinned_link =
                    crate::bpf_sys::obj_get(&path).map_err(|error| path_error(&path, error))?;
                let linked_index = crate::bpf_sys::xdp_link_if_index(pinned_link.as_fd())
                    .map_err(|error| path_error(&path, error))?;
                if linked_index != if_index {
                    reattach(dir, &meta, iface, if_index, &path)?;
                    reattached.push(iface.clone());
                }
                let link = PinnedLink::from_pin(&path)
                    .map_err(|error| path_error(&path, error_chain(&error)))?;
                links.push((iface.clone(), link));
            }
        }
        let counters = open_counters(dir)?;
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            meta,
            counters,
            adopted: true,
            reattached,
            links,
        }))
    }

    /// Swaps in a program loaded with [`Sensor::load_pinned`] on this
    /// sensor's counter maps (a feed reload): every link is pointed at it
    /// atomically (BPF_LINK_UPDATE; a packet runs the old program or the
    /// new one, both counting into the same maps), then its feed maps,
    /// program and description replace the old pins. The old program and
    /// feed maps go when their last reference does.
    pub fn swap_program(&mut self, mut sensor: Sensor, meta: SensorMeta) -> Result<(), PinError> {
        let program_path = self.dir.join("program");
        let pin_error =
            |error: &dyn std::error::Error| path_error(&program_path, error_chain(error));
        if self.meta.dispatcher_priority.is_some() {
            let old_id = pinned_program_id(&self.dir)?;
            let program = sensor.any_program().map_err(|error| pin_error(&error))?;
            for iface in &self.meta.interfaces {
                crate::dispatcher::swap(iface, old_id, program)
                    .map_err(|error| path_error(&program_path, error))?;
            }
        } else {
            let program = sensor.program().map_err(|error| pin_error(&error))?;
            let program_fd = program.fd().map_err(|error| pin_error(&error))?;
            for (iface, _) in &self.links {
                let path = link_path(&self.dir, iface);
                let link =
                    crate::bpf_sys::obj_get(&path).map_err(|error| path_error(&path, error))?;
                crate::bpf_sys::link_update(link.as_fd(), program_fd.as_fd()).map_err(|error| {
                    path_error(&path, format!("cannot swap the program: {error}"))
                })?;
            }
        }
        pin_feed_maps(&sensor, &self.dir.join("maps"))?;
        std::fs::remove_file(&program_path).map_err(|error| path_error(&program_path, error))?;
        sensor
            .any_program_mut()
            .map_err(|error| pin_error(&error))?
            .pin(&program_path)
            .map_err(|error| pin_error(&error))?;
        self.update_meta(meta)
    }

    /// Rewrites the pinned description (after a reload, or to record a
    /// failed one).
    pub fn update_meta(&mut self, meta: SensorMeta) -> Result<(), PinError> {
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    /// Detaches from every interface: removes each link's pin and closes
    /// it. The counter maps stay readable for a final drain.
    pub fn detach(&mut self) {
        if self.meta.dispatcher_priority.is_some() {
            match pinned_program_id(&self.dir) {
                Ok(id) => crate::dispatcher::leave_all(&self.meta.interfaces, id),
                Err(error) => log::error!("cannot leave the dispatchers: {error}"),
            }
        }
        for (iface, link) in self.links.drain(..) {
            match link.unpin() {
                Ok(fd_link) => drop(fd_link),
                Err(error) => log::error!("{iface}: cannot remove the link's pin: {error}"),
            }
        }
    }

    /// Removes every pin and the folder (after [`Self::detach`]).
    pub fn remove_pins(&self) -> Result<(), PinError> {
        remove_pins(&self.dir)
    }
}

/// The id of the program pinned in an interface set's folder.
fn pinned_program_id(dir: &Path) -> Result<u32, PinError> {
    let path = dir.join("program");
    aya::programs::ProgramInfo::from_pin(&path)
        .map(|info| info.id())
        .map_err(|error| path_error(&path, error_chain(&error)))
}

/// Takes the interface set's folder for this daemon alone (an exclusive
/// `flock` on the folder, held while the returned file is open): two
/// daemons draining one program would write each other's snapshots.
pub fn lock_set(dir: &Path) -> Result<std::fs::File, PinError> {
    match try_lock_folder(dir) {
        Ok(Some(folder)) => Ok(folder),
        Ok(None) => Err(PinError::Busy(dir.to_path_buf())),
        Err(error) => Err(path_error(dir, error)),
    }
}

/// An exclusive, non-blocking `flock` on a folder, held while the returned
/// file is open; `None` when another process holds it.
pub fn try_lock_folder(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let folder = std::fs::File::open(dir)?;
    // SAFETY: flock on a valid, open fd.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&folder),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if locked == 0 {
        return Ok(Some(folder));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// Pins (or re-pins, replacing the previous pins) a sensor's feed maps:
/// every map but those the loader pinned ([`KEPT_MAPS`], the same maps
/// after a reload: a new pin would only hide them for a moment).
fn pin_feed_maps(sensor: &Sensor, maps_dir: &Path) -> Result<(), PinError> {
    for (name, map) in sensor.ebpf.maps() {
        // Globals (.rodata) are part of the program, not worth a pin.
        if name.starts_with('.') || KEPT_MAPS.contains(&name) {
            continue;
        }
        let path = maps_dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|error| path_error(&path, error))?;
        }
        map.pin(&path)
            .map_err(|error| path_error(&path, error_chain(&error)))?;
    }
    Ok(())
}

/// The process holding [`lock_set`]'s lock on `dir` (the running daemon),
/// from /proc/locks.
pub fn lock_holder(dir: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:2b:17 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, file) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        (*kind == "FLOCK" && *file == wanted).then(|| pid.parse().ok())?
    })
}

/// Removes a folder of pins and the folder.
pub fn remove_pins(dir: &Path) -> Result<(), PinError> {
    remove_contents(dir)?;
    std::fs::remove_dir(dir).map_err(|error| path_error(dir, error))
}

/// Removes every pin in a folder (links first, so the program is detached
/// before its maps lose their names).
fn remove_contents(dir: &Path) -> Result<(), PinError> {
    let entries = std::fs::read_dir(dir).map_err(|error| path_error(dir, error))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort_by_key(|path| {
        let is_link = path
            .file_name()
            .is_some_and(|name| name.as_bytes().starts_with(LINK_PREFIX.as_bytes()));
        !is_link
    });
    for path in paths {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|error| path_error(&path, error))?;
    }
    Ok(())
}

/// The map `name` pinned under `dir/maps`; the error names its path.
pub fn open_pinned_map(dir: &Path, name: &str) -> Result<aya::maps::Map, String> {
    let path = dir.join("maps").join(name);
    aya::maps::MapData::from_pin(&path)
        .map_err(|error| error.to_string())
        .and_then(|data| aya::maps::Map::from_map_data(data).map_err(|error| error.to_string()))
        .map_err(|error| format!("{}: {error}", path.display()))
}
