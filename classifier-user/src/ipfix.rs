//! IPFIX export (RFC 7011): every `--ipfix-interval`, one data record per
//! watched↔endpoint flow that gained packets since the last export, with
//! its delta counts, to each `--ipfix` collector (UDP, or TCP with
//! `tcp://`). Encoded here: two templates and fixed-length records are a
//! few dozen lines, and no crate on the registry writes IPFIX.
//!
//! Templates (the information elements of RFC 7012, no enterprise ones):
//!
//! | IE | name | bytes |
//! |---|---|---|
//! | 8 / 27 | sourceIPv4Address / sourceIPv6Address | 4 / 16 |
//! | 12 / 28 | destinationIPv4Address / destinationIPv6Address | 4 / 16 |
//! | 4 | protocolIdentifier | 1 |
//! | 7 | sourceTransportPort | 2 |
//! | 11 | destinationTransportPort | 2 |
//! | 2 | packetDeltaCount | 8 |
//! | 1 | octetDeltaCount (IP header and payload) | 8 |
//! | 352 | layer2OctetDeltaCount (the frame bytes reports count) | 8 |
//! | 152 | flowStartMilliseconds | 8 |
//! | 153 | flowEndMilliseconds | 8 |
//! | 61 | flowDirection (0 ingress: to the watched host; 1 egress: from it) | 1 |
//! | 96 | applicationName (the service) | variable: a length byte, then the name |
//!
//! The flow table keeps the endpoint's port only, so the watched host's
//! port is exported as 0. Template 256 is IPv4, 257 IPv6. Over UDP the
//! templates lead the first message and are re-sent every
//! [`TEMPLATE_REFRESH`] (RFC 7011 §8.4); over TCP once per connection.
//! Messages stay under [`MAX_MESSAGE`] bytes (a 1,500-byte path MTU less
//! IP and UDP headers). Sequence numbers count the data records sent
//! before each message, per collector (§3.1).
//!
//! Each collector is served by a thread of its own, so a collector that
//! hangs (a name that takes long to resolve, a connect or write that
//! waits out its 2 s timeout) neither stalls the daemon's drains, metrics
//! and stats socket nor delays the other collectors. A collector
//! [`QUEUED_EXPORTS`] exports behind loses the newest one (counted as a
//! failure; its sequence number still advances past those records, from
//! the next message on).

use std::{
    collections::HashMap,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use classifier_common::{DIR_INBOUND, FlowKey};

use crate::{drain::Ledger, loader::ServiceTable, pseudonym::Pseudonymizer, report::key_address};

/// Largest message: 1,500 − 40 (IPv6) − 8 (UDP) with room to spare.
pub const MAX_MESSAGE: usize = 1400;
/// How often UDP collectors get the templates again.
pub const TEMPLATE_REFRESH: Duration = Duration::from_secs(600);
const VERSION: u16 = 10;
const TEMPLATE_SET: u16 = 2;
const TEMPLATE_V4: u16 = 256;
const TEMPLATE_V6: u16 = 257;
const HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;
/// Most bytes of applicationName in a record (service names are shorter).
const NAME_LEN: usize = crate::feeds::MAX_SERVICE_NAME;
/// A template field's length for a variable-length element (RFC 7011 §7).
const VARIABLE_LENGTH: u16 = 65535;
/// Exports waiting for a collector's thread; one further behind loses the
/// newest export.
pub const QUEUED_EXPORTS: usize = 4;
/// How long the daemon waits at exit for its last export to be sent.
pub const FINAL_SEND_WAIT: Duration = Duration::from_secs(5);

/// (information element, length) of each template, in record order.
fn fields(v6: bool) -> [(u16, u16); 12] {
    let (source, destination, address_len) = if v6 { (27, 28, 16) } else { (8, 12, 4) };
    [
        (source, address_len),
        (destination, address_len),
        (4, 1),
        (7, 2),
        (11, 2),
        (2, 8),
        (1, 8),
        (352, 8),
        (152, 8),
        (153, 8),
        (61, 1),
        (96, VARIABLE_LENGTH),
    ]
}

/// The name as a record carries it: at most [`NAME_LEN`] bytes.
fn application_name(record: &FlowExport) -> &[u8] {
    let bytes = record.service.as_bytes();
    &bytes[..bytes.len().min(NAME_LEN)]
}

/// A record's bytes: the fixed-length fields, then the name's length byte
/// and the name.
fn record_len(record: &FlowExport) -> usize {
    let fixed: usize = fields(record.source.is_ipv6())
        .iter()
        .filter(|(_, len)| *len != VARIABLE_LENGTH)
        .map(|(_, len)| usize::from(*len))
        .sum();
    fixed + 1 + application_name(record).len()
}

/// Where to send: `HOST:PORT` (UDP), `udp://HOST:PORT` or `tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tcp: bool,
    pub address: String,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (tcp, address) = if let Some(rest) = text.strip_prefix("tcp://") {
            (true, rest)
        } else {
            (false, text.strip_prefix("udp://").unwrap_or(text))
        };
        let Some((host, port)) = address
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        else {
            return Err("expected HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT".to_string());
        };
        // Addresses are checked here; a host name is resolved at each export.
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            // A link-local address may carry its scope: [fe80::1%2]:4739.
            address
                .parse::<std::net::SocketAddrV6>()
                .map_err(|_| format!("{inner} is not an IPv6 address"))?;
        } else if host.contains(':') {
            return Err(format!("an IPv6 address goes in brackets: [{host}]:{port}"));
        } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            host.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("{host} is not an IPv4 address"))?;
        }
        Ok(Self {
            tcp,
            address: address.to_string(),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tcp { "tcp" } else { "udp" };
        write!(f, "{scheme}://{}", self.address)
    }
}

