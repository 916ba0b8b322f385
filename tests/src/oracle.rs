//! An independent model of what the XDP program counts for one frame, for
//! the differential fuzz test (`tests/tests/fuzz.rs`). It is built on
//! etherparse's header slices and on the rules README.md documents ("What
//! the XDP program parses", the malformed reasons, "What the numbers
//! mean"), not on the program's code.
//!
//! The rules, in the order a frame meets them:
//!
//! - Ethernet: 14 bytes, else `ethernet_truncated` (family other).
//! - VLAN: up to [`MAX_VLAN_TAGS`] tags with TPID 0x8100 or 0x88a8 (other
//!   TPIDs, such as 0x9100, are just EtherTypes: not IP). A tag cut short is
//!   `vlan_truncated`; an EtherType that still names a tag after the last
//!   one allowed is `vlan_too_deep`, however much of that tag the frame
//!   holds. Both count as family other.
//! - IPv4 (family ipv4): version 4, IHL ≥ 5 and total length ≥ the header
//!   length are judged first (`ipv4_bad_header`); then the 20-byte header,
//!   the options and the total length must lie within the frame
//!   (`ipv4_truncated`). Bytes after the total length are padding. A
//!   fragment with a non-zero offset carries no transport header: port 0.
//! - IPv6 (family ipv6): 40 bytes (`ipv6_truncated`), version 6
//!   (`ipv6_bad_header`), payload length within the frame
//!   (`ipv6_truncated`); payload length 0 is a jumbogram's, the packet then
//!   runs to the end of the frame (as etherparse's `Ipv6Slice` reads it).
//!   Extension headers: hop-by-hop, routing, destination options (8-octet
//!   units), AH (4-octet units) and fragment (8 bytes), in any order, each
//!   within the packet (`ipv6_ext_truncated`), at most
//!   [`MAX_IPV6_EXT_HEADERS`] of them: a next header that names one more is
//!   `ipv6_ext_too_deep`. A fragment header with a non-zero offset ends the
//!   walk: its next header is the protocol, port 0.
//! - Transport, within the IP packet (`l4_truncated`): TCP's header as its
//!   data offset gives it (options included), UDP's 8 bytes, ICMP's (ICMPv6
//!   in IPv6) 4 bytes of type, code and checksum. Any other protocol has
//!   port 0.
//! - Header fields that are wrong but that no reason names are read by
//!   their length fields or fixed parts: a TCP data offset below 5 (the
//!   fixed 20 bytes are the header), an AH payload length of 0 (an 8-byte
//!   header; etherparse refuses both).
//! - Classification of well-formed IP packets: longest-prefix match in the
//!   watched set and the endpoint feed (the first listed wins a tie). A
//!   watched source with an endpoint destination is outbound (the
//!   destination's port); else a watched destination with an endpoint
//!   source is inbound (the source's port); else, with a watched end,
//!   watched but unmatched, seen from the watched side for protocol
//!   verdicts (the source's when both are watched, the receiver's for a
//!   packet from port 53).
//!
//! etherparse 0.18 reads the IPv6 fragment header's offset with IPv4's
//! layout (see `frames.rs`); the oracle takes the RFC 8200 offset from the
//! header's bytes itself.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use classifier_common::{
    DIR_INBOUND, DIR_OUTBOUND, MALFORMED_ETHERNET_TRUNCATED, MALFORMED_IPV4_BAD_HEADER,
    MALFORMED_IPV4_TRUNCATED, MALFORMED_IPV6_BAD_HEADER, MALFORMED_IPV6_EXT_TOO_DEEP,
    MALFORMED_IPV6_EXT_TRUNCATED, MALFORMED_IPV6_TRUNCATED, MALFORMED_L4_TRUNCATED,
    MALFORMED_VLAN_TOO_DEEP, MALFORMED_VLAN_TRUNCATED, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
    err::{ipv4, ipv6, tcp},
};
use ipnet::IpNet;

use crate::frames::{TPID_8021AD, TPID_8021Q};

/// Which family counter a frame lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
    Other,
}

/// What the program should count for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub family: Family,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted under this malformed reason (an index into
    /// `classifier_common::MALFORMED_REASON_NAMES`), never classified.
    Malformed(usize),
    /// Well-formed, no watched address (or not IP at all).
    Unwatched,
    /// Well-formed, a watched address, the other end no known endpoint.
    Watched,
    /// Well-formed, a watched address talking with a known endpoint.
    Matched(Flow),
}

/// A matched packet's flow, as the flow table keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub service: String,
    /// `DIR_OUTBOUND` or `DIR_INBOUND`.
    pub direction: u8,
    pub watched: IpAddr,
    pub endpoint: IpAddr,
    pub protocol: u8,
    /// The endpoint's port; 0 without ports or for a later fragment.
    pub port: u16,
    /// The TCP flags byte (FIN = 0x01 … CWR = 0x80); 0 for other protocols.
    pub tcp_flags: u8,
}

