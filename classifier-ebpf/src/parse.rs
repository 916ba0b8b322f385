//! Parsing: a bounds-checked cursor over the frame yields a small packet
//! summary, or the malformed reason that stopped it. Hands `Parsed` to `count`.
//!
//! Offsets are kept as scalars from the frame start and every read is checked
//! against both the logical end (the IP packet's own length) and `data_end`
//! (what the verifier needs to see). The logical end starts as a constant,
//! not as `data_end - data`: from that LLVM would prove the pointer check
//! redundant and drop it, and the verifier would reject the program.

use aya_ebpf::programs::XdpContext;
use classifier_common::{
    FAMILY_V4, FAMILY_V6, MALFORMED_ETHERNET_TRUNCATED, MALFORMED_IPV4_BAD_HEADER,
    MALFORMED_IPV4_TRUNCATED, MALFORMED_IPV6_BAD_HEADER, MALFORMED_IPV6_EXT_TOO_DEEP,
    MALFORMED_IPV6_EXT_TRUNCATED, MALFORMED_IPV6_TRUNCATED, MALFORMED_L4_TRUNCATED,
    MALFORMED_VLAN_TOO_DEEP, MALFORMED_VLAN_TRUNCATED, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
    hint_index_v6_loaded,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const ETH_HEADER_LEN: usize = 14;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 4;

/// The fragment offset's bits of IPv4's flags-and-offset field.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

const PROTO_HOPOPTS: u8 = 0;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ROUTING: u8 = 43;
const PROTO_FRAGMENT: u8 = 44;
const PROTO_AH: u8 = 51;
const PROTO_ICMPV6: u8 = 58;
const PROTO_DSTOPTS: u8 = 60;

/// What a well-formed frame carries.
pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, …).
    NotIp,
    V4(Packet<u32>),
    V6(Packet<[u8; 16]>),
}

/// Summary of an IP packet. IPv4 addresses are host-order `u32`s (the
/// table is indexed by their bits), IPv6 ones 16 bytes in network order.
pub struct Packet<A> {
    pub protocol: u8,
    pub tcp_flags: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: A,
    pub dst: A,
    /// The transport payload (after the TCP/UDP/ICMP header; the whole IP
    /// payload for other protocols) as offsets from the frame start; empty
    /// for later fragments (an end before the start). The end is the IP
    /// packet's own; reads must still check the frame's end.
    pub payload_start: usize,
    pub payload_end: usize,
    /// The IP packet's length: IPv4's total length, IPv6's payload length
    /// plus its header (a jumbogram's: to the frame's end, at most 65,535).
    pub ip_len: u16,
}

/// Why a frame could not be parsed, and the family its EtherType named
/// (0 when it had none).
#[derive(Clone, Copy)]
pub struct Malformed {
    pub family: u8,
    pub reason: usize,
}

/// No frame is longer than this; the logical limit before an IP header.
pub const MAX_FRAME: usize = 0xffff;

/// A bounds-checked position in the frame. Offsets are scalars from the
/// frame start; `limit` is the logical end (the IP packet's own length).
struct Cursor {
    data: usize,
    data_end: usize,
    offset: usize,
    limit: usize,
}

impl Cursor {
    /// The address of the next `len` bytes, moving past them, or `None` when
    /// they would cross the logical limit or the end of the frame.
    #[inline(always)]
    fn take(&mut self, len: usize) -> Option<usize> {
        let start = self.data + self.offset;
        if start + len > self.data_end {
            return None;
        }
        let next = self.offset + len;
        if next > self.limit {
            return None;
        }
        self.offset = next;
        Some(start)
    }

    /// Moves past `len` bytes that must exist; `len` is clamped by callers.
    #[inline(always)]
    fn skip(&mut self, len: usize) -> Option<()> {
        let next = self.offset + len;
        if self.data + next > self.data_end || next > self.limit {
            return None;
        }
        self.offset = next;
        Some(())
    }
}