/// The default observation domain: the first four bytes of the SHA-256 of
/// the sensor's name, so each sensor of a fleet has its own.
pub fn observation_domain_of(sensor: &str) -> u32 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sensor.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// One exported flow's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowExport {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub packets: u64,
    pub ip_bytes: u64,
    pub frame_bytes: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// 0 ingress (to the watched host), 1 egress (from it).
    pub direction: u8,
    pub service: String,
}

/// Encodes records into messages of at most [`MAX_MESSAGE`] bytes; the
/// templates lead the first when `with_templates`. `sequence` is the
/// count of data records sent before; it is advanced.
pub fn encode(
    records: &[FlowExport],
    with_templates: bool,
    export_time: u32,
    domain: u32,
    sequence: &mut u32,
) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut message = start_message(with_templates);
    let mut open_set: Option<(usize, u16)> = None;
    let mut records_in_message = 0u32;
    let mut first_sequence = *sequence;
    for record in records {
        let v6 = record.source.is_ipv6();
        let template = if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 };
        let needs_set = open_set.is_none_or(|(_, id)| id != template);
        let extra = record_len(record) + if needs_set { SET_HEADER_LEN } else { 0 };
        if message.len() + extra > MAX_MESSAGE && records_in_message > 0 {
            close_set(&mut message, open_set.take());
            messages.push(finish_message(message, export_time, first_sequence, domain));
            message = start_message(false);
            first_sequence = *sequence;
            records_in_message = 0;
        }
        if open_set.is_none_or(|(_, id)| id != template) {
            close_set(&mut message, open_set.take());
            open_set = Some((message.len(), template));
            message.extend_from_slice(&template.to_be_bytes());
            message.extend_from_slice(&[0, 0]);
        }
        write_record(&mut message, record);
        records_in_message += 1;
        *sequence = sequence.wrapping_add(1);
    }
    close_set(&mut message, open_set.take());
    if records_in_message > 0 || with_templates {
        messages.push(finish_message(message, export_time, first_sequence, domain));
    }
    messages
}

fn start_message(with_templates: bool) -> Vec<u8> {
    let mut message = vec![0; HEADER_LEN];
    if with_templates {
        let start = message.len();
        message.extend_from_slice(&TEMPLATE_SET.to_be_bytes());
        message.extend_from_slice(&[0, 0]);
        for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
            let fields = fields(v6);
            message.extend_from_slice(&id.to_be_bytes());
            message.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (element, len) in fields {
                message.extend_from_slice(&element.to_be_bytes());
                message.extend_from_slice(&len.to_be_bytes());
            }
        }
        close_set(&mut message, Some((start, TEMPLATE_SET)));
    }
    message
}

