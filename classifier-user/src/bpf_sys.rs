//! The bpf(2) syscall for what aya 0.14 does not wrap (`testrun` builds test
//! runs, links and a constant program on it), and batched map reads.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd};
use bytemuck::Pod;

pub(crate) fn bpf(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size given.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        i32::try_from(result).map_err(io::Error::other)
    }
}

/// BPF_OBJ_GET_INFO_BY_FD: fills `info` (the kernel's `bpf_*_info` for
/// the kind of object `object` is).
fn obj_info<T>(object: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = u32::try_from(object.as_raw_fd()).map_err(io::Error::other)?;
    attr.info.info_len = u32::try_from(size_of::<T>()).map_err(io::Error::other)?;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// BPF_MAP_UPDATE_ELEM of the only value of a one-value array: `value`
/// must be as long as the map's values (the kernel reads that many bytes).
pub fn set_only_value(map: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
    let key = 0u32;
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the map-element member of a zeroed union.
    let element = unsafe { &mut attr.__bindgen_anon_2 };
    element.map_fd = u32::try_from(map.as_raw_fd()).map_err(io::Error::other)?;
    element.key = std::ptr::from_ref(&key) as u64;
    element.__bindgen_anon_1.value = value.as_ptr() as u64;
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// What the kernel made of a loaded program.
#[derive(Clone, Copy, Debug)]
pub struct ProgramImage {
    /// Bytes of machine code the JIT compiled it to; 0 when the JIT is off
    /// (the program is interpreted).
    pub jited_bytes: u32,
    /// Instructions the verifier processed to accept it (the kernel gives
    /// up at 1,000,000).
    pub verified_insns: u32,
}

/// [`ProgramImage`] of the program `program`.
pub fn program_image(program: BorrowedFd<'_>) -> io::Result<ProgramImage> {
    use aya_obj::generated::bpf_prog_info;
    // SAFETY: bpf_prog_info is plain old data; all zeroes is valid (and
    // asks for none of the arrays it can point to).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(program, &mut info)?;
    Ok(ProgramImage {
        jited_bytes: info.jited_prog_len,
        verified_insns: info.verified_insns,
    })
}

/// Entries read per BPF_MAP_LOOKUP_BATCH call, at most…
const BATCH: usize = 8192;
/// …and fewer where their values would take more than this many bytes.
const BATCH_BYTES: usize = 4 << 20;

/// Visits every entry of a per-CPU hash or array map (`K` → one value per
/// possible CPU, each value `elements` `V`s) with BPF_MAP_LOOKUP_BATCH:
/// many entries per call instead of two calls per entry, decoded in place;
/// `visit` gets each entry's `V`s, CPU by CPU. `Ok(false)` when the kernel
/// has no batch operations for the map (nothing was visited), or `V`'s size
/// is not a multiple of 8 (the kernel's per-CPU stride). Entries created or
/// deleted while reading may or may not be seen, as with any walk of a live
/// map.
pub fn visit_per_cpu_batched<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    cpus: usize,
    elements: usize,
    mut visit: impl FnMut(&K, &[V]),
) -> io::Result<bool> {
    if !size_of::<V>().is_multiple_of(8) || cpus == 0 || elements == 0 {
        return Ok(false);
    }
    let per_entry = cpus * elements;
    let mut capacity = (BATCH_BYTES / (per_entry * size_of::<V>()).max(1)).clamp(1, BATCH);
    let mut token = [0u8; 8];
    let mut first = true;
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<V> = Vec::new();
    loop {
        keys.resize(capacity, K::zeroed());
        values.resize(capacity * per_entry, V::zeroed());
        let mut next_token = [0u8; 8];
        // SAFETY: bpf_attr is plain old data; all zeroes is valid.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the `batch` member of a zeroed union.
        let batch = unsafe { &mut attr.batch };
        batch.in_batch = if first { 0 } else { token.as_ptr() as u64 };
        batch.out_batch = next_token.as_mut_ptr() as u64;
        batch.keys = keys.as_mut_ptr() as u64;
        batch.values = values.as_mut_ptr() as u64;
        batch.count = u32::try_from(capacity).map_err(io::Error::other)?;
        batch.map_fd = u32::try_from(map.as_raw_fd()).map_err(io::Error::other)?;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote `count` back.
        let count = unsafe { attr.batch.count } as usize;
        let done = match result {
            Ok(_) => false,
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than the buffer: grow it and retry.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) && count == 0 => {
                capacity *= 2;
                continue;
            }
            Err(error)
                if first
                    && matches!(
                        error.raw_os_error(),
                        // 524 is the kernel's own ENOTSUPP.
                        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
                    ) =>
            {
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        for (key, entry) in keys.iter().zip(values.chunks_exact(per_entry)).take(count) {
            visit(key, entry);
        }
        if done {
            return Ok(true);
        }
        token = next_token;
        first = false;
    }
}

/// Opens a pinned BPF object (map, program or link) by its path.
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = name.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Points a bpf_link at another program, atomically: packets that arrive
/// after the call run `program`, none runs half of each.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the link-update member of a zeroed union.
    let update = unsafe { &mut attr.link_update };
    update.link_fd = u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?;
    update.__bindgen_anon_1.new_prog_fd =
        u32::try_from(program.as_raw_fd()).map_err(io::Error::other)?;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// The bpf_link through which XDP program `program_id` is attached to
/// interface `if_index`, if it is attached through one (`ip link set xdp`
/// and libxdp attach through netlink instead).
pub fn xdp_link_on(if_index: u32, program_id: u32) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use aya_obj::generated::{bpf_link_info, bpf_link_type};
    use std::os::fd::FromRawFd;
    let mut id = 0u32;
    loop {
        // SAFETY: bpf_attr is plain old data; all zeroes is valid.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match bpf(bpf_cmd::BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(error) => return Err(error),
        }
        // SAFETY: the kernel wrote the next id.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        // SAFETY: as above.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.__bindgen_anon_6.__bindgen_anon_1.link_id = id;
        let fd = match bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => fd,
            // Gone since it was listed.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(error) => return Err(error),
        };
        // SAFETY: BPF_LINK_GET_FD_BY_ID returned a new descriptor we own.
        let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: bpf_link_info is plain old data; all zeroes is valid.
        let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
        obj_info(link.as_fd(), &mut info)?;
        // SAFETY: the xdp member is the one an XDP link's info fills.
        if info.type_ == bpf_link_type::BPF_LINK_TYPE_XDP as u32
            && info.prog_id == program_id
            && unsafe { info.__bindgen_anon_1.xdp.ifindex } == if_index
        {
            return Ok(Some(link));
        }
    }
}

