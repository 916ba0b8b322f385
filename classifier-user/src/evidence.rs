//! Evidence captures (`classifier run --capture-dir DIR`): the program
//! copies the first bytes of matched packets into a ring buffer (the first
//! `--capture-per-flow` packets of each flow, at most `--capture-rate` a
//! second); the daemon writes them to pcapng files in DIR, one per
//! snapshot interval (hourly without snapshots), each packet with a comment
//! naming its service and direction, so Wireshark shows why it was kept.
//! Drops (ring buffer full) and packets over the rate are counted by the
//! kernel (reports' totals, metrics).

use std::{
    borrow::Cow,
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{Array, Map, MapData, RingBuf};
use classifier_common::{
    CAPTURE_MAX_BYTES, CaptureConfig, CaptureRecord, DIR_INBOUND, MAP_CAPTURE_CONFIG,
    MAP_CAPTURE_EVENTS,
};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use crate::loader::ServiceTable;

/// Files rotate at snapshot cuts; without snapshots, this often.
pub const ROTATION_WITHOUT_SNAPSHOTS: Duration = Duration::from_secs(3600);

/// What `--capture-*` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    pub dir: PathBuf,
    pub bytes: u32,
    pub rate: u32,
    pub per_flow: u32,
    /// Files also close after this long (without snapshots, whose cuts
    /// rotate them: `None`).
    pub rotate_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("--capture-dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Map(String),
    #[error(
        "--capture-dir with --pseudonymize-key: captures hold real addresses; pass --capture-raw-addresses to keep such evidence deliberately"
    )]
    Pseudonymized,
}

fn open_pinned(pin_dir: &Path, name: &str) -> Result<Map, EvidenceError> {
    crate::pins::open_pinned_map(pin_dir, name).map_err(EvidenceError::Map)
}

/// Tells the (pinned) program what to capture: `None` captures nothing,
/// so an adopted program stops capturing when the new daemon does not.
pub fn configure(pin_dir: &Path, settings: Option<&CaptureSettings>) -> Result<(), EvidenceError> {
    let mut config: Array<MapData, CaptureConfig> =
        Array::try_from(open_pinned(pin_dir, MAP_CAPTURE_CONFIG)?)
            .map_err(|error| EvidenceError::Map(format!("{MAP_CAPTURE_CONFIG}: {error}")))?;
    let value = settings.map_or(CaptureConfig::default(), |settings| CaptureConfig {
        bytes: settings.bytes,
        rate: settings.rate,
        per_flow: settings.per_flow,
        _pad: 0,
    });
    config
        .set(0, value, 0)
        .map_err(|error| EvidenceError::Map(format!("{MAP_CAPTURE_CONFIG}: {error}")))
}

/// The capture ring buffer and the pcapng files it feeds.
pub struct Evidence {
    ring: RingBuf<MapData>,
    writer: EvidenceWriter,
    /// Records read since the snapshot interval being counted began.
    records_in_interval: u64,
    /// Records the file of the snapshot just cut still waits for (see
    /// [`Evidence::close_after`]).
    owed_to_closing_file: Option<u64>,
}

impl Evidence {
    /// Opens the pinned ring buffer, configures the program and creates
    /// the folder.
    pub fn start(pin_dir: &Path, settings: &CaptureSettings) -> Result<Self, EvidenceError> {
        crate::snapshot::create_folder_explained(&settings.dir).map_err(|source| {
            EvidenceError::Dir {
                dir: settings.dir.clone(),
                source,
            }
        })?;
        let ring = RingBuf::try_from(open_pinned(pin_dir, MAP_CAPTURE_EVENTS)?)
            .map_err(|error| EvidenceError::Map(format!("{MAP_CAPTURE_EVENTS}: {error}")))?;
        configure(pin_dir, Some(settings))?;
        Ok(Self {
            ring,
            writer: EvidenceWriter::new(settings.dir.clone(), settings.rotate_after),
            records_in_interval: 0,
            owed_to_closing_file: None,
        })
    }

