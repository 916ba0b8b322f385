//! Network namespaces and veth pairs for live tests. Everything is created
//! by the test, has no address but loopback's and no route (nothing can
//! leave it), has IPv6
//! off (so the kernel sends no neighbour discovery of its own), and is
//! removed by a guard on drop, also when the test fails.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// A unique-per-test name, overridable with `CLASSIFIER_TEST_NS_PREFIX`.
pub fn test_name(test: &str) -> String {
    let prefix = std::env::var("CLASSIFIER_TEST_NS_PREFIX").unwrap_or_else(|_| "clst".into());
    format!("{prefix}-{test}-{}", std::process::id())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn create(name: &str) -> io::Result<Self> {
        // A leftover from a killed run of the same name goes first.
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let namespace = Self { name: name.into() };
        // Loopback only (for the metrics endpoint); nothing routes out.
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            namespace.exec_quiet(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ])?;
        }
        Ok(namespace)
    }

    /// Runs a command inside the namespace; fails on a non-zero exit.
    pub fn exec_quiet(&self, command: &[&str]) -> io::Result<()> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        ip(&args)
    }

    /// Moves the calling thread (only it) into the namespace: interface
    /// names and attachments then refer to the namespace's interfaces.
    pub fn enter_on_this_thread(&self) -> io::Result<()> {
        enter_namespace(&self.name)
    }

    /// `GET path` over HTTP/1.1 to `address` from inside the namespace;
    /// the whole response, head and body.
    pub fn http_get(&self, address: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let name = self.name.clone();
        let address = address.to_string();
        let request = format!("GET {path} HTTP/1.1\r\nHost: sensor\r\nConnection: close\r\n\r\n");
        std::thread::spawn(move || {
            enter_namespace(&name).expect("enter the namespace");
            let mut stream = std::net::TcpStream::connect(&address).expect("connect");
            stream.write_all(request.as_bytes()).expect("request");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("response");
            response
        })
        .join()
        .expect("HTTP thread")
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot remove namespace {}: {error}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair: the sensor side, where the
/// classifier attaches, and the peer side, where frames are written.
#[derive(Debug)]
pub struct VethLink {
    pub sensor: Namespace,
    pub peer: Namespace,
    pub sensor_iface: String,
    pub peer_iface: String,
}

impl VethLink {
    pub fn create(test: &str) -> io::Result<Self> {
        Self::create_with_queues(test, 1)
    }

    /// A pair whose ends have `queues` receive and transmit queues each, so
    /// senders on different CPUs fill different receive rings.
    pub fn create_with_queues(test: &str, queues: usize) -> io::Result<Self> {
        let queues = queues.to_string();
        let base = test_name(test);
        let sensor = Namespace::create(&format!("{base}-s"))?;
        let peer = Namespace::create(&format!("{base}-p"))?;
        // Interface names are at most 15 bytes.
        let tag = format!("{:x}", std::process::id() % 0xffff);
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(6)
            .collect();
        let link = Self {
            sensor,
            peer,
            sensor_iface: format!("{short}{tag}s"),
            peer_iface: format!("{short}{tag}p"),
        };
        link.add_pair(&queues)?;
        Ok(link)
    }

    /// Renames the sensor's interface (e.g. to a VLAN-style `NAME.5`).
    pub fn rename_sensor_iface(&mut self, name: &str) -> io::Result<()> {
        let netns = &self.sensor.name;
        ip(&["-n", netns, "link", "set", &self.sensor_iface, "down"])?;
        ip(&["-n", netns, "link", "set", &self.sensor_iface, "name", name])?;
        ip(&["-n", netns, "link", "set", name, "up"])?;
        self.sensor_iface = name.to_string();
        Ok(())
    }

    /// Removes the veth pair and makes it again under the same names, as a
    /// driver reload or a re-created interface does: whatever was attached
    /// to the old one is gone with it.
    pub fn recreate(&self) -> io::Result<()> {
        ip(&["-n", &self.sensor.name, "link", "del", &self.sensor_iface])?;
        self.add_pair("1")
    }

    fn add_pair(&self, queues: &str) -> io::Result<()> {
        let Self {
            sensor,
            peer,
            sensor_iface,
            peer_iface,
        } = self;
        ip(&[
            "link",
            "add",
            sensor_iface,
            "netns",
            &sensor.name,
            "numtxqueues",
            queues,
            "numrxqueues",
            queues,
            "type",
            "veth",
            "peer",
            "name",
            peer_iface,
            "netns",
            &peer.name,
            "numtxqueues",
            queues,
            "numrxqueues",
            queues,
        ])?;
        ip(&["-n", &sensor.name, "link", "set", sensor_iface, "up"])?;
        ip(&["-n", &peer.name, "link", "set", peer_iface, "up"])
    }

    /// Writes `frames` onto the peer interface with AF_PACKET; the sensor
    /// side receives each one. Paced so the veth's receive ring (256 frames)
    /// never overflows, which would drop frames without telling the sender.
    pub fn send(&self, frames: &[Vec<u8>]) -> io::Result<()> {
        send_in_namespace(&self.peer.name, &self.peer_iface, frames)
    }
}

/// setns changes the namespace of the calling thread only.
fn enter_namespace(name: &str) -> io::Result<()> {
    let handle = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: a valid namespace fd; affects this thread only.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_in_namespace(namespace: &str, iface: &str, frames: &[Vec<u8>]) -> io::Result<()> {
    let namespace = namespace.to_string();
    let iface = iface.to_string();
    let frames = frames.to_vec();
    std::thread::spawn(move || -> io::Result<()> {
        enter_namespace(&namespace)?;
        let name = CString::new(iface.clone()).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::other(format!(
                "no interface {iface} in {namespace}"
            )));
        }
        // SAFETY: plain socket creation; protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
        address.sll_halen = 6;
        let mut result = Ok(());
        for (number, frame) in frames.iter().enumerate() {
            // SAFETY: buffer and address are valid for the given lengths.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const address).cast(),
                    u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small"),
                )
            };
            if sent != isize::try_from(frame.len()).expect("small") {
                result = Err(io::Error::other(format!(
                    "frame {number} ({} bytes): {}",
                    frame.len(),
                    io::Error::last_os_error()
                )));
                break;
            }
            if number % 32 == 31 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(fd) };
        result
    })
    .join()
    .map_err(|_| io::Error::other("sender thread panicked"))?
}
