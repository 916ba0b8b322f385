//! Parsing: a bounds-checked cursor over the frame yields a small packet
//! summary, or the malformed reason that stopped it. Hands `Parsed` to `count`.
//!
//! Offsets are kept as scalars from the frame start and every read is checked
//! against both the logical end (the IP packet's own length) and `data_end`
//! (what the verifier needs to see). The logical end starts as a constant,
//! not as `data_end - data`: from that LLVM would prove the pointer check
//! redundant and drop it, and the verifier would reject the program.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use classifier_common::{
    FAMILY_V4, FAMILY_V6, MALFORMED_ETHERNET_TRUNCATED, MALFORMED_IPV4_BAD_HEADER,
    MALFORMED_IPV4_TRUNCATED, MALFORMED_IPV6_BAD_HEADER, MALFORMED_IPV6_EXT_TOO_DEEP,
    MALFORMED_IPV6_EXT_TRUNCATED, MALFORMED_IPV6_TRUNCATED, MALFORMED_L4_TRUNCATED,
    MALFORMED_VLAN_TOO_DEEP, MALFORMED_VLAN_TRUNCATED, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

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
    Ip(Packet),
}

/// Summary of an IP packet. Addresses as in classifier-common: 16 bytes,
/// network order, IPv4 mapped.
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Why a frame could not be parsed, and the family its EtherType named
/// (0 when it had none).
#[derive(Clone, Copy)]
pub struct Malformed {
    pub family: u8,
    pub reason: usize,
}

/// No frame is longer than this; the logical limit before an IP header.
const MAX_FRAME: usize = 0xffff;

struct Cursor {
    data: usize,
    data_end: usize,
    offset: usize,
    limit: usize,
}