/// Loads a `T` from packet memory that `Cursor::take` checked. Header fields
/// are read whole (one load, not one per byte): packet data may be only
/// 2-byte aligned, which the verifier accepts (no BPF_F_STRICT_ALIGNMENT)
/// and the x86-64 and arm64 JITs load without a fault.
#[inline(always)]
pub fn load<T: Copy>(address: usize) -> T {
    // SAFETY: `address` lies inside the frame, checked by `Cursor::take`.
    unsafe { core::ptr::read(address as *const T) }
}

/// A big-endian `u16` field at `address`.
#[inline(always)]
fn load_be16(address: usize) -> u16 {
    u16::from_be(load::<u16>(address))
}

#[inline(always)]
fn malformed(family: u8, reason: usize) -> Malformed {
    Malformed { family, reason }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let mut cursor = Cursor {
        data: ctx.data(),
        data_end: ctx.data_end(),
        offset: 0,
        limit: MAX_FRAME,
    };

    let eth = cursor
        .take(ETH_HEADER_LEN)
        .ok_or(malformed(0, MALFORMED_ETHERNET_TRUNCATED))?;
    let mut ethertype = load_be16(eth + 12);

    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = cursor
            .take(4)
            .ok_or(malformed(0, MALFORMED_VLAN_TRUNCATED))?;
        ethertype = load_be16(tag + 2);
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(&mut cursor).map(Parsed::V4),
        ETH_P_IPV6 => {
            parse_ipv6(&mut cursor).map(|packet| Parsed::V6(forget_payload_start(packet)))
        }
        ETH_P_8021Q | ETH_P_8021AD => Err(malformed(0, MALFORMED_VLAN_TOO_DEEP)),
        _ => Ok(Parsed::NotIp),
    }
}

/// The furthest an IPv6 packet's transport payload can start: Ethernet,
/// VLAN tags, the IPv6 header, extension headers of 2,048 bytes at most
/// (Hdr Ext Len 255 in 8-octet units; AH's 4-octet units give less), and
/// the longest TCP header.
const MAX_V6_PAYLOAD_START: usize =
    ETH_HEADER_LEN + MAX_VLAN_TAGS * 4 + IPV6_HEADER_LEN + MAX_IPV6_EXT_HEADERS * 2048 + 60;
/// A mask that keeps every offset up to [`MAX_V6_PAYLOAD_START`].
const V6_PAYLOAD_START_MASK: usize = 0x3fff;
const _: () = assert!(MAX_V6_PAYLOAD_START <= V6_PAYLOAD_START_MASK);

/// `packet` with its payload's start as a number the verifier knows only
/// the range of. Each path through the IPv6 extension headers ends at an
/// offset of its own, and the verifier checks the code after the parser
/// once for each different state it reaches it with: with the offset
/// forgotten, the paths reach it in a few states instead of hundreds.
#[inline(always)]
fn forget_payload_start<A>(mut packet: Packet<A>) -> Packet<A> {
    packet.payload_start = forget(packet.payload_start) & V6_PAYLOAD_START_MASK;
    packet
}

/// A 16-bit `value` read back from two byte stores: the verifier tracks a
/// value kept on the stack whole, but not one reassembled from its bytes.
#[inline(always)]
fn forget(value: usize) -> usize {
    #[repr(C, align(8))]
    struct Slot([u8; 8]);
    let mut slot = Slot([0; 8]);
    // SAFETY: in-bounds accesses to a local; volatile, so LLVM keeps them.
    unsafe {
        core::ptr::write_volatile(&mut slot.0[0], value as u8);
        core::ptr::write_volatile(&mut slot.0[1], (value >> 8) as u8);
        usize::from(core::ptr::read_volatile(slot.0.as_ptr().cast::<u16>()))
    }
}

/// The prefilter entries of the commonest frames, untagged IPv4 with a 20-byte
/// header and untagged IPv6 without extension headers, when [`parse`] would
/// accept the frame as well-formed (its length rules or stricter ones, so
/// what `plain` takes `parse` would take too). Checking that
/// takes a handful of instructions, so traffic between unwatched addresses
/// skips the full parse; any other frame gives `None` and goes to [`parse`].
pub struct Plain {
    pub family: u8,
    /// The source's and the destination's bit in the family's hint
    /// (`classifier_common::hint_index_v4`, `hint_index_v6`).
    pub src_hint: usize,
    pub dst_hint: usize,
}