/// A well-formed IP packet, as far as classification needs it.
#[derive(Debug, Clone)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    ports: Ports,
    /// The transport payload; `None` for later fragments and jumbograms
    /// (the program judges neither by its payload).
    payload: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Ports {
    src: u16,
    dst: u16,
    tcp_flags: u8,
    /// Bytes of the transport header (0 for protocols without one).
    header_len: usize,
}

/// Why the frame is malformed, and the family it counts in.
struct Malformed {
    family: Family,
    reason: usize,
}

fn malformed<T>(family: Family, reason: usize) -> Result<T, Malformed> {
    Err(Malformed { family, reason })
}

/// (watched address, other end, protocol, other end's port).
type VerdictKey = (IpAddr, IpAddr, u8, u16);

/// The watched set and the endpoint feed, as the oracle reads them.
pub struct Oracle {
    watched: Vec<IpNet>,
    /// In feed order.
    endpoints: Vec<(IpNet, String)>,
    /// Protocol verdicts earlier frames earned: (watched, other end,
    /// protocol, other end's port) → service. The program keeps them in an
    /// LRU table of `VERDICT_CAPACITY` entries; runs that create more keys
    /// than that may see it forget one the oracle remembers.
    verdicts: RefCell<HashMap<VerdictKey, &'static str>>,
}

impl Oracle {
    /// `watched`: prefixes; `feed_csv`: a feed with a `cidr,service,…`
    /// header, as `classifier_tests::TEST_FEED`.
    pub fn new(watched: &[&str], feed_csv: &str) -> Self {
        let watched = watched
            .iter()
            .map(|prefix| prefix.parse().expect("a watched prefix"))
            .collect();
        let endpoints = feed_csv
            .lines()
            .skip(1)
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut columns = line.split(',');
                let cidr = columns.next().expect("a cidr column");
                let service = columns.next().expect("a service column");
                (cidr.parse().expect("a feed prefix"), service.to_string())
            })
            .collect();
        Self {
            watched,
            endpoints,
            verdicts: RefCell::default(),
        }
    }

    /// What the program should count for `frame`.
    pub fn judge(&self, frame: &[u8]) -> Verdict {
        match parse(frame) {
            Err(Malformed { family, reason }) => Verdict {
                family,
                outcome: Outcome::Malformed(reason),
            },
            Ok(None) => Verdict {
                family: Family::Other,
                outcome: Outcome::Unwatched,
            },
            Ok(Some(packet)) => Verdict {
                family: if packet.src.is_ipv4() {
                    Family::V4
                } else {
                    Family::V6
                },
                outcome: self.classify(&packet),
            },
        }
    }

    fn classify(&self, packet: &Packet) -> Outcome {
        let src_watched = self.is_watched(packet.src);
        let dst_watched = self.is_watched(packet.dst);
        if !src_watched && !dst_watched {
            return Outcome::Unwatched;
        }
        let flow = |service: &str, direction, watched, endpoint, port| Flow {
            service: service.to_string(),
            direction,
            watched,
            endpoint,
            protocol: packet.protocol,
            port,
            tcp_flags: packet.ports.tcp_flags,
        };
        if src_watched && let Some(service) = self.service(packet.dst) {
            return Outcome::Matched(flow(
                service,
                DIR_OUTBOUND,
                packet.src,
                packet.dst,
                packet.ports.dst,
            ));
        }
        if dst_watched && let Some(service) = self.service(packet.src) {
            return Outcome::Matched(flow(
                service,
                DIR_INBOUND,
                packet.dst,
                packet.src,
                packet.ports.src,
            ));
        }
        // No feed names the other end: a protocol verdict, seen from the
        // watched side (the source's when both are watched, but the
        // receiver's for a DNS answer, from port 53).
        let answer_to_watched = dst_watched && packet.ports.src == 53;
        let (direction, watched, other, port) = if src_watched && !answer_to_watched {
            (DIR_OUTBOUND, packet.src, packet.dst, packet.ports.dst)
        } else {
            (DIR_INBOUND, packet.dst, packet.src, packet.ports.src)
        };
        let key = (watched, other, packet.protocol, port);
        let mut verdicts = self.verdicts.borrow_mut();
        let service = match verdicts.get(&key) {
            Some(service) => Some(*service),
            None => {
                let recognised = crate::protocols::recognise(
                    packet.protocol,
                    [packet.ports.src, packet.ports.dst],
                    packet.payload.as_deref(),
                );
                if let Some(service) = recognised {
                    verdicts.insert(key, service);
                }
                recognised
            }
        };
        match service {
            Some(service) => Outcome::Matched(flow(service, direction, watched, other, port)),
            None => Outcome::Watched,
        }
    }

    fn is_watched(&self, address: IpAddr) -> bool {
        self.watched.iter().any(|prefix| prefix.contains(&address))
    }

    /// The service of the longest endpoint prefix holding `address`.
    fn service(&self, address: IpAddr) -> Option<&str> {
        let mut best: Option<&(IpNet, String)> = None;
        for entry in &self.endpoints {
            let longer = best.is_none_or(|(net, _)| entry.0.prefix_len() > net.prefix_len());
            if entry.0.contains(&address) && longer {
                best = Some(entry);
            }
        }
        best.map(|(_, service)| service.as_str())
    }
}

