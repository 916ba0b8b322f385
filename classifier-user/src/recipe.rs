//! Issue 6's recipes: the least programs that do what a path of ours must,
//! written in raw BPF so no compiler stands between the recipe and the
//! machine. Benchmarks run them beside the empty program and ours, to show
//! what each path costs at the least on the machine they run on.

use std::{
    collections::HashMap,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type};

use crate::{
    bpf_sys::{bpf, set_only_value},
    testrun::load_xdp_instructions,
};

/// Loads the cheapest program that does what the non-watched path must, as
/// issue 6 describes it ("parsing plus one per-CPU array update"):
/// bounds-check an Ethernet and IPv4 header, read the ethertype, compare
/// the source address (and with `both_addresses` the destination too, as
/// replies to a watched host need) with one watched IPv4 prefix, and add
/// the packet and its bytes to a per-CPU array's one value (two `u64`). It
/// returns XDP_PASS. Returns the program and its counters (packets, bytes).
pub fn load_parse_and_count_xdp(
    watched: ipnet::Ipv4Net,
    both_addresses: bool,
) -> io::Result<(OwnedFd, OwnedFd)> {
    let counters = create_array(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY, 16, 1)?;
    let (prefix, mask) = frame_order(watched);
    let mut code = Program::default();
    code.op(LDX_W, 2, 1, 0, 0) // r2 = ctx->data
        .op(LDX_W, 3, 1, 4, 0) // r3 = ctx->data_end
        .op(MOV_X, 4, 2, 0, 0) // r4 = r2
        .op(ADD_K, 4, 0, 0, 34) // r4 += 14 + 20
        .jump(JGT_X, 4, 3, 0, PASS) // if r4 > r3 goto pass
        .op(LDX_H, 4, 2, 12, 0) // r4 = the ethertype, frame order
        .jump(JNE_K, 4, 0, ETHERTYPE_IPV4, PASS);
    let address_offsets: &[i16] = if both_addresses { &[26, 30] } else { &[26] };
    for offset in address_offsets {
        code.op(LDX_W, 4, 2, *offset, 0) // r4 = the address
            .op(AND32_K, 4, 0, 0, mask) // w4 &= mask
            .jump(JEQ32_K, 4, 0, prefix, PASS); // if w4 == prefix goto pass
    }
    code.op(MOV_X, 6, 3, 0, 0) // r6 = data_end
        .op(SUB_X, 6, 2, 0, 0) // r6 -= data (the frame's bytes)
        .lookup_only_value(counters.as_fd())
        .jump(JEQ_K, 0, 0, 0, PASS) // if r0 == 0 goto pass
        .add_to(0, 0, Operand::Constant(1)) // packets += 1
        .add_to(0, 8, Operand::Register(6)) // bytes += r6
        .label(PASS)
        .op(MOV_K, 0, 0, 0, XDP_PASS) // r0 = XDP_PASS
        .op(EXIT, 0, 0, 0, 0);
    Ok((load_xdp_instructions(&code.finish())?, counters))
}

/// What a match path's recipe counts, and the tables it reads.
pub struct MatchRecipe {
    pub program: OwnedFd,
    /// Per-CPU, one value: packets, bytes and flow-cache slots claimed.
    pub totals: OwnedFd,
    /// Per-CPU, by service id: packets and bytes.
    pub service_counters: OwnedFd,
    /// Per-CPU, [`MATCH_RECIPE_BUCKETS`] values of
    /// [`MATCH_RECIPE_BUCKET_SLOTS`] slots of six `u64`: the key's two
    /// words, packets, bytes, last seen (jiffies) and the service.
    pub flows: OwnedFd,
    // The endpoint table, kept open with the program.
    _tables: [OwnedFd; 3],
}

/// Flow-cache buckets of a [`MatchRecipe`] (per CPU).
pub const MATCH_RECIPE_BUCKETS: u32 = 64;
/// Slots in each.
pub const MATCH_RECIPE_BUCKET_SLOTS: u32 = 256;
/// Bytes of a slot.
const SLOT_BYTES: i32 = 48;
/// Service ids the recipe's counters hold.
pub const MATCH_RECIPE_SERVICES: u32 = 1024;

