//! VPN protocols recognised without any list, on watched traffic whose
//! other end is in no feed: a few byte checks on the first bytes of the
//! transport payload. README "Recognising VPN protocols" lists each
//! signature and its known false positives; classifier-common names the
//! protocol services (`SERVICE_WIREGUARD`, …).

use aya_ebpf::programs::XdpContext;
use classifier_common::{
    SERVICE_GRE, SERVICE_IPSEC, SERVICE_L2TP, SERVICE_OPENVPN, SERVICE_PPTP, SERVICE_WIREGUARD,
};

use crate::parse::{MAX_FRAME, Packet, load};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_GRE: u8 = 47;
const PROTO_ESP: u8 = 50;
const PROTO_AH: u8 = 51;

const PORT_IKE: u16 = 500;
const PORT_IKE_NAT_T: u16 = 4500;
const PORT_L2TP: u16 = 1701;
const PORT_PPTP: u16 = 1723;

/// OpenVPN opcodes (the top five bits of the first byte): hard resets of
/// the control channel, the first packets of every session.
const OPENVPN_HARD_RESET_CLIENT_V2: u8 = 7;
const OPENVPN_HARD_RESET_SERVER_V2: u8 = 8;
const OPENVPN_HARD_RESET_CLIENT_V3: u8 = 10;
/// A hard reset is an opcode byte, an 8-byte session id, an optional HMAC
/// and packet id, a message-id array and a message id: 14 bytes at least,
/// and a few hundred at most (with tls-crypt-v2's wrapped client key).
const OPENVPN_RESET_MIN: usize = 14;
const OPENVPN_RESET_MAX: usize = 1024;

/// The payload of a packet, readable at constant offsets.
struct Payload {
    start: usize,
    len: usize,
    data_end: usize,
}

impl Payload {
    /// Bytes `at..at + N`, if the IP packet and the frame hold them. The
    /// frame's end is checked first: checked after the packet's length,
    /// LLVM would prove it redundant and drop it, and the verifier would
    /// refuse the load.
    #[inline(always)]
    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        if self.start + at + N > self.data_end || at + N > self.len {
            return None;
        }
        Some(load::<[u8; N]>(self.start + at))
    }
}

/// The protocol service `packet` shows, or 0. Well-known ports are
/// checked on either end.
#[inline(always)]
pub fn recognise<A>(ctx: &XdpContext, packet: &Packet<A>) -> u32 {
    // A jumbogram's payload has no length of its own here: not judged.
    if packet.payload_end < packet.payload_start || packet.payload_end == MAX_FRAME {
        return 0;
    }
    let payload = Payload {
        start: ctx.data() + packet.payload_start,
        len: packet.payload_end - packet.payload_start,
        data_end: ctx.data_end(),
    };
    let ports = [packet.src_port, packet.dst_port];
    match packet.protocol {
        PROTO_ESP | PROTO_AH => SERVICE_IPSEC,
        PROTO_GRE => gre(&payload),
        PROTO_UDP => udp(&payload, ports),
        PROTO_TCP => tcp(&payload, ports),
        _ => 0,
    }
}

/// GRE (RFC 2784/2890); version 1 carrying PPP (0x880b) is PPTP's data
/// channel (RFC 2637).
#[inline(always)]
fn gre(payload: &Payload) -> u32 {
    let Some([_, version, protocol_high, protocol_low]) = payload.bytes::<4>(0) else {
        return 0;
    };
    match (
        version & 0x07,
        u16::from_be_bytes([protocol_high, protocol_low]),
    ) {
        (1, 0x880b) => SERVICE_PPTP,
        (0, _) => SERVICE_GRE,
        _ => 0,
    }
}