/// The interface an XDP bpf_link attaches its program to; 0 once the link
/// is severed (its interface was removed, or the link detached).
pub fn xdp_link_if_index(link: BorrowedFd<'_>) -> io::Result<u32> {
    use aya_obj::generated::bpf_link_info;
    // SAFETY: bpf_link_info is plain old data; all zeroes is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(link, &mut info)?;
    // SAFETY: the xdp member is the one an XDP link's info fills; a
    // severed link's reads 0.
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

/// Detaches a bpf_link from whatever it attaches to; the program lives on
/// while something else holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_detach.link_fd = u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// Pins a BPF object (map, program or link) at `path` on a BPF filesystem.
pub fn obj_pin(object: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_4.pathname = name.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = u32::try_from(object.as_raw_fd()).map_err(io::Error::other)?;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Links extension (`freplace`) program `program` in place of function
/// `function_btf_id` of program `target`; the replacement holds while the
/// returned link is open or pinned.
pub fn freplace_link(
    program: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    function_btf_id: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    let target = u32::try_from(target.as_raw_fd()).map_err(io::Error::other)?;
    // An extension's link takes attach type 0.
    link_create(program, target, 0, function_btf_id)
}

/// BPF_LINK_CREATE: links `program` to `target` (a program's fd, or an
/// interface index) with `attach_type`, at BTF function `target_btf_id`
/// when it has one (0 otherwise).
pub(crate) fn link_create(
    program: BorrowedFd<'_>,
    target: u32,
    attach_type: u32,
    target_btf_id: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the link-create member of a zeroed union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = u32::try_from(program.as_raw_fd()).map_err(io::Error::other)?;
    link.__bindgen_anon_2.target_fd = target;
    link.attach_type = attach_type;
    link.__bindgen_anon_3.target_btf_id = target_btf_id;
    let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The raw BTF the kernel holds as object `btf_id` (a loaded program's
/// types, as `bpftool btf dump id` shows them).
pub fn btf_bytes(btf_id: u32) -> io::Result<Vec<u8>> {
    use aya_obj::generated::bpf_btf_info;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = btf_id;
    let fd = bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: BPF_BTF_GET_FD_BY_ID returned a new descriptor we own.
    let btf = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    loop {
        // SAFETY: bpf_btf_info is plain old data; all zeroes is valid.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.btf = bytes.as_mut_ptr() as u64;
        info.btf_size = u32::try_from(bytes.len()).map_err(io::Error::other)?;
        obj_info(btf.as_fd(), &mut info)?;
        let size = info.btf_size as usize;
        if size <= bytes.len() {
            bytes.truncate(size);
            return Ok(bytes);
        }
        bytes.resize(size, 0);
    }
}
