//! libxdp's multi-program dispatcher, spoken from Rust (`classifier run
//! --xdp-dispatcher`): the protocol xdp-tools' `xdp-loader` and
//! `xdp-filter` use to share one interface between XDP programs
//! (dispatcher version 2, libxdp 1.3 and later).
//!
//! The interface runs a small *dispatcher* (libxdp's `xdp-dispatcher.o`)
//! with ten slots. Each member program is an `freplace` extension linked
//! into one slot, in ascending run priority (ties by name); the dispatcher
//! moves on to the next slot when a member returns one of its chain-call
//! actions, and otherwise returns that verdict. A lone member replaces the
//! dispatcher's main function itself. Any change builds a new dispatcher
//! with the new set of members, pins it under
//! `/sys/fs/bpf/xdp/dispatch-<ifindex>-<dispatcher id>/` (`prog<N>-link`
//! and `prog<N>-prog` per slot), swaps it onto the interface through
//! rtnetlink (a compare-and-swap on the old one) and removes the old pins,
//! all under an exclusive `flock` on `/sys/fs/bpf/xdp`, which libxdp takes
//! too. Members' run priorities and chain-call actions live in the
//! dispatcher's read-only configuration, where the next change reads them.
//!
//! Programs are never loaded here except the dispatcher: members stay the
//! programs their owners loaded, linked anew into each new dispatcher
//! (kernel 5.10 and later).

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{Program, ProgramFd, ProgramInfo, Xdp},
};
use aya_obj::btf::{Btf, BtfKind};

use crate::{
    bpf_sys,
    interface_xdp::{self, AttachedProgram},
    loader::{AttachMode, error_chain, interface_index},
};

/// Our run priority unless `--xdp-priority` says otherwise: before
/// xdp-filter's programs (10) and libxdp's default (50), so the counts see
/// every packet, also those a filter drops after us.
pub const DEFAULT_PRIORITY: u32 = 5;
/// The program name libxdp gives (and looks for in) a dispatcher.
pub const DISPATCHER_NAME: &str = "xdp_dispatcher";
const OBJECT_FILE: &str = "xdp-dispatcher.o";
const MAGIC: u8 = 236;
const VERSION: u8 = 2;
const SLOTS: usize = 10;
/// What an empty slot returns (XDP_DISPATCHER_RETVAL): every member chains
/// on it, so a slot without a program moves on.
const EMPTY_SLOT_ACTION: u32 = 1 << 31;
/// BPF_F_XDP_HAS_FRAGS in a member's flags.
const FRAGS_FLAG: u32 = 1 << 5;
/// Chain on XDP_PASS only (libxdp's default): a member that drops or
/// redirects a packet ends its run.
const CHAIN_ON_PASS: u32 = 1 << 2;

/// `struct xdp_dispatcher_config` (libxdp's `prog_dispatcher.h`, version
/// 2): the dispatcher's `.rodata`, fixed at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Config {
    magic: u8,
    version: u8,
    members: u8,
    frags: u8,
    chain_actions: [u32; SLOTS],
    priorities: [u32; SLOTS],
    flags: [u32; SLOTS],
}

// SAFETY: plain old data (bytemuck::Pod above).
unsafe impl aya::Pod for Config {}

