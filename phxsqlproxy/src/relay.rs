//! Moving bytes between a client and its MariaDB, both ways, untouched.
//!
//! The proxy never looks inside the stream once the connection is routed,
//! so everything a client and server can negotiate passes: TLS (end to end),
//! compression, any auth plugin, prepared statements, packets over 16 MiB,
//! LOAD DATA LOCAL. It never holds more than one read's worth of data.
//!
//! Memory: an idle connection owns no buffer. Each direction waits for its
//! socket to become readable, then reads into a stack buffer inside a plain
//! (non-async) function and writes straight on; only when the other side
//! cannot take it all at once is the remainder copied to the heap while it
//! waits. Thousands of idle connections therefore cost their sockets and a
//! small task each.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// One read: large enough that a big result set moves in few system calls.
const CHUNK: usize = 64 * 1024;

/// Why a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (the normal end: COM_QUIT, or the server closed).
    Closed,
    /// A socket error (a reset, usually).
    Error(io::ErrorKind),
    /// No byte either way for the idle timeout.
    Idle,
    /// `stop` fired (the master changed, or the proxy shuts down).
    Stopped,
}

/// Bytes moved in each direction.
#[derive(Debug, Default)]
pub struct Moved {
    pub to_server: AtomicU64,
    pub to_client: AtomicU64,
}

/// Relays until both directions end, one fails, the connection has been
/// idle for `idle` (if set), or `stop` completes.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    idle: Option<Duration>,
    stop: impl Future<Output = ()>,
    moved: &Moved,
) -> RelayEnd {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved (for `idle`).
    let last = AtomicU64::new(0);
    let up = pump(client, server, &moved.to_server, &last, start);
    let down = pump(server, client, &moved.to_client, &last, start);
    tokio::pin!(up, down, stop);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let idle_check = async {
            match idle {
                Some(idle) => loop {
                    let since = Duration::from_millis(last.load(Ordering::Relaxed));
                    let deadline = start + since + idle;
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(deadline.into()).await;
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut up, if !up_done => {
                if let Err(e) = r {
                    return RelayEnd::Error(e.kind());
                }
                up_done = true;
            }
            r = &mut down, if !down_done => {
                if let Err(e) = r {
                    return RelayEnd::Error(e.kind());
                }
                down_done = true;
            }
            _ = &mut stop => return RelayEnd::Stopped,
            _ = idle_check => return RelayEnd::Idle,
        }
        if up_done && down_done {
            return RelayEnd::Closed;
        }
    }
}

/// Copies `from` to `to` until `from` ends, then half-closes `to` (so the
/// far side sees the end too).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        match copy_ready(from, to)? {
            Copied::WouldBlock => continue,
            Copied::Eof => {
                // The peer may be gone already; nothing to tell it then.
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(());
            }
            Copied::All(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Copied::Partial { rest, read } => {
                write_all(to, &rest).await?;
                counter.fetch_add(read as u64, Ordering::Relaxed);
            }
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

enum Copied {
    WouldBlock,
    Eof,
    /// Read and written `n` bytes.
    All(usize),
    /// Read `read` bytes; `rest` could not be written yet.
    Partial {
        rest: Vec<u8>,
        read: usize,
    },
}

thread_local! {
    /// Each runtime thread's read buffer, reused by every connection the
    /// thread serves: reads fill its spare capacity, which is never zeroed.
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(CHUNK));
}

/// One non-blocking read into this thread's buffer and as much of a write as
/// the other socket takes. Not `async`, so no buffer is ever part of a
/// connection's future (which would keep it alive while idle).
///
/// A short read is taken to have drained the socket: the read runs inside
/// `try_io`, which then clears the read readiness, saving the extra
/// `read` that would only return `EAGAIN`. Tokio clears it only if no new
/// readiness event arrived meanwhile, so no data is left unnoticed.
fn copy_ready(from: &TcpStream, to: &TcpStream) -> io::Result<Copied> {
    CHUNK_BUF.with_borrow_mut(|buf| {
        buf.clear();
        let room = buf.capacity();
        let mut n = 0;
        let read = from.try_io(tokio::io::Interest::READABLE, || {
            // Reads into the spare capacity: no zeroing of the buffer.
            n = from.try_read_buf(buf)?;
            if n > 0 && n < room {
                // Data was read: report it, and let try_io clear readiness.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match read {
            Ok(0) => return Ok(Copied::Eof),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::WouldBlock),
            Err(e) => return Err(e),
        }
        let data = &buf[..n];
        let mut written = 0;
        while written < n {
            match to.try_write(&data[written..]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Copied::Partial {
                        rest: data[written..].to_vec(),
                        read: n,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Copied::All(n))
    })
}

/// Writes all of `data`, waiting for `to` to drain as needed.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(w) => data = &data[w..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_and_ends_when_both_close() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_server, mut server) = pair().await;
        let moved = Moved::default();
        let relay = relay(
            &proxy_client,
            &proxy_server,
            None,
            std::future::pending(),
            &moved,
        );
        let talk = async {
            // 3 MiB up while the server echoes: the writes outrun the reads,
            // so the relay's partial-write path runs too.
            let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
            let (mut sr, mut sw) = server.split();
            let echo = async {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = sr.read(&mut buf).await.unwrap();
                    if n == 0 {
                        sw.shutdown().await.unwrap();
                        return;
                    }
                    sw.write_all(&buf[..n]).await.unwrap();
                }
            };
            let (mut cr, mut cw) = client.split();
            let send = async {
                cw.write_all(&data).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = cr.read_to_end(&mut back);
            let (_, _, r) = tokio::join!(echo, send, recv);
            r.unwrap();
            assert!(back == data, "echoed bytes differ");
        };
        let (end, ()) = tokio::join!(relay, talk);
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!(moved.to_server.load(Ordering::Relaxed), 3 * 1024 * 1024);
        assert_eq!(moved.to_client.load(Ordering::Relaxed), 3 * 1024 * 1024);
    }

    #[tokio::test]
    async fn idle_timeout_and_stop() {
        let (_client, proxy_client) = pair().await;
        let (proxy_server, _server) = pair().await;
        let moved = Moved::default();
        let end = relay(
            &proxy_client,
            &proxy_server,
            Some(Duration::from_millis(50)),
            std::future::pending(),
            &moved,
        )
        .await;
        assert_eq!(end, RelayEnd::Idle);
        let end = relay(
            &proxy_client,
            &proxy_server,
            None,
            tokio::time::sleep(Duration::from_millis(10)),
            &moved,
        )
        .await;
        assert_eq!(end, RelayEnd::Stopped);
    }
}
