//! Learning: the few packets of watched hosts that can teach which
//! endpoints serve which service go to userspace through a ring buffer,
//! and what userspace learned comes back as host entries the classifier
//! consults when no feed names the other end. Today: DNS responses (UDP or
//! TCP from port 53) to a watched host, up to `LEARN_BYTES` of the message.
//! A full ring buffer drops the record and counts it.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use classifier_common::{DIR_INBOUND, LEARN_BYTES, LEARN_DNS, LearnRecord, Totals};

use crate::{
    LEARN_EVENTS, LEARNED,
    classify::Watched,
    count::KeyAddress,
    parse::{MAX_FRAME, Packet},
};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PORT_DNS: u16 = 53;

/// The service userspace learned for `endpoint` (key bytes), or 0.
#[inline(always)]
pub fn learned_service(endpoint: &[u8; 16]) -> u32 {
    // SAFETY: a map value, read once.
    LEARNED
        .get_ptr(endpoint)
        .map_or(0, |service| unsafe { *service })
}

/// Hands a DNS response sent to a watched host to userspace.
#[inline(always)]
pub fn dns_response<A: KeyAddress>(
    ctx: &XdpContext,
    totals: &mut Totals,
    packet: &Packet<A>,
    watched: &Watched<A>,
) {
    if watched.direction != DIR_INBOUND
        || packet.src_port != PORT_DNS
        || !(packet.protocol == PROTO_UDP || packet.protocol == PROTO_TCP)
        || packet.payload_end <= packet.payload_start
        || packet.payload_end == MAX_FRAME
    {
        return;
    }
    let len = packet.payload_end - packet.payload_start;
    let len = if len > LEARN_BYTES { LEARN_BYTES } else { len };
    // 1..=LEARN_BYTES in a form the verifier follows (the helper refuses a
    // length that may be zero); LEARN_BYTES is a power of two.
    let len = ((len - 1) & (LEARN_BYTES - 1)) + 1;
    let Some(mut entry) = LEARN_EVENTS.reserve::<LearnRecord>(0) else {
        totals.learn_drops += 1;
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned entry; the
    // helper copies `len` (1..=LEARN_BYTES) bytes of the frame into it.
    let copied = unsafe {
        (*record).kind = LEARN_DNS;
        (*record).family = A::FAMILY;
        (*record).protocol = packet.protocol;
        (*record).len = len as u32;
        (*record).watched = watched.watched.key_bytes();
        (*record).server = watched.endpoint.key_bytes();
        bpf_xdp_load_bytes(
            ctx.ctx,
            packet.payload_start as u32,
            (*record).payload.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        entry.discard(0);
        totals.learn_drops += 1;
        return;
    }
    entry.submit(0);
    totals.learn_records += 1;
}
