//! The file as written: every field optional where a default exists, every
//! value that validation may reject wrapped in `Spanned` for its line and column.
//! Unknown keys are errors everywhere.

use crate::duration::HumanDuration;
use crate::secret::InlineSecret;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::fmt;

/// Only the version, read first and leniently, so that a file of another
/// version gets "unsupported version" rather than errors about its new keys.
#[derive(Deserialize)]
pub(crate) struct VersionProbe {
    pub version: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[allow(dead_code)] // checked by `VersionProbe`
    pub version: Spanned<Int>,
    pub cluster_id: Spanned<Int>,
    pub name: Option<Spanned<String>>,
    pub data_root: Option<Spanned<String>>,
    pub base_port: Option<Spanned<Int>>,
    #[serde(default)]
    pub lease: RawLease,
    pub credentials: RawCredentials,
    #[serde(default)]
    pub mariadb: RawMariadb,
    #[serde(default)]
    pub proxy: RawProxy,
    pub nodes: Spanned<Vec<RawNode>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLease {
    pub duration: Option<Spanned<HumanDuration>>,
    pub renew_interval: Option<Spanned<HumanDuration>>,
    pub drift: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredentials {
    pub replication: Spanned<RawAccount>,
    pub mariadb_admin: Spanned<RawAccount>,
    pub admin_api: Spanned<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccount {
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<InlineSecret>>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub token: Option<Spanned<InlineSecret>>,
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMariadb {
    pub binary: Option<Spanned<String>>,
    pub server_id_base: Option<Spanned<Int>>,
    pub start_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    pub options: BTreeMap<String, Spanned<OptionValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    pub max_connections: Option<Spanned<Int>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    pub master_wait_timeout: Option<Spanned<HumanDuration>>,
    pub proxy_protocol: Option<bool>,
    pub ro_max_lag: Option<Spanned<HumanDuration>>,
    pub ro_include_master: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Spanned<String>,
    pub id: Spanned<Int>,
    pub role: Option<crate::Role>,
    pub host: Spanned<String>,
    pub bind: Option<Spanned<String>>,
    pub base_port: Option<Spanned<Int>>,
    pub paxos_port: Option<Spanned<Int>>,
    pub binlog_port: Option<Spanned<Int>>,
    pub admin_port: Option<Spanned<Int>>,
    pub proxy_rw_port: Option<Spanned<Int>>,
    pub proxy_ro_port: Option<Spanned<Int>>,
    pub proxy_admin_port: Option<Spanned<Int>>,
    pub mariadb_port: Option<Spanned<Int>>,
    pub data_dir: Option<Spanned<String>>,
    pub mariadb_datadir: Option<Spanned<String>>,
}

/// A `mariadb.options` value: any scalar, kept as mariadbd will read it; no
/// value (`skip_name_resolve:`) means a bare flag.
pub(crate) struct OptionValue(pub Option<String>);

impl<'de> serde::Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OptionValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean, or nothing for a bare flag")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OptionValue, E> {
                Ok(OptionValue(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OptionValue, E> {
                Ok(OptionValue(Some(if v { "ON" } else { "OFF" }.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OptionValue, E> {
                Ok(OptionValue(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OptionValue, E> {
                Ok(OptionValue(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OptionValue, E> {
                Ok(OptionValue(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OptionValue, E> {
                Ok(OptionValue(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<OptionValue, E> {
                Ok(OptionValue(None))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A whole number as written; ranges are checked by the resolver, which can
/// then say which range. A quoted number (`"17000"`) is accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Int(pub i128);

impl<'de> serde::Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i128::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
                i128::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("{v} is far too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                Err(E::custom(format!("expected a whole number, found {v}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Int, E> {
                Err(E::custom(format!("expected a whole number, found {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
                v.trim()
                    .parse::<i128>()
                    .map(Int)
                    .map_err(|_| E::custom(format!("expected a whole number, found `{v}`")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Int, E> {
                Err(E::custom("expected a whole number, found nothing"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Int, A::Error> {
                Err(de::Error::custom("expected a whole number, found a list"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Int, A::Error> {
                Err(de::Error::custom(
                    "expected a whole number, found a mapping",
                ))
            }
        }
        deserializer.deserialize_any(V)
    }
}
