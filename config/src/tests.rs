use crate::*;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

const FILE: &str = "/etc/phxsql/cluster.yaml";

/// A minimal valid file; tests replace or append lines.
const MIN: &str = "\
version: 1
cluster_id: 7
credentials:
  replication:
    password: repl-secret-1
  mariadb_admin:
    password: admin-secret-2
  admin_api:
    token: token-secret-3
nodes:
  - name: a
    id: 1
    host: 127.0.0.1
    base_port: 17000
  - name: b
    id: 2
    host: 127.0.0.1
    base_port: 17010
  - name: c
    id: 3
    host: 127.0.0.1
    base_port: 17020
";

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
    ClusterConfig::from_str_with_env(text, FILE, &no_env)
}

fn ok(text: &str) -> ClusterConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The error's message; asserts it names the file, the key and the problem.
#[track_caller]
fn fails(text: &str, key: &str, problem: &str) -> String {
    let e = match parse(text) {
        Ok(_) => panic!("expected an error about {key}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.starts_with(FILE), "no file in: {msg}");
    assert_eq!(e.key(), Some(key), "wrong key in: {msg}");
    assert!(
        msg.contains(&format!(": {key}: ")),
        "no key `{key}` in: {msg}"
    );
    assert!(msg.contains(problem), "no `{problem}` in: {msg}");
    msg
}

/// Like `fails`, and the message carries this line (and some column).
#[track_caller]
fn fails_at(text: &str, key: &str, problem: &str, line: u64) -> String {
    let msg = fails(text, key, problem);
    assert!(
        msg.starts_with(&format!("{FILE}:{line}:")),
        "expected line {line} in: {msg}"
    );
    msg
}

fn with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "test bug: `{from}` not in the text");
    text.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> u64 {
    let i = text
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle");
    i as u64 + 1
}

// ---------------------------------------------------------------- defaults

#[test]
fn minimal_file_gets_defaults() {
    let c = ok(MIN);
    assert_eq!(c.version, 1);
    assert_eq!(c.cluster_id, 7);
    assert_eq!(c.name, "phxsql");
    assert_eq!(c.source, Path::new(FILE));
    assert_eq!(c.lease.duration, Duration::from_secs(2));
    assert_eq!(c.lease.renew_interval, Duration::from_millis(500));
    assert_eq!(c.lease.drift, 0.05);
    assert_eq!(c.credentials.replication.user, "phxsql_repl");
    assert_eq!(c.credentials.mariadb_admin.user, "phxsql_admin");
    assert_eq!(c.credentials.replication.password.expose(), "repl-secret-1");
    assert_eq!(
        c.credentials.mariadb_admin.password.expose(),
        "admin-secret-2"
    );
    assert_eq!(c.credentials.admin_token.expose(), "token-secret-3");
    assert_eq!(*c.credentials.admin_token.source(), SecretSource::Inline);
    assert_eq!(c.mariadb.binary, Path::new("mariadbd"));
    assert_eq!(c.mariadb.server_id_base, 1000);
    assert_eq!(c.mariadb.start_timeout, Duration::from_secs(60));
    assert!(c.mariadb.options.is_empty());
    assert_eq!(c.proxy.max_connections, 1024);
    assert_eq!(c.proxy.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.proxy.idle_timeout, None);
    assert_eq!(c.proxy.master_wait_timeout, Duration::from_secs(5));
    assert!(c.proxy.proxy_protocol);
    assert_eq!(c.proxy.ro_max_lag, Duration::from_secs(5));
    assert!(c.proxy.ro_include_master);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let b = c.node("b").unwrap();
    assert_eq!(b.id, 2);
    assert_eq!(b.role, Role::Voter);
    assert_eq!(b.bind, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(
        [
            b.paxos_port,
            b.binlog_port,
            b.admin_port,
            b.proxy_rw_port,
            b.proxy_ro_port,
            b.mariadb_port,
            b.proxy_admin_port
        ],
        [17010, 17011, 17012, 17013, 17014, 17015, 17016]
    );
    assert_eq!(b.data_dir, Path::new("/etc/phxsql/data/b"));
    assert_eq!(b.mariadb_datadir, Path::new("/etc/phxsql/data/b/mariadb"));
    assert_eq!(b.paxos_addr(), "127.0.0.1:17010");
    assert_eq!(b.admin_url(), "http://127.0.0.1:17012");
    assert_eq!(
        b.listen_addr(b.proxy_rw_port).to_string(),
        "127.0.0.1:17013"
    );
    assert_eq!(c.node_by_id(3).unwrap().name, "c");
    assert_eq!(
        c.initial_voters(),
        vec![
            (1, "127.0.0.1:17000".to_string()),
            (2, "127.0.0.1:17010".to_string()),
            (3, "127.0.0.1:17020".to_string())
        ]
    );
    assert_eq!(c.admin_urls().len(), 3);
}

#[test]
fn cluster_base_port_applies_to_nodes_without_one() {
    let text = "\
version: 1
cluster_id: 1
base_port: 20000
credentials:
  replication: {password: x}
  mariadb_admin: {password: y}
  admin_api: {token: z}
nodes:
  - {name: n1, id: 1, host: 10.0.0.1}
  - {name: n2, id: 2, host: 10.0.0.2}
  - {name: n3, id: 3, host: db3.example.com}
";
    let c = ok(text);
    for n in &c.nodes {
        assert_eq!(n.paxos_port, 20000);
        assert_eq!(n.mariadb_port, 20005);
    }
    // A host name: listen on all addresses.
    assert_eq!(c.nodes[2].bind.to_string(), "0.0.0.0");
    assert_eq!(c.nodes[2].paxos_addr(), "db3.example.com:20000");
    // Same directories on different hosts are fine.
    assert_eq!(c.nodes[0].data_dir, Path::new("/etc/phxsql/data/n1"));

    // Without any base_port: the default 17000.
    let c = ok(&text.replace("base_port: 20000\n", ""));
    assert_eq!(c.nodes[0].paxos_port, DEFAULT_BASE_PORT);
}

#[test]
fn explicit_values_override_defaults() {
    let text = format!(
        "{MIN}\
name: prod
data_root: /srv/phx
lease:
  duration: 10s
  renew_interval: 2s
  drift: 0.1
mariadb:
  binary: bin/mariadbd
  server_id_base: 5000
  start_timeout: 2m
  options:
    innodb_buffer_pool_size: 1G
    --max-connections: 300
    skip_name_resolve:
    log_warnings: true
proxy:
  max_connections: 10
  connect_timeout: 500ms
  idle_timeout: 1h
  master_wait_timeout: 0
  proxy_protocol: false
  ro_max_lag: 750ms
  ro_include_master: false
"
    );
    let text = with(
        &text,
        "    base_port: 17020\n",
        "    base_port: 17020\n    role: learner\n    bind: 0.0.0.0\n    paxos_port: 30000\n    data_dir: nodes/c\n    mariadb_datadir: /var/lib/mysql\n",
    );
    let c = ok(&text);
    assert_eq!(c.name, "prod");
    assert_eq!(c.lease.duration, Duration::from_secs(10));
    assert_eq!(c.lease.renew_interval, Duration::from_secs(2));
    assert_eq!(c.lease.drift, 0.1);
    assert_eq!(c.mariadb.binary, Path::new("/etc/phxsql/bin/mariadbd"));
    assert_eq!(c.mariadb.server_id_base, 5000);
    assert_eq!(c.mariadb.start_timeout, Duration::from_secs(120));
    assert_eq!(
        c.mariadb.option_args(),
        vec![
            "--innodb_buffer_pool_size=1G",
            "--log_warnings=ON",
            "--max-connections=300",
            "--skip_name_resolve"
        ]
    );
    assert_eq!(c.proxy.max_connections, 10);
    assert_eq!(c.proxy.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.proxy.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(c.proxy.master_wait_timeout, Duration::ZERO);
    assert!(!c.proxy.proxy_protocol);
    assert_eq!(c.proxy.ro_max_lag, Duration::from_millis(750));
    assert!(!c.proxy.ro_include_master);
    let a = c.node("a").unwrap();
    assert_eq!(a.data_dir, Path::new("/srv/phx/a"));
    let n = c.node("c").unwrap();
    assert_eq!(n.role, Role::Learner);
    assert_eq!(n.bind.to_string(), "0.0.0.0");
    assert_eq!(n.paxos_port, 30000);
    assert_eq!(n.binlog_port, 17021);
    assert_eq!(n.data_dir, Path::new("/etc/phxsql/nodes/c"));
    assert_eq!(n.mariadb_datadir, Path::new("/var/lib/mysql"));
    assert_eq!(c.voters().count(), 2);
    // Two voters: allowed, with a warning.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("nodes: 2 voters"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn relative_paths_follow_the_files_directory() {
    let c = ClusterConfig::from_str_with_env(
        &format!("{MIN}data_root: ../state\n"),
        "deploy/conf/cluster.yaml",
        &no_env,
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.nodes[0].data_dir, cwd.join("deploy/state/a"));
    assert!(c.nodes[0].data_dir.is_absolute());
    // A file name alone: its directory is the current one.
    let c = ClusterConfig::from_str_with_env(MIN, "cluster.yaml", &no_env).unwrap();
    assert_eq!(c.nodes[0].data_dir, cwd.join("data/a"));
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let head = &MIN[..MIN.find("nodes:").unwrap()];
    let text = format!(
        "{head}nodes:
  - &node {{name: a, id: 1, host: 127.0.0.1, base_port: 17000}}
  - <<: *node
    name: b
    id: 2
    base_port: 17010
  - <<: *node
    name: c
    id: 3
    base_port: 17020
"
    );
    let c = ok(&text);
    assert_eq!(c.nodes[2].host, "127.0.0.1");
    assert_eq!(c.nodes[2].paxos_port, 17020);
    // But a key of its own to hold the anchor is not part of the format.
    let text = format!("{MIN}x-defaults: &d\n  host: 127.0.0.1\n");
    fails_at(&text, "x-defaults", "unknown field `x-defaults`", 23);
}

// ---------------------------------------------------------------- format errors

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    // Top level.
    let text = format!("{MIN}lease_time: 3s\n");
    fails_at(
        &text,
        "lease_time",
        "unknown field `lease_time`",
        line_of(&text, "lease_time"),
    );
    // Nested, in a sequence.
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    paxos_prot: 17100\n",
    );
    let msg = fails_at(
        &text,
        "nodes[1].paxos_prot",
        "unknown field `paxos_prot`",
        line_of(&text, "paxos_prot"),
    );
    assert!(msg.contains("paxos_port"), "expected keys listed: {msg}");
    // In a section.
    let text = format!("{MIN}lease:\n  durration: 3s\n");
    fails_at(
        &text,
        "lease.durration",
        "unknown field",
        line_of(&text, "durration"),
    );
    let text = with(
        MIN,
        "    password: repl-secret-1\n",
        "    password: repl-secret-1\n    pasword_env: X\n",
    );
    fails(
        &text,
        "credentials.replication.pasword_env",
        "unknown field",
    );
}

#[test]
fn version_is_required_and_checked_first() {
    fails(&with(MIN, "version: 1\n", ""), "version", "missing");
    // A future version: said so, before complaining about keys it may have added.
    let text = format!(
        "{}new_feature: yes\n",
        with(MIN, "version: 1", "version: 2")
    );
    fails_at(&text, "version", "unsupported version 2", 1);
}

#[test]
fn missing_required_keys() {
    fails(
        &with(MIN, "cluster_id: 7\n", ""),
        "cluster_id",
        "missing field `cluster_id`",
    );
    let text = "version: 1\ncluster_id: 7\nnodes: []\n";
    fails(text, "credentials", "missing field `credentials`");
    let text = with(MIN, "    id: 2\n", "");
    fails(&text, "nodes[1].id", "missing field `id`");
    let text = with(
        MIN,
        "    host: 127.0.0.1\n    base_port: 17020\n",
        "    base_port: 17020\n",
    );
    fails(&text, "nodes[2].host", "missing field `host`");
}

#[test]
fn wrong_types_and_syntax_errors_have_positions() {
    let text = with(MIN, "cluster_id: 7", "cluster_id: seven");
    fails_at(
        &text,
        "cluster_id",
        "expected a whole number, found `seven`",
        2,
    );
    let text = with(MIN, "    id: 2\n", "    id: -2\n");
    fails_at(
        &text,
        "nodes[1].id",
        "-2 is out of range",
        line_of(&text, "id: -2"),
    );
    let text = with(MIN, "    id: 3\n", "    id: 3\n    role: lerner\n");
    fails_at(&text, "nodes[2].role", "lerner", line_of(&text, "lerner"));
    let text = format!("{MIN}lease: {{duration: [3s}}\n");
    let e = parse(&text).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{FILE}:")), "{e}");
    assert!(e.position().is_some(), "{e}");
    let text = with(MIN, "nodes:\n", "nodes:\n  oops\n");
    let e = parse(&text).unwrap_err();
    assert!(e.to_string().starts_with(FILE), "{e}");
    // A duplicate key.
    let text = format!("{MIN}cluster_id: 8\n");
    let e = parse(&text).unwrap_err();
    assert!(e.to_string().contains(": cluster_id: duplicate"), "{e}");
    assert_eq!(
        e.position().map(|p| p.0),
        Some(line_of(&text, "cluster_id: 8"))
    );
}

#[test]
fn duration_errors_name_the_key() {
    let text = format!("{MIN}lease:\n  duration: 3\n");
    fails_at(
        &text,
        "lease.duration",
        "has no unit",
        line_of(&text, "duration: 3"),
    );
    let text = format!("{MIN}proxy:\n  connect_timeout: 3 parsecs\n");
    fails_at(
        &text,
        "proxy.connect_timeout",
        "unknown unit `parsecs`",
        line_of(&text, "parsecs"),
    );
}

// ---------------------------------------------------------------- validation errors

#[test]
fn cluster_id_must_be_nonzero() {
    fails_at(
        &with(MIN, "cluster_id: 7", "cluster_id: 0"),
        "cluster_id",
        "must be nonzero",
        2,
    );
}

#[test]
fn cluster_name_must_not_be_empty() {
    fails(&format!("{MIN}name: ''\n"), "name", "must not be empty");
}

#[test]
fn at_least_one_node_and_one_voter() {
    let text = format!("{}nodes: []\n", &MIN[..MIN.find("nodes:").unwrap()]);
    fails_at(&text, "nodes", "no nodes", line_of(&text, "nodes"));
    let mut text = MIN.to_string();
    for base in ["17000", "17010", "17020"] {
        text = with(
            &text,
            &format!("base_port: {base}\n"),
            &format!("base_port: {base}\n    role: learner\n"),
        );
    }
    fails(&text, "nodes", "no voter");
}

#[test]
fn even_number_of_voters_is_a_warning() {
    let text = format!("{MIN}  - name: d\n    id: 4\n    host: 127.0.0.1\n    base_port: 17030\n");
    let c = ok(&text);
    assert_eq!(c.warnings.len(), 1);
    let w = &c.warnings[0];
    assert!(
        w.starts_with(FILE) && w.contains(": nodes: 4 voters") && w.contains("odd"),
        "{w}"
    );
}

#[test]
fn node_names_are_valid_and_unique() {
    let text = with(MIN, "name: b", "name: a");
    fails_at(
        &text,
        "nodes[1].name",
        "`a` is also the name of nodes[0]",
        15,
    );
    fails(
        &with(MIN, "name: b", "name: ''"),
        "nodes[1].name",
        "must not be empty",
    );
    fails(
        &with(MIN, "name: b", "name: '../b'"),
        "nodes[1].name",
        "not a valid node name",
    );
}

#[test]
fn node_ids_are_nonzero_and_unique() {
    fails_at(
        &with(MIN, "id: 3", "id: 0"),
        "nodes[2].id",
        "must be nonzero",
        20,
    );
    fails_at(
        &with(MIN, "id: 3", "id: 1"),
        "nodes[2].id",
        "id 1 is also the id of nodes[0] (a)",
        20,
    );
}

#[test]
fn ports_are_valid() {
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    admin_port: 0\n",
    );
    fails_at(
        &text,
        "nodes[1].admin_port",
        "0 is not a port number",
        line_of(&text, "admin_port"),
    );
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    admin_port: 70000\n",
    );
    fails(
        &text,
        "nodes[1].admin_port",
        "70000 is not a port number (1 to 65535)",
    );
    let text = with(MIN, "base_port: 17010", "base_port: 65533");
    fails(&text, "nodes[1].base_port", "too high");
    fails(
        &format!("{MIN}base_port: 0\n"),
        "base_port",
        "0 is not a port number",
    );
}