fn close_set(message: &mut [u8], set: Option<(usize, u16)>) {
    if let Some((start, _)) = set {
        let len = (message.len() - start) as u16;
        message[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn finish_message(mut message: Vec<u8>, export_time: u32, sequence: u32, domain: u32) -> Vec<u8> {
    let len = message.len() as u16;
    message[0..2].copy_from_slice(&VERSION.to_be_bytes());
    message[2..4].copy_from_slice(&len.to_be_bytes());
    message[4..8].copy_from_slice(&export_time.to_be_bytes());
    message[8..12].copy_from_slice(&sequence.to_be_bytes());
    message[12..16].copy_from_slice(&domain.to_be_bytes());
    message
}

fn write_record(message: &mut Vec<u8>, record: &FlowExport) {
    let address = |message: &mut Vec<u8>, address: IpAddr| match address {
        IpAddr::V4(v4) => message.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => message.extend_from_slice(&v6.octets()),
    };
    address(message, record.source);
    address(message, record.destination);
    message.push(record.protocol);
    message.extend_from_slice(&record.source_port.to_be_bytes());
    message.extend_from_slice(&record.destination_port.to_be_bytes());
    for value in [
        record.packets,
        record.ip_bytes,
        record.frame_bytes,
        record.start_ms,
        record.end_ms,
    ] {
        message.extend_from_slice(&value.to_be_bytes());
    }
    message.push(record.direction);
    // Variable length (RFC 7011 §7): under 255 bytes, one length byte.
    let name = application_name(record);
    message.push(name.len() as u8);
    message.extend_from_slice(name);
}

/// A socket, opened on first use (UDP: bound to the collector's family;
/// TCP: connected, and again after a failure).
enum Connection {
    Udp(Option<UdpSocket>),
    Tcp(Option<TcpStream>),
}

struct Collector {
    target: Target,
    connection: Connection,
    sequence: u32,
    templates_sent: Option<Instant>,
    /// The TCP connection was opened for this send (templates lead it).
    fresh_connection: bool,
}

impl Collector {
    fn new(target: Target) -> Self {
        let connection = if target.tcp {
            Connection::Tcp(None)
        } else {
            Connection::Udp(None)
        };
        Self {
            target,
            connection,
            sequence: 0,
            templates_sent: None,
            fresh_connection: false,
        }
    }

    fn resolve(&self) -> std::io::Result<SocketAddr> {
        self.target
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the name has no address"))
    }

    /// Resolves the target and opens the connection when none is open: a
    /// TCP stream, or a UDP socket of the destination's family (opened
    /// again when the name now resolves to the other family).
    fn connect(&mut self) -> std::io::Result<SocketAddr> {
        let destination = self.resolve()?;
        if let Connection::Udp(Some(socket)) = &self.connection
            && socket
                .local_addr()
                .is_ok_and(|local| local.is_ipv6() != destination.is_ipv6())
        {
            // A new transport session: the templates go first again.
            self.connection = Connection::Udp(None);
            self.templates_sent = None;
        }
        if let Connection::Tcp(Some(stream)) = &self.connection
            && peer_closed(stream)
        {
            // The collector closed it (a restart, say): what is written
            // into it now would be lost while reported sent.
            self.connection = Connection::Tcp(None);
        }
        match &mut self.connection {
            Connection::Tcp(stream @ None) => {
                let connected = TcpStream::connect_timeout(&destination, Duration::from_secs(2))?;
                connected.set_write_timeout(Some(Duration::from_secs(2)))?;
                *stream = Some(connected);
                self.fresh_connection = true;
            }
            Connection::Udp(socket @ None) => {
                let any = if destination.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                *socket = Some(UdpSocket::bind(any)?);
            }
            _ => {}
        }
        Ok(destination)
    }

    /// Sends `records`; on failure the sequence number still advances
    /// (RFC 7011: it counts records sent, and a collector that missed
    /// some sees the gap).
    fn send(
        &mut self,
        records: &[FlowExport],
        export_time: u32,
        domain: u32,
    ) -> std::io::Result<()> {
        let destination = match self.connect() {
            Ok(destination) => destination,
            Err(error) => {
                let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
                self.sequence = self.sequence.wrapping_add(count);
                return Err(error);
            }
        };
        let templates = match &self.connection {
            Connection::Udp(_) => self
                .templates_sent
                .is_none_or(|sent| sent.elapsed() >= TEMPLATE_REFRESH),
            // `connect` has just opened it when it was closed.
            Connection::Tcp(_) => self.fresh_connection,
        };
        self.fresh_connection = false;
        let messages = encode(records, templates, export_time, domain, &mut self.sequence);
        for message in &messages {
            let sent = match &mut self.connection {
                Connection::Udp(Some(socket)) => socket.send_to(message, destination).map(|_| ()),
                Connection::Tcp(Some(stream)) => stream.write_all(message),
                Connection::Udp(None) | Connection::Tcp(None) => Ok(()),
            };
            if let Err(error) = sent {
                if let Connection::Tcp(stream) = &mut self.connection {
                    // Reconnect (and send the templates) next time.
                    *stream = None;
                }
                return Err(error);
            }
        }
        if templates {
            self.templates_sent = Some(Instant::now());
        }
        Ok(())
    }
}

/// Whether the collector has closed `stream` (end of stream) or reset it.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        // A collector has nothing to say; what it says is not read.
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).is_err() || closed
}

/// What export did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub records: u64,
    pub messages_failed: u64,
}