impl Cursor {
    /// Returns a pointer to the next `T` and moves past it, or `None` when it
    /// would cross the logical limit or the end of the frame.
    #[inline(always)]
    fn take<T>(&mut self) -> Option<*const T> {
        let start = self.data + self.offset;
        if start + size_of::<T>() > self.data_end {
            return None;
        }
        let next = self.offset + size_of::<T>();
        if next > self.limit {
            return None;
        }
        self.offset = next;
        Some(start as *const T)
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

    /// Bytes in the frame from `offset` on.
    #[inline(always)]
    fn frame_left(&self, offset: usize) -> usize {
        (self.data_end - self.data).saturating_sub(offset)
    }
}

#[inline(always)]
fn read<T: Copy>(ptr: *const T) -> T {
    // SAFETY: `ptr` came from `Cursor::take`, which checked it lies inside
    // the frame; packet data has no alignment guarantee.
    unsafe { core::ptr::read_unaligned(ptr) }
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
fn malformed(family: u8, reason: usize) -> Malformed {
    Malformed { family, reason }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    let mut cursor = Cursor {
        data,
        data_end,
        offset: 0,
        limit: MAX_FRAME,
    };

    let eth = cursor
        .take::<[u8; 14]>()
        .ok_or(malformed(0, MALFORMED_ETHERNET_TRUNCATED))?;
    let eth = read(eth);
    let mut ethertype = be16([eth[12], eth[13]]);

    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = cursor
            .take::<[u8; 4]>()
            .ok_or(malformed(0, MALFORMED_VLAN_TRUNCATED))?;
        let tag = read(tag);
        ethertype = be16([tag[2], tag[3]]);
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(&mut cursor).map(Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(&mut cursor).map(Parsed::Ip),
        ETH_P_8021Q | ETH_P_8021AD => Err(malformed(0, MALFORMED_VLAN_TOO_DEEP)),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(cursor: &mut Cursor) -> Result<Packet, Malformed> {
    let bad = malformed(FAMILY_V4, MALFORMED_IPV4_BAD_HEADER);
    let ip_start = cursor.offset;
    let header = cursor
        .take::<[u8; 20]>()
        .ok_or(malformed(FAMILY_V4, MALFORMED_IPV4_TRUNCATED))?;
    let header = read(header);
    if header[0] >> 4 != 4 {
        return Err(bad);
    }
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(bad);
    }
    let total_len = be16([header[2], header[3]]) as usize;
    if total_len < header_len {
        return Err(bad);
    }
    if total_len > cursor.frame_left(ip_start) {
        return Err(malformed(FAMILY_V4, MALFORMED_IPV4_TRUNCATED));
    }
    cursor.limit = ip_start + total_len;
    // Options: header_len is at most 60, so at most 40 bytes.
    cursor
        .skip((header_len - 20) & 0x3f)
        .ok_or(malformed(FAMILY_V4, MALFORMED_IPV4_TRUNCATED))?;

    let mut packet = Packet {
        family: FAMILY_V4,
        protocol: header[9],
        tcp_flags: 0,
        src_port: 0,
        dst_port: 0,
        src: mapped_v4([header[12], header[13], header[14], header[15]]),
        dst: mapped_v4([header[16], header[17], header[18], header[19]]),
    };
    let fragment_offset = be16([header[6], header[7]]) & 0x1fff;
    if fragment_offset == 0 {
        parse_l4(cursor, &mut packet)?;
    }
    Ok(packet)
}

#[inline(always)]
fn mapped_v4(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

#[inline(always)]
fn parse_ipv6(cursor: &mut Cursor) -> Result<Packet, Malformed> {
    let ip_start = cursor.offset;
    let header = cursor
        .take::<[u8; 40]>()
        .ok_or(malformed(FAMILY_V6, MALFORMED_IPV6_TRUNCATED))?;
    let header = read(header);
    if header[0] >> 4 != 6 {
        return Err(malformed(FAMILY_V6, MALFORMED_IPV6_BAD_HEADER));
    }
    let payload_len = be16([header[4], header[5]]) as usize;
    // A zero payload length is a jumbogram's (RFC 2675); it has no limit here.
    if payload_len != 0 {
        if 40 + payload_len > cursor.frame_left(ip_start) {
            return Err(malformed(FAMILY_V6, MALFORMED_IPV6_TRUNCATED));
        }
        cursor.limit = ip_start + 40 + payload_len;
    }

    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    let mut packet = Packet {
        family: FAMILY_V6,
        protocol: header[6],
        tcp_flags: 0,
        src_port: 0,
        dst_port: 0,
        src,
        dst,
    };

    let ext_truncated = malformed(FAMILY_V6, MALFORMED_IPV6_EXT_TRUNCATED);
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match packet.protocol {
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH => {
                let ext = read(cursor.take::<[u8; 2]>().ok_or(ext_truncated)?);
                // Hdr Ext Len counts 8-octet units beyond the first (4-octet
                // units beyond the first two for AH); 2 bytes already taken.
                let len = if packet.protocol == PROTO_AH {
                    (ext[1] as usize + 2) * 4
                } else {
                    (ext[1] as usize + 1) * 8
                };
                cursor
                    .skip((len - 2) & 0x7ff)
                    .ok_or(malformed(FAMILY_V6, MALFORMED_IPV6_EXT_TRUNCATED))?;
                packet.protocol = ext[0];
            }
            PROTO_FRAGMENT => {
                let fragment = read(cursor.take::<[u8; 8]>().ok_or(ext_truncated)?);
                packet.protocol = fragment[0];
                let fragment_offset = be16([fragment[2], fragment[3]]) >> 3;
                if fragment_offset != 0 {
                    // Later fragments carry no upper-layer header: port 0.
                    return Ok(packet);
                }
            }
            _ => {
                parse_l4(cursor, &mut packet)?;
                return Ok(packet);
            }
        }
    }
    match packet.protocol {
        PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH | PROTO_FRAGMENT => {
            Err(malformed(FAMILY_V6, MALFORMED_IPV6_EXT_TOO_DEEP))
        }
        _ => {
            parse_l4(cursor, &mut packet)?;
            Ok(packet)
        }
    }
}

#[inline(always)]
fn parse_l4(cursor: &mut Cursor, packet: &mut Packet) -> Result<(), Malformed> {
    let truncated = malformed(packet.family, MALFORMED_L4_TRUNCATED);
    match packet.protocol {
        PROTO_TCP => {
            let tcp = read(cursor.take::<[u8; 20]>().ok_or(truncated)?);
            packet.src_port = be16([tcp[0], tcp[1]]);
            packet.dst_port = be16([tcp[2], tcp[3]]);
            packet.tcp_flags = tcp[13];
        }
        PROTO_UDP => {
            let udp = read(cursor.take::<[u8; 8]>().ok_or(truncated)?);
            packet.src_port = be16([udp[0], udp[1]]);
            packet.dst_port = be16([udp[2], udp[3]]);
        }
        PROTO_ICMP if packet.family == FAMILY_V4 => {
            cursor.take::<[u8; 4]>().ok_or(truncated)?;
        }
        PROTO_ICMPV6 if packet.family == FAMILY_V6 => {
            cursor.take::<[u8; 4]>().ok_or(truncated)?;
        }
        _ => {}
    }
    Ok(())
}
