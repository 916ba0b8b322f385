//! Capture files read as the Ethernet frames the XDP program sees.
//!
//! [`CaptureReader`] opens a classic pcap file (either byte order,
//! microsecond or nanosecond timestamps) or a pcapng file (any number of
//! sections and interfaces, each interface with its own link type and
//! timestamp resolution) and yields one [`CaptureFrame`] per captured packet.
//! The format is chosen by the magic number, not by the file name. The
//! pcap-file crate's parsers decode the records; this module only feeds them
//! the file in chunks, counts the bytes they consumed (for a progress bar)
//! and turns every packet into an Ethernet frame.
//!
//! # How the bytes change
//!
//! The program runs on Ethernet frames, so every packet becomes one. A
//! synthetic Ethernet header is 14 bytes: destination 02:00:00:00:00:02,
//! source 02:00:00:00:00:01, then a big-endian EtherType.
//!
//! | link type | frame the program sees | length change |
//! |---|---|---|
//! | ETHERNET (1) | the packet unchanged | none |
//! | RAW (101), IPV4 (228), IPV6 (229) | synthetic header + the IP packet; EtherType 0x0800 if the first nibble (IP version) is 4, 0x86DD if it is 6, otherwise 0x0000 (the program counts it as `other`) | +14 |
//! | LINUX_SLL (113) | synthetic header with the cooked header's protocol (offset 14) as EtherType + everything after the 16-byte cooked header | 16 bytes replaced by 14: -2 |
//! | LINUX_SLL2 (276) | synthetic header with the cooked header's protocol (offset 0) as EtherType + everything after the 20-byte cooked header | 20 bytes replaced by 14: -6 |
//!
//! After a cooked header the payload is copied as it is, so an 802.1Q tag
//! (protocol 0x8100 followed by the tag and the inner EtherType) stays a
//! valid VLAN-tagged Ethernet frame. Frame lengths, and so the report's
//! `bytes`, therefore always include a 14-byte Ethernet header and stay
//! comparable with live capture. [`CaptureFrame::original_len`] is changed
//! the same way, so it is the original length of the *Ethernet* frame.
//!
//! A cooked frame captured shorter than its cooked header has no byte of
//! its Ethernet frame known: it becomes an empty frame (the replay counts
//! it as a runt). Any other link type is an error naming file, frame and
//! link type.
//!
//! # Lengths, timestamps and errors
//!
//! - A frame captured shorter than it was (snaplen) is passed on as
//!   captured; [`CaptureFrame::is_partial`] tells the caller.
//! - Timestamps are Unix nanoseconds for every format: pcap seconds plus
//!   micro- or nanoseconds; pcapng units of the interface's `if_tsresol`
//!   (default microseconds, powers of ten or of two) plus its `if_tsoffset`;
//!   a time before 1970 or past 2262 (the limit of `i64` nanoseconds, met by
//!   nanoseconds written without `if_tsresol`) is an error naming the frame. A pcapng Simple Packet Block has no
//!   timestamp and gets the previous frame's; one before any timed frame
//!   of its file is an error naming it (it has no time to be counted at).
//! - Frames are numbered from 1 in each file, counting packets only (as
//!   Wireshark does). An error names the file and the frame being read;
//!   an error in a pcapng block between two packets names the next frame.
//! - A file that ends in the middle of its last record, as a capture stopped
//!   mid-write does, is read up to that record, which
//!   [`CaptureReader::cut_tail`] then names; a longer unreadable end
//!   ([`MAX_CUT_TAIL_LEN`]), a file header cut short, a corrupt record, or a
//!   file that is neither pcap nor pcapng is an error. After an error the
//!   iterator ends.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fmt,
    fs::File,
    io::{self, Read},
    iter::FusedIterator,
    path::{Path, PathBuf},
};

use pcap_file::{
    DataLink, Endianness, PcapError, PcapResult, TsResolution,
    pcap::PcapParser,
    pcapng::{Block, PcapNgParser, blocks::interface_description::InterfaceDescriptionOption},
};

/// Destination address of the synthetic Ethernet header.
pub const SYNTHETIC_DESTINATION_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Source address of the synthetic Ethernet header.
pub const SYNTHETIC_SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

const ETHERNET_HEADER_LEN: usize = 14;
const SLL_HEADER_LEN: usize = 16;
const SLL_PROTOCOL_OFFSET: usize = 14;
const SLL2_HEADER_LEN: usize = 20;
const SLL2_PROTOCOL_OFFSET: usize = 0;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86DD;
/// EtherType for an IP packet whose version is neither 4 nor 6.
const ETHERTYPE_UNKNOWN: u16 = 0x0000;

/// How much of the file is read at a time.
const READ_CHUNK_LEN: u64 = 64 * 1024;
/// A record (pcap packet or pcapng block) longer than this is taken as
/// corruption rather than buffered (libpcap's pcapng limit is the same).
const MAX_RECORD_LEN: usize = 16 * 1024 * 1024;
/// The longest record a file may end inside of and still be read up to it:
/// one packet at libpcap's largest snap length (262,144 bytes, tcpdump's
/// default) and its record's header and options. A capture stopped
/// mid-write (tcpdump killed, a disk filled) ends so; a file whose last
/// record claims more is taken as corrupt and refused.
const MAX_CUT_TAIL_LEN: usize = 262_144 + 1024;

const NANOS_PER_SECOND: i64 = 1_000_000_000;
/// pcapng's `if_tsresol` when an interface does not give one: microseconds.
const DEFAULT_PCAPNG_TIMESTAMP_RESOLUTION: u8 = 6;

/// One frame, as the XDP program will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureFrame {
    /// Position of the frame in its file, from 1.
    pub number: u64,
    /// Capture time in Unix nanoseconds.
    pub timestamp_ns: i64,
    /// An Ethernet frame (see the module doc for non-Ethernet captures).
    pub data: Vec<u8>,
    /// Length the Ethernet frame had on the wire; more than `data.len()`
    /// when the capture kept only part of it (snaplen).
    pub original_len: u32,
}

impl CaptureFrame {
    /// True when the capture kept fewer bytes than the frame had (snaplen).
    pub fn is_partial(&self) -> bool {
        self.data.len() < self.original_len as usize
    }
}

/// Container format of a capture file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic libpcap format.
    Pcap,
    /// pcapng.
    PcapNg,
}

impl fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pcap => "pcap",
            Self::PcapNg => "pcapng",
        })
    }
}

/// A link-layer header type (the LINKTYPE_* number of tcpdump.org).
/// Displays as number and name, e.g. `105 (IEEE 802.11)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkType(pub u32);

impl LinkType {
    /// Ethernet frames, passed on unchanged.
    pub const ETHERNET: Self = Self(1);
    /// IPv4 or IPv6 packets without a link-layer header.
    pub const RAW: Self = Self(101);
    /// Linux cooked capture v1 (16-byte header).
    pub const LINUX_SLL: Self = Self(113);
    /// IPv4 packets without a link-layer header.
    pub const IPV4: Self = Self(228);
    /// IPv6 packets without a link-layer header.
    pub const IPV6: Self = Self(229);
    /// Linux cooked capture v2 (20-byte header).
    pub const LINUX_SLL2: Self = Self(276);

    /// Whether frames of this link type can be turned into Ethernet frames.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Self::ETHERNET
                | Self::RAW
                | Self::IPV4
                | Self::IPV6
                | Self::LINUX_SLL
                | Self::LINUX_SLL2
        )
    }

    /// A readable name: our own for common types, otherwise pcap-file's
    /// constant name, or `unknown`.
    pub fn name(self) -> String {
        let name = match self.0 {
            0 => "BSD loopback",
            1 => "Ethernet",
            9 => "PPP",
            101 => "raw IP",
            105 => "IEEE 802.11",
            108 => "OpenBSD loopback",
            113 => "Linux cooked SLL",
            127 => "IEEE 802.11 radiotap",
            228 => "raw IPv4",
            229 => "raw IPv6",
            276 => "Linux cooked SLL2",
            number => {
                return match DataLink::from(number) {
                    DataLink::Unknown(_) => "unknown".to_string(),
                    known => format!("{known:?}"),
                };
            }
        };
        name.to_string()
    }
}

impl fmt::Display for LinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// Why a capture cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file cannot be opened or its first bytes cannot be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Open { file: PathBuf, source: io::Error },
    /// The magic number is neither pcap's nor pcapng's.
    #[error("{}: neither pcap nor pcapng ({})", .file.display(), describe_start(.start))]
    NotACapture {
        file: PathBuf,
        /// The first bytes of the file (up to 4).
        start: Vec<u8>,
    },
    /// The pcap file header or the first pcapng section header is bad.
    #[error("{}: {format} file header: {problem}", .file.display())]
    Header {
        file: PathBuf,
        format: CaptureFormat,
        problem: ReadProblem,
    },
    /// A frame, or the records before it, cannot be read or converted.
    #[error("{}: frame {frame}: {problem}", .file.display())]
    Frame {
        file: PathBuf,
        frame: u64,
        problem: ReadProblem,
    },
}

/// What went wrong while reading a header or a frame.
#[derive(Debug)]
pub enum ReadProblem {
    /// The file ends in the middle of a record.
    Truncated,
    /// A record claims more than 16 MiB (corruption, as for libpcap).
    RecordTooLarge,
    /// The operating system could not read the file.
    Io(io::Error),
    /// pcap-file or this module refused a record.
    Corrupt(String),
    /// The frame's link type cannot become Ethernet.
    UnsupportedLinkType(LinkType),
    /// A pcapng Simple Packet Block, which has no timestamp, comes before
    /// any packet that has one.
    UntimedFirst,
    /// A pcapng timestamp, in its interface's units and offset, is before
    /// 1970 or past 2262.
    TimestampOutOfRange {
        units: u64,
        /// `if_tsresol`.
        resolution: u8,
        offset_seconds: i64,
    },
}