/// The export counts all collectors' threads add to.
#[derive(Default)]
struct SharedStats {
    records: AtomicU64,
    failures: AtomicU64,
}

/// One export for one collector: the records (shared by every
/// collector's queue), and the records of exports dropped just before it.
struct Batch {
    records: Arc<Vec<FlowExport>>,
    export_time: u32,
    dropped_before: u32,
}

/// What a collector's thread and the daemon both know of it.
#[derive(Default)]
struct CollectorState {
    /// The last send failed (logged once until a send works again).
    failing: AtomicBool,
}

/// A collector's thread and the queue it takes exports from.
struct CollectorThread {
    target: Target,
    queue: mpsc::SyncSender<Batch>,
    state: Arc<CollectorState>,
    /// Records of exports dropped since the last one queued: the next
    /// one's sequence number counts them.
    dropped: u32,
}

impl CollectorThread {
    fn spawn(
        target: Target,
        domain: u32,
        stats: Arc<SharedStats>,
        finished: (mpsc::Sender<usize>, usize),
    ) -> std::io::Result<Self> {
        let (queue, exports) = mpsc::sync_channel::<Batch>(QUEUED_EXPORTS);
        let state = Arc::new(CollectorState::default());
        let mut collector = Collector::new(target.clone());
        let shared = state.clone();
        std::thread::Builder::new()
            .name("ipfix".into())
            .spawn(move || {
                for batch in exports {
                    collector.sequence = collector.sequence.wrapping_add(batch.dropped_before);
                    let sent = collector.send(&batch.records, batch.export_time, domain);
                    note_outcome(&collector.target, &shared, &stats, &batch, sent);
                }
                let (finish_line, index) = finished;
                let _ = finish_line.send(index);
            })?;
        Ok(Self {
            target,
            queue,
            state,
            dropped: 0,
        })
    }
}