/// Loads the least program that does what the watched → endpoint match
/// path must with the design issue 6 names ("an array bitmap built in
/// userspace … and a direct-mapped per-CPU flow cache in a plain array"),
/// for plain IPv4 frames with a 20-byte header:
/// - parse: bounds-check the headers up to the ports, read the ethertype,
///   the version and header length, compare the source with one watched
///   prefix;
/// - count: add the packet and its bytes to one per-CPU totals value;
/// - classify: the destination's entry in a first level indexed by its top
///   18 bits (none, or its /18's leaves), its /24's leaf (a 256-bit map of
///   the addresses some endpoint covers, the ranks of each 64-bit word's
///   first bit, the leaf's first service index), the address's bit, its
///   rank by a software popcount, and the service (a `u16`) at that rank;
/// - count: add the packet and its bytes to the service's per-CPU
///   counters;
/// - flow: hash the 5-tuple's two words into one slot of a per-CPU array
///   of buckets; a slot holding the flow gets the packet and its bytes
///   added, any other is claimed for it; either is stamped with the
///   kernel's tick counter.
///
/// It is a floor: a slot is claimed whatever it holds (ours first checks a
/// drain has read the flow there), and there is no IPv6, no VLAN, no
/// direction, no learning. `endpoint` (with `service`) is the one address
/// the table lists. With `new_flow_every_packet` the flow key's second word
/// is XORed with the CPU's packet count, so every packet is a new flow. It
/// returns XDP_PASS.
pub fn load_match_recipe_xdp(
    watched: ipnet::Ipv4Net,
    endpoint: Ipv4Addr,
    service: u16,
    new_flow_every_packet: bool,
) -> io::Result<MatchRecipe> {
    let per_cpu = bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY;
    let one_value = bpf_map_type::BPF_MAP_TYPE_ARRAY;
    let totals = create_array(per_cpu, 24, 1)?;
    let service_counters = create_array(per_cpu, 16, MATCH_RECIPE_SERVICES)?;
    let bucket_bytes = MATCH_RECIPE_BUCKET_SLOTS * SLOT_BYTES as u32;
    let flows = create_array(per_cpu, bucket_bytes, MATCH_RECIPE_BUCKETS)?;
    let tables = EndpointTable::of(endpoint, service);
    let top = create_array(one_value, size_of_val(&tables.top[..]) as u32, 1)?;
    set_only_value(top.as_fd(), bytemuck::cast_slice(&tables.top))?;
    let leaves = create_array(one_value, tables.leaves.len() as u32, 1)?;
    set_only_value(leaves.as_fd(), &tables.leaves)?;
    let services = create_array(one_value, size_of_val(&tables.services[..]) as u32, 1)?;
    set_only_value(services.as_fd(), bytemuck::cast_slice(&tables.services))?;

    let (prefix, mask) = frame_order(watched);
    let mut code = Program::default();
    // Parse. r6 = data, r7 = data_end.
    code.op(LDX_W, 6, 1, 0, 0)
        .op(LDX_W, 7, 1, 4, 0)
        .op(MOV_X, 2, 6, 0, 0)
        .op(ADD_K, 2, 0, 0, 14 + 20 + 4) // up to the ports
        .jump(JGT_X, 2, 7, 0, PASS)
        .op(LDX_H, 2, 6, 12, 0) // the ethertype, frame order
        .jump(JNE_K, 2, 0, ETHERTYPE_IPV4, PASS)
        .op(LDX_B, 2, 6, 14, 0) // version and header length
        .jump(JNE_K, 2, 0, 0x45, PASS)
        .op(LDX_W, 8, 6, 26, 0) // r8 = the source, frame order
        .op(MOV_X, 2, 8, 0, 0)
        .op(AND32_K, 2, 0, 0, mask)
        .jump(JNE32_K, 2, 0, prefix, PASS) // not watched
        .op(LDX_W, 9, 6, 30, 0) // r9 = the destination, frame order
        // The flow key: its first word the two addresses (r6), its second
        // the ports and protocol (on the stack).
        .op(LDX_W, 2, 6, 34, 0)
        .op(LDX_B, 3, 6, 23, 0)
        .op(LSH_K, 3, 0, 0, 32)
        .op(OR_X, 2, 3, 0, 0)
        .op(STX_DW, 10, 2, KEY_WORD, 0)
        .op(SUB_X, 7, 6, 0, 0) // r7 = the frame's bytes
        .op(MOV_X, 6, 9, 0, 0)
        .op(LSH_K, 6, 0, 0, 32)
        .op(OR_X, 6, 8, 0, 0);
    // Count. r8 = the totals.
    code.lookup_only_value(totals.as_fd())
        .jump(JEQ_K, 0, 0, 0, PASS)
        .op(MOV_X, 8, 0, 0, 0)
        .add_to(8, 0, Operand::Constant(1))
        .add_to(8, 8, Operand::Register(7));
    if new_flow_every_packet {
        code.op(LDX_DW, 1, 8, 0, 0)
            .op(LDX_DW, 2, 10, KEY_WORD, 0)
            .op(XOR_X, 2, 1, 0, 0)
            .op(STX_DW, 10, 2, KEY_WORD, 0);
    }
    // Classify. r1 = the destination in host order; r9 = its service.
    code.op(MOV_X, 1, 9, 0, 0)
        .op(TO_BE, 1, 0, 0, 32)
        .op(MOV32_X, 1, 1, 0, 0) // (so the verifier knows it is 32 bits)
        .op(MOV_X, 2, 1, 0, 0)
        .op(RSH_K, 2, 0, 0, 32 - TOP_BITS)
        .op(LSH_K, 2, 0, 0, 2)
        .load_map_value(3, top.as_fd())
        .op(ADD_X, 3, 2, 0, 0)
        .op(LDX_W, 3, 3, 0, 0) // 0: no endpoint in the /18; else 1 + its first leaf
        .jump(JEQ_K, 3, 0, 0, PASS)
        .op(MOV_X, 2, 1, 0, 0)
        .op(RSH_K, 2, 0, 0, 8)
        .op(AND_K, 2, 0, 0, (1 << (24 - TOP_BITS)) - 1)
        .op(ADD_X, 3, 2, 0, 0)
        .op(SUB_K, 3, 0, 0, 1) // the /24's leaf
        .jump(JGE_K, 3, 0, tables.leaf_count(), PASS)
        .op(MUL_K, 3, 0, 0, LEAF_BYTES as i32)
        .load_map_value(4, leaves.as_fd())
        .op(ADD_X, 4, 3, 0, 0) // r4 = the leaf
        .op(MOV_X, 2, 1, 0, 0)
        .op(AND_K, 2, 0, 0, 0xff)
        .op(RSH_K, 2, 0, 0, 6) // r2 = the word
        .op(MOV_X, 3, 2, 0, 0)
        .op(LSH_K, 3, 0, 0, 3)
        .op(ADD_X, 3, 4, 0, 0)
        .op(LDX_DW, 5, 3, 0, 0) // r5 = the word's bits
        .op(AND_K, 1, 0, 0, 63) // r1 = the address's bit
        .op(MOV_X, 0, 5, 0, 0)
        .op(RSH_X, 0, 1, 0, 0)
        .op(AND_K, 0, 0, 0, 1)
        .jump(JEQ_K, 0, 0, 0, PASS) // no endpoint covers the address
        .op(LSH_K, 2, 0, 0, 1)
        .op(ADD_X, 2, 4, 0, 0)
        .op(LDX_H, 2, 2, 32, 0) // the rank of the word's first bit
        .op(LDX_W, 4, 4, 40, 0) // the leaf's first service index
        .op(ADD_X, 4, 2, 0, 0)
        // The rank within the word: the bits below the address's.
        .op(MOV_K, 0, 0, 0, 1)
        .op(LSH_X, 0, 1, 0, 0)
        .op(SUB_K, 0, 0, 0, 1)
        .op(AND_X, 5, 0, 0, 0)
        .popcount(5)
        .op(ADD_X, 4, 5, 0, 0)
        .jump(JGE_K, 4, 0, tables.services.len() as i32, PASS)
        .op(LSH_K, 4, 0, 0, 1)
        .load_map_value(3, services.as_fd())
        .op(ADD_X, 3, 4, 0, 0)
        .op(LDX_H, 9, 3, 0, 0);
    // Count the service.
    code.op(STX_W, 10, 9, SERVICE_KEY, 0)
        .op(MOV_X, 2, 10, 0, 0)
        .op(ADD_K, 2, 0, 0, i32::from(SERVICE_KEY))
        .load_map(1, service_counters.as_fd())
        .op(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, PASS)
        .add_to(0, 0, Operand::Constant(1))
        .add_to(0, 8, Operand::Register(7));
    // The flow. r9 = its slot. (A multiply's 32-bit immediate is sign
    // extended: the factors are 0xffff_ffff_9e37_79b1 and
    // 0xffff_ffff_85eb_ca77, odd, which is all the hash needs.)
    code.op(LDX_DW, 2, 10, KEY_WORD, 0)
        .op(MOV_X, 3, 6, 0, 0)
        .op(MUL_K, 3, 0, 0, 0x9e37_79b1_u32 as i32)
        .op(MUL_K, 2, 0, 0, 0x85eb_ca77_u32 as i32)
        .op(ADD_X, 3, 2, 0, 0)
        .op(RSH_K, 3, 0, 0, 64 - SLOT_INDEX_BITS)
        .op(MOV_X, 2, 3, 0, 0)
        .op(AND_K, 2, 0, 0, MATCH_RECIPE_BUCKET_SLOTS as i32 - 1)
        .op(MUL_K, 2, 0, 0, SLOT_BYTES)
        .op(STX_DW, 10, 2, SLOT_OFFSET, 0)
        .op(
            RSH_K,
            3,
            0,
            0,
            MATCH_RECIPE_BUCKET_SLOTS.trailing_zeros() as i32,
        )
        .op(STX_W, 10, 3, LOOKUP_KEY, 0)
        .op(MOV_X, 2, 10, 0, 0)
        .op(ADD_K, 2, 0, 0, i32::from(LOOKUP_KEY))
        .load_map(1, flows.as_fd())
        .op(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, PASS)
        .op(LDX_DW, 9, 10, SLOT_OFFSET, 0)
        .op(ADD_X, 9, 0, 0, 0)
        .op(LDX_DW, 1, 9, 0, 0)
        .jump(JNE_X, 1, 6, 0, CLAIM)
        .op(LDX_DW, 1, 9, 8, 0)
        .op(LDX_DW, 2, 10, KEY_WORD, 0)
        .jump(JNE_X, 1, 2, 0, CLAIM)
        .add_to(9, 16, Operand::Constant(1))
        .add_to(9, 24, Operand::Register(7))
        .jump(JA, 0, 0, 0, STAMP)
        .label(CLAIM)
        .op(STX_DW, 9, 6, 0, 0)
        .op(LDX_DW, 2, 10, KEY_WORD, 0)
        .op(STX_DW, 9, 2, 8, 0)
        .op(ST_DW, 9, 0, 16, 1)
        .op(STX_DW, 9, 7, 24, 0)
        .op(LDX_W, 2, 10, SERVICE_KEY, 0)
        .op(STX_DW, 9, 2, 40, 0)
        .add_to(8, 16, Operand::Constant(1)) // a slot claimed
        .label(STAMP)
        .op(CALL, 0, 0, 0, BPF_FUNC_JIFFIES64)
        .op(STX_DW, 9, 0, 32, 0)
        .label(PASS)
        .op(MOV_K, 0, 0, 0, XDP_PASS)
        .op(EXIT, 0, 0, 0, 0);
    Ok(MatchRecipe {
        program: load_xdp_instructions(&code.finish())?,
        totals,
        service_counters,
        flows,
        _tables: [top, leaves, services],
    })
}