#[test]
fn every_host_port_pair_is_used_once() {
    // Explicit against explicit.
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    paxos_port: 17005\n",
    );
    let msg = fails_at(
        &text,
        "nodes[1].paxos_port",
        "port 17005 on 127.0.0.1 is already used by nodes[0].mariadb_port (derived: nodes[0].base_port 17000 + 5)",
        line_of(&text, "paxos_port: 17005"),
    );
    assert!(!msg.is_empty());
    // Derived against derived: base ports too close.
    let text = with(MIN, "base_port: 17010", "base_port: 17003");
    fails(
        &text,
        "nodes[1].paxos_port",
        "port 17003 on 127.0.0.1 is already used by nodes[0].proxy_rw_port",
    );
    // Within one node.
    let text = with(
        MIN,
        "    base_port: 17000\n",
        "    base_port: 17000\n    proxy_ro_port: 17003\n",
    );
    fails(
        &text,
        "nodes[0].proxy_ro_port",
        "already used by nodes[0].proxy_rw_port",
    );
    // Same ports on different hosts are fine.
    let text = MIN.replacen("host: 127.0.0.1", "host: 127.0.0.2", 1);
    let text = with(&text, "base_port: 17010", "base_port: 17000");
    ok(&text);
}

#[test]
fn hosts_and_bind_addresses_are_checked() {
    fails(
        &with(
            MIN,
            "host: 127.0.0.1\n    base_port: 17010",
            "host: 127.0.0.1:3306\n    base_port: 17010",
        ),
        "nodes[1].host",
        "not a host",
    );
    fails(
        &with(
            MIN,
            "host: 127.0.0.1\n    base_port: 17010",
            "host: ''\n    base_port: 17010",
        ),
        "nodes[1].host",
        "must not be empty",
    );
    fails(
        &with(
            MIN,
            "host: 127.0.0.1\n    base_port: 17010",
            "host: 'a b'\n    base_port: 17010",
        ),
        "nodes[1].host",
        "not a host name",
    );
    let c = ok(&with(
        MIN,
        "host: 127.0.0.1\n    base_port: 17010",
        "host: '::1'\n    base_port: 17010",
    ));
    assert_eq!(c.nodes[1].paxos_addr(), "[::1]:17010");
    assert_eq!(c.nodes[1].listen_addr(1).to_string(), "[::1]:1");
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    bind: localhost\n",
    );
    fails(&text, "nodes[1].bind", "not an IP address");
}