/// Counts and logs (once per failing spell) how an export to `target` went.
fn note_outcome(
    target: &Target,
    state: &CollectorState,
    stats: &SharedStats,
    batch: &Batch,
    outcome: std::io::Result<()>,
) {
    match outcome {
        Ok(()) => {
            if state.failing.swap(false, Ordering::Relaxed) {
                log::info!("IPFIX: {target} reachable again");
            }
            stats
                .records
                .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        }
        Err(error) => {
            if !state.failing.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "IPFIX: cannot send to {target} ({error}); {} record(s) not delivered, counted in classifier_ipfix_send_failures_total",
                    batch.records.len()
                );
            }
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Exports flow deltas to the collectors.
pub struct Exporter {
    collectors: Vec<CollectorThread>,
    /// Each collector's thread sends its index here when it ends.
    finished: mpsc::Receiver<usize>,
    /// Per flow, the ledger's counts at the last export.
    exported: HashMap<FlowKey, (u64, u64, u64)>,
    stats: Arc<SharedStats>,
}

impl Exporter {
    /// Starts one sending thread per collector.
    pub fn new(targets: &[Target], domain: u32) -> std::io::Result<Self> {
        let stats = Arc::new(SharedStats::default());
        let (finish_line, finished) = mpsc::channel();
        let collectors = targets
            .iter()
            .enumerate()
            .map(|(index, target)| {
                let finished = (finish_line.clone(), index);
                CollectorThread::spawn(target.clone(), domain, stats.clone(), finished)
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            collectors,
            finished,
            exported: HashMap::new(),
            stats,
        })
    }

    /// What the collectors' threads have done so far.
    pub fn stats(&self) -> ExportStats {
        ExportStats {
            records: self.stats.records.load(Ordering::Relaxed),
            messages_failed: self.stats.failures.load(Ordering::Relaxed),
        }
    }

    /// Takes every flow's counts in `ledger` as exported: a daemon that
    /// adopts a program exports from the takeover on (the daemon before
    /// exported up to its stop), so a collector never gets them twice.
    pub fn take_as_exported(&mut self, ledger: &Ledger) {
        for (key, flow) in &ledger.flows {
            self.exported
                .insert(*key, (flow.packets, flow.ip_bytes, flow.bytes));
        }
    }

    /// The flows that gained packets since the last export, as records.
    pub fn deltas(
        &mut self,
        ledger: &Ledger,
        services: &ServiceTable,
        pseudonymizer: Option<&Pseudonymizer>,
    ) -> Vec<FlowExport> {
        let mut records = Vec::new();
        for (key, flow) in &ledger.flows {
            let last = self.exported.entry(*key).or_insert((0, 0, 0));
            if flow.packets <= last.0 {
                continue;
            }
            let watched = key_address(key.family, key.watched);
            let watched = pseudonymizer.map_or(watched, |p| p.address(watched));
            let endpoint = key_address(key.family, key.endpoint);
            let inbound = key.direction == DIR_INBOUND;
            let (source, destination) = if inbound {
                (endpoint, watched)
            } else {
                (watched, endpoint)
            };
            let (source_port, destination_port) = if inbound {
                (key.port, 0)
            } else {
                (0, key.port)
            };
            let millis = |ns: i64| u64::try_from(ns / 1_000_000).unwrap_or(0);
            records.push(FlowExport {
                source,
                destination,
                protocol: key.protocol,
                source_port,
                destination_port,
                packets: flow.packets - last.0,
                ip_bytes: flow.ip_bytes.saturating_sub(last.1),
                frame_bytes: flow.bytes.saturating_sub(last.2),
                start_ms: millis(flow.first_seen_unix_ns),
                end_ms: millis(flow.last_seen_unix_ns),
                direction: u8::from(!inbound),
                service: services
                    .name(u32::from(flow.service))
                    .unwrap_or("unknown")
                    .to_string(),
            });
            *last = (flow.packets, flow.ip_bytes, flow.bytes);
        }
        records.sort_by_key(|record| (record.source.is_ipv6(), record.start_ms));
        records
    }

    /// Hands what the flows gained since the last export to every
    /// collector's thread, without waiting for any. A collector that
    /// cannot be reached, or is [`QUEUED_EXPORTS`] exports behind, costs a
    /// logged, counted failure; its records are not re-sent (snapshots
    /// keep every count regardless).
    pub fn export(
        &mut self,
        ledger: &Ledger,
        services: &ServiceTable,
        pseudonymizer: Option<&Pseudonymizer>,
        now_unix_seconds: u32,
    ) {
        let records = self.deltas(ledger, services, pseudonymizer);
        self.hand_over(records, now_unix_seconds);
    }

    /// Queues `records` for every collector's thread (see [`Self::export`]).
    fn hand_over(&mut self, records: Vec<FlowExport>, now_unix_seconds: u32) {
        let records = Arc::new(records);
        for collector in &mut self.collectors {
            let batch = Batch {
                records: records.clone(),
                export_time: now_unix_seconds,
                dropped_before: std::mem::take(&mut collector.dropped),
            };
            if let Err(mpsc::TrySendError::Full(batch) | mpsc::TrySendError::Disconnected(batch)) =
                collector.queue.try_send(batch)
            {
                let count = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);
                collector.dropped = batch.dropped_before.wrapping_add(count);
                let behind = std::io::Error::other(format!(
                    "{QUEUED_EXPORTS} exports still waiting to be sent"
                ));
                note_outcome(
                    &collector.target,
                    &collector.state,
                    &self.stats,
                    &batch,
                    Err(behind),
                );
            }
        }
    }

    /// Waits up to `wait` for the collectors' threads to send what they
    /// hold (the last export at exit); says which could not.
    pub fn finish(self, wait: Duration) {
        let Self {
            collectors,
            finished,
            ..
        } = self;
        let mut sending: Vec<Option<Target>> =
            collectors.iter().map(|c| Some(c.target.clone())).collect();
        // Closing the queues ends each thread once its queue is sent.
        drop(collectors);
        let deadline = Instant::now() + wait;
        while sending.iter().any(Option::is_some) {
            let left = deadline.saturating_duration_since(Instant::now());
            match finished.recv_timeout(left) {
                Ok(index) => sending[index] = None,
                Err(_) => {
                    let late: Vec<String> =
                        sending.iter().flatten().map(ToString::to_string).collect();
                    log::warn!(
                        "IPFIX: still sending to {} after {}; records not sent by now are not delivered",
                        late.join(", "),
                        humantime::format_duration(wait)
                    );
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, destination: &str, packets: u64) -> FlowExport {
        FlowExport {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            protocol: 6,
            source_port: 0,
            destination_port: 443,
            packets,
            ip_bytes: packets * 60,
            frame_bytes: packets * 74,
            start_ms: 1_000,
            end_ms: 2_000,
            direction: 1,
            service: "hotspot-shield".into(),
        }
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    #[test]
    fn a_message_has_the_header_templates_and_one_set_per_family() {
        let mut sequence = 7;
        let records = [
            record("175.45.176.1", "198.51.100.1", 3),
            record("175.45.176.2", "198.51.100.2", 4),
            record("2001:db8::1", "2001:db8:1::1", 5),
        ];
        let messages = encode(&records, true, 1_800_000_000, 42, &mut sequence);
        assert_eq!(messages.len(), 1);
        let message = &messages[0];
        assert_eq!(u16_at(message, 0), 10);
        assert_eq!(usize::from(u16_at(message, 2)), message.len());
        assert_eq!(&message[4..8], &1_800_000_000u32.to_be_bytes());
        assert_eq!(&message[8..12], &7u32.to_be_bytes(), "records sent before");
        assert_eq!(&message[12..16], &42u32.to_be_bytes());
        assert_eq!(sequence, 10);
        // Template set: 2 templates of 12 fields.
        assert_eq!(u16_at(message, 16), 2);
        let template_len = usize::from(u16_at(message, 18));
        assert_eq!(template_len, 4 + 2 * (4 + 12 * 4));
        let v4 = 16 + template_len;
        assert_eq!(u16_at(message, v4), 256);
        let (v4_len, v6_len) = (record_len(&records[0]), record_len(&records[2]));
        // 4 and 16 bytes of addresses, 1 + 2 + 2 + 5 * 8 + 1 of the others,
        // then the name's length byte and "hotspot-shield".
        assert_eq!(
            (v4_len, v6_len),
            (4 * 2 + 46 + 1 + 14, 16 * 2 + 46 + 1 + 14)
        );
        assert_eq!(usize::from(u16_at(message, v4 + 2)), 4 + 2 * v4_len);
        let v6 = v4 + 4 + 2 * v4_len;
        assert_eq!(u16_at(message, v6), 257);
        assert_eq!(usize::from(u16_at(message, v6 + 2)), 4 + v6_len);
        assert_eq!(v6 + 4 + v6_len, message.len());
        // The first record's packets (after addresses, protocol, ports),
        // and its name: no padding.
        let first = v4 + 4;
        assert_eq!(&message[first + 13..first + 21], &3u64.to_be_bytes());
        assert_eq!(&message[first + 54..first + v4_len], b"\x0ehotspot-shield");
        // The templates give the name's length as variable.
        let name_field = 16 + 4 + 4 + 11 * 4;
        assert_eq!(&message[name_field..name_field + 4], &[0, 96, 255, 255]);
    }

    #[test]
    fn messages_stay_under_the_limit_and_sequence_numbers_count_records() {
        let records: Vec<FlowExport> = (0..100)
            .map(|i| record(&format!("175.45.176.{i}"), "198.51.100.1", 1))
            .collect();
        let mut sequence = 0;
        let messages = encode(&records, false, 0, 1, &mut sequence);
        assert!(messages.len() > 1);
        let mut expected_sequence = 0u32;
        for message in &messages {
            assert!(message.len() <= MAX_MESSAGE);
            assert_eq!(&message[8..12], &expected_sequence.to_be_bytes());
            let in_message =
                (message.len() - HEADER_LEN - SET_HEADER_LEN) / record_len(&records[0]);
            expected_sequence += in_message as u32;
        }
        assert_eq!(expected_sequence, 100);
        assert_eq!(sequence, 100);
    }

    /// A TCP collector listening on a free port, and a [`Collector`] for it.
    fn tcp_collector() -> (std::net::TcpListener, Collector) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let target: Target = format!("tcp://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        (listener, Collector::new(target))
    }

    /// One IPFIX message read from `stream`: its header, and the rest.
    fn read_message(stream: &mut TcpStream) -> ([u8; HEADER_LEN], Vec<u8>) {
        use std::io::Read;
        let mut header = [0u8; HEADER_LEN];
        stream.read_exact(&mut header).unwrap();
        let mut rest = vec![0; usize::from(u16_at(&header, 2)) - HEADER_LEN];
        stream.read_exact(&mut rest).unwrap();
        (header, rest)
    }

    #[test]
    fn tcp_collectors_get_templates_once_per_connection_and_a_down_one_is_a_failure() {
        let (listener, mut collector) = tcp_collector();
        let records = [record("175.45.176.1", "198.51.100.1", 3)];
        collector.send(&records, 1, 9).expect("first export");
        collector.send(&records, 2, 9).expect("second export");
        let (mut stream, _) = listener.accept().expect("the exporter connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (_, rest) = read_message(&mut stream);
        assert_eq!(u16_at(&rest, 0), TEMPLATE_SET, "templates lead the first");
        let (second_header, rest) = read_message(&mut stream);
        assert_eq!(
            u16_at(&rest, 0),
            TEMPLATE_V4,
            "no templates again on the connection"
        );
        assert_eq!(
            &second_header[8..12],
            &1u32.to_be_bytes(),
            "one record before"
        );

        // Nobody listening: a failure, not a panic or a hang.
        let closed = listener.local_addr().unwrap();
        drop(stream);
        drop(listener);
        let mut down = Collector::new(format!("tcp://{closed}").parse().unwrap());
        assert!(down.send(&records, 3, 9).is_err());
        // The records it could not deliver still advance the sequence
        // number, so the collector sees the gap once it is back.
        assert_eq!(down.sequence, 1);
        assert!(down.send(&records, 4, 9).is_err());
        assert_eq!(down.sequence, 2);
    }

    #[test]
    fn an_export_after_the_collector_closed_the_connection_goes_to_a_new_one() {
        let (listener, mut collector) = tcp_collector();
        let records = [record("175.45.176.1", "198.51.100.1", 3)];
        collector.send(&records, 1, 9).expect("first export");
        // The collector restarts: it reads what it got and closes the
        // connection (a FIN: writing into it still succeeds locally).
        let (mut first, _) = listener.accept().expect("the exporter connected");
        read_message(&mut first);
        drop(first);
        std::thread::sleep(Duration::from_millis(100));
        // The next export is not written into the closed connection (where
        // it would be lost, counted as sent) but to a new one.
        collector.send(&records, 2, 9).expect("second export");
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut second = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("no new connection: {error}"),
            }
        };
        second.set_nonblocking(false).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let (header, rest) = read_message(&mut second);
        assert_eq!(u16_at(&rest, 0), TEMPLATE_SET, "templates lead it");
        assert_eq!(&header[8..12], &1u32.to_be_bytes(), "one record before");
    }

    #[test]
    fn a_hanging_collector_loses_exports_past_its_queue_and_its_sequence_counts_them() {
        use std::os::fd::AsRawFd;
        // A listener whose accept queue one connection fills: the
        // exporter's connect waits (its SYN is dropped).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        // SAFETY: a valid listening socket; listen(2) again sets the backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let address = listener.local_addr().unwrap();
        let filler = TcpStream::connect(address).expect("fill the queue");
        let target: Target = format!("tcp://{address}").parse().unwrap();
        let mut exporter = Exporter::new(&[target], 9).expect("exporter");
        let export = |exporter: &mut Exporter, n: u8| {
            exporter.hand_over(
                vec![record(&format!("175.45.176.{n}"), "198.51.100.1", 1)],
                1,
            );
        };
        // The first export is taken by the thread, which waits on connect.
        export(&mut exporter, 0);
        std::thread::sleep(Duration::from_millis(200));
        // The next fill its queue; one more is dropped, at once.
        for n in 1..=QUEUED_EXPORTS as u8 {
            export(&mut exporter, n);
        }
        assert_eq!(exporter.stats().messages_failed, 0);
        export(&mut exporter, 99);
        assert_eq!(exporter.stats().messages_failed, 1);

        // The collector comes back (the queued connection accepted, room
        // for more): the thread's connect gets through on its SYN's retry.
        let (queued, _) = listener.accept().expect("the filler");
        drop((queued, filler));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 16) }, 0);
        let (mut stream, _) = listener.accept().expect("the exporter connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut read_sequence = || {
            let (header, _) = read_message(&mut stream);
            u32::from_be_bytes(header[8..12].try_into().unwrap())
        };
        let queued: Vec<u32> = (0..=QUEUED_EXPORTS).map(|_| read_sequence()).collect();
        assert_eq!(queued, (0..=QUEUED_EXPORTS as u32).collect::<Vec<_>>());
        // The next export's sequence number counts the dropped record.
        export(&mut exporter, 100);
        assert_eq!(read_sequence(), QUEUED_EXPORTS as u32 + 2);
        let stats = exporter.stats.clone();
        exporter.finish(Duration::from_secs(5));
        assert_eq!(
            stats.records.load(Ordering::Relaxed),
            QUEUED_EXPORTS as u64 + 2
        );
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn targets_parse_with_and_without_a_scheme() {
        let udp: Target = "127.0.0.1:4739".parse().unwrap();
        assert!(!udp.tcp);
        let tcp: Target = "tcp://collector.example:4739".parse().unwrap();
        assert!(tcp.tcp);
        assert_eq!(tcp.to_string(), "tcp://collector.example:4739");
        assert!("collector".parse::<Target>().is_err());
        assert!("host:0".parse::<Target>().is_err());
        // Not left to fail at the first export as a host name.
        assert_eq!(
            "999.1.1.1:4739".parse::<Target>().unwrap_err(),
            "999.1.1.1 is not an IPv4 address"
        );
        assert_eq!(
            "::1:4739".parse::<Target>().unwrap_err(),
            "an IPv6 address goes in brackets: [::1]:4739"
        );
        let bracketed: Target = "udp://[2001:db8::1]:4739".parse().unwrap();
        assert_eq!(bracketed.to_string(), "udp://[2001:db8::1]:4739");
        assert!("[2001:db8::zz]:4739".parse::<Target>().is_err());
        assert!("[fe80::1%2]:4739".parse::<Target>().is_ok());
        assert_eq!(observation_domain_of("a"), observation_domain_of("a"));
        assert_ne!(observation_domain_of("a"), observation_domain_of("b"));
    }
}
