//! Per-port counters and their Prometheus text (`/metrics` on the proxy's
//! admin port). Written by hand for the same reason as the binlog server's:
//! the counters are plain atomics already.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which client port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    ReadWrite,
    ReadOnly,
}

impl Port {
    pub fn label(self) -> &'static str {
        match self {
            Port::ReadWrite => "rw",
            Port::ReadOnly => "ro",
        }
    }
}

/// Counters of one port.
#[derive(Debug, Default)]
pub struct PortMetrics {
    /// Client connections accepted (routed or not).
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// Refused because `proxy.max_connections` was reached.
    pub rejected_limit: AtomicU64,
    /// No master / no healthy replica, or the backend could not be reached.
    pub routing_errors: AtomicU64,
    /// Closed by the proxy because the master moved away from the backend.
    pub closed_master_changed: AtomicU64,
    /// Closed by the proxy after `proxy.idle_timeout`.
    pub closed_idle: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// Both ports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub rw: PortMetrics,
    pub ro: PortMetrics,
}

impl Metrics {
    pub fn port(&self, port: Port) -> &PortMetrics {
        match port {
            Port::ReadWrite => &self.rw,
            Port::ReadOnly => &self.ro,
        }
    }

    /// Prometheus text exposition, one `port` label per series.
    pub fn render(&self, cluster: &str, node: &str) -> String {
        type Field = fn(&PortMetrics) -> &AtomicU64;
        let series: [(&str, &str, &str, Field); 8] = [
            (
                "phxsqlproxy_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                |m| &m.accepted,
            ),
            (
                "phxsqlproxy_connections_active",
                "gauge",
                "Client connections open now.",
                |m| &m.active,
            ),
            (
                "phxsqlproxy_connections_rejected_total",
                "counter",
                "Client connections refused at max_connections.",
                |m| &m.rejected_limit,
            ),
            (
                "phxsqlproxy_routing_errors_total",
                "counter",
                "Connections with no backend: no master, no healthy replica, or the backend unreachable.",
                |m| &m.routing_errors,
            ),
            (
                "phxsqlproxy_closed_master_changed_total",
                "counter",
                "Read-write connections closed because the master changed.",
                |m| &m.closed_master_changed,
            ),
            (
                "phxsqlproxy_closed_idle_total",
                "counter",
                "Connections closed after the idle timeout.",
                |m| &m.closed_idle,
            ),
            (
                "phxsqlproxy_bytes_to_server_total",
                "counter",
                "Bytes relayed from clients to MariaDB.",
                |m| &m.bytes_to_server,
            ),
            (
                "phxsqlproxy_bytes_to_client_total",
                "counter",
                "Bytes relayed from MariaDB to clients.",
                |m| &m.bytes_to_client,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for port in [Port::ReadWrite, Port::ReadOnly] {
                let v = field(self.port(port)).load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{cluster=\"{cluster}\",node=\"{node}\",port=\"{}\"}} {v}",
                    port.label()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_series_for_both_ports() {
        let m = Metrics::default();
        m.rw.accepted.store(3, Ordering::Relaxed);
        let text = m.render("demo", "node1");
        assert!(text.contains(
            "phxsqlproxy_connections_accepted_total{cluster=\"demo\",node=\"node1\",port=\"rw\"} 3"
        ));
        assert!(text.contains(
            "phxsqlproxy_bytes_to_client_total{cluster=\"demo\",node=\"node1\",port=\"ro\"} 0"
        ));
        assert_eq!(text.matches("# TYPE").count(), 8);
    }
}
