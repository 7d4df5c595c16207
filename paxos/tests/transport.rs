//! Integration tests for `paxos::transport` over real TCP on 127.0.0.1.
//!
//! Frames written by hand here use an encoder independent of the crate's
//! `frame` module, so these tests also pin down the documented wire format.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use paxos::transport::{Incoming, NodeId, Transport, TransportConfig, TransportStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const CLUSTER: u64 = 0xC1;
/// Generous: the machine may be busy building other crates.
const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(cluster_id: u64, node_id: NodeId) -> Result<(Transport, mpsc::Receiver<Incoming>)> {
    Ok(Transport::start(TransportConfig::new(cluster_id, node_id, any_port())).await?)
}

/// Polls `cond` until it holds or `WAIT` passes.
async fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn wait_stats<F: Fn(&TransportStats) -> bool>(
    t: &Transport,
    what: &str,
    cond: F,
) -> Result<()> {
    wait_until(what, || cond(&t.stats()))
        .await
        .with_context(|| format!("stats: {:?}", t.stats()))
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

async fn recv(rx: &mut mpsc::Receiver<Incoming>) -> Result<Incoming> {
    within("a message", rx.recv())
        .await?
        .context("incoming channel closed")
}

/// Asserts that nothing has been delivered.
fn assert_empty(rx: &mut mpsc::Receiver<Incoming>) {
    if let Ok(m) = rx.try_recv() {
        panic!("unexpected delivery from {}: {:?}", m.from, m.payload);
    }
}

/// Independent encoder for the documented wire format.
fn raw_frame(cluster_id: u64, from: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&cluster_id.to_le_bytes());
    body.extend_from_slice(&from.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body);
    crc.update(payload);
    body.extend_from_slice(&crc.finalize().to_le_bytes());
    body.extend_from_slice(payload);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Payload for message `seq` from `from` to `to`; lengths vary, seq 0 is empty.
fn payload(from: NodeId, to: NodeId, seq: usize) -> Bytes {
    let tag = format!("{from}->{to}#{seq};");
    Bytes::from(tag.repeat(seq % 7).into_bytes())
}

#[tokio::test]
async fn three_nodes_all_to_all_in_order() -> Result<()> {
    const N: usize = 300;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(CLUSTER, id).await?);
    }
    // Full membership, self included (a node then dials itself).
    let table: HashMap<NodeId, SocketAddr> = (1..=3)
        .zip(nodes.iter().map(|(t, _)| t.local_addr()))
        .collect();
    for (t, _) in &nodes {
        t.set_peers(table.clone());
    }

    for seq in 0..N {
        for (from, (t, _)) in (1..=3).zip(&nodes) {
            for to in 1..=3 {
                t.send(to, payload(from, to, seq));
            }
        }
    }

    for (to, (t, rx)) in (1..=3).zip(nodes.iter_mut()) {
        let mut next_seq: HashMap<NodeId, usize> = HashMap::new();
        for _ in 0..3 * N {
            let m = recv(rx).await?;
            let seq = next_seq.entry(m.from).or_default();
            assert_eq!(
                m.payload,
                payload(m.from, to, *seq),
                "node {to} from {}",
                m.from
            );
            *seq += 1;
        }
        assert_eq!(next_seq, (1..=3).map(|f| (f, N)).collect());
        let s = t.stats();
        assert_eq!(s.frames_received, 3 * N as u64);
        assert_eq!(
            s.dropped_unknown_peer + s.malformed_frames + s.dropped_queue_full,
            0
        );
    }
    for (t, _) in &nodes {
        wait_stats(t, "all frames flushed", |s| s.frames_sent == 3 * N as u64).await?;
        assert_eq!(t.stats().connects, 3);
    }
    Ok(())
}

#[tokio::test]
async fn large_payload_arrives_intact() -> Result<()> {
    let (a, _rx_a) = start(CLUSTER, 1).await?;
    let (b, mut rx_b) = start(CLUSTER, 2).await?;
    let peers: HashMap<_, _> = [(1, a.local_addr()), (2, b.local_addr())].into();
    a.set_peers(peers.clone());
    b.set_peers(peers);

    let big: Bytes = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into();
    a.send(2, Bytes::from_static(b"before"));
    a.send(2, big.clone());
    a.send(2, Bytes::from_static(b"after"));

    assert_eq!(recv(&mut rx_b).await?.payload, "before");
    let m = recv(&mut rx_b).await?;
    assert_eq!(m.from, 1);
    assert!(m.payload == big, "20 MiB payload corrupted");
    assert_eq!(recv(&mut rx_b).await?.payload, "after");
    Ok(())
}