#[test]
fn directories_are_not_shared_on_one_host() {
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    data_dir: data/a\n",
    );
    fails_at(
        &text,
        "nodes[1].data_dir",
        "is also nodes[0].data_dir",
        line_of(&text, "data_dir: data/a"),
    );
    let text = with(
        MIN,
        "    base_port: 17010\n",
        "    base_port: 17010\n    mariadb_datadir: /etc/phxsql/data/b\n",
    );
    fails(
        &text,
        "nodes[1].mariadb_datadir",
        "is also nodes[1].data_dir",
    );
}

#[test]
fn lease_is_sensible() {
    let lease = |body: &str| format!("{MIN}lease:\n{body}");
    fails(
        &lease("  duration: 0s\n"),
        "lease.duration",
        "must be longer than zero",
    );
    fails(
        &lease("  renew_interval: 0ms\n"),
        "lease.renew_interval",
        "must be longer than zero",
    );
    fails_at(
        &lease("  duration: 3s\n  renew_interval: 2s\n"),
        "lease.renew_interval",
        "more than half the lease",
        line_of(
            &lease("  duration: 3s\n  renew_interval: 2s\n"),
            "renew_interval",
        ),
    );
    // The default renew interval follows the lease.
    let c = ok(&lease("  duration: 10s\n"));
    assert_eq!(c.lease.renew_interval, Duration::from_millis(2500));
    for bad in ["0", "0.5", "-0.1", "1"] {
        fails(
            &lease(&format!("  drift: {bad}\n")),
            "lease.drift",
            "out of range",
        );
    }
    fails(
        &lease("  drift: .nan\n"),
        "lease.drift",
        "not a finite number",
    );
    ok(&lease("  drift: 0.49\n"));
}

