//! Least privilege: once the program is loaded, attached and pinned (and
//! the metrics socket bound), the daemon keeps only the capabilities a
//! feed reload needs and drops every other one, from its effective,
//! permitted and inheritable sets:
//!
//! - `CAP_BPF`: load the reloaded program and create its maps;
//! - `CAP_NET_ADMIN`: point the interfaces' XDP links at it;
//! - `CAP_PERFMON`: kept when present, as kernels may ask for it when
//!   verifying a program (it is not needed by the current one).
//!
//! With `--xdp-dispatcher` it keeps `CAP_SYS_ADMIN` too: leaving libxdp's
//! dispatcher (at SIGTERM) and reloading into it open the programs and the
//! configuration already there by id, which takes it.
//!
//! Draining needs none of them (reads go through map descriptors already
//! open), and snapshots are plain file writes. Run as root, everything else
//! root's capabilities allow (CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, …) is gone
//! after the drop.

/// Capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What the daemon keeps.
pub const KEPT: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
];

/// Kept too with `--xdp-dispatcher`.
pub const DISPATCHER_KEPT: (u32, &str) = (CAP_SYS_ADMIN, "CAP_SYS_ADMIN");

const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three sets as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

fn join(data: [Data; 2], set: impl Fn(&Data) -> u32) -> u64 {
    u64::from(set(&data[0])) | u64::from(set(&data[1])) << 32
}

/// This process's capabilities.
pub fn current() -> std::io::Result<Capabilities> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3.
    let result = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Capabilities {
        effective: join(data, |d| d.effective),
        permitted: join(data, |d| d.permitted),
        inheritable: join(data, |d| d.inheritable),
    })
}

/// Keeps only [`KEPT`] and `also` (those of them the process has); returns
/// what is left.
pub fn drop_all_but_kept(also: &[(u32, &str)]) -> std::io::Result<Capabilities> {
    let now = current()?;
    let keep: u64 = KEPT
        .iter()
        .chain(also)
        .map(|(cap, _)| 1u64 << cap)
        .fold(0, |mask, bit| mask | bit)
        & now.permitted;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |mask: u64| [mask as u32, (mask >> 32) as u32];
    let [low, high] = split(keep);
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads two Data structs for version 3.
    let result = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // No ambient capabilities survive an exec either.
    // SAFETY: prctl with documented constant arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    current()
}

/// Names of the capabilities in `mask` that [`KEPT`] knows, for logs.
pub fn kept_names(mask: u64) -> Vec<&'static str> {
    KEPT.iter()
        .chain([DISPATCHER_KEPT].iter())
        .filter(|(cap, _)| mask & (1u64 << cap) != 0)
        .map(|(_, name)| *name)
        .collect()
}