#[tokio::test]
async fn foreign_cluster_is_dropped_and_disconnected() -> Result<()> {
    let (rcv, mut rx) = start(CLUSTER, 1).await?;
    let (foreign, _rx_f) = start(CLUSTER + 1, 2).await?;
    rcv.set_peers([(2, foreign.local_addr())].into());
    foreign.set_peers([(1, rcv.local_addr())].into());

    foreign.send(1, Bytes::from_static(b"hello from elsewhere"));
    wait_stats(&rcv, "foreign frame counted", |s| {
        s.dropped_foreign_cluster == 1
    })
    .await?;
    assert_empty(&mut rx);
    // The receiver hung up, so the sender notices and redials.
    wait_stats(&foreign, "sender reconnect", |s| s.connects >= 2).await?;

    // A proper peer is unaffected.
    let (good, _rx_g) = start(CLUSTER, 3).await?;
    rcv.set_peers([(2, foreign.local_addr()), (3, good.local_addr())].into());
    good.set_peers([(1, rcv.local_addr())].into());
    good.send(1, Bytes::from_static(b"ok"));
    let m = recv(&mut rx).await?;
    assert_eq!((m.from, &m.payload[..]), (3, &b"ok"[..]));
    Ok(())
}

#[tokio::test]
async fn unknown_peer_is_dropped_but_connection_kept() -> Result<()> {
    let (rcv, mut rx) = start(CLUSTER, 1).await?;
    let (stranger, _rx_s) = start(CLUSTER, 9).await?;
    stranger.set_peers([(1, rcv.local_addr())].into());

    stranger.send(1, Bytes::from_static(b"who am I"));
    wait_stats(&rcv, "unknown peer counted", |s| {
        s.dropped_unknown_peer == 1
    })
    .await?;
    assert_empty(&mut rx);

    // Once membership catches up, the same connection delivers.
    rcv.set_peers([(9, stranger.local_addr())].into());
    stranger.send(1, Bytes::from_static(b"now known"));
    let m = recv(&mut rx).await?;
    assert_eq!((m.from, &m.payload[..]), (9, &b"now known"[..]));
    assert_eq!(
        stranger.stats().connects,
        1,
        "connection should have been kept"
    );
    assert_eq!(rcv.stats().dropped_unknown_peer, 1);
    Ok(())
}

