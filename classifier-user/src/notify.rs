//! systemd's notify protocol (`Type=notify`): `READY=1` once the program
//! is attached and pinned, `WATCHDOG=1` after drains (so a stalled drain
//! loop trips `WatchdogSec=`), `RELOADING=1`/`READY=1` around a feed
//! reload, `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` (not run
//! by systemd) every call does nothing.

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

/// Where to notify, and how often the watchdog wants to hear from us.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = if let Some(abstract_name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .map(Duration::from_micros);
        Self {
            socket,
            watchdog,
            last_ping: Instant::now(),
        }
    }

    fn send(&self, state: &str) {
        if let Some((socket, address)) = &self.socket
            && let Err(error) = socket.send_to_addr(state.as_bytes(), address)
        {
            log::warn!("cannot notify systemd ({state}): {error}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// After a successful drain: pings the watchdog at half its period.
    pub fn drained(&mut self) {
        if let Some(period) = self.watchdog
            && self.last_ping.elapsed() >= period / 2
        {
            self.send("WATCHDOG=1");
            self.last_ping = Instant::now();
        }
    }
}