/// The match recipe's endpoint table, holding one address.
struct EndpointTable {
    /// By the top [`TOP_BITS`] bits: 0, or 1 + the /18's first leaf.
    top: Vec<u32>,
    /// [`LEAF_BYTES`] each: four 64-bit words of address bits, the rank of
    /// each word's first bit (`u16`), the leaf's first service index
    /// (`u32`) and padding.
    leaves: Vec<u8>,
    services: Vec<u16>,
}

/// Bits of an address the recipe's first level is indexed by.
const TOP_BITS: i32 = 18;
/// Bytes of a leaf of the recipe's endpoint table.
const LEAF_BYTES: usize = 48;

impl EndpointTable {
    fn of(endpoint: Ipv4Addr, service: u16) -> EndpointTable {
        let address = u32::from(endpoint);
        let leaves_per_top = 1 << (24 - TOP_BITS);
        let mut top = vec![0u32; 1 << TOP_BITS];
        top[(address >> (32 - TOP_BITS)) as usize] = 1;
        let mut leaves = vec![0u8; LEAF_BYTES * leaves_per_top];
        let leaf = (address >> 8) as usize % leaves_per_top * LEAF_BYTES;
        let (word, bit) = ((address & 0xff) as usize / 64, address % 64);
        let at = leaf + word * 8;
        leaves[at..at + 8].copy_from_slice(&(1u64 << bit).to_ne_bytes());
        // The service index: words before it hold no bits, so their ranks
        // and the leaf's first index are all 0.
        EndpointTable {
            top,
            leaves,
            services: vec![service; 64],
        }
    }