/// Sends `bytes` on a raw connection (optionally half-closing it) and checks
/// that the transport closes the connection.
async fn expect_closed_after(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    if half_close {
        s.shutdown().await?;
    }
    let mut buf = [0u8; 16];
    match within("connection close", s.read(&mut buf)).await? {
        Ok(0) | Err(_) => Ok(()),
        Ok(n) => bail!("transport wrote {n} bytes on an inbound connection"),
    }
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() -> Result<()> {
    let (rcv, mut rx) = start(CLUSTER, 1).await?;
    let (good, _rx_g) = start(CLUSTER, 2).await?;
    rcv.set_peers([(2, good.local_addr()), (7, any_port())].into());
    good.set_peers([(1, rcv.local_addr())].into());
    let addr = rcv.local_addr();

    // The good peer connects first and must survive everything below.
    good.send(1, Bytes::from_static(b"first"));
    assert_eq!(recv(&mut rx).await?.payload, "first");

    // A hand-built valid frame from a known id is accepted (wire format check).
    let mut raw = TcpStream::connect(addr).await?;
    raw.write_all(&raw_frame(CLUSTER, 7, b"raw but valid"))
        .await?;
    let m = recv(&mut rx).await?;
    assert_eq!((m.from, &m.payload[..]), (7, &b"raw but valid"[..]));

    let mut bad_crc = raw_frame(CLUSTER, 7, b"tampered");
    *bad_crc.last_mut().unwrap() ^= 1;
    let mut truncated = raw_frame(CLUSTER, 7, &[5u8; 100]);
    truncated.truncate(40);
    let cases: [(&str, Vec<u8>, bool); 5] = [
        // "GET " read as a length is ~540 MB: beyond the limit.
        (
            "http garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "length below header size",
            [3, 0, 0, 0, 1, 2, 3].to_vec(),
            false,
        ),
        ("bad crc", bad_crc, false),
        ("4 GiB length", u32::MAX.to_le_bytes().to_vec(), false),
        ("truncated frame then close", truncated, true),
    ];
    for (i, (name, bytes, half_close)) in cases.into_iter().enumerate() {
        expect_closed_after(addr, &bytes, half_close)
            .await
            .with_context(|| format!("case {name}"))?;
        wait_stats(&rcv, name, |s| s.malformed_frames == i as u64 + 1).await?;
    }
    assert_empty(&mut rx);

    // Neither the good peer's connection nor the earlier raw one was affected.
    good.send(1, Bytes::from_static(b"still here"));
    let m = recv(&mut rx).await?;
    assert_eq!((m.from, &m.payload[..]), (2, &b"still here"[..]));
    raw.write_all(&raw_frame(CLUSTER, 7, b"me too")).await?;
    assert_eq!(recv(&mut rx).await?.payload, "me too");
    assert_eq!(good.stats().connects, 1);
    Ok(())
}

#[tokio::test]
async fn sender_reconnects_after_receiver_restarts() -> Result<()> {
    let (snd, _rx_s) = start(CLUSTER, 1).await?;
    let (rcv, mut rx) = start(CLUSTER, 2).await?;
    let addr = rcv.local_addr();
    rcv.set_peers([(1, snd.local_addr())].into());
    snd.set_peers([(2, addr)].into());
    snd.send(2, Bytes::from_static(b"before restart"));
    assert_eq!(recv(&mut rx).await?.payload, "before restart");

    rcv.shutdown();
    // The channel closes once every task of the old transport has exited,
    // including the accept loop that owns the listener.
    ensure!(within("old transport to stop", rx.recv()).await?.is_none());
    drop(rcv);
    wait_stats(&snd, "sender to notice", |s| s.connect_failures >= 1).await?;

    let cfg = TransportConfig::new(CLUSTER, 2, addr);
    let (rcv2, mut rx2) = within("rebind", async {
        loop {
            match Transport::start(cfg.clone()).await {
                Ok(started) => break started,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await?;
    rcv2.set_peers([(1, snd.local_addr())].into());

    // Messages sent from now on are queued until the redial succeeds.
    for i in 0..100u32 {
        snd.send(2, Bytes::copy_from_slice(&i.to_le_bytes()));
    }
    for i in 0..100u32 {
        let m = recv(&mut rx2).await?;
        assert_eq!(m.payload[..], i.to_le_bytes(), "message {i}");
    }
    assert!(snd.stats().connects >= 2);
    Ok(())
}

#[tokio::test]
async fn outbound_frames_match_wire_format_and_removal_closes() -> Result<()> {
    let (snd, _rx) = start(CLUSTER, 5).await?;
    let listener = TcpListener::bind(any_port()).await?;
    snd.set_peers([(6, listener.local_addr()?)].into());
    snd.send(6, Bytes::from_static(b"abc"));
    snd.send(6, Bytes::new());

    let (mut conn, _) = within("dial", listener.accept()).await??;
    let expected = [raw_frame(CLUSTER, 5, b"abc"), raw_frame(CLUSTER, 5, b"")].concat();
    let mut got = vec![0u8; expected.len()];
    within("frames", conn.read_exact(&mut got)).await??;
    assert_eq!(got, expected);
    wait_stats(&snd, "send counters", |s| {
        s.frames_sent == 2 && s.bytes_sent == expected.len() as u64
    })
    .await?;

    // Removing the peer closes its connection.
    snd.set_peers(HashMap::new());
    let mut rest = [0u8; 8];
    ensure!(within("close", conn.read(&mut rest)).await?? == 0);
    snd.send(6, Bytes::from_static(b"gone"));
    assert_eq!(snd.stats().dropped_no_route, 1);
    Ok(())
}

#[tokio::test]
async fn full_queue_and_unreachable_peer() -> Result<()> {
    // A port with nothing listening: dials fail and nothing drains the queue.
    let dead = TcpListener::bind(any_port()).await?.local_addr()?;
    let mut cfg = TransportConfig::new(CLUSTER, 1, any_port());
    cfg.send_queue_len = 4;
    let (t, _rx) = Transport::start(cfg).await?;
    t.set_peers([(2, dead)].into());

    for _ in 0..10 {
        t.send(2, Bytes::from_static(b"x"));
    }
    t.send(3, Bytes::from_static(b"nowhere"));
    let s = t.stats();
    assert_eq!((s.dropped_queue_full, s.dropped_no_route), (6, 1));
    wait_stats(&t, "failed dials", |s| s.connect_failures >= 2).await?;
    assert_eq!(t.stats().connects, 0);

    t.shutdown();
    t.send(2, Bytes::from_static(b"after shutdown"));
    assert_eq!(t.stats().dropped_no_route, 2);
    Ok(())
}
