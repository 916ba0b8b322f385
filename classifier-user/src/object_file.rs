//! The XDP object file as the loader hands it to aya. aya takes an array's
//! value size only from the object's map definition, so a map whose value
//! is sized at load time (the IPv4 table's lower levels) is resized in a
//! copy of the object before loading it.

use object::{Object, ObjectSection, ObjectSymbol};

/// `BPF_MAP_TYPE_ARRAY`.
const MAP_TYPE_ARRAY: u32 = 2;
/// The section aya-ebpf's `#[map]` places legacy map definitions in: each a
/// `bpf_map_def` of `u32`s (type, key size, value size, max entries, ...).
const MAPS_SECTION: &str = "maps";
/// Byte offset of the value size in a `bpf_map_def`.
const VALUE_SIZE_AT: usize = 8;

#[derive(Debug, thiserror::Error)]
#[error("the XDP object's map {map}: {problem} (object and loader disagree)")]
pub struct ObjectError {
    pub map: &'static str,
    pub problem: String,
}

/// A copy of `object` in which the one-value array `map`, declared with
/// values of `declared` bytes, has values of `value_size` bytes. The copy
/// is 8-byte aligned, as the object parser wants it.
pub fn with_value_size(
    object: &[u8],
    map: &'static str,
    declared: usize,
    value_size: u32,
) -> Result<AlignedObject, ObjectError> {
    let error = |problem: String| ObjectError { map, problem };
    let file = object::File::parse(object).map_err(|e| error(format!("cannot parse: {e}")))?;
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
    let within = symbol.address() - section.address();
    if within + 16 > section_len {
        return Err(error("its definition runs past its section".into()));
    }
    let at = usize::try_from(section_start + within).expect("an offset into a slice");
    let field = |index: usize| {
        let start = at + 4 * index;
        u32::from_le_bytes(object[start..start + 4].try_into().expect("4 bytes"))
    };
    let (map_type, key_size, value_size_now, max_entries) =
        (field(0), field(1), field(2), field(3));
    if (map_type, key_size, value_size_now as usize, max_entries)
        != (MAP_TYPE_ARRAY, 4, declared, 1)
    {
        return Err(error(format!(
            "expected a one-value array of {declared}-byte values, found type {map_type}, key size {key_size}, value size {value_size_now}, {max_entries} entries"
        )));
    }
    let mut copy = AlignedObject::new(object);
    copy.bytes_mut()[at + VALUE_SIZE_AT..at + VALUE_SIZE_AT + 4]
        .copy_from_slice(&value_size.to_le_bytes());
    Ok(copy)
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