impl fmt::Display for ReadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("the file ends in the middle of a record (cut short?)"),
            Self::RecordTooLarge => write!(
                f,
                "a record is longer than {} MiB; the file is probably corrupt",
                MAX_RECORD_LEN / (1024 * 1024)
            ),
            Self::Io(error) => write!(f, "read error: {error}"),
            Self::Corrupt(reason) => write!(f, "corrupt record: {reason}"),
            Self::UnsupportedLinkType(link_type) => write!(
                f,
                "link type {link_type} is not supported (supported: Ethernet, raw IP, Linux cooked SLL/SLL2)"
            ),
            Self::UntimedFirst => f.write_str(
                "a Simple Packet Block carries no time and no timed packet comes before it in the file",
            ),
            Self::TimestampOutOfRange {
                units,
                resolution,
                offset_seconds,
            } => {
                let base = if resolution & 0x80 != 0 { 2 } else { 10 };
                let exponent = resolution & 0x7f;
                write!(
                    f,
                    "timestamp outside 1970 to 2262 ({units} units of {base}^-{exponent} s, offset {offset_seconds} s)"
                )?;
                if *resolution == DEFAULT_PCAPNG_TIMESTAMP_RESOLUTION && *offset_seconds >= 0 {
                    f.write_str("; nanoseconds written without if_tsresol 9?")?;
                }
                Ok(())
            }
        }
    }
}

fn describe_start(start: &[u8]) -> String {
    if start.is_empty() {
        return "the file is empty".to_string();
    }
    let hex: Vec<String> = start.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("it starts with {}", hex.join(" "))
}

/// Reads the frames of one capture file; an iterator over
/// `Result<CaptureFrame, CaptureError>` that ends after the first error.
pub struct CaptureReader {
    path: PathBuf,
    file_len: u64,
    input: ChunkedInput,
    format: FormatState,
    link_types: Vec<LinkType>,
    frames_read: u64,
    cut_tail: Option<CutTail>,
    finished: bool,
}

/// The end of a capture stopped mid-write: part of one record, not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutTail {
    /// Frames read before it (the record may be a packet's, or a pcapng
    /// block of another kind, such as the statistics written at close).
    pub frames_before: u64,
    /// Bytes of the incomplete record.
    pub bytes: u64,
}

/// What each format needs to remember between records.
enum FormatState {
    Pcap {
        parser: PcapParser,
        link_type: LinkType,
        nanos_per_fraction_unit: i64,
    },
    PcapNg {
        parser: PcapNgParser,
        /// Interfaces of the current section, by interface id.
        interfaces: Vec<PcapNgInterface>,
        /// Given to Simple Packet Blocks, which carry no timestamp; `None`
        /// before the file's first timed packet.
        previous_timestamp_ns: Option<i64>,
    },
}

/// What a pcapng Interface Description Block says about its packets.
struct PcapNgInterface {
    link_type: LinkType,
    /// `if_tsresol`: bit 7 clear: 10^-n seconds per unit, set: 2^-n.
    timestamp_resolution: u8,
    /// `if_tsoffset`: seconds added to every timestamp.
    timestamp_offset_seconds: i64,
    /// Bytes kept of each packet; 0 for no limit.
    snaplen: u32,
}

impl PcapNgInterface {
    /// Unix nanoseconds of a packet's timestamp `units`; a time before
    /// 1970 or past what `i64` nanoseconds hold (2262) is refused.
    fn timestamp_ns(&self, units: u64) -> Result<i64, ReadProblem> {
        let exponent = u32::from(self.timestamp_resolution & 0x7f);
        let wide_units = i128::from(units);
        let since_offset = if self.timestamp_resolution & 0x80 != 0 {
            (wide_units * i128::from(NANOS_PER_SECOND)) >> exponent
        } else if exponent <= 9 {
            wide_units * 10_i128.pow(9 - exponent)
        } else {
            10_i128
                .checked_pow(exponent - 9)
                .map_or(0, |units_per_ns| wide_units / units_per_ns)
        };
        let nanos =
            since_offset + i128::from(self.timestamp_offset_seconds) * i128::from(NANOS_PER_SECOND);
        i64::try_from(nanos).ok().filter(|nanos| *nanos >= 0).ok_or(
            ReadProblem::TimestampOutOfRange {
                units,
                resolution: self.timestamp_resolution,
                offset_seconds: self.timestamp_offset_seconds,
            },
        )
    }
}

/// One pcapng block, reduced to what the reader uses.
enum PcapNgRecord {
    SectionStart,
    Interface(PcapNgInterface),
    Packet {
        interface_id: u32,
        timestamp_units: u64,
        original_len: u32,
        data: Vec<u8>,
    },
    SimplePacket {
        original_len: u32,
        data: Vec<u8>,
    },
    Other,
}

impl PcapNgRecord {
    /// `endianness` is the section's, needed to fix a Packet Block's timestamp.
    fn from_block(block: Block<'_>, endianness: Endianness) -> Self {
        match block {
            Block::SectionHeader(_) => Self::SectionStart,
            Block::InterfaceDescription(interface) => {
                let mut described = PcapNgInterface {
                    link_type: LinkType(u32::from(interface.linktype)),
                    timestamp_resolution: DEFAULT_PCAPNG_TIMESTAMP_RESOLUTION,
                    timestamp_offset_seconds: 0,
                    snaplen: interface.snaplen,
                };
                for option in &interface.options {
                    match option {
                        InterfaceDescriptionOption::IfTsResol(resolution) => {
                            described.timestamp_resolution = *resolution;
                        }
                        // The specification makes the offset signed.
                        InterfaceDescriptionOption::IfTsOffset(offset) => {
                            described.timestamp_offset_seconds = *offset as i64;
                        }
                        _ => {}
                    }
                }
                Self::Interface(described)
            }
            Block::EnhancedPacket(packet) => Self::Packet {
                interface_id: packet.interface_id,
                // pcap-file stores the raw units as nanoseconds; undo that.
                timestamp_units: u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX),
                original_len: packet.original_len,
                data: packet.data.into_owned(),
            },
            // pcap-file reads the timestamp's two 32-bit halves (high
            // first) as one u64, which swaps them in little-endian sections.
            Block::Packet(packet) => Self::Packet {
                interface_id: u32::from(packet.interface_id),
                timestamp_units: match endianness {
                    Endianness::Big => packet.timestamp,
                    Endianness::Little => packet.timestamp.rotate_left(32),
                },
                original_len: packet.original_len,
                data: packet.data.into_owned(),
            },
            // The block's data includes its padding to 4 bytes; what was
            // captured is cut to the interface's snaplen when the packet is read.
            Block::SimplePacket(packet) => Self::SimplePacket {
                original_len: packet.original_len,
                data: packet.data.into_owned(),
            },
            _ => Self::Other,
        }
    }
}

/// A packet as stored, before it becomes an Ethernet frame.
struct StoredPacket {
    link_type: LinkType,
    timestamp_ns: i64,
    original_len: u32,
    data: Vec<u8>,
}

impl CaptureReader {
    /// Opens a capture, detects pcap or pcapng from its magic number and
    /// reads its file header.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file_error = |source| CaptureError::Open {
            file: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(file_error)?;
        let file_len = file.metadata().map_err(file_error)?.len();
        let mut input = ChunkedInput::new(file);