    fn leaf_count(&self) -> i32 {
        (self.leaves.len() / LEAF_BYTES) as i32
    }
}

/// Bits of a flow's hash that pick its slot.
const SLOT_INDEX_BITS: i32 =
    (MATCH_RECIPE_BUCKETS * MATCH_RECIPE_BUCKET_SLOTS).trailing_zeros() as i32;
/// Stack slots: the flow key's second word, a slot's offset in its bucket,
/// the service (a map key) and other map lookups' keys.
const KEY_WORD: i16 = -16;
const SLOT_OFFSET: i16 = -24;
const SERVICE_KEY: i16 = -8;
const LOOKUP_KEY: i16 = -4;

/// A watched prefix and its mask as a 32-bit load of the frame gives them.
fn frame_order(watched: ipnet::Ipv4Net) -> (i32, i32) {
    (
        u32::from_ne_bytes(watched.network().octets()) as i32,
        u32::from_ne_bytes(watched.netmask().octets()) as i32,
    )
}

/// An array map (per-CPU or not) of `entries` values of `value_size`
/// bytes, keyed by `u32`.
fn create_array(map_type: bpf_map_type, value_size: u32, entries: u32) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain old data; all zeroes is valid.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the map-create member of a zeroed union.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = map_type as u32;
    create.key_size = 4;
    create.value_size = value_size;
    create.max_entries = entries;
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// BPF opcodes (instruction class, operation, source).
const LDX_B: u8 = 0x71;
const LDX_H: u8 = 0x69;
const LDX_W: u8 = 0x61;
const LDX_DW: u8 = 0x79;
const STX_W: u8 = 0x63;
const ST_W: u8 = 0x62;
const STX_DW: u8 = 0x7b;
const ST_DW: u8 = 0x7a;
const LD_IMM64: u8 = 0x18;
const ADD_K: u8 = 0x07;
const ADD_X: u8 = 0x0f;
const SUB_K: u8 = 0x17;
const SUB_X: u8 = 0x1f;
const MUL_K: u8 = 0x27;
const MUL_X: u8 = 0x2f;
const OR_X: u8 = 0x4f;
const AND_K: u8 = 0x57;
const AND_X: u8 = 0x5f;
const LSH_K: u8 = 0x67;
const LSH_X: u8 = 0x6f;
const RSH_K: u8 = 0x77;
const RSH_X: u8 = 0x7f;
const XOR_X: u8 = 0xaf;
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const MOV32_X: u8 = 0xbc;
const AND32_K: u8 = 0x54;
const TO_BE: u8 = 0xdc;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JGT_X: u8 = 0x2d;
const JGE_K: u8 = 0x35;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const JEQ32_K: u8 = 0x16;
const JNE32_K: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
/// Which the verifier turns into a load on 64-bit machines.
const BPF_FUNC_JIFFIES64: i32 = 118;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_MAP_VALUE: u8 = 2;
const XDP_PASS: i32 = 2;
/// 0x0800 as a 16-bit load of the frame gives it.
const ETHERTYPE_IPV4: i32 = u16::from_ne_bytes([0x08, 0x00]) as i32;

