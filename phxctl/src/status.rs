//! `phxctl status`: every node's binlog server and proxy asked at once, one
//! line per node, in the manner of `patronictl list`.

use std::time::Duration;

use anyhow::Result;
use phxsql_adminapi::AdminClient;
use phxsql_config::{ClusterConfig, NodeConfig};
use serde_json::{Value, json};

/// What one node said (or that it did not answer).
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node: String,
    /// `voter`, `learner`, or `-` (not a member).
    pub member: String,
    pub role: String,
    pub lease_left_ms: Option<u64>,
    pub chosen_gtid: String,
    pub applied_gtid: String,
    pub lag_ms: Option<u64>,
    pub health: String,
    /// The full error behind an unreachable node (JSON only).
    pub error: Option<String>,
}

impl NodeRow {
    fn to_json(&self) -> Value {
        json!({
            "node": self.node,
            "member": self.member,
            "role": self.role,
            "lease_left_ms": self.lease_left_ms,
            "chosen_gtid": self.chosen_gtid,
            "applied_gtid": self.applied_gtid,
            "lag_ms": self.lag_ms,
            "health": self.health,
            "error": self.error,
        })
    }
}

/// Asks every node.
pub async fn gather(cfg: &ClusterConfig) -> Vec<NodeRow> {
    // The membership, from the first node that answers.
    let mut members = None;
    for n in &cfg.nodes {
        if let Ok(m) = crate::admin(cfg, n).get_json("/members").await {
            members = Some(m);
            break;
        }
    }
    let kind = |id: u64| -> String {
        let Some(m) = &members else {
            return "?".into();
        };
        let has = |key: &str| {
            m[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v["id"].as_u64() == Some(id)))
        };
        if has("voters") {
            "voter".into()
        } else if has("learners") {
            "learner".into()
        } else {
            "-".into()
        }
    };
    let mut rows = Vec::new();
    for n in &cfg.nodes {
        let mut r = row(cfg, n).await;
        r.member = kind(n.id);
        rows.push(r);
    }
    rows
}

async fn row(cfg: &ClusterConfig, node: &NodeConfig) -> NodeRow {
    let mut row = NodeRow {
        node: node.name.clone(),
        member: String::new(),
        role: "-".into(),
        lease_left_ms: None,
        chosen_gtid: String::new(),
        applied_gtid: String::new(),
        lag_ms: None,
        health: String::new(),
        error: None,
    };
    let status = match crate::admin(cfg, node).get_json("/status").await {
        Ok(s) => s,
        Err(e) => {
            row.health = "binlog server unreachable".into();
            row.error = Some(e.to_string());
            return row;
        }
    };
    let agent = &status["agent"];
    row.role = match agent["role"].as_str() {
        Some(r) => r.to_string(),
        None => status["role"].as_str().unwrap_or("-").to_string(),
    };
    if status["lease"]["master"].as_u64() == Some(node.id) {
        row.lease_left_ms = status["lease"]["remaining_ms"].as_u64();
    }
    row.chosen_gtid = status["store"]["last_gtid_pos"]
        .as_str()
        .unwrap_or("")
        .to_string();
    row.applied_gtid = status["mariadb"]["gtid_current_pos"]
        .as_str()
        .unwrap_or("")
        .to_string();
    row.lag_ms = agent["lag_ms"].as_u64();
    let mut problems = Vec::new();
    if row.role == "rebuilding" {
        // MariaDB is stopped on purpose: say so instead of "down".
        problems.push("MariaDB stopped for a rebuild (GET /rebuild shows its progress)".into());
    } else if let Some(e) = status["mariadb"]["error"].as_str() {
        problems.push(format!("MariaDB down ({e})"));
    }
    if let Some(detail) = agent["detail"].as_str()
        && matches!(row.role.as_str(), "diverged" | "blocked")
    {
        problems.push(detail.to_string());
    }
    if agent["proxy_alive"] == false {
        problems.push("no proxy heartbeat".into());
    }
    let mut proxy = AdminClient::new(node.proxy_admin_addr(), None, Duration::from_secs(2));
    if proxy.get_json("/status").await.is_err() {
        problems.push("proxy unreachable".into());
    }
    row.health = if problems.is_empty() {
        "ok".into()
    } else {
        problems.join("; ")
    };
    row
}

/// Prints the table (or JSON).
pub async fn print(cfg: &ClusterConfig, as_json: bool) -> Result<()> {
    let rows = gather(cfg).await;
    if as_json {
        let out = json!({
            "cluster": cfg.name,
            "nodes": rows.iter().map(NodeRow::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&cfg.name, &rows));
    }
    Ok(())
}

/// The bordered table.
pub fn table(cluster: &str, rows: &[NodeRow]) -> String {
    let header = [
        "Node",
        "Member",
        "Role",
        "Lease left",
        "Chosen GTID",
        "Applied GTID",
        "Lag",
        "Health",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.node.clone(),
                r.member.clone(),
                r.role.clone(),
                r.lease_left_ms
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                r.chosen_gtid.clone(),
                r.applied_gtid.clone(),
                r.lag_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                r.health.clone(),
            ]
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let rule = |title: &str| {
        let mut s = String::from("+");
        for w in &width {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        // The title overlays the rule's start: "+ Cluster: demo ---+---".
        let t = format!(" {title} ");
        let room = s.chars().count().saturating_sub(2);
        if !title.is_empty() && t.chars().count() <= room {
            let rest: String = s.chars().skip(1 + t.chars().count()).collect();
            s = format!("+{t}{rest}");
        }
        s.push('\n');
        s
    };
    let line = |vals: &[String]| {
        let mut s = String::from("|");
        for (v, w) in vals.iter().zip(&width) {
            s.push_str(&format!(" {v:<w$} |"));
        }
        s.push('\n');
        s
    };
    let mut out = rule(&format!("Cluster: {cluster}"));
    out.push_str(&line(&header.map(String::from)));
    out.push_str(&rule(""));
    for c in &cells {
        out.push_str(&line(c));
    }
    out.push_str(&rule(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            NodeRow {
                node: "node1".into(),
                member: "voter".into(),
                role: "master".into(),
                lease_left_ms: Some(1800),
                chosen_gtid: "0-1001001-7".into(),
                applied_gtid: "0-1001001-7".into(),
                lag_ms: Some(0),
                health: "ok".into(),
                error: None,
            },
            NodeRow {
                node: "node2".into(),
                member: "voter".into(),
                role: "-".into(),
                lease_left_ms: None,
                chosen_gtid: String::new(),
                applied_gtid: String::new(),
                lag_ms: None,
                health: "binlog server unreachable".into(),
                error: None,
            },
        ];
        let t = table("demo", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].starts_with("+ Cluster: demo "));
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[1].chars().count())
        );
        assert!(lines[3].contains("| node1 | voter  | master | 1.8 s"));
        assert!(lines[4].contains("binlog server unreachable"));
    }
}