/// The configuration's size and its fields' byte offsets, named as
/// libxdp's `struct xdp_dispatcher_config` names them (a test compares
/// them with the installed object's BTF).
pub fn config_layout() -> (usize, [(&'static str, usize); 7]) {
    use std::mem::offset_of;
    (
        size_of::<Config>(),
        [
            ("magic", offset_of!(Config, magic)),
            ("dispatcher_version", offset_of!(Config, version)),
            ("num_progs_enabled", offset_of!(Config, members)),
            ("is_xdp_frags", offset_of!(Config, frags)),
            ("chain_call_actions", offset_of!(Config, chain_actions)),
            ("run_prios", offset_of!(Config, priorities)),
            ("program_flags", offset_of!(Config, flags)),
        ],
    )
}

impl Config {
    fn for_members(members: &[Member]) -> Self {
        let mut config = Self {
            magic: MAGIC,
            version: VERSION,
            members: members.len() as u8,
            frags: u8::from(members.iter().all(|member| member.flags & FRAGS_FLAG != 0)),
            ..bytemuck::Zeroable::zeroed()
        };
        for (slot, member) in members.iter().enumerate() {
            config.chain_actions[slot] = member.chain_actions | EMPTY_SLOT_ACTION;
            config.priorities[slot] = member.priority;
            config.flags[slot] = member.flags;
        }
        config
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(
        "libxdp's dispatcher ({OBJECT_FILE}) is in none of {searched}: install xdp-tools (Debian, Ubuntu: apt install xdp-tools), or set LIBXDP_OBJECT_PATH to the folder holding it"
    )]
    NoObject { searched: String },
    #[error(
        "{iface}: {program} is attached without libxdp's dispatcher, so --xdp-dispatcher cannot join it (load it with xdp-loader instead, or pass --replace without --xdp-dispatcher to remove it)"
    )]
    NotADispatcher {
        iface: String,
        program: AttachedProgram,
    },
    #[error("{iface}: the dispatcher attached there (program id {id}) {problem}")]
    Unreadable {
        iface: String,
        id: u32,
        problem: String,
    },
    #[error(
        "the kernel refuses to load our program as an extension (freplace) program, which is how libxdp's dispatcher runs its members: {0}. libxdp's own check fails the same way on such a kernel (xdp-loader then falls back to one program per interface); kernel lockdown or a sandbox can forbid extensions. Run without --xdp-dispatcher, alone on the interface"
    )]
    ExtensionsRefused(std::io::Error),
    #[error("{iface}: libxdp's dispatcher already runs {SLOTS} programs, as many as it can")]
    Full { iface: String },
    #[error("{iface}: {action}: {problem}")]
    Failed {
        iface: String,
        action: &'static str,
        problem: String,
    },
}

/// One program in a dispatcher.
struct Member {
    program: ProgramFd,
    id: u32,
    name: String,
    priority: u32,
    /// XDP actions after which the next member runs (a bit per action).
    chain_actions: u32,
    flags: u32,
}

/// A program of ours (loaded as an extension) to add, at `priority`, or
/// without one at the priority of the member it replaces.
struct NewMember<'a> {
    program: &'a Program,
    priority: Option<u32>,
}

impl Member {
    /// A program of ours that chains on XDP_PASS.
    fn new(program: &Program, priority: u32) -> Result<Self, String> {
        let info = program.info().map_err(|error| error_chain(&error))?;
        let fd = program.fd().map_err(|error| error_chain(&error))?;
        Ok(Self {
            program: fd.try_clone().map_err(|error| error.to_string())?,
            id: info.id(),
            name: info.name_as_str().unwrap_or_default().to_string(),
            priority,
            chain_actions: CHAIN_ON_PASS,
            flags: 0,
        })
    }
}

/// The dispatcher attached to an interface, with its members.
struct Installed {
    program: ProgramFd,
    mode_flag: u32,
    pins: PathBuf,
    members: Vec<Member>,
}

/// An interface whose dispatcher is being read or changed.
struct Interface<'a> {
    name: &'a str,
    index: u32,
}

impl Interface<'_> {
    fn failed(&self, action: &'static str) -> impl Fn(String) -> DispatcherError + '_ {
        move |problem| DispatcherError::Failed {
            iface: self.name.to_string(),
            action,
            problem,
        }
    }

    fn unreadable(&self, id: u32) -> impl Fn(String) -> DispatcherError + '_ {
        move |problem| DispatcherError::Unreadable {
            iface: self.name.to_string(),
            id,
            problem,
        }
    }
}

fn open(iface: &str) -> Result<Interface<'_>, DispatcherError> {
    let index = interface_index(iface).ok_or_else(|| DispatcherError::Failed {
        iface: iface.to_string(),
        action: "look it up",
        problem: "no such interface".into(),
    })?;
    Ok(Interface { name: iface, index })
}

/// Where libxdp keeps its pins and its lock: `$LIBXDP_BPFFS/xdp`, by
/// default `/sys/fs/bpf/xdp` (made, and the BPF filesystem mounted, when
/// missing).
fn pins_root() -> Result<PathBuf, DispatcherError> {
    let base = std::env::var_os("LIBXDP_BPFFS").map_or_else(|| "/sys/fs/bpf".into(), PathBuf::from);
    let root = base.join("xdp");
    let failed = |problem: String| DispatcherError::Failed {
        iface: root.display().to_string(),
        action: "prepare libxdp's pin folder",
        problem,
    };
    crate::pins::prepare_bpf_fs(&base).map_err(|error| failed(error.to_string()))?;
    if !root.exists() {
        make_private_dir(&root).map_err(|error| failed(error.to_string()))?;
    }
    Ok(root)
}