/// `None` for a well-formed frame that is not IP.
fn parse(frame: &[u8]) -> Result<Option<Packet>, Malformed> {
    let Ok(ethernet) = Ethernet2HeaderSlice::from_slice(frame) else {
        return malformed(Family::Other, MALFORMED_ETHERNET_TRUNCATED);
    };
    let mut ether_type = ethernet.ether_type();
    let mut rest = &frame[ethernet.slice().len()..];
    let mut tags = 0;
    while ether_type == EtherType(TPID_8021Q) || ether_type == EtherType(TPID_8021AD) {
        if tags == MAX_VLAN_TAGS {
            return malformed(Family::Other, MALFORMED_VLAN_TOO_DEEP);
        }
        let Ok(tag) = SingleVlanHeaderSlice::from_slice(rest) else {
            return malformed(Family::Other, MALFORMED_VLAN_TRUNCATED);
        };
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    match ether_type {
        EtherType::IPV4 => parse_ipv4(rest).map(Some),
        EtherType::IPV6 => parse_ipv6(rest).map(Some),
        _ => Ok(None),
    }
}

fn parse_ipv4(ip: &[u8]) -> Result<Packet, Malformed> {
    let bad = || malformed(Family::V4, MALFORMED_IPV4_BAD_HEADER);
    let truncated = || malformed(Family::V4, MALFORMED_IPV4_TRUNCATED);
    let header = match Ipv4HeaderSlice::from_slice(ip) {
        Ok(header) => header,
        Err(ipv4::HeaderSliceError::Content(_)) => return bad(),
        // The options run past the frame (or there are not even 20 bytes);
        // a total length below the header length is still a bad header.
        Err(ipv4::HeaderSliceError::Len(_)) => {
            if ip.len() >= 20 {
                let header_len = usize::from(ip[0] & 0x0f) * 4;
                if usize::from(u16::from_be_bytes([ip[2], ip[3]])) < header_len {
                    return bad();
                }
            }
            return truncated();
        }
    };
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len {
        return bad();
    }
    if total_len > ip.len() {
        return truncated();
    }
    let payload = &ip[header_len..total_len];
    let protocol = header.protocol();
    let (ports, transport_payload) = if header.fragments_offset().value() == 0 {
        let ports = transport_ports(protocol, payload, IpNumber::ICMP)
            .or_else(|()| malformed(Family::V4, MALFORMED_L4_TRUNCATED))?;
        (ports, Some(payload[ports.header_len..].to_vec()))
    } else {
        (Ports::default(), None)
    };
    Ok(Packet {
        src: IpAddr::V4(Ipv4Addr::from(header.source())),
        dst: IpAddr::V4(Ipv4Addr::from(header.destination())),
        protocol: protocol.0,
        ports,
        payload: transport_payload,
    })
}

fn parse_ipv6(ip: &[u8]) -> Result<Packet, Malformed> {
    let truncated = || malformed(Family::V6, MALFORMED_IPV6_TRUNCATED);
    let ext_truncated = || malformed(Family::V6, MALFORMED_IPV6_EXT_TRUNCATED);
    let header = match Ipv6HeaderSlice::from_slice(ip) {
        Ok(header) => header,
        Err(ipv6::HeaderSliceError::Len(_)) => return truncated(),
        Err(ipv6::HeaderSliceError::Content(_)) => {
            return malformed(Family::V6, MALFORMED_IPV6_BAD_HEADER);
        }
    };
    let fixed = header.slice().len();
    let payload_len = usize::from(header.payload_length());
    let mut rest = if payload_len == 0 {
        &ip[fixed..]
    } else if fixed + payload_len > ip.len() {
        return truncated();
    } else {
        &ip[fixed..fixed + payload_len]
    };
    let packet = |protocol: IpNumber, ports, payload: Option<&[u8]>| Packet {
        src: IpAddr::V6(Ipv6Addr::from(header.source())),
        dst: IpAddr::V6(Ipv6Addr::from(header.destination())),
        protocol: protocol.0,
        ports,
        // A jumbogram's payload is not judged.
        payload: payload.filter(|_| payload_len != 0).map(<[u8]>::to_vec),
    };

    let mut next = header.next_header();
    let mut walked = 0;
    loop {
        let is_extension = matches!(
            next,
            IpNumber::IPV6_HEADER_HOP_BY_HOP
                | IpNumber::IPV6_ROUTE_HEADER
                | IpNumber::IPV6_DESTINATION_OPTIONS
                | IpNumber::AUTHENTICATION_HEADER
                | IpNumber::IPV6_FRAGMENTATION_HEADER
        );
        if !is_extension {
            let ports = transport_ports(next, rest, IpNumber::IPV6_ICMP)
                .or_else(|()| malformed(Family::V6, MALFORMED_L4_TRUNCATED))?;
            return Ok(packet(next, ports, Some(&rest[ports.header_len..])));
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            // One header more than the program walks: whether it fits
            // does not matter.
            return malformed(Family::V6, MALFORMED_IPV6_EXT_TOO_DEEP);
        }
        let (after, length) = if next == IpNumber::IPV6_FRAGMENTATION_HEADER {
            let Ok(fragment) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                return ext_truncated();
            };
            let bytes = fragment.slice();
            // RFC 8200: 13 bits of offset, 2 reserved, the M flag.
            if u16::from_be_bytes([bytes[2], bytes[3]]) >> 3 != 0 {
                return Ok(packet(fragment.next_header(), Ports::default(), None));
            }
            (fragment.next_header(), bytes.len())
        } else if next == IpNumber::AUTHENTICATION_HEADER {
            match auth_header(rest) {
                Some(found) => found,
                None => return ext_truncated(),
            }
        } else {
            let Ok(ext) = Ipv6RawExtHeaderSlice::from_slice(rest) else {
                return ext_truncated();
            };
            (ext.next_header(), ext.slice().len())
        };
        walked += 1;
        next = after;
        rest = &rest[length..];
    }
}

