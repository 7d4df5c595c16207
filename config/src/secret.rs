//! Secrets (passwords, tokens): never printed, never serialized.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::path::PathBuf;

/// A password or token read from the configuration.
///
/// `Debug` and `Display` print `***`, so a secret cannot reach a log through
/// `{:?}` of a config struct. It implements neither `Serialize` nor
/// `Deserialize`: it cannot be put into a Paxos value or any other encoded
/// message by accident. Call [`Secret::expose`] at the one place that needs the
/// text (the MySQL handshake, the HTTP `Authorization` check).
#[derive(Clone)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Where a secret came from (safe to print: it holds no secret text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the configuration file itself.
    Inline,
    /// Read from this environment variable at load time.
    Env(String),
    /// Read from this file (absolute path) at load time.
    File(PathBuf),
}

impl Secret {
    /// A secret given directly (tests, tools).
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            source: SecretSource::Inline,
        }
    }

    pub(crate) fn with_source(value: String, source: SecretSource) -> Self {
        Secret { value, source }
    }

    /// The secret text. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline => f.write_str("inline"),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// An inline secret as written in the file. Its errors never quote the value.
pub(crate) struct InlineSecret(pub String);

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        const NOT_TEXT: &str = "a secret must be a string (value not shown); quote it";
        impl<'de> Visitor<'de> for V {
            type Value = InlineSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InlineSecret, E> {
                Ok(InlineSecret(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<InlineSecret, E> {
                Ok(InlineSecret(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<InlineSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<InlineSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<InlineSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<InlineSecret, E> {
                Err(E::custom(NOT_TEXT))
            }
            fn visit_unit<E: de::Error>(self) -> Result<InlineSecret, E> {
                Err(E::custom("empty secret"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<InlineSecret, A::Error> {
                Err(de::Error::custom(NOT_TEXT))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<InlineSecret, A::Error> {
                Err(de::Error::custom(NOT_TEXT))
            }
        }
        deserializer.deserialize_str(V)
    }
}