/// A folder only its owner may enter (0700), as libxdp makes its own.
fn make_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// Holds libxdp's lock (an exclusive `flock` on its pin folder) while
/// alive: closing the folder releases it.
struct Lock {
    _folder: File,
}

impl Lock {
    fn take(root: &Path) -> Result<Self, DispatcherError> {
        let failed = |problem: String| DispatcherError::Failed {
            iface: root.display().to_string(),
            action: "take libxdp's lock",
            problem,
        };
        let folder = File::open(root).map_err(|error| failed(error.to_string()))?;
        // SAFETY: flock on a valid, open fd; blocks until libxdp lets go.
        if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(failed(std::io::Error::last_os_error().to_string()));
        }
        Ok(Self { _folder: folder })
    }
}

/// libxdp's dispatcher object: `$LIBXDP_OBJECT_PATH/xdp-dispatcher.o`, or
/// where distributions install it.
pub fn object_path() -> Result<PathBuf, DispatcherError> {
    let folders: Vec<PathBuf> = match std::env::var_os("LIBXDP_OBJECT_PATH") {
        Some(folder) => vec![folder.into()],
        None => [
            format!("/usr/lib/{}-linux-gnu/bpf", std::env::consts::ARCH),
            "/usr/lib/bpf".into(),
            "/usr/lib64/bpf".into(),
            "/usr/local/lib/bpf".into(),
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect(),
    };
    folders
        .iter()
        .map(|folder| folder.join(OBJECT_FILE))
        .find(|path| path.is_file())
        .ok_or_else(|| DispatcherError::NoObject {
            searched: folders
                .iter()
                .map(|folder| folder.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Loads a dispatcher with `config` (not attached anywhere).
fn load_dispatcher(config: &Config) -> Result<Ebpf, String> {
    let path = object_path().map_err(|error| error.to_string())?;
    let mut ebpf = EbpfLoader::new()
        .override_global("conf", config, true)
        .load_file(&path)
        .map_err(|error| format!("{}: {}", path.display(), error_chain(&error)))?;
    let program: &mut Xdp = ebpf
        .program_mut(DISPATCHER_NAME)
        .ok_or_else(|| format!("{} has no {DISPATCHER_NAME} program", path.display()))?
        .try_into()
        .map_err(|error| error_chain(&error))?;
    program.load().map_err(|error| error_chain(&error))?;
    Ok(ebpf)
}

fn dispatcher_program(ebpf: &Ebpf) -> Result<&Xdp, String> {
    let program: &Xdp = ebpf
        .program(DISPATCHER_NAME)
        .ok_or_else(|| format!("no {DISPATCHER_NAME} program"))?
        .try_into()
        .map_err(|error| error_chain(&error))?;
    Ok(program)
}

/// An empty dispatcher, attached nowhere: the target our program is
/// verified against when it loads as an extension (`freplace` of `prog0`),
/// before it is linked into the dispatchers interfaces run.
pub struct Template(Ebpf);

/// A failure about the template, doing `action`.
fn template_failed(action: &'static str) -> impl Fn(String) -> DispatcherError {
    move |problem| DispatcherError::Failed {
        iface: "libxdp's dispatcher".into(),
        action,
        problem,
    }
}

impl Template {
    pub fn load() -> Result<Self, DispatcherError> {
        let config = Config::for_members(&[]);
        load_dispatcher(&config)
            .map(Self)
            .map_err(template_failed("load it"))
    }

    /// The dispatcher program and the function our program replaces.
    pub fn target(&self) -> Result<(ProgramFd, &'static str), DispatcherError> {
        let failed = template_failed("open it");
        let program = dispatcher_program(&self.0).map_err(&failed)?;
        let fd = program
            .fd()
            .map_err(|error| failed(error_chain(&error)))?
            .try_clone()
            .map_err(|error| failed(error.to_string()))?;
        Ok((fd, "prog0"))
    }

    /// The loaded dispatcher's program id.
    pub fn id(&self) -> Result<u32, DispatcherError> {
        dispatcher_program(&self.0)
            .and_then(|program| program.info().map_err(|error| error_chain(&error)))
            .map(|info| info.id())
            .map_err(template_failed("read it"))
    }
}

/// What our program loads against as an extension (see [`Template`]); the
/// template itself may go, the returned descriptor keeps it loaded.
pub fn extension_target() -> Result<(ProgramFd, &'static str), DispatcherError> {
    Template::load()?.target()
}

/// The dispatcher on `iface` and its members; `None` when no XDP program
/// is attached there.
fn installed(iface: &Interface<'_>, root: &Path) -> Result<Option<Installed>, DispatcherError> {
    let attached = interface_xdp::attached_programs(iface.index)
        .map_err(|error| iface.failed("list its XDP programs")(error.to_string()))?;
    let Some(attached) = attached.into_iter().next() else {
        return Ok(None);
    };
    if attached.name.as_deref() != Some(DISPATCHER_NAME) {
        return Err(DispatcherError::NotADispatcher {
            iface: iface.name.to_string(),
            program: attached,
        });
    }
    let unreadable = iface.unreadable(attached.id);
    let info = aya::programs::loaded_programs()
        .flatten()
        .find(|info| info.id() == attached.id)
        .ok_or_else(|| unreadable("is gone".into()))?;
    let program = info.fd().map_err(|error| unreadable(error_chain(&error)))?;
    let map_ids = info
        .map_ids()
        .map_err(|error| unreadable(error_chain(&error)))?
        .unwrap_or_default();
    let [map_id] = map_ids[..] else {
        return Err(unreadable(format!(
            "uses {} maps, not libxdp's one configuration",
            map_ids.len()
        )));
    };
    let config_map = MapData::from_id(map_id).map_err(|error| unreadable(error_chain(&error)))?;
    let config: Config = Array::<MapData, Config>::try_from(Map::Array(config_map))
        .and_then(|array| array.get(&0, 0))
        .map_err(|error| {
            unreadable(format!(
                "has a configuration that is not libxdp's version {VERSION}: {}",
                error_chain(&error)
            ))
        })?;
    if config.magic != MAGIC || config.version != VERSION {
        return Err(unreadable(format!(
            "is dispatcher version {} (magic {}); classifier speaks version {VERSION}",
            config.version, config.magic
        )));
    }
    let pins = root.join(format!("dispatch-{}-{}", iface.index, attached.id));
    let mut members = Vec::new();
    for slot in 0..usize::from(config.members).min(SLOTS) {
        let path = pins.join(format!("prog{slot}-prog"));
        let read = |error: &dyn std::error::Error| {
            unreadable(format!(
                "has no readable member pin {}: {}",
                path.display(),
                error_chain(error)
            ))
        };
        let info = ProgramInfo::from_pin(&path).map_err(|error| read(&error))?;
        members.push(Member {
            program: info.fd().map_err(|error| read(&error))?,
            id: info.id(),
            name: info.name_as_str().unwrap_or_default().to_string(),
            priority: config.priorities[slot],
            chain_actions: config.chain_actions[slot] & !EMPTY_SLOT_ACTION,
            flags: config.flags[slot],
        });
    }
    Ok(Some(Installed {
        program,
        mode_flag: interface_xdp::mode_flag(attached.mode),
        pins,
        members,
    }))
}

/// Removes a dispatcher's pins (its members' links with them).
fn unpin(pins: &Path) -> std::io::Result<()> {
    if !pins.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(pins)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(pins)
}

/// Changes the dispatcher on `iface`: without member `remove` (a program
/// id) and with `add`; attaches a new dispatcher in `mode` when there is
/// none. Returns the mode the interface runs it in (`None`: no members
/// left, the dispatcher is gone).
fn change(
    iface: &Interface<'_>,
    remove: Option<u32>,
    add: Option<NewMember<'_>>,
    mode: AttachMode,
) -> Result<Option<&'static str>, DispatcherError> {
    let root = pins_root()?;
    let _lock = Lock::take(&root)?;
    let installed = installed(iface, &root)?;
    let mut members = Vec::new();
    let mut old = None;
    if let Some(installed) = installed {
        members = installed.members;
        old = Some((installed.program, installed.mode_flag, installed.pins));
    }
    let mut removed_priority = None;
    if let Some(id) = remove {
        removed_priority = members
            .iter()
            .find(|member| member.id == id)
            .map(|member| member.priority);
        members.retain(|member| member.id != id);
        if add.is_none() && removed_priority.is_none() {
            // Not a member (any more): nothing to change.
            return Ok(old
                .as_ref()
                .map(|(_, mode_flag, _)| interface_xdp::mode_name(*mode_flag)));
        }
    }
    if let Some(add) = add {
        let priority = add
            .priority
            .or(removed_priority)
            .unwrap_or(DEFAULT_PRIORITY);
        members.push(Member::new(add.program, priority).map_err(iface.failed("read our program"))?);
    }
    if members.len() > SLOTS {
        return Err(DispatcherError::Full {
            iface: iface.name.to_string(),
        });
    }
    members.sort_by(|a, b| {
        (a.priority, a.name.as_str(), a.id).cmp(&(b.priority, b.name.as_str(), b.id))
    });

    if members.is_empty() {
        if let Some((program, mode_flag, pins)) = old {
            interface_xdp::set_program(iface.index, None, mode_flag, Some(program.as_fd()))
                .map_err(|error| iface.failed("remove the dispatcher")(error.to_string()))?;
            unpin(&pins)
                .map_err(|error| iface.failed("remove the dispatcher's pins")(error.to_string()))?;
        }
        return Ok(None);
    }

    let building = iface.failed("build a new dispatcher");
    let ebpf = load_dispatcher(&Config::for_members(&members)).map_err(&building)?;
    let dispatcher = dispatcher_program(&ebpf).map_err(&building)?;
    let dispatcher_fd = dispatcher
        .fd()
        .map_err(|error| building(error_chain(&error)))?;
    let info = dispatcher
        .info()
        .map_err(|error| building(error_chain(&error)))?;
    let btf = info
        .btf_id()
        .ok_or_else(|| "it has no BTF".to_string())
        .and_then(|id| bpf_sys::btf_bytes(id).map_err(|error| error.to_string()))
        .and_then(|bytes| {
            Btf::parse(&bytes, aya::Endianness::default()).map_err(|error| error.to_string())
        })
        .map_err(&building)?;
    let pins = root.join(format!("dispatch-{}-{}", iface.index, info.id()));
    let pinned = link_and_pin(&members, dispatcher_fd, &btf, &pins);
    if let Err(problem) = pinned {
        let _ = unpin(&pins);
        return Err(building(problem));
    }

    let old_fd = old.as_ref().map(|(program, _, _)| program.as_fd());
    let native = interface_xdp::mode_flag("native");
    let generic = interface_xdp::mode_flag("generic");
    let tries: Vec<u32> = match (&old, mode) {
        (Some((_, mode_flag, _)), _) => vec![*mode_flag],
        (None, AttachMode::Auto) => vec![native, generic],
        (None, AttachMode::Native) => vec![native],
        (None, AttachMode::Generic) => vec![generic],
    };
    let mut failures = Vec::new();
    let mut attached = None;
    for mode_flag in tries {
        let flags = if old_fd.is_some() {
            mode_flag
        } else {
            mode_flag | interface_xdp::FLAG_IF_NONE
        };
        match interface_xdp::set_program(iface.index, Some(dispatcher_fd.as_fd()), flags, old_fd) {
            Ok(()) => {
                attached = Some(mode_flag);
                break;
            }
            Err(error) => failures.push(format!(
                "{} mode: {error}",
                interface_xdp::mode_name(mode_flag)
            )),
        }
    }
    let Some(mode_flag) = attached else {
        let _ = unpin(&pins);
        return Err(iface.failed("attach the new dispatcher")(
            failures.join("; "),
        ));
    };
    if let Some((_, _, old_pins)) = old {
        unpin(&old_pins).map_err(|error| {
            iface.failed("remove the old dispatcher's pins")(format!(
                "{}: {error}",
                old_pins.display()
            ))
        })?;
    }
    Ok(Some(interface_xdp::mode_name(mode_flag)))
}

/// Links every member into its slot of a new dispatcher and pins links and
/// programs as libxdp does.
fn link_and_pin(
    members: &[Member],
    dispatcher: &ProgramFd,
    btf: &Btf,
    pins: &Path,
) -> Result<(), String> {
    make_private_dir(pins).map_err(|error| format!("{}: {error}", pins.display()))?;
    for (slot, member) in members.iter().enumerate() {
        // A lone member replaces the dispatcher's main function.
        let function = if members.len() == 1 {
            DISPATCHER_NAME.to_string()
        } else {
            format!("prog{slot}")
        };
        let function_id = btf
            .id_by_type_name_kind(&function, BtfKind::Func)
            .map_err(|error| format!("{function}: {error}"))?;
        let link = bpf_sys::freplace_link(member.program.as_fd(), dispatcher.as_fd(), function_id)
            .map_err(|error| {
                format!(
                    "cannot link program \"{}\" (id {}) into {function}: {error}",
                    member.name, member.id
                )
            })?;
        for (path, object) in [
            (pins.join(format!("prog{slot}-link")), link.as_fd()),
            (
                pins.join(format!("prog{slot}-prog")),
                member.program.as_fd(),
            ),
        ] {
            bpf_sys::obj_pin(object, &path)
                .map_err(|error| format!("cannot pin {}: {error}", path.display()))?;
        }
    }
    Ok(())
}

/// Adds `program` (loaded as an extension, see [`Template`]) to the
/// dispatcher on `iface` at run `priority`, chaining on XDP_PASS; makes
/// and attaches a dispatcher there in `mode` when the interface has no XDP
/// program. Returns the mode the interface runs it in.
pub fn join(
    iface: &str,
    program: &Program,
    priority: u32,
    mode: AttachMode,
) -> Result<&'static str, DispatcherError> {
    let iface = open(iface)?;
    let id = program
        .info()
        .map_err(|error| iface.failed("read our program")(error_chain(&error)))?
        .id();
    // A program of ours left by a daemon that died is there already: join
    // once.
    let add = NewMember {
        program,
        priority: Some(priority),
    };
    let mode = change(&iface, Some(id), Some(add), mode)?;
    Ok(mode.unwrap_or("native"))
}

/// Takes program `program_id` out of the dispatcher on `iface`, leaving
/// the others running (and the interface without XDP if it was the last).
pub fn leave(iface: &str, program_id: u32) -> Result<(), DispatcherError> {
    let iface = open(iface)?;
    change(&iface, Some(program_id), None, AttachMode::Auto).map(|_| ())
}

/// [`leave`] on every interface of `ifaces`, logging what fails.
pub fn leave_all(ifaces: &[String], program_id: u32) {
    for iface in ifaces {
        if let Err(error) = leave(iface, program_id) {
            log::error!("cannot leave the dispatcher: {error}");
        }
    }
}

/// Puts `program` in the place of member `old_id` on `iface`, at the old
/// member's priority (a feed reload).
pub fn swap(iface: &str, old_id: u32, program: &Program) -> Result<(), DispatcherError> {
    let iface = open(iface)?;
    let add = NewMember {
        program,
        priority: None,
    };
    change(&iface, Some(old_id), Some(add), AttachMode::Auto).map(|_| ())
}

/// The dispatcher on `iface` as it is now, read under libxdp's lock.
fn read_installed(iface: &Interface<'_>) -> Result<Option<Installed>, DispatcherError> {
    let root = pins_root()?;
    let _lock = Lock::take(&root)?;
    installed(iface, &root)
}

/// Whether our program can join `iface`: nothing attached there, or
/// libxdp's dispatcher of our version with a free slot. Checked before our
/// program loads, so a refusal comes at once and names what is there.
pub fn check_joinable(iface: &str) -> Result<(), DispatcherError> {
    let iface = open(iface)?;
    match read_installed(&iface)? {
        Some(installed) if installed.members.len() >= SLOTS => Err(DispatcherError::Full {
            iface: iface.name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether program `program_id` runs in the dispatcher on `iface`.
pub fn is_member(iface: &str, program_id: u32) -> Result<bool, DispatcherError> {
    let iface = open(iface)?;
    Ok(read_installed(&iface)?
        .is_some_and(|installed| installed.members.iter().any(|m| m.id == program_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_libxdps_layout() {
        // prog_dispatcher.h: four bytes, then three arrays of ten u32.
        assert_eq!(size_of::<Config>(), 124);
        let config = Config {
            magic: MAGIC,
            version: VERSION,
            members: 2,
            frags: 0,
            chain_actions: [1; SLOTS],
            priorities: [2; SLOTS],
            flags: [3; SLOTS],
        };
        let bytes = bytemuck::bytes_of(&config);
        assert_eq!(&bytes[..4], &[236, 2, 2, 0]);
        assert_eq!(&bytes[4..8], &1u32.to_ne_bytes());
        assert_eq!(&bytes[44..48], &2u32.to_ne_bytes());
        assert_eq!(&bytes[84..88], &3u32.to_ne_bytes());
    }
}