#[test]
fn proxy_and_mariadb_values_are_checked() {
    fails(
        &format!("{MIN}proxy:\n  max_connections: 0\n"),
        "proxy.max_connections",
        "out of range",
    );
    fails(
        &format!("{MIN}proxy:\n  connect_timeout: 0s\n"),
        "proxy.connect_timeout",
        "longer than zero",
    );
    fails(
        &format!("{MIN}proxy:\n  idle_timeout: 0s\n"),
        "proxy.idle_timeout",
        "leave the key out",
    );
    fails(
        &format!("{MIN}mariadb:\n  server_id_base: 0\n"),
        "mariadb.server_id_base",
        "out of range",
    );
    fails(
        &format!("{MIN}mariadb:\n  server_id_base: 4294967295\n"),
        "mariadb.server_id_base",
        "out of range",
    );
    fails(
        &format!("{MIN}mariadb:\n  binary: ''\n"),
        "mariadb.binary",
        "must not be empty",
    );
    fails(
        &format!("{MIN}mariadb:\n  start_timeout: 0s\n"),
        "mariadb.start_timeout",
        "longer than zero",
    );
    let text = format!("{MIN}mariadb:\n  options:\n    sync-binlog: 0\n");
    fails_at(
        &text,
        "mariadb.options.sync-binlog",
        "set by the agent",
        line_of(&text, "sync-binlog"),
    );
    fails(
        &format!("{MIN}mariadb:\n  options:\n    rpl_semi_sync_master_timeout: 10\n"),
        "mariadb.options.rpl_semi_sync_master_timeout",
        "set by the agent",
    );
    fails(
        &format!("{MIN}mariadb:\n  options:\n    --PORT: 1\n"),
        "mariadb.options.--PORT",
        "set by the agent",
    );
}

