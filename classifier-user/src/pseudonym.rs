//! Keyed pseudonyms for watched addresses (`--pseudonymize-key FILE`), so
//! snapshots and reports can be shared without exposing residents'
//! addresses.
//!
//! A watched address becomes HMAC-SHA256(key, "classifier-pseudonym-v1" ||
//! address octets), truncated into a range no real host uses, so tools that
//! parse addresses still parse it and the same key always gives the same
//! pseudonym:
//! - IPv4 → 240.0.0.0/4 (reserved, RFC 1112) with the HMAC's first 28 bits;
//! - IPv6 → 100::/64 (discard-only, RFC 6666) with its first 64 bits.
//!
//! Counts of unique sources in one report are taken before the addresses
//! are replaced; a report merged from pseudonymized snapshots counts
//! pseudonyms, and two IPv4 sources share one with probability about
//! n² / 2²⁹ for n sources (0.2 % for 1,000). Endpoints are not replaced.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{feeds::sha256_hex, report::Report};

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Longest key file accepted, in bytes: a key is a few dozen random bytes,
/// so more is the wrong file.
pub const MAX_KEY_BYTES: usize = 1024;
const DOMAIN: &[u8] = b"classifier-pseudonym-v1";

#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    #[error("pseudonymize key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pseudonymize key {path}: {len} bytes; use at least {MIN_KEY_BYTES} random bytes (e.g. head -c 32 /dev/urandom > key)"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error(
        "pseudonymize key {path}: more than {MAX_KEY_BYTES} bytes; a key is a few dozen random bytes (e.g. head -c 32 /dev/urandom > key)"
    )]
    TooLong { path: PathBuf },
    #[error(
        "pseudonymize key {path}: a device or folder, not a key file; a key read from a device would change from run to run (write one: head -c 32 /dev/urandom > key)"
    )]
    NotAFile { path: PathBuf },
    #[error(
        "pseudonymize key {path}: a named pipe nothing wrote to within {} s (is the program that writes the key running?)",
        waited.as_secs_f64()
    )]
    NoWriter { path: PathBuf, waited: Duration },
}

/// How long a named pipe given as the key may stay without a writer.
pub const KEY_WRITER_WAIT: Duration = Duration::from_secs(10);

/// Whether `file` has something to read (or its writer closed) within `wait`.
fn readable_within(file: &std::fs::File, wait: Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
    if ready < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ready > 0)
}

