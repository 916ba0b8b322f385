//! Test frames, every header serialised by etherparse. One `FrameSpec`
//! describes a frame; malformed frames are made from good ones by
//! truncating or patching bytes.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const ETH_HEADER: usize = 14;
pub const VLAN_TAG: usize = 4;
pub const IPV4_HEADER: usize = 20;
pub const IPV6_HEADER: usize = 40;

/// The transport part of a frame.
#[derive(Debug, Clone)]
pub enum Transport {
    Udp {
        src: u16,
        dst: u16,
    },
    Tcp {
        src: u16,
        dst: u16,
        syn: bool,
        ack: bool,
    },
    /// ICMP echo request (ICMPv6 for IPv6).
    Icmp,
    /// Any other protocol, its bytes given.
    Raw {
        protocol: u8,
    },
}

/// An IPv6 extension header in a chain.
#[derive(Debug, Clone, Copy)]
pub enum Ext {
    HopByHop,
    Routing,
    DestinationOptions,
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn number(self) -> IpNumber {
        match self {
            Self::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            Self::Routing => IpNumber::IPV6_ROUTE_HEADER,
            Self::DestinationOptions => IpNumber::IPV6_DESTINATION_OPTIONS,
            Self::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// TPIDs of VLAN tags, outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    pub payload_len: usize,
    /// IPv4 options (a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// Fragment offset in 8-byte units (IPv4 header, or an IPv6 fragment
    /// extension listed in `ipv6_exts`).
    pub ipv4_fragment_offset: u16,
    pub ipv4_more_fragments: bool,
    pub ipv6_exts: Vec<Ext>,
}

impl FrameSpec {
    pub fn new(src: &str, dst: &str, transport: Transport) -> Self {
        Self {
            vlans: Vec::new(),
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            transport,
            payload_len: 16,
            ipv4_options: Vec::new(),
            ipv4_fragment_offset: 0,
            ipv4_more_fragments: false,
            ipv6_exts: Vec::new(),
        }
    }

    pub fn udp(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Self {
        Self::new(
            src,
            dst,
            Transport::Udp {
                src: src_port,
                dst: dst_port,
            },
        )
    }

    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn exts(mut self, exts: &[Ext]) -> Self {
        self.ipv6_exts = exts.to_vec();
        self
    }

    pub fn payload(mut self, len: usize) -> Self {
        self.payload_len = len;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let (protocol, transport) = self.transport_bytes(v6);

        let mut ip = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut header = Ipv4Header::new(
                    u16::try_from(transport.len()).expect("small"),
                    64,
                    protocol,
                    src.octets(),
                    dst.octets(),
                )
                .expect("valid header");
                header.options = self.ipv4_options[..]
                    .try_into()
                    .expect("options are a multiple of 4 bytes");
                header.more_fragments = self.ipv4_more_fragments;
                header.fragment_offset =
                    IpFragOffset::try_new(self.ipv4_fragment_offset).expect("13 bits");
                header.header_checksum = header.calc_header_checksum();
                header.write(&mut ip).expect("write to a Vec");
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut chain = Vec::new();
                for (index, ext) in self.ipv6_exts.iter().enumerate() {
                    let next = self
                        .ipv6_exts
                        .get(index + 1)
                        .map_or(protocol, |next| next.number());
                    match ext {
                        Ext::Fragment { offset, more } => {
                            let mut header = Ipv6FragmentHeader::new(
                                next,
                                IpFragOffset::try_new(*offset).expect("13 bits"),
                                *more,
                                7,
                            )
                            .to_bytes();
                            // etherparse 0.18 lays out offset and M flag like
                            // IPv4's (M at 0x80 of byte 3); RFC 8200 and Linux
                            // put the 13-bit offset first and M in bit 0.
                            let field = (*offset << 3) | u16::from(*more);
                            header[2..4].copy_from_slice(&field.to_be_bytes());
                            chain.extend(header);
                        }
                        _ => chain.extend(
                            Ipv6RawExtHeader::new_raw(next, &[0; 6])
                                .expect("6 bytes is a valid payload")
                                .to_bytes(),
                        ),
                    }
                }
                let header = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: u16::try_from(chain.len() + transport.len()).expect("small"),
                    next_header: self.ipv6_exts.first().map_or(protocol, |ext| ext.number()),
                    hop_limit: 64,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                header.write(&mut ip).expect("write to a Vec");
                ip.extend(chain);
            }
            _ => panic!("source and destination must be of one family"),
        }
        ip.extend(transport);

        let ip_type = if v6 { EtherType::IPV6 } else { EtherType::IPV4 };
        let mut frame = Vec::new();
        let first_type = self.vlans.first().map_or(ip_type, |tpid| EtherType(*tpid));
        Ethernet2Header {
            source: [0x02, 0, 0, 0, 0, 0x02],
            destination: [0x02, 0, 0, 0, 0, 0x01],
            ether_type: first_type,
        }
        .write(&mut frame)
        .expect("write to a Vec");
        for (index, _) in self.vlans.iter().enumerate() {
            let next = self
                .vlans
                .get(index + 1)
                .map_or(ip_type, |tpid| EtherType(*tpid));
            SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(100 + u16::try_from(index).expect("few"))
                    .expect("12 bits"),
                ether_type: next,
            }
            .write(&mut frame)
            .expect("write to a Vec");
        }
        frame.extend(ip);
        frame
    }

    /// The transport header and payload, and the protocol number.
    fn transport_bytes(&self, v6: bool) -> (IpNumber, Vec<u8>) {
        let payload = vec![0xab; self.payload_len];
        let mut bytes = Vec::new();
        let protocol = match self.transport {
            Transport::Udp { src, dst } => {
                let header =
                    UdpHeader::without_ipv4_checksum(src, dst, payload.len()).expect("small");
                bytes.extend(header.to_bytes());
                IpNumber::UDP
            }
            Transport::Tcp { src, dst, syn, ack } => {
                let mut header = TcpHeader::new(src, dst, 1, 1024);
                header.syn = syn;
                header.ack = ack;
                bytes.extend(header.to_bytes());
                IpNumber::TCP
            }
            Transport::Icmp if v6 => {
                let echo = Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 });
                bytes.extend(Icmpv6Header::new(echo).to_bytes());
                IpNumber::IPV6_ICMP
            }
            Transport::Icmp => {
                let echo = Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 });
                bytes.extend(Icmpv4Header::new(echo).to_bytes());
                IpNumber::ICMP
            }
            Transport::Raw { protocol } => IpNumber(protocol),
        };
        bytes.extend(payload);
        (protocol, bytes)
    }
}

/// An ARP request, etherparse-built.
pub fn arp() -> Vec<u8> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &[2, 0, 0, 0, 0, 2],
                &[192, 0, 2, 1],
                &[0; 6],
                &[192, 0, 2, 2],
            )
            .expect("valid ARP"),
        )
        .write(&mut frame)
        .expect("write to a Vec");
    frame
}

/// `frame` cut to `len` bytes.
pub fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// `frame` with `bytes` written at `offset`.
pub fn patched(mut frame: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    frame[offset..offset + bytes.len()].copy_from_slice(bytes);
    frame
}
