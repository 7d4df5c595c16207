//! Counters of the replication master, for the admin API and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by the connections (relaxed atomics: each value is
/// exact, a snapshot of several is not one instant).
#[derive(Debug, Default)]
pub struct MasterMetrics {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_active: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) err_packets_sent: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) unknown_queries: AtomicU64,
    pub(crate) dumps_started: AtomicU64,
    pub(crate) dumps_active: AtomicU64,
    pub(crate) dump_errors: AtomicU64,
    pub(crate) transactions_sent: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MasterStats {
    /// TCP connections accepted (refused ones included).
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Connections turned away (too many connections, shutting down).
    pub connections_refused: u64,
    /// Failed logins (ERR 1045).
    pub auth_failures: u64,
    /// Connections closed for a malformed or out-of-order packet, or a
    /// handshake timeout.
    pub protocol_errors: u64,
    /// ERR packets sent (failed logins, unknown commands and queries, dump
    /// errors).
    pub err_packets_sent: u64,
    /// COM_QUERY packets answered.
    pub queries: u64,
    /// Queries we do not know (answered with OK or ERR, see the module docs).
    pub unknown_queries: u64,
    /// COM_BINLOG_DUMP requests.
    pub dumps_started: u64,
    /// Dumps streaming now.
    pub dumps_active: u64,
    /// Dumps ended by an ERR 1236 (trimmed or unknown position, bad source).
    pub dump_errors: u64,
    /// Transactions streamed.
    pub transactions_sent: u64,
    /// Binlog events streamed (ROTATE, FORMAT_DESCRIPTION and heartbeats
    /// included).
    pub events_sent: u64,
    /// HEARTBEAT events streamed.
    pub heartbeats_sent: u64,
    /// Bytes written to clients (packet headers included).
    pub bytes_sent: u64,
    /// Bytes read from clients (packet headers included).
    pub bytes_received: u64,
}

impl MasterMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> MasterStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MasterStats {
            connections_accepted: g(&self.connections_accepted),
            connections_active: g(&self.connections_active),
            connections_refused: g(&self.connections_refused),
            auth_failures: g(&self.auth_failures),
            protocol_errors: g(&self.protocol_errors),
            err_packets_sent: g(&self.err_packets_sent),
            queries: g(&self.queries),
            unknown_queries: g(&self.unknown_queries),
            dumps_started: g(&self.dumps_started),
            dumps_active: g(&self.dumps_active),
            dump_errors: g(&self.dump_errors),
            transactions_sent: g(&self.transactions_sent),
            events_sent: g(&self.events_sent),
            heartbeats_sent: g(&self.heartbeats_sent),
            bytes_sent: g(&self.bytes_sent),
            bytes_received: g(&self.bytes_received),
        }
    }
}

/// `counter += n`.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// `counter += 1`.
pub(crate) fn inc(counter: &AtomicU64) {
    add(counter, 1);
}

/// `counter -= 1` (gauges).
pub(crate) fn dec(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

/// Increments a gauge for as long as it lives.
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicU64) -> Self {
        inc(gauge);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        dec(self.0);
    }
}
