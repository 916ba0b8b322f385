//! The XDP program an interface already runs (as `ip link` shows it, from
//! rtnetlink's IFLA_XDP attributes), named so `classifier run` can refuse to
//! attach over it, and removed for `--replace`.
//!
//! An interface runs at most one XDP program per mode; attaching ours where
//! another one is would silently take its place (netlink) or fail with a
//! bare EBUSY (bpf_link). Operators' DDoS filters live there.

use std::{fmt, io, os::fd::AsFd as _};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::bpf_sys;

/// XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE (linux/if_link.h).
const MODES: [(&str, u32); 3] = [
    ("generic", 1 << 1),
    ("native", 1 << 2),
    ("offloaded", 1 << 3),
];

/// One XDP program attached to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    pub id: u32,
    /// The program's name as the kernel keeps it (at most 15 bytes);
    /// `None` when it has none or it cannot be read (looking programs up
    /// by id takes CAP_SYS_ADMIN).
    pub name: Option<String>,
    /// "generic", "native" or "offloaded".
    pub mode: &'static str,
}

impl fmt::Display for AttachedProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(
                f,
                "XDP program \"{name}\" (id {}, {} mode)",
                self.id, self.mode
            ),
            None => write!(
                f,
                "XDP program id {} ({} mode; `bpftool prog show id {}` names it)",
                self.id, self.mode, self.id
            ),
        }
    }
}

/// The mode name of an XDP_FLAGS_*_MODE flag ("generic", "native",
/// "offloaded"; "unknown" for anything else).
pub fn mode_name(mode_flag: u32) -> &'static str {
    MODES
        .iter()
        .find(|(_, flag)| *flag == mode_flag)
        .map_or("unknown", |(name, _)| *name)
}

/// XDP_FLAGS_UPDATE_IF_NOEXIST: attach only where nothing is attached.
pub const FLAG_IF_NONE: u32 = 1;
/// XDP_FLAGS_REPLACE: replace only the program given as the expected one.
const FLAG_REPLACE: u32 = 1 << 4;

/// The XDP_FLAGS_*_MODE flag of a mode name ("generic", "native",
/// "offloaded"); 0 for anything else.
pub fn mode_flag(mode: &str) -> u32 {
    MODES
        .iter()
        .find(|(name, _)| *name == mode)
        .map_or(0, |(_, flag)| *flag)
}

/// Sends one rtnetlink request about interface `if_index` and returns the
/// messages of the answer.
fn request(
    if_index: u32,
    attributes: Vec<LinkAttribute>,
    set: bool,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = if_index;
    link.attributes = attributes;
    let payload = if set {
        RouteNetlinkMessage::SetLink(link)
    } else {
        RouteNetlinkMessage::GetLink(link)
    };
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    message.header.flags = NLM_F_REQUEST | if set { NLM_F_ACK } else { 0 };
    message.header.sequence_number = 1;
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut answers = Vec::new();
    let (received, _) = socket.recv_from_full()?;
    let mut offset = 0;
    while offset < received.len() {
        let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&received[offset..])
            .map_err(|error| io::Error::other(format!("bad rtnetlink answer: {error}")))?;
        let length = answer.header.length as usize;
        match answer.payload {
            NetlinkPayload::Error(error) => {
                if let Some(code) = error.code {
                    return Err(io::Error::from_raw_os_error(-code.get()));
                }
            }
            NetlinkPayload::InnerMessage(inner) => answers.push(inner),
            _ => {}
        }
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(answers)
}

/// The XDP programs attached to interface `if_index` (none, or one per
/// mode), with their names.
pub fn attached_programs(if_index: u32) -> io::Result<Vec<AttachedProgram>> {
    let mut found = Vec::new();
    for answer in request(if_index, Vec::new(), false)? {
        let RouteNetlinkMessage::NewLink(link) = answer else {
            continue;
        };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else {
                continue;
            };
            let mut single = None;
            let mut attached_mode = None;
            for entry in xdp {
                match entry {
                    LinkXdp::SkbProgId(id) => found.push((id, "generic")),
                    LinkXdp::DrvProgId(id) => found.push((id, "native")),
                    LinkXdp::HwProgId(id) => found.push((id, "offloaded")),
                    LinkXdp::ProgId(id) => single = Some(id),
                    LinkXdp::Attached(mode) => attached_mode = Some(mode),
                    _ => {}
                }
            }
            // One program: the kernel gives its id and the mode it runs in
            // rather than per-mode ids.
            if let (Some(id), Some(attached)) = (single, attached_mode) {
                let mode = match attached {
                    XdpAttached::Driver => "native",
                    XdpAttached::SocketBuffer => "generic",
                    XdpAttached::Hardware => "offloaded",
                    _ => continue,
                };
                if !found.iter().any(|(known, _)| *known == id) {
                    found.push((id, mode));
                }
            }
        }
    }
    Ok(found
        .into_iter()
        .filter(|(id, _)| *id != 0)
        .map(|(id, mode)| AttachedProgram {
            id,
            name: program_name(id),
            mode,
        })
        .collect())
}

fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|info| info.id() == id)
        .and_then(|info| info.name_as_str().map(str::to_string))
        .filter(|name| !name.is_empty())
}

/// Removes `program` from interface `if_index`: detaches the bpf_link that
/// holds it there, or, when it was attached through netlink (`ip link`,
/// libxdp), unsets the interface's program in its mode.
pub fn remove(if_index: u32, program: &AttachedProgram) -> io::Result<()> {
    if let Some(link) = bpf_sys::xdp_link_on(if_index, program.id)? {
        return bpf_sys::link_detach(link.as_fd());
    }
    request(
        if_index,
        vec![LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(mode_flag(program.mode)),
        ])],
        true,
    )
    .map(|_| ())
}

/// Sets interface `if_index`'s XDP program through rtnetlink, as libxdp
/// and `ip link` do (not with a bpf_link, which another tool could not
/// replace): `program` (`None` removes it) in the mode of `mode_flags`.
/// With `expected`, only if that program is the one attached (the
/// kernel's compare-and-swap); without, with [`FLAG_IF_NONE`] in
/// `mode_flags`, only if none is.
pub fn set_program(
    if_index: u32,
    program: Option<std::os::fd::BorrowedFd<'_>>,
    mode_flags: u32,
    expected: Option<std::os::fd::BorrowedFd<'_>>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attributes = vec![LinkXdp::Fd(program.map_or(-1, |fd| fd.as_raw_fd()))];
    let mut flags = mode_flags;
    if let Some(expected) = expected {
        flags |= FLAG_REPLACE;
        attributes.push(LinkXdp::ExpectedFd(
            u32::try_from(expected.as_raw_fd()).map_err(io::Error::other)?,
        ));
    }
    attributes.push(LinkXdp::Flags(flags));
    request(if_index, vec![LinkAttribute::Xdp(attributes)], true).map(|_| ())
}
