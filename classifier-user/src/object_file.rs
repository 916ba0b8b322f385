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
            let at = section_size_at(object, size)?;
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
fn section_size_at(object: &[u8], size: &ValueSize) -> Result<usize, ObjectError> {
    use object::{LittleEndian as LE, elf::SectionHeader64, read::elf::ElfFile64};
    let ValueSize { map, declared, .. } = *size;
    let error = |problem: String| ObjectError { map, problem };
    let elf = ElfFile64::<LE>::parse(object)
        .map_err(|e| error(format!("the object is not a little-endian ELF64 file: {e}")))?;
    let section = elf
        .section_by_name(map)
        .ok_or_else(|| error("no such section".into()))?;
    let header = section.elf_section_header();
    let (kind, size_now) = (header.sh_type.get(LE), header.sh_size.get(LE));
    if kind != object::elf::SHT_NOBITS || size_now != declared as u64 {
        return Err(error(format!(
            "expected a .bss section of {declared} bytes, found type {kind} of {size_now} bytes"
        )));
    }
    let headers =
        usize::try_from(elf.elf_header().e_shoff.get(LE)).map_err(|e| error(e.to_string()))?;
    let header_size = usize::from(elf.elf_header().e_shentsize.get(LE));
    Ok(headers
        + section.index().0 * header_size
        + std::mem::offset_of!(SectionHeader64<LE>, sh_size))
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