/// The shortest frame the fast path takes: Ethernet, then an IPv4 header
/// and a TCP header's fixed part, or an IPv6 header.
const PLAIN_MIN_FRAME: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN;
const _: () = assert!(PLAIN_MIN_FRAME == ETH_HEADER_LEN + IPV6_HEADER_LEN);

#[inline(always)]
pub fn plain(ctx: &XdpContext) -> Option<Plain> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    // One bounds check covers the Ethernet header, the IP header and, for
    // IPv4, the longest fixed transport header read here (TCP's 20 bytes):
    // shorter frames (below Ethernet's 60-byte minimum) take the full parser.
    if data + PLAIN_MIN_FRAME > data_end {
        return None;
    }
    let ethertype = load::<u16>(data + 12);
    let ip = data + ETH_HEADER_LEN;
    if ethertype == ETH_P_IPV4.to_be() {
        plain_ipv4(ip, data_end)
    } else if ethertype == ETH_P_IPV6.to_be() {
        plain_ipv6(ip, data_end)
    } else {
        None
    }
}

#[inline(always)]
fn plain_ipv4(ip: usize, data_end: usize) -> Option<Plain> {
    if load::<u8>(ip) != 0x45 {
        return None;
    }
    let total_len = load_be16(ip + 2) as usize;
    // The fast path may ask more than the full parser, never less: what it
    // refuses, the full parser judges. So it asks every packet for its
    // transport header as if it were a first fragment, and for 8 bytes
    // where the full parser asks UDP's 8, ICMP's 4 or none (a packet that
    // short is rare): fewer tests on the commonest frames.
    let l4_len = if load::<u8>(ip + 9) == PROTO_TCP {
        tcp_header_len(load::<u8>(ip + IPV4_HEADER_LEN + 12))
    } else {
        UDP_HEADER_LEN
    };
    if total_len < IPV4_HEADER_LEN + l4_len || ip + total_len > data_end {
        return None;
    }
    // The hint index is the address's first two bytes as loaded.
    Some(Plain {
        family: FAMILY_V4,
        src_hint: load::<u16>(ip + 12) as usize,
        dst_hint: load::<u16>(ip + 16) as usize,
    })
}

#[inline(always)]
fn plain_ipv6(ip: usize, data_end: usize) -> Option<Plain> {
    if load::<u8>(ip) >> 4 != 6 {
        return None;
    }
    let payload_len = load_be16(ip + 4) as usize;
    let next_header = load::<u8>(ip + 6);
    // As for IPv4: 8 bytes where the full parser asks UDP's 8, ICMPv6's 4
    // or none.
    let l4_len = if next_header == PROTO_TCP {
        tcp_header_len_at(ip + IPV6_HEADER_LEN, data_end)?
    } else {
        UDP_HEADER_LEN
    };
    // Extension headers and jumbograms (payload length 0) take the full parser.
    if matches!(
        next_header,
        PROTO_HOPOPTS | PROTO_ROUTING | PROTO_FRAGMENT | PROTO_AH | PROTO_DSTOPTS
    ) || payload_len == 0
        || payload_len < l4_len
        || ip + IPV6_HEADER_LEN + payload_len > data_end
    {
        return None;
    }
    Some(Plain {
        family: FAMILY_V6,
        src_hint: hint_index_v6_loaded(load::<u32>(ip + 8)),
        dst_hint: hint_index_v6_loaded(load::<u32>(ip + 24)),
    })
}