    /// A descriptor that polls readable when captured packets wait.
    pub fn ring_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        self.ring.as_fd().try_clone_to_owned()
    }

    /// Writes every waiting packet; `monotonic_to_unix_ns` turns the
    /// program's clock into Unix time. Returns the packets read.
    pub fn pump(&mut self, services: &ServiceTable, monotonic_to_unix_ns: i128) -> usize {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<CaptureRecord>() {
                continue;
            }
            let record: CaptureRecord =
                bytemuck::pod_read_unaligned(&item[..size_of::<CaptureRecord>()]);
            drop(item);
            read += 1;
            if self.owed_to_closing_file.is_none() {
                self.records_in_interval += 1;
            }
            let unix_ns =
                i64::try_from(i128::from(record.time_ns) + monotonic_to_unix_ns).unwrap_or(0);
            let service = services
                .name(u32::from(record.service))
                .unwrap_or("unknown");
            self.writer.write(&record, service, unix_ns);
            if let Some(owed) = &mut self.owed_to_closing_file {
                *owed -= 1;
                if *owed == 0 {
                    self.owed_to_closing_file = None;
                    self.writer.close();
                }
            }
        }
        self.writer.flush();
        read
    }

    /// Closes the file at exit; says how many packets were lost in all, if
    /// any were (the last failure's log line may be older than more).
    pub fn finish(&mut self) {
        self.rotate();
        if self.writer.lost > 0 {
            log::warn!(
                "evidence capture: {} captured packets could not be written in this run (see the errors above); they are counted in captured",
                self.writer.lost
            );
        }
    }

    /// Closes the current file; the next packet starts a new one.
    pub fn rotate(&mut self) {
        self.owed_to_closing_file = None;
        self.writer.close();
    }

    /// A snapshot was cut that counts `counted` captured packets: its file
    /// closes once it holds that many (the ring hands packets over in the
    /// order the program took them, and the count is of those it handed
    /// over), so each file holds what its snapshot counts, also when
    /// packets captured after the cut's drain are already waiting.
    pub fn close_after(&mut self, counted: u64) {
        if self.owed_to_closing_file.take().is_some() {
            // The last file still waited for packets that never came.
            self.writer.close();
        }
        let owed = counted.saturating_sub(self.records_in_interval);
        // Read already but not counted (a race of nanoseconds): the next
        // interval's.
        self.records_in_interval = self.records_in_interval.saturating_sub(counted);
        if owed == 0 {
            self.writer.close();
        } else {
            self.owed_to_closing_file = Some(owed);
        }
    }

    /// Files written so far.
    pub fn files(&self) -> u64 {
        self.writer.files
    }
}

/// Rotating pcapng files of captured packets.
pub struct EvidenceWriter {
    dir: PathBuf,
    rotate_after: Option<Duration>,
    current: Option<OpenFile>,
    pub files: u64,
    /// Packets in files, once the flush after them worked.
    pub packets: u64,
    /// Packets captured but lost to writes that failed (a full disk).
    pub lost: u64,
    /// A write or flush failed, and none has worked since (logged once).
    failing: bool,
}

struct OpenFile {
    path: PathBuf,
    opened_unix_ns: i64,
    writer: PcapNgWriter<BufWriter<File>>,
    /// Bytes on disk after the last flush that worked: whole blocks.
    flushed_len: u64,
    /// Packets in those bytes.
    flushed_packets: u64,
    /// Packets in the buffer since.
    buffered_packets: u64,
}

impl EvidenceWriter {
    pub fn new(dir: PathBuf, rotate_after: Option<Duration>) -> Self {
        Self {
            dir,
            rotate_after,
            current: None,
            files: 0,
            packets: 0,
            lost: 0,
            failing: false,
        }
    }