        let start = input.first_bytes(4).map_err(file_error)?;
        let format = match start {
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1] => CaptureFormat::Pcap,
            [0x0a, 0x0d, 0x0d, 0x0a] => CaptureFormat::PcapNg,
            other => {
                return Err(CaptureError::NotACapture {
                    file: path.to_path_buf(),
                    start: other.to_vec(),
                });
            }
        };

        let header_error = |problem| CaptureError::Header {
            file: path.to_path_buf(),
            format,
            problem,
        };
        let (state, link_types) = match format {
            CaptureFormat::Pcap => {
                let parser = input.file_header(PcapParser::new).map_err(header_error)?;
                let header = parser.header();
                let link_type = LinkType(u32::from(header.datalink));
                let nanos_per_fraction_unit = match header.ts_resolution {
                    TsResolution::MicroSecond => 1_000,
                    TsResolution::NanoSecond => 1,
                };
                let state = FormatState::Pcap {
                    parser,
                    link_type,
                    nanos_per_fraction_unit,
                };
                (state, vec![link_type])
            }
            CaptureFormat::PcapNg => {
                let parser = input
                    .file_header(|bytes| {
                        // The section header names its own byte order.
                        accepting_unended_options(bytes, Endianness::Little, PcapNgParser::new)
                    })
                    .map_err(header_error)?;
                let state = FormatState::PcapNg {
                    parser,
                    interfaces: Vec::new(),
                    previous_timestamp_ns: None,
                };
                (state, Vec::new())
            }
        };

        Ok(Self {
            path: path.to_path_buf(),
            file_len,
            input,
            format: state,
            link_types,
            frames_read: 0,
            cut_tail: None,
            finished: false,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// pcap or pcapng.
    pub fn format(&self) -> CaptureFormat {
        match self.format {
            FormatState::Pcap { .. } => CaptureFormat::Pcap,
            FormatState::PcapNg { .. } => CaptureFormat::PcapNg,
        }
    }

    /// The link types met so far, in order of appearance: for pcap the
    /// file's one; for pcapng those of the interfaces described so far
    /// (complete once the first frame is read in the usual files, whose
    /// interface blocks come first).
    pub fn link_types(&self) -> &[LinkType] {
        &self.link_types
    }

    /// How far into the file the reader has parsed, in bytes; equals
    /// [`Self::file_len`] at the end of a regular file.
    pub fn bytes_read(&self) -> u64 {
        self.input.position
    }

    /// Size of the file when it was opened (0 for a pipe).
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The incomplete record the file ends with, once the reader has reached
    /// it (the frames before it were read; see [`MAX_CUT_TAIL_LEN`]).
    pub fn cut_tail(&self) -> Option<CutTail> {
        self.cut_tail
    }

    /// Reads the next frame; `None` at the end of the file, also when the
    /// file ends in a short incomplete record ([`Self::cut_tail`]).
    fn read_frame(&mut self) -> Result<Option<CaptureFrame>, CaptureError> {
        let number = self.frames_read + 1;
        let packet = match self.read_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(None),
            Err(problem @ (ReadProblem::Truncated | ReadProblem::RecordTooLarge)) => {
                return self.unread_record(number, problem);
            }
            Err(problem) => return Err(self.frame_error(number, problem)),
        };
        let (data, original_len) =
            into_ethernet(packet.link_type, packet.data, packet.original_len)
                .map_err(|problem| self.frame_error(number, problem))?;
        self.frames_read = number;
        Ok(Some(CaptureFrame {
            number,
            timestamp_ns: packet.timestamp_ns,
            data,
            original_len,
        }))
    }

    /// What to make of a record pcap-file asked more bytes for than the
    /// file has (`Truncated`) or than a record may hold (`RecordTooLarge`),
    /// by its own length field: whole, it is corrupt; running past the end
    /// of the file by no more than a record of the largest snap length, it
    /// is the end of a capture stopped mid-write, whose frames before it
    /// are read ([`Self::cut_tail`]); otherwise `problem` stands.
    fn unread_record(
        &mut self,
        number: u64,
        problem: ReadProblem,
    ) -> Result<Option<CaptureFrame>, CaptureError> {
        let tail = self.input.unparsed();
        let at = self.input.position;
        let at_end = matches!(problem, ReadProblem::Truncated);
        let problem = match claimed_record_len(tail, &self.format) {
            Claim::Length(len) if len <= tail.len() as u64 => ReadProblem::Corrupt(format!(
                "the record at byte {at} is whole by its length field ({len} bytes), but what it holds claims more"
            )),
            Claim::BadByteOrder => ReadProblem::Corrupt(format!(
                "the section header at byte {at} has no valid byte-order magic"
            )),
            Claim::HeaderCut if at_end => return Ok(self.end_cut(number)),
            Claim::Length(len) if at_end && len <= MAX_CUT_TAIL_LEN as u64 => {
                return Ok(self.end_cut(number));
            }
            Claim::Length(len) if at_end => ReadProblem::Corrupt(format!(
                "the record at byte {at} claims {len} bytes, more than one of the largest snap length, and the file ends {} bytes into it",
                tail.len()
            )),
            _ => problem,
        };
        Err(self.frame_error(number, problem))
    }

    /// Ends the frames at a record cut by the end of the file.
    fn end_cut(&mut self, number: u64) -> Option<CaptureFrame> {
        self.cut_tail = Some(CutTail {
            frames_before: number - 1,
            bytes: self.input.unparsed().len() as u64,
        });
        None
    }

    fn frame_error(&self, frame: u64, problem: ReadProblem) -> CaptureError {
        CaptureError::Frame {
            file: self.path.clone(),
            frame,
            problem,
        }
    }

    /// Reads records up to the next packet; `None` at the end of the file.
    fn read_packet(&mut self) -> Result<Option<StoredPacket>, ReadProblem> {
        match &mut self.format {
            FormatState::Pcap {
                parser,
                link_type,
                nanos_per_fraction_unit,
            } => {
                // The raw packet, because pcap-file refuses packets whose
                // original length exceeds the snaplen: exactly the frames
                // cut by the snaplen we want to pass on.
                let Some(packet) = self.input.next_record(|bytes| {
                    parser
                        .next_raw_packet(bytes)
                        .map(|(rest, packet)| (rest, packet.into_owned()))
                })?
                else {
                    return Ok(None);
                };
                let fraction_ns = i64::from(packet.ts_frac) * *nanos_per_fraction_unit;
                if fraction_ns >= NANOS_PER_SECOND {
                    return Err(ReadProblem::Corrupt(format!(
                        "the timestamp's fraction of a second ({}) is a second or more",
                        packet.ts_frac
                    )));
                }
                Ok(Some(StoredPacket {
                    link_type: *link_type,
                    timestamp_ns: i64::from(packet.ts_sec) * NANOS_PER_SECOND + fraction_ns,
                    original_len: packet.orig_len,
                    data: packet.data.into_owned(),
                }))
            }
            FormatState::PcapNg {
                parser,
                interfaces,
                previous_timestamp_ns,
            } => loop {
                let Some(record) = self.input.next_record(|bytes| {
                    let section = parser.section().endianness;
                    accepting_unended_options(bytes, section, |block| {
                        parser.next_block(block).map(|(rest, block)| {
                            let endianness = parser.section().endianness;
                            (rest, PcapNgRecord::from_block(block, endianness))
                        })
                    })
                })?
                else {
                    return Ok(None);
                };
                let (interface, timestamp_ns, original_len, data) = match record {
                    PcapNgRecord::SectionStart => {
                        interfaces.clear();
                        continue;
                    }
                    PcapNgRecord::Interface(interface) => {
                        if !self.link_types.contains(&interface.link_type) {
                            self.link_types.push(interface.link_type);
                        }
                        interfaces.push(interface);
                        continue;
                    }
                    PcapNgRecord::Other => continue,
                    PcapNgRecord::Packet {
                        interface_id,
                        timestamp_units,
                        original_len,
                        data,
                    } => {
                        let interface = described_interface(interfaces, interface_id)?;
                        let timestamp_ns = interface.timestamp_ns(timestamp_units)?;
                        (interface, timestamp_ns, original_len, data)
                    }
                    PcapNgRecord::SimplePacket {
                        original_len,
                        mut data,
                    } => {
                        let interface = described_interface(interfaces, 0)?;
                        // Its length is not stored: the original length,
                        // or the snaplen if that is less (the rest is padding).
                        let mut captured = original_len as usize;
                        if interface.snaplen > 0 {
                            captured = captured.min(interface.snaplen as usize);
                        }
                        data.truncate(captured);
                        let timestamp_ns =
                            previous_timestamp_ns.ok_or(ReadProblem::UntimedFirst)?;
                        (interface, timestamp_ns, original_len, data)
                    }
                };
                *previous_timestamp_ns = Some(timestamp_ns);
                return Ok(Some(StoredPacket {
                    link_type: interface.link_type,
                    timestamp_ns,
                    original_len,
                    data,
                }));
            },
        }
    }
}

/// What pcap-file says of an option list that ends with its block rather
/// than with an end-of-options option.
const UNENDED_OPTIONS: &str = "Invalid option";

/// Runs `parse` (a pcap-file pcapng block parser) on `bytes`. The pcapng
/// specification has readers accept an option list that ends with its block
/// without an end-of-options option; pcap-file refuses one, so such a block
/// is parsed again from a copy with the option added. `section` is the byte
/// order of the section (a section header names its own).
fn accepting_unended_options<T>(
    bytes: &[u8],
    section: Endianness,
    mut parse: impl FnMut(&[u8]) -> PcapResult<(&[u8], T)>,
) -> PcapResult<(&[u8], T)> {
    match parse(bytes) {
        Err(PcapError::InvalidField(UNENDED_OPTIONS)) => {
            let (block, len) = with_end_of_options(bytes, section)
                .ok_or(PcapError::InvalidField(UNENDED_OPTIONS))?;
            let (_, parsed) = parse(&block)?;
            Ok((&bytes[len..], parsed))
        }
        other => other,
    }
}

/// The whole pcapng block `bytes` starts with, with 4 zero bytes (an
/// end-of-options option) added at the end of its body and both its length
/// fields grown by 4, and the block's length in `bytes`.
fn with_end_of_options(bytes: &[u8], section: Endianness) -> Option<(Vec<u8>, usize)> {
    let BlockHeader::Whole { endianness, len } = pcapng_block_header(bytes, section) else {
        return None;
    };
    let len = len as usize;
    if len < 12 || bytes.len() < len {
        return None;
    }
    let grown = u32::try_from(len + 4).ok()?;
    let grown = match endianness {
        Endianness::Big => grown.to_be_bytes(),
        Endianness::Little => grown.to_le_bytes(),
    };
    let mut block = Vec::with_capacity(len + 4);
    block.extend_from_slice(&bytes[..4]);
    block.extend_from_slice(&grown);
    block.extend_from_slice(&bytes[8..len - 4]);
    block.extend_from_slice(&[0; 4]);
    block.extend_from_slice(&grown);
    Some((block, len))
}

/// What the start of a record says of its length.
enum Claim {
    /// Its header is not all there.
    HeaderCut,
    /// Its whole length, header included.
    Length(u64),
    /// A pcapng section header whose byte-order magic is neither.
    BadByteOrder,
}

/// What the record at the start of `bytes` claims to hold.
fn claimed_record_len(bytes: &[u8], format: &FormatState) -> Claim {
    match format {
        // A 16-byte header whose third field is the captured length.
        FormatState::Pcap { parser, .. } => match u32_in(bytes, 8, parser.header().endianness) {
            Some(captured) => Claim::Length(16 + u64::from(captured)),
            None => Claim::HeaderCut,
        },
        FormatState::PcapNg { parser, .. } => {
            match pcapng_block_header(bytes, parser.section().endianness) {
                BlockHeader::Cut => Claim::HeaderCut,
                BlockHeader::BadByteOrder => Claim::BadByteOrder,
                BlockHeader::Whole { len, .. } => Claim::Length(u64::from(len)),
            }
        }
    }
}

