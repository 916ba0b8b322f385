//! The VPN protocol signatures of README "Recognising VPN protocols",
//! written again for the oracle: which protocol service a transport payload
//! shows. `ports` are the source's and the destination's.

/// The service a packet of `protocol` with `payload` (after its transport
/// header; `None` when the program does not judge it) shows.
pub fn recognise(protocol: u8, ports: [u16; 2], payload: Option<&[u8]>) -> Option<&'static str> {
    let payload = payload?;
    match protocol {
        // ESP, AH: IPsec whatever they carry.
        50 | 51 => Some("ipsec"),
        47 => gre(payload),
        17 => udp(ports, payload),
        6 => tcp(ports, payload),
        _ => None,
    }
}

fn gre(payload: &[u8]) -> Option<&'static str> {
    let header = payload.get(..4)?;
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    match (header[1] & 0x07, protocol) {
        (1, 0x880b) => Some("pptp"),
        (0, _) => Some("gre"),
        _ => None,
    }
}

fn udp(ports: [u16; 2], payload: &[u8]) -> Option<&'static str> {
    if ports.contains(&500) && is_ike(payload) {
        return Some("ipsec");
    }
    if ports.contains(&4500) && payload.len() >= 4 {
        let ike_behind_marker = payload[..4] == [0; 4] && is_ike(&payload[4..]);
        let esp = payload[..4] != [0; 4] && payload.len() >= 8;
        if ike_behind_marker || esp {
            return Some("ipsec");
        }
    }
    if ports.contains(&1701)
        && payload.len() >= 2
        && matches!(payload[1] & 0x0f, 2 | 3)
        && (payload[0] & 0x80 == 0 || payload[0] & 0x40 != 0)
    {
        return Some("l2tp");
    }
    let wireguard = match payload.get(..4) {
        Some([1, 0, 0, 0]) => payload.len() == 148,
        Some([2, 0, 0, 0]) => payload.len() == 92,
        Some([3, 0, 0, 0]) => payload.len() == 64,
        Some([4, 0, 0, 0]) => payload.len() >= 32 && payload.len().is_multiple_of(16),
        _ => false,
    };
    if wireguard {
        return Some("wireguard");
    }
    if let Some(&first) = payload.first()
        && is_openvpn_reset(first)
        && (14..=1024).contains(&payload.len())
    {
        return Some("openvpn");
    }
    None
}

fn tcp(ports: [u16; 2], payload: &[u8]) -> Option<&'static str> {
    if ports.contains(&1723) && payload.get(2..8) == Some(&[0, 1, 0x1a, 0x2b, 0x3c, 0x4d][..]) {
        return Some("pptp");
    }
    if payload.len() >= 3
        && usize::from(u16::from_be_bytes([payload[0], payload[1]])) + 2 == payload.len()
        && is_openvpn_reset(payload[2])
        && (16..=1026).contains(&payload.len())
    {
        return Some("openvpn");
    }
    None
}

/// P_CONTROL_HARD_RESET_CLIENT_V2 (7), _SERVER_V2 (8), _CLIENT_V3 (10).
fn is_openvpn_reset(first: u8) -> bool {
    matches!(first >> 3, 7 | 8 | 10)
}

/// A whole IKE message: 28-byte header, IKEv1 exchange 1–5, 32, 33 or
/// IKEv2 34–37, its length field equal to the payload.
fn is_ike(payload: &[u8]) -> bool {
    if payload.len() < 28 {
        return false;
    }
    let exchange = payload[18];
    let known = match payload[17] >> 4 {
        1 => matches!(exchange, 1..=5 | 32 | 33),
        2 => matches!(exchange, 34..=37),
        _ => false,
    };
    let length = u32::from_be_bytes([payload[24], payload[25], payload[26], payload[27]]);
    known && usize::try_from(length) == Ok(payload.len())
}