// Jump targets.
const PASS: &str = "pass";
const CLAIM: &str = "claim";
const STAMP: &str = "stamp";

/// What is added to a counter.
enum Operand {
    Constant(i32),
    Register(u8),
}

/// A BPF program being written: its instructions, and jumps to labels
/// resolved by [`Program::finish`].
#[derive(Default)]
struct Program {
    slots: Vec<u64>,
    labels: HashMap<&'static str, usize>,
    jumps: Vec<(usize, &'static str)>,
}

impl Program {
    /// One instruction: opcode, destination and source registers, offset
    /// and immediate.
    fn op(&mut self, code: u8, dst: u8, src: u8, offset: i16, imm: i32) -> &mut Self {
        self.slots.push(
            u64::from(code)
                | u64::from(dst) << 8
                | u64::from(src) << 12
                | u64::from(offset as u16) << 16
                | u64::from(imm as u32) << 32,
        );
        self
    }

    /// A jump to `label`.
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: &'static str) -> &mut Self {
        self.jumps.push((self.slots.len(), label));
        self.op(code, dst, src, 0, imm)
    }

    fn label(&mut self, label: &'static str) -> &mut Self {
        let earlier = self.labels.insert(label, self.slots.len());
        assert!(earlier.is_none(), "the label {label} is placed twice");
        self
    }