/// The start of a pcapng block.
enum BlockHeader {
    /// Not all there.
    Cut,
    /// A section header block whose byte-order magic is neither.
    BadByteOrder,
    /// Its byte order and total length.
    Whole { endianness: Endianness, len: u32 },
}

/// Reads a pcapng block's header at the start of `bytes`: a section header
/// block gives its own byte order, any other block has `section`'s.
fn pcapng_block_header(bytes: &[u8], section: Endianness) -> BlockHeader {
    const SECTION_HEADER: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
    let endianness = if bytes.get(..4) == Some(&SECTION_HEADER[..]) {
        match bytes.get(8..12) {
            Some([0x1a, 0x2b, 0x3c, 0x4d]) => Endianness::Big,
            Some([0x4d, 0x3c, 0x2b, 0x1a]) => Endianness::Little,
            Some(_) => return BlockHeader::BadByteOrder,
            None => return BlockHeader::Cut,
        }
    } else {
        section
    };
    match u32_in(bytes, 4, endianness) {
        Some(len) => BlockHeader::Whole { endianness, len },
        None => BlockHeader::Cut,
    }
}

/// The 32-bit field at `at` in `bytes`, if it is all there.
fn u32_in(bytes: &[u8], at: usize, endianness: Endianness) -> Option<u32> {
    let field: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(match endianness {
        Endianness::Big => u32::from_be_bytes(field),
        Endianness::Little => u32::from_le_bytes(field),
    })
}

fn described_interface(
    interfaces: &[PcapNgInterface],
    interface_id: u32,
) -> Result<&PcapNgInterface, ReadProblem> {
    interfaces.get(interface_id as usize).ok_or_else(|| {
        ReadProblem::Corrupt(format!(
            "packet of interface {interface_id}, but the section describes {} interface(s)",
            interfaces.len()
        ))
    })
}

impl Iterator for CaptureReader {
    type Item = Result<CaptureFrame, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let result = self.read_frame().transpose();
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
        }
        result
    }
}

impl FusedIterator for CaptureReader {}

/// Turns a stored packet into the Ethernet frame the program sees and its
/// original length into the original length of that frame (module doc).
fn into_ethernet(
    link_type: LinkType,
    data: Vec<u8>,
    original_len: u32,
) -> Result<(Vec<u8>, u32), ReadProblem> {
    let (link_header_len, ether_type) = match link_type {
        LinkType::ETHERNET => return Ok((data, original_len)),
        LinkType::RAW | LinkType::IPV4 | LinkType::IPV6 => (0, Some(ip_ether_type(&data))),
        LinkType::LINUX_SLL => (
            SLL_HEADER_LEN,
            cooked_protocol(&data, SLL_HEADER_LEN, SLL_PROTOCOL_OFFSET),
        ),
        LinkType::LINUX_SLL2 => (
            SLL2_HEADER_LEN,
            cooked_protocol(&data, SLL2_HEADER_LEN, SLL2_PROTOCOL_OFFSET),
        ),
        unsupported => return Err(ReadProblem::UnsupportedLinkType(unsupported)),
    };
    let frame_original_len = original_len
        .saturating_sub(link_header_len as u32)
        .saturating_add(ETHERNET_HEADER_LEN as u32);
    let Some(ether_type) = ether_type else {
        // Not even the link header was captured: no byte of the Ethernet
        // frame is known, and the replay counts it as a runt.
        return Ok((Vec::new(), frame_original_len));
    };
    let payload = &data[link_header_len..];
    let mut frame = Vec::with_capacity(ETHERNET_HEADER_LEN + payload.len());
    frame.extend_from_slice(&SYNTHETIC_DESTINATION_MAC);
    frame.extend_from_slice(&SYNTHETIC_SOURCE_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok((frame, frame_original_len))
}

/// EtherType for an IP packet without link header, from its version nibble.
fn ip_ether_type(packet: &[u8]) -> u16 {
    match packet.first().map(|first| first >> 4) {
        Some(4) => ETHERTYPE_IPV4,
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_UNKNOWN,
    }
}

/// The protocol (an EtherType) of a Linux cooked header; `None` when the
/// frame is shorter than the header.
fn cooked_protocol(data: &[u8], header_len: usize, protocol_offset: usize) -> Option<u16> {
    if data.len() < header_len {
        return None;
    }
    Some(u16::from_be_bytes([
        data[protocol_offset],
        data[protocol_offset + 1],
    ]))
}

/// The file read in chunks: pcap-file's parsers see the bytes not parsed yet,
/// and `position` counts the bytes they consumed.
struct ChunkedInput {
    file: File,
    /// Bytes read from the file; `buffer[parsed..]` are not parsed yet.
    buffer: Vec<u8>,
    parsed: usize,
    /// File offset of `buffer[parsed]`.
    position: u64,
    end_of_file: bool,
}

impl ChunkedInput {
    fn new(file: File) -> Self {
        Self {
            file,
            buffer: Vec::new(),
            parsed: 0,
            position: 0,
            end_of_file: false,
        }
    }

    fn unparsed(&self) -> &[u8] {
        &self.buffer[self.parsed..]
    }

    /// Up to `count` bytes from the current position, without consuming them.
    fn first_bytes(&mut self, count: usize) -> io::Result<&[u8]> {
        while self.unparsed().len() < count && !self.end_of_file {
            self.read_chunk()?;
        }
        let unparsed = self.unparsed();
        Ok(&unparsed[..count.min(unparsed.len())])
    }

    /// Runs a pcap-file parser on the unparsed bytes, reading more while it
    /// asks for more. `None` when the file ends cleanly between records.
    fn next_record<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> PcapResult<(&[u8], T)>,
    ) -> Result<Option<T>, ReadProblem> {
        loop {
            let unparsed = &self.buffer[self.parsed..];
            if !unparsed.is_empty() {
                match parse(unparsed) {
                    Ok((rest, record)) => {
                        let consumed = unparsed.len() - rest.len();
                        self.parsed += consumed;
                        self.position += consumed as u64;
                        return Ok(Some(record));
                    }
                    Err(PcapError::IncompleteBuffer) => {}
                    Err(error) => return Err(ReadProblem::Corrupt(error.to_string())),
                }
                if unparsed.len() >= MAX_RECORD_LEN {
                    return Err(ReadProblem::RecordTooLarge);
                }
            }
            if self.end_of_file {
                return if unparsed.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadProblem::Truncated)
                };
            }
            self.read_chunk().map_err(ReadProblem::Io)?;
        }
    }

    /// Runs a pcap-file header parser; the header must be there.
    fn file_header<T>(
        &mut self,
        parse: impl FnMut(&[u8]) -> PcapResult<(&[u8], T)>,
    ) -> Result<T, ReadProblem> {
        self.next_record(parse)?.ok_or(ReadProblem::Truncated)
    }

    /// Drops the parsed bytes and appends the next chunk of the file.
    fn read_chunk(&mut self) -> io::Result<()> {
        self.buffer.drain(..self.parsed);
        self.parsed = 0;
        let read = (&mut self.file)
            .take(READ_CHUNK_LEN)
            .read_to_end(&mut self.buffer)?;
        self.end_of_file = read == 0;
        Ok(())
    }
}

/// The frames of several capture files in time order, as `mergecap`
/// merges them: the earliest next frame of any file comes first, a tie goes
/// to the file given first, and each file's own order is kept (a file whose
/// frames go back in time is read as it is). Rotated or per-interface
/// captures can so be given in any order. Yields each frame with the index
/// of its file; ends after the first error.
pub struct TimeOrderedFrames {
    readers: Vec<CaptureReader>,
    /// The next frame of each file, read ahead.
    pending: Vec<Option<CaptureFrame>>,
    /// (time, file) of every pending frame; the earliest on top.
    order: BinaryHeap<Reverse<(i64, usize)>>,
    /// The file whose frame was handed out last, read ahead on the next
    /// call (so an error in it comes after the frame before it).
    refill: Option<usize>,
    started: bool,
    finished: bool,
}

impl TimeOrderedFrames {
    pub fn new(readers: Vec<CaptureReader>) -> Self {
        Self {
            pending: readers.iter().map(|_| None).collect(),
            readers,
            order: BinaryHeap::new(),
            refill: None,
            started: false,
            finished: false,
        }
    }

    /// Bytes parsed so far over all files.
    pub fn bytes_read(&self) -> u64 {
        self.readers.iter().map(CaptureReader::bytes_read).sum()
    }

    /// The files (by index) read up to an incomplete last record, and that
    /// record; complete once the iterator has ended.
    pub fn cut_tails(&self) -> impl Iterator<Item = (usize, CutTail)> + '_ {
        self.readers
            .iter()
            .enumerate()
            .filter_map(|(file, reader)| Some((file, reader.cut_tail()?)))
    }

    fn read_ahead(&mut self, file: usize) -> Result<(), CaptureError> {
        if let Some(frame) = self.readers[file].next().transpose()? {
            self.order.push(Reverse((frame.timestamp_ns, file)));
            self.pending[file] = Some(frame);
        }
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<(usize, CaptureFrame)>, CaptureError> {
        if !self.started {
            self.started = true;
            for file in 0..self.readers.len() {
                self.read_ahead(file)?;
            }
        }
        if let Some(file) = self.refill.take() {
            self.read_ahead(file)?;
        }
        while let Some(Reverse((_, file))) = self.order.pop() {
            if let Some(frame) = self.pending[file].take() {
                self.refill = Some(file);
                return Ok(Some((file, frame)));
            }
        }
        Ok(None)
    }
}

impl Iterator for TimeOrderedFrames {
    type Item = Result<(usize, CaptureFrame), CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let result = self.next_frame().transpose();
        if !matches!(result, Some(Ok(_))) {
            self.finished = true;
        }
        result
    }
}