/// An AH's next header and length, or `None` when it does not fit.
fn auth_header(rest: &[u8]) -> Option<(IpNumber, usize)> {
    match IpAuthHeaderSlice::from_slice(rest) {
        Ok(auth) => Some((auth.next_header(), auth.slice().len())),
        // Payload length 0 is an 8-byte header, shorter than AH's fixed
        // fields: etherparse refuses it, no reason names it.
        Err(_) if rest.len() >= 8 && rest[1] == 0 => Some((IpNumber(rest[0]), 8)),
        Err(_) => None,
    }
}

/// Ports and TCP flags of the transport header at the start of `payload`
/// (the rest of the IP packet); `Err` when that header does not fit.
/// `icmp` is the family's ICMP protocol number.
fn transport_ports(protocol: IpNumber, payload: &[u8], icmp: IpNumber) -> Result<Ports, ()> {
    match protocol {
        IpNumber::TCP => match TcpHeaderSlice::from_slice(payload) {
            Ok(tcp) => Ok(Ports {
                src: tcp.source_port(),
                dst: tcp.destination_port(),
                tcp_flags: tcp_flags(&tcp),
                header_len: tcp.slice().len(),
            }),
            // A data offset below 5: the fixed 20 bytes are the header.
            Err(tcp::HeaderSliceError::Content(_)) if payload.len() >= 20 => Ok(Ports {
                src: u16::from_be_bytes([payload[0], payload[1]]),
                dst: u16::from_be_bytes([payload[2], payload[3]]),
                tcp_flags: payload[13],
                header_len: 20,
            }),
            Err(_) => Err(()),
        },
        IpNumber::UDP => {
            let udp = UdpHeaderSlice::from_slice(payload).map_err(|_| ())?;
            Ok(Ports {
                src: udp.source_port(),
                dst: udp.destination_port(),
                tcp_flags: 0,
                header_len: 8,
            })
        }
        // Type, code and checksum (RFC 792, RFC 4443 §2.1); etherparse's
        // ICMP slices also want the 4 type-specific bytes after them.
        protocol if protocol == icmp => {
            if payload.len() < 4 {
                Err(())
            } else {
                Ok(Ports {
                    header_len: 4,
                    ..Ports::default()
                })
            }
        }
        _ => Ok(Ports::default()),
    }
}

fn tcp_flags(tcp: &TcpHeaderSlice<'_>) -> u8 {
    [
        tcp.fin(),
        tcp.syn(),
        tcp.rst(),
        tcp.psh(),
        tcp.ack(),
        tcp.urg(),
        tcp.ece(),
        tcp.cwr(),
    ]
    .iter()
    .enumerate()
    .map(|(bit, set)| u8::from(*set) << bit)
    .sum()
}
