//! Classification: is either address watched, and is the other end a known
//! endpoint of which service. The watched check runs first and is a bit test
//! for almost all traffic; only watched packets reach an endpoint lookup.

use aya_ebpf::maps::lpm_trie::Key;
use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, FAMILY_V4, HINT_V4, HINT_V6, hint_index_v4, hint_index_v6,
};

use crate::{ENDPOINTS_V4, ENDPOINTS_V6, WATCHED_HINT, WATCHED_V4, WATCHED_V6, parse::Packet};

/// A packet with a watched address, seen from that address's side.
pub struct Watched {
    pub direction: u8,
    pub watched: [u8; 16],
    pub endpoint: [u8; 16],
    /// The endpoint's port.
    pub port: u16,
    /// The endpoint's service id, when the other end is a known endpoint.
    pub service: Option<u32>,
}

#[inline(always)]
fn v4_part(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

#[inline(always)]
fn is_watched(family: u8, addr: &[u8; 16]) -> bool {
    let (hint, index) = if family == FAMILY_V4 {
        (HINT_V4, hint_index_v4(v4_part(addr)))
    } else {
        (HINT_V6, hint_index_v6(addr))
    };
    let Some(hint) = WATCHED_HINT.get(hint) else {
        return false;
    };
    let Some(word) = hint.words.get(index >> 6) else {
        return false;
    };
    if (word >> (index & 63)) & 1 == 0 {
        return false;
    }
    if family == FAMILY_V4 {
        WATCHED_V4.get(Key::new(32, v4_part(addr))).is_some()
    } else {
        WATCHED_V6.get(Key::new(128, *addr)).is_some()
    }
}

/// The service of the longest endpoint prefix holding `addr`. The one place
/// that knows how endpoints are stored.
#[inline(always)]
fn endpoint_service(family: u8, addr: &[u8; 16]) -> Option<u32> {
    let value = if family == FAMILY_V4 {
        ENDPOINTS_V4.get(Key::new(32, v4_part(addr)))
    } else {
        ENDPOINTS_V6.get(Key::new(128, *addr))
    };
    value.map(|value| value.service)
}

/// `None` for traffic without a watched address (the common case).
#[inline(always)]
pub fn classify(packet: &Packet) -> Option<Watched> {
    let src_watched = is_watched(packet.family, &packet.src);
    let dst_watched = is_watched(packet.family, &packet.dst);
    if !src_watched && !dst_watched {
        return None;
    }
    // Outbound when the source is watched and the destination a known
    // endpoint; else inbound when the destination is watched and the source
    // an endpoint; else unmatched, seen from the watched side.
    let outbound_service = if src_watched {
        endpoint_service(packet.family, &packet.dst)
    } else {
        None
    };
    let inbound_service = if outbound_service.is_none() && dst_watched {
        endpoint_service(packet.family, &packet.src)
    } else {
        None
    };
    let outbound = outbound_service.is_some() || (src_watched && inbound_service.is_none());
    Some(if outbound {
        Watched {
            direction: DIR_OUTBOUND,
            watched: packet.src,
            endpoint: packet.dst,
            port: packet.dst_port,
            service: outbound_service,
        }
    } else {
        Watched {
            direction: DIR_INBOUND,
            watched: packet.dst,
            endpoint: packet.src,
            port: packet.src_port,
            service: inbound_service,
        }
    })
}