/// Clears `O_NONBLOCK`, so reading waits for the writer to finish.
fn set_blocking(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor this function borrows.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Maps watched addresses to their pseudonyms under one key.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: Vec<u8>,
    /// First 16 hex digits of the key's SHA-256: which key was used,
    /// without revealing it.
    pub key_id: String,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    /// The key is the file's bytes, as they are: `MIN_KEY_BYTES` to
    /// `MAX_KEY_BYTES` of a file or a pipe (`<(pass show key)`); a device
    /// or folder is refused before it is opened.
    pub fn from_file(path: &Path) -> Result<Self, PseudonymError> {
        Self::from_file_waiting(path, KEY_WRITER_WAIT)
    }

    /// [`Self::from_file`]; a named pipe must have something to read
    /// within `wait` (else opening it would wait for a writer forever).
    pub fn from_file_waiting(path: &Path, wait: Duration) -> Result<Self, PseudonymError> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let read_error = |source| PseudonymError::Read {
            path: path.to_path_buf(),
            source,
        };
        let kind = std::fs::metadata(path).map_err(read_error)?.file_type();
        if !(kind.is_file() || kind.is_fifo()) {
            return Err(PseudonymError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let file = if kind.is_fifo() {
            // Opened without waiting for a writer; then waited for, bounded.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(read_error)?;
            if !readable_within(&file, wait).map_err(read_error)? {
                return Err(PseudonymError::NoWriter {
                    path: path.to_path_buf(),
                    waited: wait,
                });
            }
            set_blocking(&file).map_err(read_error)?;
            file
        } else {
            std::fs::File::open(path).map_err(read_error)?
        };
        let mut key = Vec::new();
        file.take(MAX_KEY_BYTES as u64 + 1)
            .read_to_end(&mut key)
            .map_err(read_error)?;
        if key.len() > MAX_KEY_BYTES {
            return Err(PseudonymError::TooLong {
                path: path.to_path_buf(),
            });
        }
        if key.len() < MIN_KEY_BYTES {
            return Err(PseudonymError::TooShort {
                path: path.to_path_buf(),
                len: key.len(),
            });
        }
        Ok(Self::from_key(key))
    }

    pub fn from_key(key: Vec<u8>) -> Self {
        let key_id = sha256_hex(&key)[..16].to_string();
        Self { key, key_id }
    }

    pub fn address(&self, address: IpAddr) -> IpAddr {
        let octets: Vec<u8> = match address {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(DOMAIN);
        mac.update(&octets);
        let digest = mac.finalize().into_bytes();
        match address {
            IpAddr::V4(_) => {
                let bits = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
                IpAddr::V4(Ipv4Addr::from(0xf000_0000 | bits >> 4))
            }
            IpAddr::V6(_) => {
                let mut pseudonym = [0u8; 16];
                pseudonym[0] = 0x01; // 100::/64
                pseudonym[8..].copy_from_slice(&digest[..8]);
                IpAddr::V6(Ipv6Addr::from(pseudonym))
            }
        }
    }

    /// Replaces every watched address in `report` (flows, top sources, and
    /// watched host prefixes) and records the key id in its snapshot
    /// section, if any.
    pub fn apply(&self, report: &mut Report) {
        for flow in &mut report.flows {
            flow.watched = self.address(flow.watched);
        }
        for row in &mut report.top_sources {
            row.address = self.address(row.address);
        }
        // The host whose DNS answer taught an endpoint is a resident.
        if let Some(learning) = &mut report.learning {
            for endpoint in &mut learning.endpoints {
                endpoint.watched = self.address(endpoint.watched);
            }
        }
        report.pseudonym_key_id = Some(self.key_id.clone());
        if let Some(snapshot) = &mut report.snapshot {
            snapshot.pseudonym_key_id = Some(self.key_id.clone());
            // A watched host prefix names a resident too.
            for prefix in &mut snapshot.watched {
                if let Ok(net) = prefix.parse::<ipnet::IpNet>()
                    && net.prefix_len() == net.max_prefix_len()
                {
                    *prefix = format!("{}/{}", self.address(net.addr()), net.prefix_len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_in_reserved_ranges() {
        let one = Pseudonymizer::from_key(b"0123456789abcdef0123".to_vec());
        let other = Pseudonymizer::from_key(b"another key, also long".to_vec());
        let v4: IpAddr = "175.45.176.9".parse().unwrap();
        let v6: IpAddr = "2001:db8:aa::9".parse().unwrap();
        assert_eq!(one.address(v4), one.address(v4));
        assert_ne!(one.address(v4), other.address(v4));
        assert_ne!(
            one.address(v4),
            one.address("175.45.176.10".parse().unwrap())
        );
        let IpAddr::V4(p4) = one.address(v4) else {
            panic!("IPv4 stays IPv4")
        };
        assert_eq!(p4.octets()[0] >> 4, 0xf, "{p4} is in 240.0.0.0/4");
        let IpAddr::V6(p6) = one.address(v6) else {
            panic!("IPv6 stays IPv6")
        };
        assert_eq!(p6.segments()[..4], [0x100, 0, 0, 0], "{p6} is in 100::/64");
        assert_eq!(one.key_id.len(), 16);
    }

    #[test]
    fn a_named_pipe_is_read_from_its_writer_and_refused_without_one() {
        let folder = crate::test_support::TempFolder::new("key-fifo");
        let fifo = folder.file("key");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let wait = Duration::from_millis(300);
        // Nobody writes: refused after the wait, not a hang.
        let error = Pseudonymizer::from_file_waiting(&fifo, wait)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("a named pipe nothing wrote to within 0.3 s"),
            "{error}"
        );
        // A writer that comes a little later (as `<(pass show key)` does).
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(writer_path, [7u8; 32]).unwrap();
        });
        let key = Pseudonymizer::from_file_waiting(&fifo, Duration::from_secs(5)).expect("read");
        writer.join().unwrap();
        assert_eq!(key.key_id, Pseudonymizer::from_key(vec![7u8; 32]).key_id);
    }

    #[test]
    fn a_short_key_file_is_refused_with_its_name() {
        let path = std::env::temp_dir().join(format!("short-key-{}", std::process::id()));
        std::fs::write(&path, b"short").unwrap();
        let error = Pseudonymizer::from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("5 bytes"), "{error}");
    }

    #[test]
    fn a_key_file_too_long_or_not_a_file_is_refused() {
        let path = std::env::temp_dir().join(format!("long-key-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; MAX_KEY_BYTES + 1]).unwrap();
        let error = Pseudonymizer::from_file(&path).unwrap_err().to_string();
        std::fs::write(&path, vec![7u8; MAX_KEY_BYTES]).unwrap();
        let longest = Pseudonymizer::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            error,
            format!(
                "pseudonymize key {}: more than 1024 bytes; a key is a few dozen random bytes (e.g. head -c 32 /dev/urandom > key)",
                path.display()
            )
        );
        assert!(longest.is_ok(), "{longest:?}");

        // Reading a device as the key would never end (or differ each run).
        let error = Pseudonymizer::from_file(Path::new("/dev/urandom"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("pseudonymize key /dev/urandom: a device or folder, not a key file"),
            "{error}"
        );
        // A pipe is read to its end (a key from a secret store), at most
        // one byte past the limit.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "head -c 32 /dev/zero"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = child.stdout.take().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&pipe);
        let from_pipe = Pseudonymizer::from_file(Path::new(&format!("/proc/self/fd/{fd}")));
        let _ = child.wait();
        assert!(from_pipe.is_ok(), "{from_pipe:?}");
    }
}
