//! Free loopback ports, reserved across test processes.
//!
//! A port is picked at random *below* the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), so it cannot collide with the
//! local end of an outgoing connection or with a listener that another test
//! bound to port 0. It is reserved for as long as the instance lives, also
//! while the instance is stopped, by binding an abstract Unix socket named
//! after it (`@phx-testkit-port-<port>`): the kit in every test process of
//! this network namespace sees the reservation, the kernel drops it when the
//! process dies, and no file is left behind. Before it is handed out, a test
//! bind checks the port is free now. What remains (a program outside the
//! kit binding it between the check and `mariadbd`'s bind) is caught from the
//! error log by the caller, which retries with another port.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use crate::error::{Result, TestkitError, io_err};

/// A reserved port. Dropping it releases the reservation.
#[derive(Debug)]
pub(crate) struct PortLease {
    port: u16,
    _reservation: UnixListener,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// The range to pick from: below the ephemeral range when there is room, else above it.
fn pick_range() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    if lo >= 12_000 {
        Some((10_000, lo - 1))
    } else if hi <= 63_000 {
        Some((hi + 1, 65_000))
    } else {
        None
    }
}

/// Reserves `port` among the kit's users; `None` if someone holds it.
fn reserve(port: u16) -> Result<Option<UnixListener>> {
    let name = format!("phx-testkit-port-{port}");
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(io_err("making an abstract socket address"))?;
    match UnixListener::bind_addr(&addr) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(io_err(format!("reserving port {port}"))(e)),
    }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Reserves the given port (a fixed port chosen by the test). It may be in
/// use by a program outside the kit: `mariadbd` will then fail to bind it.
pub(crate) fn lease_fixed(port: u16) -> Result<PortLease> {
    match reserve(port)? {
        Some(reservation) => Ok(PortLease {
            port,
            _reservation: reservation,
        }),
        None => Err(TestkitError::Config(format!(
            "port {port} is held by another testkit instance"
        ))),
    }
}

/// Reserves a free port on 127.0.0.1.
pub(crate) fn lease_port() -> Result<PortLease> {
    if let Some((lo, hi)) = pick_range() {
        let span = u64::from(hi - lo) + 1;
        for _ in 0..200 {
            let port = lo + u16::try_from(random_u64() % span).unwrap_or(0);
            if let Some(reservation) = reserve(port)?
                && bindable(port)
            {
                return Ok(PortLease {
                    port,
                    _reservation: reservation,
                });
            }
        }
    }
    // Fallback: let the kernel choose (ephemeral range).
    for _ in 0..50 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("binding 127.0.0.1:0"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the bound address"))?
            .port();
        drop(listener);
        if let Some(reservation) = reserve(port)? {
            return Ok(PortLease {
                port,
                _reservation: reservation,
            });
        }
    }
    Err(TestkitError::Config("no free loopback port found".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn leases_are_exclusive_and_released() {
        let a = lease_port().unwrap();
        // The same port cannot be reserved twice, even within one process.
        assert!(reserve(a.port()).unwrap().is_none());
        let b = lease_port().unwrap();
        assert_ne!(a.port(), b.port());
        let port = a.port();
        drop(a);
        assert!(reserve(port).unwrap().is_some());
    }
}