// ---------------------------------------------------------------- secrets

fn test_env(name: &str) -> Option<OsString> {
    match name {
        "PHX_TEST_REPL" => Some("from-env-repl".into()),
        "PHX_TEST_EMPTY" => Some("".into()),
        _ => None,
    }
}

#[test]
fn secrets_from_the_environment() {
    let text = with(
        MIN,
        "    password: repl-secret-1\n",
        "    user: r\n    password_env: PHX_TEST_REPL\n",
    );
    let c = ClusterConfig::from_str_with_env(&text, FILE, &test_env).unwrap();
    assert_eq!(c.credentials.replication.user, "r");
    assert_eq!(c.credentials.replication.password.expose(), "from-env-repl");
    assert_eq!(
        *c.credentials.replication.password.source(),
        SecretSource::Env("PHX_TEST_REPL".into())
    );

    let unset = with(
        MIN,
        "    password: repl-secret-1\n",
        "    password_env: PHX_TEST_UNSET\n",
    );
    let e = ClusterConfig::from_str_with_env(&unset, FILE, &test_env)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{FILE}:5:")), "{e}");
    assert!(
        e.contains(
            ": credentials.replication.password_env: environment variable PHX_TEST_UNSET is not set"
        ),
        "{e}"
    );

    let empty = with(
        MIN,
        "    token: token-secret-3\n",
        "    token_env: PHX_TEST_EMPTY\n",
    );
    let e = ClusterConfig::from_str_with_env(&empty, FILE, &test_env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            ": credentials.admin_api.token_env: environment variable PHX_TEST_EMPTY is empty"
        ),
        "{e}"
    );
}