impl FusedIterator for TimeOrderedFrames {}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use pcap_file::{
        pcap::{PcapHeader, PcapPacket, PcapWriter, RawPcapPacket},
        pcapng::{
            PcapNgWriter,
            blocks::{
                enhanced_packet::EnhancedPacketBlock,
                interface_description::InterfaceDescriptionBlock,
                section_header::SectionHeaderBlock, simple_packet::SimplePacketBlock,
            },
        },
    };

    use super::*;

    /// The nDPI captures described in /work/shared/data/pcap/README.md;
    /// outside the repository, so tests using them skip when it is missing.
    const SHARED_CAPTURES: &str = "/work/shared/data/pcap";

    use crate::test_support::TempFolder;

    /// A 20-byte IPv4 header (192.0.2.1 -> 198.51.100.2, UDP) and `payload_len` zeros.
    fn ipv4_packet(payload_len: usize) -> Vec<u8> {
        let total_len = u16::try_from(20 + payload_len).unwrap();
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        packet[2..4].copy_from_slice(&total_len.to_be_bytes());
        packet.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
        packet.resize(20 + payload_len, 0);
        packet
    }

    /// A 40-byte IPv6 header (no next header) and 8 zeros.
    fn ipv6_packet() -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0, 0, 8, 59, 64];
        packet.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        packet.resize(48, 0);
        packet
    }

    /// The frame the program should see: synthetic header and `payload`.
    fn synthetic_frame(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = SYNTHETIC_DESTINATION_MAC.to_vec();
        frame.extend_from_slice(&SYNTHETIC_SOURCE_MAC);
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// A real-looking Ethernet frame around `payload`.
    fn ethernet_frame(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef,
        ];
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// One packet to write: time since the epoch, original length, data.
    struct Packet {
        time: Duration,
        original_len: u32,
        data: Vec<u8>,
    }

    impl Packet {
        fn whole(time: Duration, data: Vec<u8>) -> Self {
            let original_len = u32::try_from(data.len()).unwrap();
            Self {
                time,
                original_len,
                data,
            }
        }
    }

    fn write_pcap(path: &Path, header: PcapHeader, packets: &[Packet]) {
        let mut writer = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
        for packet in packets {
            writer
                .write_packet(&PcapPacket::new(
                    packet.time,
                    packet.original_len,
                    &packet.data,
                ))
                .unwrap();
        }
    }

    fn pcap_header(datalink: DataLink) -> PcapHeader {
        PcapHeader {
            datalink,
            endianness: Endianness::Little,
            ..PcapHeader::default()
        }
    }

    fn read_all(path: &Path) -> Vec<CaptureFrame> {
        CaptureReader::open(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// 2023-11-14T22:13:20Z plus `nanos`.
    fn time(nanos: u32) -> Duration {
        Duration::new(1_700_000_000, nanos)
    }

    const TIME_NS: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn pcap_ethernet_frames_pass_unchanged() {
        let folder = TempFolder::new("ethernet");
        let path = folder.file("ethernet.pcap");
        let first = ethernet_frame(0x0800, &ipv4_packet(10));
        let second = ethernet_frame(0x86DD, &ipv6_packet());
        write_pcap(
            &path,
            pcap_header(DataLink::ETHERNET),
            &[
                Packet::whole(time(123_456_000), first.clone()),
                Packet::whole(time(999_999_000), second.clone()),
            ],
        );

        let mut reader = CaptureReader::open(&path).unwrap();
        assert_eq!(reader.format(), CaptureFormat::Pcap);
        assert_eq!(reader.link_types(), [LinkType::ETHERNET]);
        assert_eq!(reader.bytes_read(), 24, "the file header is parsed");
        assert_eq!(reader.file_len(), std::fs::metadata(&path).unwrap().len());
        let frames: Vec<CaptureFrame> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(reader.bytes_read(), reader.file_len());
        assert_eq!(
            frames,
            [
                CaptureFrame {
                    number: 1,
                    timestamp_ns: TIME_NS + 123_456_000,
                    original_len: u32::try_from(first.len()).unwrap(),
                    data: first,
                },
                CaptureFrame {
                    number: 2,
                    timestamp_ns: TIME_NS + 999_999_000,
                    original_len: u32::try_from(second.len()).unwrap(),
                    data: second,
                },
            ]
        );
        assert!(reader.next().is_none());
    }

    #[test]
    fn pcap_both_byte_orders_and_resolutions() {
        let folder = TempFolder::new("magics");
        let frame = ethernet_frame(0x0800, &ipv4_packet(0));
        let cases = [
            (
                Endianness::Big,
                TsResolution::MicroSecond,
                [0xa1, 0xb2, 0xc3, 0xd4],
            ),
            (
                Endianness::Little,
                TsResolution::MicroSecond,
                [0xd4, 0xc3, 0xb2, 0xa1],
            ),
            (
                Endianness::Big,
                TsResolution::NanoSecond,
                [0xa1, 0xb2, 0x3c, 0x4d],
            ),
            (
                Endianness::Little,
                TsResolution::NanoSecond,
                [0x4d, 0x3c, 0xb2, 0xa1],
            ),
        ];
        for (endianness, ts_resolution, magic) in cases {
            let path = folder.file(&format!("{endianness:?}-{ts_resolution:?}.pcap"));
            let header = PcapHeader {
                endianness,
                ts_resolution,
                ..PcapHeader::default()
            };
            write_pcap(
                &path,
                header,
                &[Packet::whole(time(987_654_321), frame.clone())],
            );
            assert_eq!(std::fs::read(&path).unwrap()[..4], magic);

            let frames = read_all(&path);
            let expected_nanos = match ts_resolution {
                TsResolution::MicroSecond => 987_654_000,
                TsResolution::NanoSecond => 987_654_321,
            };
            assert_eq!(frames.len(), 1, "{path:?}");
            assert_eq!(frames[0].timestamp_ns, TIME_NS + expected_nanos, "{path:?}");
            assert_eq!(frames[0].data, frame, "{path:?}");
        }
    }

    #[test]
    fn raw_ip_gets_a_synthetic_ethernet_header_from_the_version_nibble() {
        let folder = TempFolder::new("raw");
        let ipv4 = ipv4_packet(6);
        let ipv6 = ipv6_packet();
        let version_5 = vec![0x50; 24];
        for datalink in [DataLink::RAW, DataLink::IPV4, DataLink::IPV6] {
            let path = folder.file(&format!("{datalink:?}.pcap"));
            write_pcap(
                &path,
                pcap_header(datalink),
                &[
                    Packet::whole(time(1_000), ipv4.clone()),
                    Packet::whole(time(2_000), ipv6.clone()),
                    Packet::whole(time(3_000), version_5.clone()),
                    Packet::whole(time(4_000), Vec::new()),
                ],
            );
            let frames = read_all(&path);
            let data: Vec<&[u8]> = frames.iter().map(|frame| &frame.data[..]).collect();
            assert_eq!(
                data,
                [
                    &synthetic_frame(0x0800, &ipv4)[..],
                    &synthetic_frame(0x86DD, &ipv6)[..],
                    &synthetic_frame(0x0000, &version_5)[..],
                    &synthetic_frame(0x0000, &[])[..],
                ],
                "{datalink:?}"
            );
            let original_lens: Vec<u32> = frames.iter().map(|frame| frame.original_len).collect();
            assert_eq!(
                original_lens,
                [14 + 26, 14 + 48, 14 + 24, 14],
                "{datalink:?}"
            );
            assert!(frames.iter().all(|frame| !frame.is_partial()));
        }
    }

    #[test]
    fn linux_cooked_headers_are_replaced_by_an_ethernet_header() {
        let folder = TempFolder::new("cooked");
        let ipv4 = ipv4_packet(4);
        let ipv6 = ipv6_packet();

        // SLL: packet type, ARPHRD, address length, 8-byte address, protocol.
        let sll_header = |protocol: u16| {
            let mut header = vec![0, 0, 0, 1, 0, 6, 0x52, 0x54, 0, 1, 2, 3, 0, 0];
            header.extend_from_slice(&protocol.to_be_bytes());
            header
        };
        let sll_ipv4 = [sll_header(0x0800), ipv4.clone()].concat();
        let vlan_tag_and_ipv4 = [vec![0x00, 0x64, 0x08, 0x00], ipv4.clone()].concat();
        let sll_vlan = [sll_header(0x8100), vlan_tag_and_ipv4.clone()].concat();
        let sll_path = folder.file("sll.pcap");
        write_pcap(
            &sll_path,
            pcap_header(DataLink::LINUX_SLL),
            &[
                Packet::whole(time(0), sll_ipv4.clone()),
                Packet::whole(time(0), sll_vlan.clone()),
            ],
        );
        let frames = read_all(&sll_path);
        assert_eq!(frames[0].data, synthetic_frame(0x0800, &ipv4));
        assert_eq!(frames[0].original_len as usize, sll_ipv4.len() - 2);
        assert_eq!(frames[1].data, synthetic_frame(0x8100, &vlan_tag_and_ipv4));
        assert_eq!(frames[1].original_len as usize, sll_vlan.len() - 2);

        // SLL2: protocol, reserved, interface index, ARPHRD, packet type,
        // address length, 8-byte address.
        let mut sll2_header = 0x86DD_u16.to_be_bytes().to_vec();
        sll2_header
            .extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 0x52, 0x54, 0, 1, 2, 3, 0, 0]);
        let sll2_ipv6 = [sll2_header, ipv6.clone()].concat();
        let sll2_path = folder.file("sll2.pcap");
        write_pcap(
            &sll2_path,
            pcap_header(DataLink::LINUX_SLL2),
            &[Packet::whole(time(0), sll2_ipv6.clone())],
        );
        let frames = read_all(&sll2_path);
        assert_eq!(frames[0].data, synthetic_frame(0x86DD, &ipv6));
        assert_eq!(frames[0].original_len as usize, sll2_ipv6.len() - 6);
    }

    #[test]
    fn cooked_frame_shorter_than_its_header_becomes_an_empty_frame() {
        let folder = TempFolder::new("short-cooked");
        let path = folder.file("short.pcap");
        let whole_sll = [vec![0; 14], vec![0x08, 0x00], vec![0x45; 20]].concat();
        write_pcap(
            &path,
            pcap_header(DataLink::LINUX_SLL),
            &[
                Packet::whole(time(0), vec![0; 10]),
                Packet::whole(time(0), vec![0; 15]),
                Packet::whole(time(0), whole_sll),
            ],
        );
        let frames = read_all(&path);
        assert_eq!(frames.len(), 3);
        for short in &frames[..2] {
            assert!(short.data.is_empty());
            assert_eq!(short.original_len, 14);
            assert!(short.is_partial());
        }
        assert_eq!(frames[2].data.len(), 34);
    }

    #[test]
    fn frame_cut_by_the_snaplen_is_passed_on_as_captured() {
        let folder = TempFolder::new("snaplen");
        let path = folder.file("snaplen.pcap");
        let whole = ethernet_frame(0x0800, &ipv4_packet(1480));
        let captured = whole[..64].to_vec();
        let header = PcapHeader {
            snaplen: 64,
            ..pcap_header(DataLink::ETHERNET)
        };
        write_pcap(
            &path,
            header,
            &[Packet {
                time: time(0),
                original_len: 1514,
                data: captured.clone(),
            }],
        );
        let frames = read_all(&path);
        assert_eq!(frames[0].data, captured);
        assert_eq!(frames[0].original_len, 1514);
        assert!(frames[0].is_partial());
    }

    #[test]
    fn a_pcapng_time_outside_1970_to_2262_is_an_error_naming_the_frame() {
        let folder = TempFolder::new("pcapng-time");
        let ethernet = ethernet_frame(0x0800, &ipv4_packet(2));
        let write = |name: &str, options, units: u64| {
            let path = folder.file(name);
            let file = File::create(&path).unwrap();
            let mut writer = PcapNgWriter::new(file).unwrap();
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: 0,
                    options,
                })
                .unwrap();
            for units in [1_700_000_000_000_000, units] {
                writer
                    .write_pcapng_block(EnhancedPacketBlock {
                        interface_id: 0,
                        timestamp: Duration::from_nanos(units),
                        original_len: u32::try_from(ethernet.len()).unwrap(),
                        data: Cow::Owned(ethernet.clone()),
                        options: vec![],
                    })
                    .unwrap();
            }
            path
        };
        // Nanoseconds written without if_tsresol read as microseconds: the
        // year 55,000, past what a nanosecond clock holds.
        let nanoseconds_as_micros = write("ns.pcapng", vec![], 1_700_000_000_123_456_789);
        // An if_tsoffset that puts the frame before 1970.
        let before_1970 = write(
            "offset.pcapng",
            vec![InterfaceDescriptionOption::IfTsOffset(
                (-1_800_000_000_i64) as u64,
            )],
            1_700_000_000_000_000,
        );
        for (path, expected) in [
            (
                &nanoseconds_as_micros,
                "frame 2: timestamp outside 1970 to 2262 (1700000000123456789 units of 10^-6 s, offset 0 s); nanoseconds written without if_tsresol 9?",
            ),
            (
                &before_1970,
                "frame 1: timestamp outside 1970 to 2262 (1700000000000000 units of 10^-6 s, offset -1800000000 s)",
            ),
        ] {
            let results: Vec<_> = CaptureReader::open(path).unwrap().collect();
            let error = results.last().unwrap().as_ref().unwrap_err().to_string();
            assert_eq!(error, format!("{}: {expected}", path.display()));
        }
    }

    #[test]
    fn pcapng_interfaces_keep_their_link_types_and_timestamp_resolutions() {
        let folder = TempFolder::new("pcapng");
        let path = folder.file("interfaces.pcapng");
        let ethernet = ethernet_frame(0x0800, &ipv4_packet(2));
        let ipv4 = ipv4_packet(3);
        let ipv6 = ipv6_packet();
        let mut sll2_ipv6 = 0x86DD_u16.to_be_bytes().to_vec();
        sll2_ipv6.resize(20, 0);
        sll2_ipv6.extend_from_slice(&ipv6);

        let interface = |linktype, options| InterfaceDescriptionBlock {
            linktype,
            snaplen: 0,
            options,
        };
        // pcap-file writes the timestamp's nanoseconds as the raw units of
        // the interface's resolution.
        let packet = |interface_id, units, data: &[u8]| EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(units),
            original_len: u32::try_from(data.len()).unwrap(),
            data: Cow::Owned(data.to_vec()),
            options: vec![],
        };

        let file = File::create(&path).unwrap();
        let mut writer = PcapNgWriter::with_endianness(file, Endianness::Big).unwrap();
        // Interface 0: Ethernet, microseconds (the default).
        writer
            .write_pcapng_block(interface(DataLink::ETHERNET, vec![]))
            .unwrap();
        // Interface 1: raw IP, nanoseconds.
        writer
            .write_pcapng_block(interface(
                DataLink::RAW,
                vec![InterfaceDescriptionOption::IfTsResol(9)],
            ))
            .unwrap();
        // Interface 2: SLL2, 1/1024 s, 100 s offset.
        writer
            .write_pcapng_block(interface(
                DataLink::LINUX_SLL2,
                vec![
                    InterfaceDescriptionOption::IfTsResol(0x80 | 10),
                    InterfaceDescriptionOption::IfTsOffset(100),
                ],
            ))
            .unwrap();
        writer
            .write_pcapng_block(packet(1, 1_700_000_000_123_456_789, &ipv4))
            .unwrap();
        writer
            .write_pcapng_block(packet(0, 1_700_000_000_654_321, &ethernet))
            .unwrap();
        writer
            .write_pcapng_block(packet(2, 1_700_000_000 * 1024 + 512, &sll2_ipv6))
            .unwrap();
        // A second, little-endian section whose interface 0 is raw IPv4.
        let section = SectionHeaderBlock {
            endianness: Endianness::Little,
            ..SectionHeaderBlock::default()
        };
        writer.write_pcapng_block(section).unwrap();
        writer
            .write_pcapng_block(interface(DataLink::IPV4, vec![]))
            .unwrap();
        writer
            .write_pcapng_block(packet(0, 1_700_000_001_000_000, &ipv4))
            .unwrap();
        drop(writer);

        let mut reader = CaptureReader::open(&path).unwrap();
        assert_eq!(reader.format(), CaptureFormat::PcapNg);
        let frames: Vec<CaptureFrame> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(
            reader.link_types(),
            [
                LinkType::ETHERNET,
                LinkType::RAW,
                LinkType::LINUX_SLL2,
                LinkType::IPV4
            ]
        );
        assert_eq!(reader.bytes_read(), reader.file_len());
        let summary: Vec<(u64, i64, Vec<u8>)> = frames
            .into_iter()
            .map(|frame| (frame.number, frame.timestamp_ns, frame.data))
            .collect();
        assert_eq!(
            summary,
            [
                (1, TIME_NS + 123_456_789, synthetic_frame(0x0800, &ipv4)),
                (2, TIME_NS + 654_321_000, ethernet),
                (3, TIME_NS + 100_500_000_000, synthetic_frame(0x86DD, &ipv6)),
                (4, TIME_NS + 1_000_000_000, synthetic_frame(0x0800, &ipv4)),
            ]
        );
    }

    #[test]
    fn pcapng_obsolete_packet_block_and_simple_packet_block() {
        let folder = TempFolder::new("old-blocks");
        let path = folder.file("old-blocks.pcapng");
        let frame = ethernet_frame(0x0800, &ipv4_packet(2));
        let mut writer = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        let mut bytes = writer.into_inner();
        // A Packet Block (type 2) by hand: pcap-file would write its
        // timestamp the way it reads it, with the halves swapped.
        let microseconds: u64 = 1_700_000_000_250_000;
        let captured = u32::try_from(frame.len()).unwrap();
        let padding = (4 - frame.len() % 4) % 4;
        let block_len = u32::try_from(32 + frame.len() + padding).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&0_u16.to_le_bytes()); // interface
        body.extend_from_slice(&0_u16.to_le_bytes()); // drops
        body.extend_from_slice(&((microseconds >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(microseconds as u32).to_le_bytes());
        body.extend_from_slice(&captured.to_le_bytes());
        body.extend_from_slice(&captured.to_le_bytes());
        body.extend_from_slice(&frame);
        body.resize(body.len() + padding, 0);
        bytes.extend_from_slice(&2_u32.to_le_bytes());
        bytes.extend_from_slice(&block_len.to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&block_len.to_le_bytes());
        let mut writer = PcapNgWriter::with_endianness(bytes, Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len: captured,
                data: Cow::Borrowed(&frame),
            })
            .unwrap();
        // A snaplen of 65 cuts a longer frame to 65 bytes, which the block
        // pads to 68: the padding is not part of the frame.
        let long = ethernet_frame(0x0800, &ipv4_packet(80));
        let mut writer =
            PcapNgWriter::with_endianness(writer.into_inner(), Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65))
            .unwrap();
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len: long.len() as u32,
                data: Cow::Borrowed(&long[..65]),
            })
            .unwrap();
        std::fs::write(&path, writer.into_inner()).unwrap();

        let frames = read_all(&path);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].data, long[..65]);
        assert_eq!(frames[2].original_len as usize, long.len());
        let frames = &frames[..2];
        let summary: Vec<(u64, i64, &[u8])> = frames
            .iter()
            .map(|frame| (frame.number, frame.timestamp_ns, &frame.data[..]))
            .collect();
        assert_eq!(
            summary,
            [
                (1, TIME_NS + 250_000_000, &frame[..]),
                // A Simple Packet Block has no timestamp: the previous one.
                (2, TIME_NS + 250_000_000, &frame[..]),
            ]
        );
    }

    #[test]
    fn a_simple_packet_block_before_any_timed_packet_is_an_error_naming_the_frame() {
        let folder = TempFolder::new("untimed-first");
        let path = folder.file("untimed-first.pcapng");
        let frame = ethernet_frame(0x0800, &ipv4_packet(2));
        let original_len = u32::try_from(frame.len()).unwrap();
        let mut writer = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                // pcap-file writes the nanoseconds as the units: microseconds.
                timestamp: Duration::from_nanos(1_700_000_000_000_000),
                original_len,
                data: Cow::Borrowed(&frame),
                options: vec![],
            })
            .unwrap();
        // A new section: the time of the one before still stands.
        let mut writer =
            PcapNgWriter::with_endianness(writer.into_inner(), Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len,
                data: Cow::Borrowed(&frame),
            })
            .unwrap();
        let timed_first = writer.into_inner();
        std::fs::write(&path, &timed_first).unwrap();
        let times: Vec<i64> = read_all(&path)
            .iter()
            .map(|frame| frame.timestamp_ns)
            .collect();
        assert_eq!(times, [TIME_NS, TIME_NS]);

        // A Simple Packet Block first: no time to give it, not 1970.
        let mut writer = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        writer
            .write_pcapng_block(SimplePacketBlock {
                original_len,
                data: Cow::Borrowed(&frame),
            })
            .unwrap();
        let mut bytes = writer.into_inner();
        bytes.extend_from_slice(&timed_first);
        std::fs::write(&path, bytes).unwrap();
        let results: Vec<_> = CaptureReader::open(&path).unwrap().collect();
        assert_eq!(results.len(), 1, "the iterator ends after the error");
        assert_eq!(
            results[0].as_ref().unwrap_err().to_string(),
            format!(
                "{}: frame 1: a Simple Packet Block carries no time and no timed packet comes before it in the file",
                path.display()
            )
        );
    }

    /// `bytes`, a pcapng file whose every block has options, with each
    /// block's end-of-options marker (its body's last 4 bytes) removed.
    fn without_end_of_options(bytes: &[u8], endianness: Endianness) -> Vec<u8> {
        let word = |at: usize| {
            let raw = bytes[at..at + 4].try_into().unwrap();
            match endianness {
                Endianness::Little => u32::from_le_bytes(raw),
                Endianness::Big => u32::from_be_bytes(raw),
            }
        };
        let encode = |value: u32| match endianness {
            Endianness::Little => value.to_le_bytes(),
            Endianness::Big => value.to_be_bytes(),
        };
        let mut stripped = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = word(at + 4) as usize;
            assert_eq!(bytes[at + len - 8..at + len - 4], [0; 4], "an end marker");
            stripped.extend_from_slice(&bytes[at..at + 4]);
            stripped.extend_from_slice(&encode(len as u32 - 4));
            stripped.extend_from_slice(&bytes[at + 8..at + len - 8]);
            stripped.extend_from_slice(&encode(len as u32 - 4));
            at += len;
        }
        stripped
    }

    #[test]
    fn pcapng_option_lists_without_an_end_marker_are_read() {
        // The pcapng specification: readers "MUST NOT assume an option list
        // will have an opt_endofopt option at the end"; pcap-file does.
        use pcap_file::pcapng::blocks::{
            enhanced_packet::EnhancedPacketOption, section_header::SectionHeaderOption,
        };
        let folder = TempFolder::new("no-end-of-options");
        let frame = ethernet_frame(0x0800, &ipv4_packet(3));
        for endianness in [Endianness::Little, Endianness::Big] {
            let section = || SectionHeaderBlock {
                endianness,
                options: vec![SectionHeaderOption::OS("Linux".into())],
                ..SectionHeaderBlock::default()
            };
            let mut writer = PcapNgWriter::with_section_header(Vec::new(), section()).unwrap();
            for second_section in [false, true] {
                if second_section {
                    writer.write_pcapng_block(section()).unwrap();
                }
                writer
                    .write_pcapng_block(InterfaceDescriptionBlock {
                        linktype: DataLink::ETHERNET,
                        snaplen: 0,
                        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
                    })
                    .unwrap();
                writer
                    .write_pcapng_block(EnhancedPacketBlock {
                        interface_id: 0,
                        timestamp: Duration::from_nanos(TIME_NS as u64 + 7),
                        original_len: frame.len() as u32,
                        data: Cow::Borrowed(&frame),
                        options: vec![EnhancedPacketOption::Comment("c".into())],
                    })
                    .unwrap();
            }
            let path = folder.file(&format!("{endianness:?}.pcapng"));
            std::fs::write(
                &path,
                without_end_of_options(&writer.into_inner(), endianness),
            )
            .unwrap();
            let frames = read_all(&path);
            let summary: Vec<(i64, &[u8])> = frames
                .iter()
                .map(|frame| (frame.timestamp_ns, &frame.data[..]))
                .collect();
            assert_eq!(summary, [(TIME_NS + 7, &frame[..]); 2], "{endianness:?}");
        }
    }

    #[test]
    fn pcap_cut_in_its_last_record_is_read_up_to_it() {
        let folder = TempFolder::new("truncated");
        let frame = ethernet_frame(0x0800, &ipv4_packet(20));
        let path = folder.file("whole.pcap");
        write_pcap(
            &path,
            pcap_header(DataLink::ETHERNET),
            &[
                Packet::whole(time(0), frame.clone()),
                Packet::whole(time(0), frame.clone()),
                Packet::whole(time(0), frame.clone()),
            ],
        );
        let whole = std::fs::read(&path).unwrap();
        let record_len = 16 + frame.len();
        let cuts = [
            // In the third record's data, and in the second record's header.
            (whole.len() - 10, 3, record_len - 10),
            (24 + record_len + 8, 2, 8),
        ];
        for (cut_len, cut_frame, tail_len) in cuts {
            let cut_path = folder.file(&format!("cut-{cut_len}.pcap"));
            std::fs::write(&cut_path, &whole[..cut_len]).unwrap();
            let mut reader = CaptureReader::open(&cut_path).unwrap();
            for number in 1..cut_frame {
                assert_eq!(reader.next().unwrap().unwrap().number, number);
                assert_eq!(reader.cut_tail(), None, "not known before the end");
            }
            assert!(reader.next().is_none(), "the cut record ends the frames");
            assert_eq!(
                reader.cut_tail(),
                Some(CutTail {
                    frames_before: cut_frame - 1,
                    bytes: tail_len as u64
                })
            );
        }
        let mut whole_reader = CaptureReader::open(&path).unwrap();
        assert_eq!(whole_reader.by_ref().count(), 3);
        assert_eq!(whole_reader.cut_tail(), None);
    }

    #[test]
    fn a_whole_block_whose_contents_claim_more_is_corrupt_not_cut() {
        let folder = TempFolder::new("claims-more");
        let path = folder.file("claims-more.pcapng");
        let frame = ethernet_frame(0x0800, &ipv4_packet(20));
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        let mut block_start = 0;
        for _ in 0..2 {
            block_start = writer.get_ref().len();
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: Duration::ZERO,
                    original_len: u32::try_from(frame.len()).unwrap(),
                    data: Cow::Borrowed(&frame),
                    options: vec![
                        pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Flags(0),
                    ],
                })
                .unwrap();
        }
        let mut bytes = writer.into_inner();
        // The last block's option made a custom one (code 2988) of 2 bytes,
        // too short for its enterprise number: pcap-file asks for more,
        // though the block is whole.
        let option = block_start + 28 + frame.len().next_multiple_of(4);
        bytes[option..option + 2].copy_from_slice(&2988u16.to_le_bytes());
        bytes[option + 2..option + 4].copy_from_slice(&2u16.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();

        let mut reader = CaptureReader::open(&path).unwrap();
        let results: Vec<_> = reader.by_ref().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            format!(
                "{}: frame 2: corrupt record: the record at byte {block_start} is whole by its length field ({} bytes), but what it holds claims more",
                path.display(),
                bytes.len() - block_start
            )
        );
        assert_eq!(reader.cut_tail(), None);
    }

    #[test]
    fn pcap_ending_in_more_than_one_record_can_hold_is_refused() {
        let folder = TempFolder::new("truncated-long");
        let path = folder.file("long.pcap");
        let frame = ethernet_frame(0x0800, &vec![0; MAX_CUT_TAIL_LEN]);
        let header = PcapHeader {
            snaplen: u32::try_from(frame.len()).unwrap(),
            ..pcap_header(DataLink::ETHERNET)
        };
        write_pcap(&path, header, &[Packet::whole(time(0), frame)]);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        let results: Vec<_> = CaptureReader::open(&path).unwrap().collect();
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].as_ref().unwrap_err().to_string(),
            format!(
                "{}: frame 1: corrupt record: the record at byte 24 claims {} bytes, more than one of the largest snap length, and the file ends {} bytes into it",
                path.display(),
                whole.len() - 24,
                whole.len() - 25
            )
        );

        // A short last record whose length field claims more than a record
        // can hold: corrupt, not cut.
        let small = folder.file("claims-a-megabyte.pcap");
        let frame = ethernet_frame(0x0800, &ipv4_packet(20));
        write_pcap(
            &small,
            pcap_header(DataLink::ETHERNET),
            &[
                Packet::whole(time(0), frame.clone()),
                Packet::whole(time(0), frame.clone()),
            ],
        );
        let mut bytes = std::fs::read(&small).unwrap();
        let second = 24 + 16 + frame.len();
        bytes[second + 8..second + 12].copy_from_slice(&1_000_000u32.to_le_bytes());
        std::fs::write(&small, &bytes).unwrap();
        let mut reader = CaptureReader::open(&small).unwrap();
        let results: Vec<_> = reader.by_ref().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            format!(
                "{}: frame 2: corrupt record: the record at byte {second} claims 1000016 bytes, more than one of the largest snap length, and the file ends {} bytes into it",
                small.display(),
                16 + frame.len()
            )
        );
        assert_eq!(reader.cut_tail(), None);
    }

    #[test]
    fn pcapng_cut_in_its_last_block_is_read_up_to_it() {
        let folder = TempFolder::new("truncated-ng");
        let path = folder.file("cut.pcapng");
        let frame = ethernet_frame(0x0800, &ipv4_packet(20));
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        for _ in 0..2 {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: Duration::ZERO,
                    original_len: u32::try_from(frame.len()).unwrap(),
                    data: Cow::Borrowed(&frame),
                    options: vec![],
                })
                .unwrap();
        }
        let bytes = writer.into_inner();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();

        let mut reader = CaptureReader::open(&path).unwrap();
        let results: Vec<_> = reader.by_ref().collect();
        assert_eq!(results.len(), 1);
        assert!(results[0].is_ok());
        // An Enhanced Packet Block: 28 bytes of header, the data padded to
        // 4 bytes, the closing length; the last 8 bytes are missing.
        let block_len = 28 + frame.len().next_multiple_of(4) + 4;
        let tail = reader.cut_tail().unwrap();
        assert_eq!((tail.frames_before, tail.bytes), (1, block_len as u64 - 8));
    }

    #[test]
    fn corrupt_record_header_is_an_error() {
        let folder = TempFolder::new("corrupt");
        let path = folder.file("corrupt.pcap");
        let mut writer = PcapWriter::with_header(
            File::create(&path).unwrap(),
            pcap_header(DataLink::ETHERNET),
        )
        .unwrap();
        let frame = ethernet_frame(0x0800, &ipv4_packet(0));
        writer
            .write_raw_packet(&RawPcapPacket {
                ts_sec: 1_700_000_000,
                ts_frac: 2_000_000,
                incl_len: 34,
                orig_len: 34,
                data: Cow::Borrowed(&frame),
            })
            .unwrap();
        drop(writer);
        let error = CaptureReader::open(&path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: frame 1: corrupt record: the timestamp's fraction of a second (2000000) is a second or more",
                path.display()
            )
        );
    }

    #[test]
    fn unsupported_link_type_names_file_frame_and_link_type() {
        let folder = TempFolder::new("wifi");
        let path = folder.file("capture.pcap");
        write_pcap(
            &path,
            pcap_header(DataLink::IEEE802_11),
            &[Packet::whole(time(0), vec![0x80, 0, 0, 0])],
        );
        let mut reader = CaptureReader::open(&path).unwrap();
        assert_eq!(reader.link_types(), [LinkType(105)]);
        assert!(!reader.link_types()[0].is_supported());
        let error = reader.next().unwrap().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}: frame 1: link type 105 (IEEE 802.11) is not supported (supported: Ethernet, raw IP, Linux cooked SLL/SLL2)",
                path.display()
            )
        );
        assert!(reader.next().is_none());

        // In pcapng the frame number counts packets of every interface.
        let path = folder.file("capture.pcapng");
        let mut writer = PcapNgWriter::new(File::create(&path).unwrap()).unwrap();
        for linktype in [DataLink::ETHERNET, DataLink::IEEE802_11] {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock::new(linktype, 0))
                .unwrap();
        }
        let frame = ethernet_frame(0x0800, &ipv4_packet(0));
        for interface_id in [0, 1] {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id,
                    timestamp: Duration::ZERO,
                    original_len: u32::try_from(frame.len()).unwrap(),
                    data: Cow::Borrowed(&frame),
                    options: vec![],
                })
                .unwrap();
        }
        drop(writer);
        let results: Vec<_> = CaptureReader::open(&path).unwrap().collect();
        assert!(results[0].is_ok());
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with(&format!(
                    "{}: frame 2: link type 105 (IEEE 802.11)",
                    path.display()
                ))
        );
    }

    #[test]
    fn neither_pcap_nor_pcapng_is_an_error() {
        let folder = TempFolder::new("not-a-capture");
        let gzip = folder.file("capture.pcap.gz");
        std::fs::write(&gzip, [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0]).unwrap();
        let empty = folder.file("empty.pcap");
        std::fs::write(&empty, []).unwrap();
        let short_header = folder.file("short-header.pcap");
        std::fs::write(&short_header, [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0]).unwrap();
        let message = |path: &Path| CaptureReader::open(path).err().unwrap().to_string();

        assert_eq!(
            message(&gzip),
            format!(
                "{}: neither pcap nor pcapng (it starts with 1f 8b 08 00)",
                gzip.display()
            )
        );
        assert_eq!(
            message(&empty),
            format!(
                "{}: neither pcap nor pcapng (the file is empty)",
                empty.display()
            )
        );
        assert_eq!(
            message(&short_header),
            format!(
                "{}: pcap file header: the file ends in the middle of a record (cut short?)",
                short_header.display()
            )
        );
        let missing = folder.file("missing.pcap");
        assert!(matches!(
            CaptureReader::open(&missing),
            Err(CaptureError::Open { .. })
        ));
    }

    #[test]
    fn link_type_names() {
        assert_eq!(LinkType::ETHERNET.to_string(), "1 (Ethernet)");
        assert_eq!(LinkType(105).to_string(), "105 (IEEE 802.11)");
        assert_eq!(LinkType(104).to_string(), "104 (C_HDLC)");
        assert_eq!(LinkType(60_000).to_string(), "60000 (unknown)");
    }

    /// The shared capture `name`, or `None` (with a note) when missing.
    fn shared_capture(name: &str) -> Option<PathBuf> {
        let path = Path::new(SHARED_CAPTURES).join(name);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("skipped: {} is missing", path.display());
            None
        }
    }

    #[test]
    fn psiphon3_raw_ip_capture_becomes_ipv4_in_ethernet() {
        let Some(path) = shared_capture("psiphon3.pcap") else {
            return;
        };
        let mut reader = CaptureReader::open(&path).unwrap();
        assert_eq!(reader.link_types(), [LinkType::RAW]);
        let frames: Vec<CaptureFrame> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(frames.len(), 62);
        assert_eq!(reader.bytes_read(), reader.file_len());

        let first = &frames[0];
        assert_eq!(first.number, 1);
        assert_eq!(first.timestamp_ns, 1_613_865_079_123_029_000);
        assert_eq!(first.original_len, 14 + 60);
        // The first 60-byte IP packet starts at offset 24 + 16 in the file.
        let file = std::fs::read(&path).unwrap();
        assert_eq!(first.data, synthetic_frame(0x0800, &file[40..100]));
        let sliced = etherparse::SlicedPacket::from_ethernet(&first.data).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("not IPv4: {sliced:?}");
        };
        assert_eq!(ip.header().source(), [192, 168, 0, 103]);
        assert_eq!(ip.header().destination(), [104, 18, 151, 190]);
        assert!(
            frames
                .iter()
                .all(|frame| frame.data[12..14] == [0x08, 0x00])
        );
    }

    #[test]
    fn windscribe_pcapng_reads_24_ethernet_frames() {
        let Some(path) = shared_capture("windscribe.pcapng") else {
            return;
        };
        let mut reader = CaptureReader::open(&path).unwrap();
        let frames: Vec<CaptureFrame> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(reader.link_types(), [LinkType::ETHERNET]);
        assert_eq!(frames.len(), 24);
        assert_eq!(reader.bytes_read(), reader.file_len());
        // Its interface has if_tsresol 9 (nanoseconds).
        assert_eq!(frames[0].timestamp_ns, 1_721_745_032_772_331_274);
        assert_eq!(frames[23].timestamp_ns, 1_721_745_033_946_014_921);
        assert_eq!(frames[0].data.len(), 74);
        for frame in &frames {
            let sliced = etherparse::SlicedPacket::from_ethernet(&frame.data).unwrap();
            assert!(matches!(sliced.net, Some(etherparse::NetSlice::Ipv4(_))));
        }
    }

    #[test]
    fn every_shared_capture_reads_to_the_end() {
        // Packet counts from the README's table.
        let captures = [
            ("psiphon3.pcap", 62),
            ("pia.pcap", 9),
            ("protonvpn.pcap", 41),
            ("windscribe.pcapng", 24),
            ("tunnelbear.pcap", 433),
            ("mullvad_wireguard.pcap", 10),
            ("openvpn.pcap", 706),
            ("ipsec_isakmp_esp.pcap", 834),
        ];
        for (name, packets) in captures {
            let Some(path) = shared_capture(name) else {
                continue;
            };
            let mut reader = CaptureReader::open(&path).unwrap();
            let mut count = 0;
            let mut previous_bytes_read = reader.bytes_read();
            while let Some(frame) = reader.next() {
                let frame = frame.unwrap();
                count += 1;
                assert_eq!(frame.number, count, "{name}");
                assert!(frame.data.len() >= 14, "{name} frame {count}");
                // Progress moves with every frame, not per buffer refill.
                assert!(
                    reader.bytes_read() > previous_bytes_read,
                    "{name} frame {count}"
                );
                previous_bytes_read = reader.bytes_read();
            }
            assert_eq!(count, packets, "{name}");
            assert_eq!(reader.bytes_read(), reader.file_len(), "{name}");
        }
    }
}