    /// `dst` = a 64-bit immediate (two slots), `kind` telling the verifier
    /// what it is.
    fn wide(&mut self, dst: u8, kind: u8, low: u32, high: u32) -> &mut Self {
        self.op(LD_IMM64, dst, kind, 0, low as i32)
            .op(0, 0, 0, 0, high as i32)
    }

    fn load_map(&mut self, dst: u8, map: BorrowedFd<'_>) -> &mut Self {
        self.wide(dst, BPF_PSEUDO_MAP_FD, map.as_raw_fd() as u32, 0)
    }

    /// `dst` = the address of a one-value array's value (no lookup).
    fn load_map_value(&mut self, dst: u8, map: BorrowedFd<'_>) -> &mut Self {
        self.wide(dst, BPF_PSEUDO_MAP_VALUE, map.as_raw_fd() as u32, 0)
    }

    /// r0 = the only value of the array `map`, or 0 (r1 to r5 clobbered).
    fn lookup_only_value(&mut self, map: BorrowedFd<'_>) -> &mut Self {
        self.op(ST_W, 10, 0, LOOKUP_KEY, 0)
            .op(MOV_X, 2, 10, 0, 0)
            .op(ADD_K, 2, 0, 0, i32::from(LOOKUP_KEY))
            .load_map(1, map)
            .op(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM)
    }

    /// `*(u64 *)(base + offset) += operand`, through r1.
    fn add_to(&mut self, base: u8, offset: i16, operand: Operand) -> &mut Self {
        self.op(LDX_DW, 1, base, offset, 0);
        match operand {
            Operand::Constant(value) => self.op(ADD_K, 1, 0, 0, value),
            Operand::Register(register) => self.op(ADD_X, 1, register, 0, 0),
        };
        self.op(STX_DW, base, 1, offset, 0)
    }