#[test]
fn secrets_from_the_process_environment() {
    let var = "PHXSQL_CONFIG_TEST_ADMIN_PASSWORD_7F3A";
    // SAFETY: a name no other test or library reads; Rust serializes its own
    // environment accesses.
    unsafe { std::env::set_var(var, "process-env-secret") };
    let text = with(
        MIN,
        "    password: admin-secret-2\n",
        &format!("    password_env: {var}\n"),
    );
    let c = ClusterConfig::from_str(&text, FILE).unwrap();
    assert_eq!(
        c.credentials.mariadb_admin.password.expose(),
        "process-env-secret"
    );
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("repl"), "file-secret\n").unwrap();
    std::fs::write(secrets.join("token"), "tok\r\n").unwrap();
    std::fs::write(secrets.join("empty"), "\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["repl", "empty"] {
            std::fs::set_permissions(secrets.join(f), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        std::fs::set_permissions(
            secrets.join("token"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let file = dir.path().join("cluster.yaml");
    let text = with(
        MIN,
        "    password: repl-secret-1\n",
        "    password_file: secrets/repl\n",
    );
    let text = with(
        &text,
        "    token: token-secret-3\n",
        &format!("    token_file: {}\n", secrets.join("token").display()),
    );
    std::fs::write(&file, &text).unwrap();
    let c = ClusterConfig::load(&file).unwrap();
    assert_eq!(c.credentials.replication.password.expose(), "file-secret");
    assert_eq!(
        *c.credentials.replication.password.source(),
        SecretSource::File(secrets.join("repl"))
    );
    assert_eq!(c.credentials.admin_token.expose(), "tok");
    #[cfg(unix)]
    {
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("credentials.admin_api.token_file")
                && c.warnings[0].contains("chmod 600"),
            "{:?}",
            c.warnings
        );
    }

    let missing = with(
        MIN,
        "    password: repl-secret-1\n",
        "    password_file: secrets/nope\n",
    );
    let e = ClusterConfig::from_str(&missing, &file)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:5:", file.display())), "{e}");
    assert!(
        e.contains("credentials.replication.password_file: cannot read"),
        "{e}"
    );
    assert!(
        e.contains(&secrets.join("nope").display().to_string()),
        "{e}"
    );

    let empty = with(
        MIN,
        "    password: repl-secret-1\n",
        "    password_file: secrets/empty\n",
    );
    let e = ClusterConfig::from_str(&empty, &file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("credentials.replication.password_file: ") && e.contains("is empty"),
        "{e}"
    );
}

#[test]
fn exactly_one_source_per_secret() {
    let text = with(MIN, "    password: repl-secret-1\n", "    user: repl\n");
    fails_at(
        &text,
        "credentials.replication",
        "no password: give one of `password`, `password_env` or `password_file`",
        5,
    );
    let text = with(
        MIN,
        "    token: token-secret-3\n",
        "    token: t\n    token_file: /x\n",
    );
    fails_at(
        &text,
        "credentials.admin_api.token_file",
        "give only one of",
        10,
    );
    fails(
        &with(MIN, "password: repl-secret-1", "password: ''"),
        "credentials.replication.password",
        "empty password",
    );
    fails(
        &with(
            MIN,
            "    password: repl-secret-1\n",
            "    user: ''\n    password: x\n",
        ),
        "credentials.replication.user",
        "must not be empty",
    );
}

#[test]
fn inline_secret_of_the_wrong_type_is_not_echoed() {
    let text = with(MIN, "password: repl-secret-1", "password: [hunter2]");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("credentials.replication.password"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let text = with(MIN, "token: token-secret-3", "token: 31415926");
    match parse(&text) {
        // Accepted as text, or refused without showing it.
        Ok(c) => assert_eq!(c.credentials.admin_token.expose(), "31415926"),
        Err(e) => assert!(!e.to_string().contains("31415926"), "{e}"),
    }
}

#[test]
fn debug_output_holds_no_secret() {
    let c = ok(MIN);
    let dbg = format!("{c:?} {:#?}", c);
    for secret in ["repl-secret-1", "admin-secret-2", "token-secret-3"] {
        assert!(!dbg.contains(secret), "{secret} leaked");
    }
    assert!(dbg.contains("***"));
    assert_eq!(format!("{}", c.credentials.admin_token), "***");
    assert_eq!(format!("{:?}", Secret::new("x")), "***");
    for f in ["cluster-3.yaml", "cluster-5.yaml"] {
        let c = ClusterConfig::load(example(f)).unwrap();
        let dbg = format!("{c:#?}");
        for s in [
            c.credentials.replication.password.expose(),
            c.credentials.mariadb_admin.password.expose(),
            c.credentials.admin_token.expose(),
        ] {
            assert!(!dbg.contains(s), "a secret of {f} leaked");
        }
    }
}

// ---------------------------------------------------------------- nodes, examples

#[test]
fn unknown_node_lists_the_known_ones() {
    let c = ok(MIN);
    let e = c.node("z").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{FILE}: nodes: no node named `z` (the file has: a, b, c)")
    );
}

#[test]
fn unreadable_file_is_named() {
    let e = ClusterConfig::load("/nonexistent/phx.yaml").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("/nonexistent/phx.yaml: cannot read"),
        "{msg}"
    );
    assert!(e.key().is_none());
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name)
}