/// What [`parse`] makes of a frame [`plain`] took as IPv4, read at the
/// offsets `plain` proved (untagged, a 20-byte header, the packet within
/// the frame, its transport header within the packet): hinted traffic of
/// the commonest kind skips the Ethernet and IP parsing a second time.
/// `None` only for a frame shorter than `plain` asked for.
#[inline(always)]
pub fn plain_ipv4_packet(ctx: &XdpContext) -> Option<Packet<u32>> {
    // Read again, and so that LLVM cannot reuse `plain`'s reading: it would
    // drop this bounds check as proven, and the verifier needs it here.
    // SAFETY: the context the kernel passed, valid while the program runs.
    let (data, data_end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    if data + PLAIN_MIN_FRAME > data_end {
        return None;
    }
    let ip = data + ETH_HEADER_LEN;
    let total_len = load_be16(ip + 2) as usize;
    let mut cursor = Cursor {
        data,
        data_end,
        offset: ETH_HEADER_LEN + IPV4_HEADER_LEN,
        limit: ETH_HEADER_LEN + total_len,
    };
    ipv4_packet(&mut cursor, ip, total_len).ok()
}

/// The length of the TCP header at `tcp` (options included), `None` when
/// its fixed 20 bytes are not in the frame. Checked against the frame's end
/// before the IP length checks: after them LLVM would prove this check
/// redundant and drop it, and the verifier would refuse the load.
#[inline(always)]
fn tcp_header_len_at(tcp: usize, data_end: usize) -> Option<usize> {
    if tcp + TCP_HEADER_LEN > data_end {
        return None;
    }
    Some(tcp_header_len(load::<u8>(tcp + 12)))
}

/// The TCP header's length from its data offset byte: the 4-byte words it
/// names, at least the fixed 20 bytes, at most 60.
#[inline(always)]
const fn tcp_header_len(data_offset_byte: u8) -> usize {
    let len = (data_offset_byte >> 4) as usize * 4;
    if len < TCP_HEADER_LEN {
        TCP_HEADER_LEN
    } else {
        len
    }
}

#[inline(always)]
fn parse_ipv4(cursor: &mut Cursor) -> Result<Packet<u32>, Malformed> {
    let bad = malformed(FAMILY_V4, MALFORMED_IPV4_BAD_HEADER);
    let truncated = malformed(FAMILY_V4, MALFORMED_IPV4_TRUNCATED);
    let ip_start = cursor.offset;
    let header = cursor.take(IPV4_HEADER_LEN).ok_or(truncated)?;
    let version_ihl = load::<u8>(header);
    if version_ihl >> 4 != 4 {
        return Err(bad);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < IPV4_HEADER_LEN {
        return Err(bad);
    }
    let total_len = load_be16(header + 2) as usize;
    if total_len < header_len {
        return Err(bad);
    }
    if header + total_len > cursor.data_end {
        return Err(truncated);
    }
    cursor.limit = ip_start + total_len;
    // Options: header_len is at most 60, so at most 40 bytes.
    cursor
        .skip((header_len - IPV4_HEADER_LEN) & 0x3f)
        .ok_or(truncated)?;
    ipv4_packet(cursor, header, total_len)
}

/// The packet whose IPv4 header (`total_len` long with its payload, both
/// checked) starts at `header`, the cursor past the header's options: its
/// fixed fields, then the transport header of a first fragment.
#[inline(always)]
fn ipv4_packet(
    cursor: &mut Cursor,
    header: usize,
    total_len: usize,
) -> Result<Packet<u32>, Malformed> {
    let mut packet = Packet {
        protocol: load::<u8>(header + 9),
        tcp_flags: 0,
        src_port: 0,
        dst_port: 0,
        src: u32::from_be(load::<u32>(header + 12)),
        dst: u32::from_be(load::<u32>(header + 16)),
        // None until the transport header is parsed (a later fragment
        // has none): an end before the start.
        payload_start: 1,
        payload_end: 0,
        ip_len: total_len as u16,
    };
    let fragment_offset = load_be16(header + 6) & IPV4_FRAGMENT_OFFSET;
    if fragment_offset == 0 {
        parse_l4(cursor, FAMILY_V4, &mut packet)?;
    }
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(cursor: &mut Cursor) -> Result<Packet<[u8; 16]>, Malformed> {
    let ip_start = cursor.offset;
    let header = cursor
        .take(IPV6_HEADER_LEN)
        .ok_or(malformed(FAMILY_V6, MALFORMED_IPV6_TRUNCATED))?;
    if load::<u8>(header) >> 4 != 6 {
        return Err(malformed(FAMILY_V6, MALFORMED_IPV6_BAD_HEADER));
    }
    let payload_len = load_be16(header + 4) as usize;
    // A zero payload length is a jumbogram's (RFC 2675); it has no limit here.
    if payload_len != 0 {
        if header + IPV6_HEADER_LEN + payload_len > cursor.data_end {
            return Err(malformed(FAMILY_V6, MALFORMED_IPV6_TRUNCATED));
        }
        cursor.limit = ip_start + IPV6_HEADER_LEN + payload_len;
    }
    let ip_len = if payload_len != 0 {
        IPV6_HEADER_LEN + payload_len
    } else {
        cursor.data_end - header
    } as u16;

    let mut packet = Packet {
        protocol: load::<u8>(header + 6),
        tcp_flags: 0,
        src_port: 0,
        dst_port: 0,
        src: load::<[u8; 16]>(header + 8),
        dst: load::<[u8; 16]>(header + 24),
        // None until the transport header is parsed (a later fragment
        // has none): an end before the start.
        payload_start: 1,
        payload_end: 0,
        ip_len,
    };

    let ext_truncated = malformed(FAMILY_V6, MALFORMED_IPV6_EXT_TRUNCATED);
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match packet.protocol {
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH => {
                let ext = cursor.take(2).ok_or(ext_truncated)?;
                let next = load::<u8>(ext);
                let units = load::<u8>(ext + 1) as usize;
                // Hdr Ext Len counts 8-octet units beyond the first (4-octet
                // units beyond the first two for AH); 2 bytes already taken.
                let len = if packet.protocol == PROTO_AH {
                    (units + 2) * 4
                } else {
                    (units + 1) * 8
                };
                cursor.skip((len - 2) & 0x7ff).ok_or(ext_truncated)?;
                packet.protocol = next;
            }
            PROTO_FRAGMENT => {
                let fragment = cursor.take(8).ok_or(ext_truncated)?;
                packet.protocol = load::<u8>(fragment);
                let fragment_offset = load_be16(fragment + 2) >> 3;
                if fragment_offset != 0 {
                    // Later fragments carry no upper-layer header: port 0.
                    return Ok(packet);
                }
            }
            _ => {
                parse_l4(cursor, FAMILY_V6, &mut packet)?;
                return Ok(packet);
            }
        }
    }
    match packet.protocol {
        PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH | PROTO_FRAGMENT => {
            Err(malformed(FAMILY_V6, MALFORMED_IPV6_EXT_TOO_DEEP))
        }
        _ => {
            parse_l4(cursor, FAMILY_V6, &mut packet)?;
            Ok(packet)
        }
    }
}

#[inline(always)]
fn parse_l4<A>(cursor: &mut Cursor, family: u8, packet: &mut Packet<A>) -> Result<(), Malformed> {
    let truncated = malformed(family, MALFORMED_L4_TRUNCATED);
    // Constant lengths per arm: the verifier needs them to bound the loads.
    match packet.protocol {
        PROTO_TCP => {
            let tcp = cursor.take(TCP_HEADER_LEN).ok_or(truncated)?;
            packet.src_port = load_be16(tcp);
            packet.dst_port = load_be16(tcp + 2);
            packet.tcp_flags = load::<u8>(tcp + 13);
            // Options: at most 40 bytes, within the IP packet.
            let options_len = tcp_header_len(load::<u8>(tcp + 12)) - TCP_HEADER_LEN;
            cursor.skip(options_len & 0x3f).ok_or(truncated)?;
        }
        PROTO_UDP => {
            let udp = cursor.take(UDP_HEADER_LEN).ok_or(truncated)?;
            packet.src_port = load_be16(udp);
            packet.dst_port = load_be16(udp + 2);
        }
        PROTO_ICMP if family == FAMILY_V4 => {
            cursor.take(ICMP_HEADER_LEN).ok_or(truncated)?;
        }
        PROTO_ICMPV6 if family == FAMILY_V6 => {
            cursor.take(ICMP_HEADER_LEN).ok_or(truncated)?;
        }
        _ => {}
    }
    packet.payload_start = cursor.offset;
    packet.payload_end = cursor.limit;
    Ok(())
}