    /// `register` = the number of its bits set (r1 and r2 clobbered), as
    /// software must: BPF has no popcount instruction.
    fn popcount(&mut self, register: u8) -> &mut Self {
        let x = register;
        let split = |value: u64| (value as u32, (value >> 32) as u32);
        let (m1, m2, m4, h01) = (
            split(0x5555_5555_5555_5555),
            split(0x3333_3333_3333_3333),
            split(0x0f0f_0f0f_0f0f_0f0f),
            split(0x0101_0101_0101_0101),
        );
        // x -= (x >> 1) & m1
        self.wide(1, 0, m1.0, m1.1)
            .op(MOV_X, 2, x, 0, 0)
            .op(RSH_K, 2, 0, 0, 1)
            .op(AND_X, 2, 1, 0, 0)
            .op(SUB_X, x, 2, 0, 0)
            // x = (x & m2) + ((x >> 2) & m2)
            .wide(1, 0, m2.0, m2.1)
            .op(MOV_X, 2, x, 0, 0)
            .op(RSH_K, 2, 0, 0, 2)
            .op(AND_X, 2, 1, 0, 0)
            .op(AND_X, x, 1, 0, 0)
            .op(ADD_X, x, 2, 0, 0)
            // x = (x + (x >> 4)) & m4
            .op(MOV_X, 2, x, 0, 0)
            .op(RSH_K, 2, 0, 0, 4)
            .op(ADD_X, x, 2, 0, 0)
            .wide(1, 0, m4.0, m4.1)
            .op(AND_X, x, 1, 0, 0)
            // x = (x * h01) >> 56
            .wide(1, 0, h01.0, h01.1)
            .op(MUL_X, x, 1, 0, 0)
            .op(RSH_K, x, 0, 0, 56)
    }

    /// The instructions, each jump's offset counting the instructions
    /// after it up to its label (negative for a label before it).
    fn finish(mut self) -> Vec<u64> {
        for (at, label) in &self.jumps {
            let target = *self
                .labels
                .get(label)
                .unwrap_or_else(|| panic!("a jump to {label}, which is never placed"));
            let offset = i16::try_from(target as i64 - *at as i64 - 1)
                .unwrap_or_else(|_| panic!("a jump to {label} farther than BPF can jump"));
            self.slots[*at] |= u64::from(offset as u16) << 16;
        }
        self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_counts_the_instructions_after_it_up_to_its_label() {
        let mut code = Program::default();
        code.jump(JEQ_K, 0, 0, 0, PASS)
            .op(MOV_K, 0, 0, 0, 1)
            .wide(1, 0, 7, 0)
            .label(PASS)
            .op(EXIT, 0, 0, 0, 0);
        let slots = code.finish();
        assert_eq!(slots.len(), 5);
        // Past the move and both slots of the wide load.
        assert_eq!((slots[0] >> 16) as u16, 3);
        assert_eq!(slots[0] & 0xff, u64::from(JEQ_K));

        // Back to a label before the jump: back past the jump itself too.
        let mut code = Program::default();
        code.label(PASS)
            .op(MOV_K, 0, 0, 0, 1)
            .jump(JA, 0, 0, 0, PASS);
        let slots = code.finish();
        assert_eq!((slots[1] >> 16) as u16 as i16, -2);
    }

    #[test]
    fn the_endpoint_table_holds_its_one_address_and_no_neighbour() {
        let endpoint: Ipv4Addr = "203.0.113.77".parse().expect("an address");
        let table = EndpointTable::of(endpoint, 9);
        let address = u32::from(endpoint);
        let top = (address >> (32 - TOP_BITS)) as usize;
        assert_eq!(table.top[top], 1);
        assert_eq!(table.top.iter().filter(|entry| **entry != 0).count(), 1);
        // 203.0.113.77: leaf 113 % 64 = 49 of its /18, word 77 / 64 = 1,
        // bit 77 % 64 = 13.
        let word_at = 49 * LEAF_BYTES + 8;
        let word = u64::from_ne_bytes(table.leaves[word_at..word_at + 8].try_into().unwrap());
        assert_eq!(word, 1 << 13);
        let set_bits: u32 = table.leaves.iter().map(|byte| byte.count_ones()).sum();
        assert_eq!(set_bits, 1);
        assert_eq!(table.services[0], 9);
    }
}
