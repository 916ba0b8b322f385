//! The XDP object file as the loader hands it to aya. aya takes an array's
//! value size only from the object's map definition, and a global's size
//! only from its section, so values sized at load time (the flow cache's
//! buckets, the IPv4 table's lower levels) are resized in a copy of the
//! object before loading it.

use object::{Object, ObjectSection, ObjectSymbol};

/// `BPF_MAP_TYPE_ARRAY`.
const MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// The section aya-ebpf's `#[map]` places legacy map definitions in: each a
/// `bpf_map_def` of `u32`s (type, key size, value size, max entries, ...).
const MAPS_SECTION: &str = "maps";
/// Byte offset of the value size in a `bpf_map_def`.
const VALUE_SIZE_AT: usize = 8;
/// Where a global lives whose size is set at load time: a section of its
/// own whose name starts with this, of which aya makes a one-value array.
const DATA_SECTION_PREFIX: &str = ".bss.";
/// `SHT_NOBITS`, the type of a `.bss` section (no bytes in the file).
const SHT_NOBITS: u32 = 8;
/// In an ELF64 header: where the section headers start, and their size.
const E_SHOFF_AT: usize = 0x28;
const E_SHENTSIZE_AT: usize = 0x3a;
/// In an ELF64 section header: its type and its size.
const SH_TYPE_AT: usize = 4;
const SH_SIZE_AT: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("the XDP object's map {map}: {problem} (object and loader disagree)")]
pub struct ObjectError {
    pub map: &'static str,
    pub problem: String,
}

/// A map whose values are sized at load time: its name (a `maps` symbol,
/// or a `.bss.` section holding one global), the value size the object
/// declares, and the size it is loaded with.
#[derive(Clone, Copy, Debug)]
pub struct ValueSize {
    pub map: &'static str,
    pub declared: usize,
    pub loaded: u32,
}

/// A copy of `object` in which each one-value array or per-CPU array named
/// in `sizes` (declared with one entry, whatever the loader then sizes it
/// to), and each `.bss.` section named there, has values of its loaded
/// size. The copy is 8-byte aligned, as the object parser wants it.
pub fn with_value_sizes(object: &[u8], sizes: &[ValueSize]) -> Result<AlignedObject, ObjectError> {
    let file = object::File::parse(object).map_err(|e| ObjectError {
        map: sizes.first().map_or("?", |size| size.map),
        problem: format!("cannot parse: {e}"),
    })?;
    let mut copy = AlignedObject::new(object);
    for size in sizes {
        if size.map.starts_with(DATA_SECTION_PREFIX) {
            let at = section_size_at(&file, object, size)?;
            copy.bytes_mut()[at..at + 8].copy_from_slice(&u64::from(size.loaded).to_le_bytes());
        } else {
            let at = value_size_at(&file, object, size)?;
            copy.bytes_mut()[at..at + 4].copy_from_slice(&size.loaded.to_le_bytes());
        }
    }
    Ok(copy)
}

/// Where in `object` the size of section `size.map` lies (in its section
/// header), checked to be a `.bss` section of the size `size` says the
/// object declares.
fn section_size_at(
    file: &object::File<'_>,
    object: &[u8],
    size: &ValueSize,
) -> Result<usize, ObjectError> {
    let ValueSize { map, declared, .. } = *size;
    let error = |problem: String| ObjectError { map, problem };
    if !matches!(file, object::File::Elf64(_)) || !file.is_little_endian() {
        return Err(error("the object is not a little-endian ELF64 file".into()));
    }
    let section = file
        .section_by_name(map)
        .ok_or_else(|| error("no such section".into()))?;
    let read = |at: usize, len: usize| {
        object
            .get(at..at + len)
            .map(|bytes| {
                let mut le = [0u8; 8];
                le[..len].copy_from_slice(bytes);
                u64::from_le_bytes(le)
            })
            .ok_or_else(|| error("its section header lies outside the file".into()))
    };
    let headers = usize::try_from(read(E_SHOFF_AT, 8)?).map_err(|e| error(e.to_string()))?;
    let header_size =
        usize::try_from(read(E_SHENTSIZE_AT, 2)?).map_err(|e| error(e.to_string()))?;
    let header = headers + section.index().0 * header_size;
    let (kind, size_now) = (read(header + SH_TYPE_AT, 4)?, read(header + SH_SIZE_AT, 8)?);
    if kind != u64::from(SHT_NOBITS) || size_now != declared as u64 {
        return Err(error(format!(
            "expected a .bss section of {declared} bytes, found type {kind} of {size_now} bytes"
        )));
    }
    Ok(header + SH_SIZE_AT)
}

/// Where in `object` the value size of `size.map`'s definition lies,
/// checked to be what `size` says the object declares.
fn value_size_at(
    file: &object::File<'_>,
    object: &[u8],
    size: &ValueSize,
) -> Result<usize, ObjectError> {
    let ValueSize { map, declared, .. } = *size;
    let error = |problem: String| ObjectError { map, problem };
    let symbol = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(map))
        .ok_or_else(|| error("no such symbol".into()))?;
    let section = symbol
        .section_index()
        .and_then(|index| file.section_by_index(index).ok())
        .ok_or_else(|| error("the symbol is in no section".into()))?;
    if section.name() != Ok(MAPS_SECTION) {
        return Err(error(format!(
            "defined in section {:?}, not {MAPS_SECTION:?}",
            section.name().unwrap_or("?")
        )));
    }
    let (section_start, section_len) = section
        .file_range()
        .ok_or_else(|| error("its section has no bytes in the file".into()))?;
    let within = symbol
        .address()
        .checked_sub(section.address())
        .filter(|within| within.checked_add(16).is_some_and(|end| end <= section_len))
        .ok_or_else(|| error("its definition lies outside its section".into()))?;
    let at = usize::try_from(section_start + within).expect("an offset into a slice");
    let field = |index: usize| {
        let start = at + 4 * index;
        u32::from_le_bytes(object[start..start + 4].try_into().expect("4 bytes"))
    };
    let (map_type, key_size, value_size_now, max_entries) =
        (field(0), field(1), field(2), field(3));
    if !matches!(map_type, MAP_TYPE_ARRAY | MAP_TYPE_PERCPU_ARRAY)
        || (key_size, value_size_now as usize, max_entries) != (4, declared, 1)
    {
        return Err(error(format!(
            "expected an array or per-CPU array declared with one {declared}-byte value, found type {map_type}, key size {key_size}, value size {value_size_now}, {max_entries} entries"
        )));
    }
    Ok(at + VALUE_SIZE_AT)
}

/// Object bytes in 8-byte aligned storage.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }
}

impl std::fmt::Debug for AlignedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedObject({} bytes)", self.len)
    }
}