    /// Appends one packet, opening a file (named by its first packet's
    /// time) when none is open or the open one is `rotate_after` old.
    pub fn write(&mut self, record: &CaptureRecord, service: &str, unix_ns: i64) {
        let too_old = self
            .current
            .as_ref()
            .zip(self.rotate_after)
            .is_some_and(|(file, after)| {
                i128::from(unix_ns) - i128::from(file.opened_unix_ns) >= after.as_nanos() as i128
            });
        if too_old {
            self.close();
        }
        let result = self.open(unix_ns).and_then(|file| {
            let len = (record.len as usize).min(CAPTURE_MAX_BYTES);
            let direction = if record.direction == DIR_INBOUND {
                "inbound"
            } else {
                "outbound"
            };
            let block = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(u64::try_from(unix_ns).unwrap_or(0)),
                original_len: record.frame_len,
                data: Cow::Borrowed(&record.data[..len]),
                options: vec![EnhancedPacketOption::Comment(Cow::Owned(format!(
                    "classifier: service={service} direction={direction}"
                )))],
            };
            file.writer
                .write_pcapng_block(block)
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            file.buffered_packets += 1;
            Ok(())
        });
        if let Err(error) = result {
            self.failed(&error, 1);
        }
    }

    fn open(&mut self, unix_ns: i64) -> std::io::Result<&mut OpenFile> {
        if self.current.is_none() {
            if !self.dir.is_dir() {
                crate::snapshot::create_folder_explained(&self.dir)?;
                log::warn!(
                    "evidence capture: {} was gone; created it again",
                    self.dir.display()
                );
            }
            let base = format!(
                "evidence-{}",
                crate::snapshot::file_stamp(crate::snapshot::unix_ns_to_time(unix_ns))
            );
            let mut path = self.dir.join(format!("{base}.pcapng"));
            let mut counter = 1;
            while path.exists() {
                path = self.dir.join(format!("{base}-{counter}.pcapng"));
                counter += 1;
            }
            let file = File::create(&path)?;
            let mut writer = PcapNgWriter::new(BufWriter::new(file))
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    // The most any packet holds: one the program captured
                    // before an adopting daemon asked for fewer bytes is
                    // longer than the setting.
                    snaplen: CAPTURE_MAX_BYTES as u32,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Borrowed("classifier")),
                        // Timestamps in nanoseconds.
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            if !self.failing {
                log::info!("evidence capture: writing {}", path.display());
            }
            self.files += 1;
            self.current = Some(OpenFile {
                path,
                opened_unix_ns: unix_ns,
                writer,
                flushed_len: 0,
                flushed_packets: 0,
                buffered_packets: 0,
            });
        }
        Ok(self.current.as_mut().expect("just opened"))
    }

    /// Flushes the open file: its packets are then on disk.
    pub fn flush(&mut self) {
        use std::io::{Seek as _, Write as _};
        let Some(file) = &mut self.current else {
            return;
        };
        let buffer = file.writer.get_mut();
        let flushed = buffer
            .flush()
            .and_then(|()| buffer.get_mut().stream_position());
        match flushed {
            Ok(len) => {
                file.flushed_len = len;
                file.flushed_packets += file.buffered_packets;
                self.packets += file.buffered_packets;
                file.buffered_packets = 0;
                if self.failing {
                    self.failing = false;
                    log::info!(
                        "evidence capture: writing again into {} ({} captured packets lost so far)",
                        file.path.display(),
                        self.lost
                    );
                }
            }
            Err(error) => self.failed(&error, 0),
        }
    }

    /// A write (of `unbuffered` packets no buffer took) or a flush failed: the
    /// open file is cut back to its last whole packet (removed if it holds
    /// none), so it stays readable, its buffered packets are lost (and
    /// counted), and the next packet opens a new file. Logged once until a
    /// write works again.
    fn failed(&mut self, error: &std::io::Error, unbuffered: u64) {
        let mut lost = unbuffered;
        let mut place = self.dir.clone();
        if let Some(file) = self.current.take() {
            lost += file.buffered_packets;
            place = file.path.clone();
            // The buffered bytes are dropped unwritten.
            let (inner, _) = file.writer.into_inner().into_parts();
            let tidied = if file.flushed_packets == 0 {
                drop(inner);
                self.files -= 1;
                std::fs::remove_file(&file.path)
            } else {
                inner.set_len(file.flushed_len)
            };
            if let Err(tidy_error) = tidied {
                log::warn!(
                    "evidence capture: cannot cut {} back to its last whole packet: {tidy_error}",
                    file.path.display()
                );
            }
        }
        self.lost += lost;
        if !self.failing {
            log::error!(
                "evidence capture: cannot write to {}: {error}; {} captured packet(s) lost so far (still counted), the file cut back to its last whole packet; a new file follows once writing works",
                place.display(),
                self.lost
            );
        }
        self.failing = true;
    }

    /// Flushes and closes the open file.
    pub fn close(&mut self) {
        self.flush();
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_NS: i64 = 3_600_000_000_000;

    fn files_written(rotate_after: Option<Duration>) -> u64 {
        let folder =
            crate::test_support::TempFolder::new(&format!("evidence-{}", rotate_after.is_some()));
        let mut writer = EvidenceWriter::new(folder.0.clone(), rotate_after);
        let mut record: CaptureRecord = bytemuck::Zeroable::zeroed();
        record.len = 60;
        record.frame_len = 60;
        let start = 1_700_000_000 * 1_000_000_000;
        for hour in 0..3 {
            writer.write(&record, "pia", start + hour * HOUR_NS + 1);
        }
        writer.close();
        let files = writer.files;
        assert_eq!(writer.packets, 3);
        files
    }

    #[test]
    fn files_rotate_hourly_only_without_snapshots() {
        assert_eq!(files_written(Some(ROTATION_WITHOUT_SNAPSHOTS)), 3);
        // With snapshots the cuts rotate the files (Evidence::rotate).
        assert_eq!(files_written(None), 1);
    }
}