#[test]
fn example_cluster_3_loads() {
    let c = ClusterConfig::load(example("cluster-3.yaml")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.voters().count(), 3);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let repo = std::path::absolute(repo).unwrap();
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(n.name, format!("node{}", i + 1));
        assert_eq!(n.host, "127.0.0.1");
        assert_eq!(n.paxos_port, 17000 + 10 * i as u16);
        assert!(
            n.data_dir.starts_with(repo.join("target/phxsql/cluster-3")),
            "{:?}",
            n.data_dir
        );
    }
    assert_eq!(c.lease.renew_interval, Duration::from_millis(500));
    assert_eq!(c.mariadb.options.get("skip_name_resolve"), Some(&None));
}

#[test]
fn example_cluster_5_loads() {
    let c = ClusterConfig::load(example("cluster-5.yaml")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.nodes.len(), 5);
    assert_eq!(c.voters().count(), 5);
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(n.paxos_port, 18000 + 10 * i as u16);
        assert_eq!(n.mariadb_port, 18005 + 10 * i as u16);
    }
    // node5 spells out what the defaults would have given.
    let n5 = c.node("node5").unwrap();
    assert_eq!(n5.mariadb_datadir, n5.data_dir.join("mariadb"));
    assert_eq!(
        n5.data_dir,
        c.node("node4").unwrap().data_dir.with_file_name("node5")
    );
    assert_eq!(c.proxy.idle_timeout, Some(Duration::from_secs(3600)));
}