#[inline(always)]
fn udp(payload: &Payload, ports: [u16; 2]) -> u32 {
    if ports.contains(&PORT_IKE) && ike(payload, 0) {
        return SERVICE_IPSEC;
    }
    if ports.contains(&PORT_IKE_NAT_T) {
        // A non-ESP marker (4 zero bytes) then IKE, or ESP in UDP: a
        // non-zero SPI and a sequence number (RFC 3948).
        if let Some(marker) = payload.bytes::<4>(0) {
            if marker == [0; 4] {
                if ike(payload, 4) {
                    return SERVICE_IPSEC;
                }
            } else if payload.bytes::<8>(0).is_some() {
                return SERVICE_IPSEC;
            }
        }
    }
    if ports.contains(&PORT_L2TP)
        && let Some([flags, version]) = payload.bytes::<2>(0)
        // L2TPv2 (RFC 2661) or v3 over UDP (RFC 3931): version in the low
        // nibble of the second byte; control messages set T and L.
        && matches!(version & 0x0f, 2 | 3)
        && (flags & 0x80 == 0 || flags & 0x40 != 0)
    {
        return SERVICE_L2TP;
    }
    // WireGuard and OpenVPN both need the first 4 bytes (an OpenVPN
    // reset is 14 at least): one read for both.
    let Some(head) = payload.bytes::<4>(0) else {
        return 0;
    };
    if wireguard(head, payload.len) {
        return SERVICE_WIREGUARD;
    }
    if openvpn_reset(head[0])
        && payload.len >= OPENVPN_RESET_MIN
        && payload.len <= OPENVPN_RESET_MAX
    {
        return SERVICE_OPENVPN;
    }
    0
}

#[inline(always)]
fn tcp(payload: &Payload, ports: [u16; 2]) -> u32 {
    // PPTP control (RFC 2637): length, message type 1, magic cookie.
    if ports.contains(&PORT_PPTP)
        && let Some([_, _, 0, 1, 0x1a, 0x2b, 0x3c, 0x4d]) = payload.bytes::<8>(0)
    {
        return SERVICE_PPTP;
    }
    // OpenVPN over TCP: each packet behind a 2-byte length; a session's
    // first segment is one whole hard reset.
    if let Some([high, low, first]) = payload.bytes::<3>(0)
        && usize::from(u16::from_be_bytes([high, low])) + 2 == payload.len
        && openvpn_reset(first)
        && payload.len >= OPENVPN_RESET_MIN + 2
        && payload.len <= OPENVPN_RESET_MAX + 2
    {
        return SERVICE_OPENVPN;
    }
    0
}

#[inline(always)]
fn openvpn_reset(first: u8) -> bool {
    matches!(
        first >> 3,
        OPENVPN_HARD_RESET_CLIENT_V2 | OPENVPN_HARD_RESET_SERVER_V2 | OPENVPN_HARD_RESET_CLIENT_V3
    )
}

/// WireGuard: the type byte, three reserved zero bytes, and the type's
/// length: handshake initiation (1, 148 bytes), response (2, 92), cookie
/// reply (3, 64), or transport data (4: a 16-byte header, the padded
/// plaintext and a 16-byte tag, so at least 32 bytes and a multiple of 16).
#[inline(always)]
fn wireguard(head: [u8; 4], len: usize) -> bool {
    match head {
        [1, 0, 0, 0] => len == 148,
        [2, 0, 0, 0] => len == 92,
        [3, 0, 0, 0] => len == 64,
        [4, 0, 0, 0] => len >= 32 && len.is_multiple_of(16),
        _ => false,
    }
}

/// An IKE header (RFC 7296 / RFC 2408) at `at`: 28 bytes, major version 1
/// or 2, a known exchange type, and a length field equal to the message.
#[inline(always)]
fn ike(payload: &Payload, at: usize) -> bool {
    let Some(header) = payload.bytes::<28>(at) else {
        return false;
    };
    let version = header[17] >> 4;
    let exchange = header[18];
    let length = u32::from_be_bytes([header[24], header[25], header[26], header[27]]) as usize;
    let known_exchange = match version {
        1 => matches!(exchange, 1..=5 | 32 | 33),
        2 => matches!(exchange, 34..=37),
        _ => false,
    };
    known_exchange && length + at == payload.len
}
