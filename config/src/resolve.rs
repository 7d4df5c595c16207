//! From the file as written to a validated [`ClusterConfig`].

use crate::duration::HumanDuration;
use crate::raw::{Int, RawAccount, RawCluster, RawNode, RawToken, VersionProbe};
use crate::secret::{InlineSecret, Secret, SecretSource};
use crate::{
    Account, CONFIG_VERSION, ClusterConfig, ConfigError, Credentials, DEFAULT_BASE_PORT,
    LeaseConfig, MariadbConfig, NodeConfig, ProxyConfig, Role, port_offset,
};
use serde::de::DeserializeOwned;
use serde_saphyr::{Location, MessageFormatter, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_DRIFT: f64 = 0.05;
pub(crate) const DEFAULT_REPLICATION_USER: &str = "phxsql_repl";
pub(crate) const DEFAULT_ADMIN_USER: &str = "phxsql_admin";
pub(crate) const DEFAULT_MARIADB_BINARY: &str = "mariadbd";
pub(crate) const DEFAULT_SERVER_ID_BASE: u32 = 1000;
pub(crate) const MAX_SERVER_ID_BASE: i128 = i32::MAX as i128;
pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const DEFAULT_MASTER_WAIT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_RO_MAX_LAG: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_DATA_ROOT: &str = "data";
pub(crate) const DEFAULT_CLUSTER_NAME: &str = "phxsql";

/// `mariadb.options` names the agent sets itself (compared after lower-casing
/// and turning `-` into `_`), and name prefixes likewise.
const MANAGED_OPTIONS: &[&str] = &[
    "port",
    "datadir",
    "bind_address",
    "server_id",
    "log_bin",
    "log_basename",
    "log_slave_updates",
    "sync_binlog",
    "innodb_flush_log_at_trx_commit",
    "binlog_format",
    "gtid_strict_mode",
    "read_only",
    "init_rpl_role",
    "proxy_protocol_networks",
];
const MANAGED_PREFIXES: &[&str] = &["rpl_semi_sync_"];

type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// A secret as written: inline, `*_env`, `*_file` (at most one is given).
type SecretSpec = (
    Option<Spanned<InlineSecret>>,
    Option<Spanned<String>>,
    Option<Spanned<String>>,
);

pub(crate) fn load(text: &str, file: &Path, env: Env<'_>) -> Result<ClusterConfig, ConfigError> {
    let ctx = Ctx::new(file, env);
    // The version first, leniently: a file of another version gets that
    // message, not a list of keys this build does not know.
    let probe: VersionProbe = ctx.parse(text)?;
    match probe.version {
        None => {
            return Err(ctx.err(
                "version",
                None,
                format!("missing: the file must say `version: {CONFIG_VERSION}`"),
            ));
        }
        Some(v) if v.value.0 != i128::from(CONFIG_VERSION) => {
            return Err(ctx.err(
                "version",
                pos(&v),
                format!(
                    "unsupported version {}: this build reads version {CONFIG_VERSION}",
                    v.value.0
                ),
            ));
        }
        Some(_) => {}
    }
    let raw: RawCluster = ctx.parse(text)?;
    ctx.resolve(raw)
}

fn pos<T>(s: &Spanned<T>) -> Option<Location> {
    (s.referenced.line() > 0).then_some(s.referenced)
}

fn opt_pos<T>(s: &Option<Spanned<T>>) -> Option<Location> {
    s.as_ref().and_then(pos)
}

struct Ctx<'a> {
    file: PathBuf,
    dir: PathBuf,
    env: Env<'a>,
    warnings: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn new(file: &Path, env: Env<'a>) -> Self {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&parent).unwrap_or(parent);
        Ctx {
            file: file.to_path_buf(),
            dir: normalize(&dir),
            env,
            warnings: Vec::new(),
        }
    }

    fn err(&self, key: &str, at: Option<Location>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            key: key.to_string(),
            position: at.map(|l| (l.line(), l.column())),
            problem: problem.into(),
        }
    }

    fn warn(&mut self, key: &str, at: Option<Location>, problem: impl Into<String>) {
        let w = self.err(key, at, problem).to_string();
        self.warnings.push(w);
    }

    /// Deserializes the whole document; errors carry the key path from
    /// `serde_path_to_error` and the position from the YAML parser.
    fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, ConfigError> {
        let mut path: Option<serde_path_to_error::Path> = None;
        // No snippets: a rendered source line could show an inline secret.
        let options = serde_saphyr::options! { with_snippet: false };
        let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = Some(e.path().clone());
                e.into_inner()
            })
        });
        result.map_err(|e| {
            let message: String = serde_saphyr::UserMessageFormatter
                .format_message(&e)
                .chars()
                .flat_map(|c| {
                    let escaped: String = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        c.to_string()
                    };
                    escaped.chars().collect::<Vec<_>>()
                })
                .collect();
            let mut key = path.as_ref().map(key_of).unwrap_or_default();
            // "missing field `x`" is about the key x inside the path.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|r| r.strip_suffix('`'))
            {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            // A duplicate key: name it.
            if let serde_saphyr::Error::DuplicateMappingKey { key: Some(dup), .. } = &e {
                key = if key.is_empty() {
                    dup.clone()
                } else {
                    format!("{key}.{dup}")
                };
            }
            if key.is_empty() {
                key = "(top level)".to_string();
            }
            let at = e.location().filter(|l| l.line() > 0);
            self.err(&key, at, message)
        })
    }

    /// An absolute path: relative ones are taken from the file's directory.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            normalize(p)
        } else {
            normalize(&self.dir.join(p))
        }
    }

    fn port(&self, key: &str, v: &Spanned<Int>) -> Result<u16, ConfigError> {
        match u16::try_from(v.value.0) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(
                key,
                pos(v),
                format!("{} is not a port number (1 to 65535)", v.value.0),
            )),
        }
    }

    /// A nonzero 64-bit id.
    fn id(&self, key: &str, v: &Spanned<Int>, why: &str) -> Result<u64, ConfigError> {
        match u64::try_from(v.value.0) {
            Ok(0) => Err(self.err(key, pos(v), format!("must be nonzero ({why})"))),
            Ok(id) => Ok(id),
            Err(_) => Err(self.err(
                key,
                pos(v),
                format!("{} is out of range: must be 1 to {}", v.value.0, u64::MAX),
            )),
        }
    }

    fn base_port(&self, key: &str, v: &Spanned<Int>) -> Result<u16, ConfigError> {
        let p = self.port(key, v)?;
        if p > u16::MAX - port_offset::LAST {
            return Err(self.err(
                key,
                pos(v),
                format!(
                    "{p} is too high: the ports derived from it go up to base_port + {}, above 65535",
                    port_offset::LAST
                ),
            ));
        }
        Ok(p)
    }

    fn positive(
        &self,
        key: &str,
        v: &Option<Spanned<HumanDuration>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(d) if d.value.0.is_zero() => {
                Err(self.err(key, pos(d), "must be longer than zero"))
            }
            Some(d) => Ok(d.value.0),
        }
    }

    fn resolve(mut self, raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
        let cluster_id = self.id(
            "cluster_id",
            &raw.cluster_id,
            "it keeps the Paxos messages of different clusters apart",
        )?;
        let name = match &raw.name {
            None => DEFAULT_CLUSTER_NAME.to_string(),
            Some(n) if n.value.trim().is_empty() => {
                return Err(self.err("name", pos(n), "must not be empty"));
            }
            Some(n) => n.value.trim().to_string(),
        };
        let lease = self.lease(&raw)?;
        let credentials = self.credentials(raw.credentials)?;
        let mariadb = self.mariadb(&raw.mariadb)?;
        let proxy = self.proxy(&raw.proxy)?;
        let data_root = match &raw.data_root {
            None => self.path(DEFAULT_DATA_ROOT),
            Some(d) if d.value.trim().is_empty() => {
                return Err(self.err("data_root", pos(d), "must not be empty"));
            }
            Some(d) => self.path(&d.value),
        };
        let base_port = match &raw.base_port {
            None => DEFAULT_BASE_PORT,
            Some(b) => self.base_port("base_port", b)?,
        };
        let nodes = self.nodes(&raw.nodes, &data_root, base_port, raw.base_port.is_some())?;
        Ok(ClusterConfig {
            source: self.file,
            version: CONFIG_VERSION,
            cluster_id,
            name,
            lease,
            credentials,
            mariadb,
            proxy,
            nodes,
            warnings: self.warnings,
        })
    }

    fn lease(&self, raw: &RawCluster) -> Result<LeaseConfig, ConfigError> {
        let l = &raw.lease;
        let duration = self.positive("lease.duration", &l.duration, DEFAULT_LEASE)?;
        let renew_interval = match &l.renew_interval {
            None => duration / 4,
            Some(r) if r.value.0.is_zero() => {
                return Err(self.err("lease.renew_interval", pos(r), "must be longer than zero"));
            }
            Some(r) if r.value.0 > duration / 2 => {
                return Err(self.err(
                    "lease.renew_interval",
                    pos(r),
                    format!(
                        "{:?} is more than half the lease ({:?} of {:?}): one lost renewal would lose the lease; the default is a quarter",
                        r.value.0,
                        duration / 2,
                        duration
                    ),
                ));
            }
            Some(r) => r.value.0,
        };
        let drift = match &l.drift {
            None => DEFAULT_DRIFT,
            Some(d) if !(d.value > 0.0 && d.value < 0.5) => {
                return Err(self.err(
                    "lease.drift",
                    pos(d),
                    format!(
                        "{} is out of range: must be above 0 and below 0.5 (a fraction: 0.05 is 5%)",
                        d.value
                    ),
                ));
            }
            Some(d) => d.value,
        };
        Ok(LeaseConfig {
            duration,
            renew_interval,
            drift,
        })
    }

    fn credentials(&mut self, raw: crate::raw::RawCredentials) -> Result<Credentials, ConfigError> {
        let replication = self.account(
            "credentials.replication",
            raw.replication,
            DEFAULT_REPLICATION_USER,
        )?;
        let mariadb_admin = self.account(
            "credentials.mariadb_admin",
            raw.mariadb_admin,
            DEFAULT_ADMIN_USER,
        )?;
        let token_at = pos(&raw.admin_api);
        let RawToken {
            token,
            token_env,
            token_file,
        } = raw.admin_api.value;
        let admin_token = self.secret(
            "credentials.admin_api",
            token_at,
            "token",
            (token, token_env, token_file),
        )?;
        Ok(Credentials {
            replication,
            mariadb_admin,
            admin_token,
        })
    }

    fn account(
        &mut self,
        key: &str,
        raw: Spanned<RawAccount>,
        default_user: &str,
    ) -> Result<Account, ConfigError> {
        let at = pos(&raw);
        let RawAccount {
            user,
            password,
            password_env,
            password_file,
        } = raw.value;
        let user = match user {
            None => default_user.to_string(),
            Some(u) if u.value.trim().is_empty() => {
                return Err(self.err(&format!("{key}.user"), pos(&u), "must not be empty"));
            }
            Some(u) => u.value,
        };
        let password = self.secret(key, at, "password", (password, password_env, password_file))?;
        Ok(Account { user, password })
    }

    /// One secret given as exactly one of `NAME`, `NAME_env`, `NAME_file`.
    fn secret(
        &mut self,
        section: &str,
        section_at: Option<Location>,
        name: &str,
        (inline, env, file): SecretSpec,
    ) -> Result<Secret, ConfigError> {
        let given: Vec<(String, Option<Location>)> = [
            inline.as_ref().map(|s| (name.to_string(), pos(s))),
            env.as_ref().map(|s| (format!("{name}_env"), pos(s))),
            file.as_ref().map(|s| (format!("{name}_file"), pos(s))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let choices = format!("`{name}`, `{name}_env` or `{name}_file`");
        match given.as_slice() {
            [] => {
                return Err(self.err(
                    section,
                    section_at,
                    format!("no {name}: give one of {choices}"),
                ));
            }
            [_] => {}
            [(first, _), (second, at), ..] => {
                return Err(self.err(
                    &format!("{section}.{second}"),
                    *at,
                    format!("give only one of {choices} (`{first}` is given too)"),
                ));
            }
        }
        if let Some(s) = inline {
            let key = format!("{section}.{name}");
            if s.value.0.is_empty() {
                return Err(self.err(&key, pos(&s), format!("empty {name}")));
            }
            return Ok(Secret::with_source(s.value.0, SecretSource::Inline));
        }
        if let Some(var) = env {
            let key = format!("{section}.{name}_env");
            let var_name = var.value.trim();
            if var_name.is_empty() {
                return Err(self.err(&key, pos(&var), "empty environment variable name"));
            }
            let value = match (self.env)(var_name) {
                None => {
                    return Err(self.err(
                        &key,
                        pos(&var),
                        format!("environment variable {var_name} is not set"),
                    ));
                }
                Some(v) => v.into_string().map_err(|_| {
                    self.err(
                        &key,
                        pos(&var),
                        format!("environment variable {var_name} is not valid UTF-8"),
                    )
                })?,
            };
            if value.is_empty() {
                return Err(self.err(
                    &key,
                    pos(&var),
                    format!("environment variable {var_name} is empty"),
                ));
            }
            return Ok(Secret::with_source(
                value,
                SecretSource::Env(var_name.to_string()),
            ));
        }
        if let Some(f) = file {
            let key = format!("{section}.{name}_file");
            if f.value.trim().is_empty() {
                return Err(self.err(&key, pos(&f), "empty file name"));
            }
            let path = self.path(&f.value);
            let mut value = std::fs::read_to_string(&path).map_err(|e| {
                self.err(
                    &key,
                    pos(&f),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // One trailing line break is the file's, not the secret's.
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                return Err(self.err(&key, pos(&f), format!("{} is empty", path.display())));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(&path) {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        self.warn(
                            &key,
                            pos(&f),
                            format!(
                                "{} is accessible to group or others (mode {mode:03o}); chmod 600 it",
                                path.display()
                            ),
                        );
                    }
                }
            }
            return Ok(Secret::with_source(value, SecretSource::File(path)));
        }
        Err(self.err(
            section,
            section_at,
            format!("no {name}: give one of {choices}"),
        ))
    }

    fn mariadb(&self, raw: &crate::raw::RawMariadb) -> Result<MariadbConfig, ConfigError> {
        let binary = match &raw.binary {
            None => PathBuf::from(DEFAULT_MARIADB_BINARY),
            Some(b) if b.value.trim().is_empty() => {
                return Err(self.err("mariadb.binary", pos(b), "must not be empty"));
            }
            // A bare name is looked up in PATH when started; a path is a path.
            Some(b) if !b.value.contains('/') => PathBuf::from(b.value.trim()),
            Some(b) => self.path(&b.value),
        };
        let server_id_base = match &raw.server_id_base {
            None => DEFAULT_SERVER_ID_BASE,
            Some(s) if s.value.0 < 1 || s.value.0 > MAX_SERVER_ID_BASE => {
                return Err(self.err(
                    "mariadb.server_id_base",
                    pos(s),
                    format!(
                        "{} is out of range: must be 1 to {MAX_SERVER_ID_BASE} (server ids are 32-bit and the agent needs room above the base)",
                        s.value.0
                    ),
                ));
            }
            Some(s) => u32::try_from(s.value.0).unwrap_or(DEFAULT_SERVER_ID_BASE),
        };
        let start_timeout = self.positive(
            "mariadb.start_timeout",
            &raw.start_timeout,
            DEFAULT_START_TIMEOUT,
        )?;
        let mut options = BTreeMap::new();
        for (name, value) in &raw.options {
            let key = format!("mariadb.options.{name}");
            let clean = name.trim().trim_start_matches("--");
            if clean.is_empty() {
                return Err(self.err(&key, pos(value), "empty option name"));
            }
            let normal = clean.to_ascii_lowercase().replace('-', "_");
            if MANAGED_OPTIONS.contains(&normal.as_str())
                || MANAGED_PREFIXES.iter().any(|p| normal.starts_with(p))
            {
                return Err(self.err(
                    &key,
                    pos(value),
                    format!(
                        "`{clean}` is set by the agent (the cluster's durability and role switching depend on it); remove it"
                    ),
                ));
            }
            options.insert(clean.to_string(), value.value.0.clone());
        }
        Ok(MariadbConfig {
            binary,
            server_id_base,
            start_timeout,
            options,
        })
    }

    fn proxy(&self, raw: &crate::raw::RawProxy) -> Result<ProxyConfig, ConfigError> {
        let max_connections = match &raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(m) => match u32::try_from(m.value.0) {
                Ok(v) if v > 0 => v,
                _ => {
                    return Err(self.err(
                        "proxy.max_connections",
                        pos(m),
                        format!("{} is out of range: must be 1 to {}", m.value.0, u32::MAX),
                    ));
                }
            },
        };
        let connect_timeout = self.positive(
            "proxy.connect_timeout",
            &raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let idle_timeout = match &raw.idle_timeout {
            None => None,
            Some(d) if d.value.0.is_zero() => {
                return Err(self.err(
                    "proxy.idle_timeout",
                    pos(d),
                    "must be longer than zero (leave the key out for no idle timeout)",
                ));
            }
            Some(d) => Some(d.value.0),
        };
        let master_wait_timeout = raw
            .master_wait_timeout
            .as_ref()
            .map_or(DEFAULT_MASTER_WAIT, |d| d.value.0);
        Ok(ProxyConfig {
            max_connections,
            connect_timeout,
            idle_timeout,
            master_wait_timeout,
            proxy_protocol: raw.proxy_protocol.unwrap_or(true),
            ro_max_lag: raw
                .ro_max_lag
                .as_ref()
                .map_or(DEFAULT_RO_MAX_LAG, |d| d.value.0),
            ro_include_master: raw.ro_include_master.unwrap_or(true),
        })
    }

    fn nodes(
        &mut self,
        raw: &Spanned<Vec<RawNode>>,
        data_root: &Path,
        cluster_base: u16,
        cluster_base_given: bool,
    ) -> Result<Vec<NodeConfig>, ConfigError> {
        if raw.value.is_empty() {
            return Err(self.err(
                "nodes",
                pos(raw),
                "no nodes: the cluster needs at least one",
            ));
        }
        let mut nodes: Vec<NodeConfig> = Vec::new();
        // (host, port) -> who uses it; (host, dir) -> who uses it.
        let mut ports: HashMap<(String, u16), String> = HashMap::new();
        let mut dirs: HashMap<(String, PathBuf), String> = HashMap::new();
        for (i, n) in raw.value.iter().enumerate() {
            let at = |field: &str| format!("nodes[{i}].{field}");

            let name = n.name.value.trim().to_string();
            check_name(&name).map_err(|p| self.err(&at("name"), pos(&n.name), p))?;
            if let Some(j) = nodes.iter().position(|o| o.name == name) {
                return Err(self.err(
                    &at("name"),
                    pos(&n.name),
                    format!("`{name}` is also the name of nodes[{j}]: node names must be unique"),
                ));
            }

            let id = self.id(&at("id"), &n.id, "it is the node's Paxos id")?;
            if let Some((j, other)) = nodes.iter().enumerate().find(|(_, o)| o.id == id) {
                return Err(self.err(
                    &at("id"),
                    pos(&n.id),
                    format!(
                        "id {id} is also the id of nodes[{j}] ({}): Paxos node ids must be unique",
                        other.name
                    ),
                ));
            }

            let host =
                check_host(&n.host.value).map_err(|p| self.err(&at("host"), pos(&n.host), p))?;
            let bind = match &n.bind {
                Some(b) => b.value.trim().parse::<IpAddr>().map_err(|_| {
                    self.err(
                        &at("bind"),
                        pos(b),
                        format!(
                            "`{}` is not an IP address (e.g. 0.0.0.0, 127.0.0.1 or ::)",
                            b.value
                        ),
                    )
                })?,
                None => host
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            };

            // Each port: given, or the node's base port (else the cluster's) plus its offset.
            let (base, base_desc, base_at) = match &n.base_port {
                Some(b) => (
                    self.base_port(&at("base_port"), b)?,
                    at("base_port"),
                    pos(b),
                ),
                None => (
                    cluster_base,
                    if cluster_base_given {
                        "base_port".to_string()
                    } else {
                        "the default base_port".to_string()
                    },
                    pos(&n.name),
                ),
            };
            let mut port = |field: &str,
                            given: &Option<Spanned<Int>>,
                            offset: u16|
             -> Result<u16, ConfigError> {
                let key = at(field);
                let (p, desc, position) = match given {
                    Some(v) => (self.port(&key, v)?, key.clone(), pos(v)),
                    None => (
                        base + offset,
                        format!("{key} (derived: {base_desc} {base} + {offset})"),
                        base_at,
                    ),
                };
                let owner = (host.to_ascii_lowercase(), p);
                if let Some(first) = ports.get(&owner) {
                    return Err(self.err(
                        &key,
                        position,
                        format!(
                            "port {p} on {host} is already used by {}; each host:port may be used once in the cluster",
                            first
                        ),
                    ));
                }
                ports.insert(owner, desc);
                Ok(p)
            };
            let paxos_port = port("paxos_port", &n.paxos_port, port_offset::PAXOS)?;
            let binlog_port = port("binlog_port", &n.binlog_port, port_offset::BINLOG)?;
            let admin_port = port("admin_port", &n.admin_port, port_offset::ADMIN)?;
            let proxy_rw_port = port("proxy_rw_port", &n.proxy_rw_port, port_offset::PROXY_RW)?;
            let proxy_ro_port = port("proxy_ro_port", &n.proxy_ro_port, port_offset::PROXY_RO)?;
            let mariadb_port = port("mariadb_port", &n.mariadb_port, port_offset::MARIADB)?;
            let proxy_admin_port = port(
                "proxy_admin_port",
                &n.proxy_admin_port,
                port_offset::PROXY_ADMIN,
            )?;

            let data_dir = match &n.data_dir {
                Some(d) if d.value.trim().is_empty() => {
                    return Err(self.err(&at("data_dir"), pos(d), "must not be empty"));
                }
                Some(d) => self.path(&d.value),
                None => data_root.join(&name),
            };
            let mariadb_datadir = match &n.mariadb_datadir {
                Some(d) if d.value.trim().is_empty() => {
                    return Err(self.err(&at("mariadb_datadir"), pos(d), "must not be empty"));
                }
                Some(d) => self.path(&d.value),
                None => data_dir.join("mariadb"),
            };
            for (field, dir, given) in [
                ("data_dir", &data_dir, &n.data_dir),
                ("mariadb_datadir", &mariadb_datadir, &n.mariadb_datadir),
            ] {
                let owner = (host.to_ascii_lowercase(), dir.clone());
                if let Some(first) = dirs.get(&owner) {
                    return Err(self.err(
                        &at(field),
                        opt_pos(given).or(pos(&n.name)),
                        format!(
                            "directory {} on {host} is also {first}: each node needs its own directories",
                            dir.display()
                        ),
                    ));
                }
                dirs.insert(owner, at(field));
            }

            nodes.push(NodeConfig {
                name,
                id,
                role: n.role.unwrap_or(Role::Voter),
                host,
                bind,
                paxos_port,
                binlog_port,
                admin_port,
                proxy_rw_port,
                proxy_ro_port,
                proxy_admin_port,
                mariadb_port,
                data_dir,
                mariadb_datadir,
            });
        }

        let voters = nodes.iter().filter(|n| n.is_voter()).count();
        if voters == 0 {
            return Err(self.err(
                "nodes",
                pos(raw),
                "no voter: at least one node must have `role: voter` (the default)",
            ));
        }
        if voters % 2 == 0 {
            self.warn(
                "nodes",
                pos(raw),
                format!(
                    "{voters} voters: an even number survives no more failures than {} would; prefer an odd number",
                    voters - 1
                ),
            );
        }
        Ok(nodes)
    }
}

/// The key path of a deserialization error, e.g. `nodes[1].paxos_port`.
/// `Spanned` adds a `value` level of its own, which is not a key of the file.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k == "value" {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.starts_with(['.', '-'])
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "`{name}` is not a valid node name: use letters, digits, `-`, `_` and `.`, not first `.` or `-` (it names directories)"
        ));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("must not be empty".to_string());
    }
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if inner.contains(':') {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(inner.to_string()),
            Err(_) => Err(format!(
                "`{host}` is not a host: give the address alone (ports have their own keys)"
            )),
        };
    }
    if !inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!("`{host}` is not a host name or IP address"));
    }
    Ok(inner.to_string())
}

/// Removes `.` and resolves `..` lexically (no file system access).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
