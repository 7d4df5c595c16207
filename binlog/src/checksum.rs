//! Binlog event checksums.

use crate::error::{Error, Result};

/// Length of a CRC32 checksum after the body.
pub const CRC_LEN: usize = 4;

/// `binlog_checksum` algorithm code for NONE (`BINLOG_CHECKSUM_ALG_OFF`).
pub const ALG_OFF: u8 = 0;
/// `binlog_checksum` algorithm code for CRC32.
pub const ALG_CRC32: u8 = 1;

/// Whether events end with a CRC32 of header + body.
///
/// For every event but FORMAT_DESCRIPTION this is a property of the stream
/// (the master's `binlog_checksum`, as agreed through
/// `@master_binlog_checksum`). A FORMAT_DESCRIPTION event describes itself:
/// it always ends with the algorithm byte and a 4-byte checksum slot
/// (MariaDB 10.11 fills the slot with a valid CRC even when the algorithm is
/// NONE), so it parses the same under either setting; its slot is verified
/// when its algorithm is CRC32 or when the stream is read as CRC32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Checksum {
    /// No checksum bytes (`binlog_checksum=NONE`).
    None,
    /// 4 bytes of CRC-32 (IEEE), little-endian, after the body. MariaDB
    /// 10.11's default.
    #[default]
    Crc32,
}

impl Checksum {
    /// Bytes the checksum adds after the body.
    pub const fn trailer_len(self) -> usize {
        match self {
            Checksum::None => 0,
            Checksum::Crc32 => CRC_LEN,
        }
    }

    /// True for [`Checksum::None`].
    pub const fn is_none(self) -> bool {
        matches!(self, Checksum::None)
    }

    /// From the algorithm byte of a FORMAT_DESCRIPTION event.
    pub fn from_alg(alg: u8) -> Result<Self> {
        match alg {
            ALG_OFF => Ok(Checksum::None),
            ALG_CRC32 => Ok(Checksum::Crc32),
            other => Err(Error::Unsupported(format!(
                "binlog checksum algorithm {other} (only 0 = NONE and 1 = CRC32)"
            ))),
        }
    }

    /// The algorithm byte for a FORMAT_DESCRIPTION event.
    pub const fn alg(self) -> u8 {
        match self {
            Checksum::None => ALG_OFF,
            Checksum::Crc32 => ALG_CRC32,
        }
    }

    /// Parses the value of `@@binlog_checksum` / `@master_binlog_checksum`
    /// (`NONE` or `CRC32`, any case).
    pub fn from_name(name: &str) -> Result<Self> {
        if name.eq_ignore_ascii_case("NONE") {
            Ok(Checksum::None)
        } else if name.eq_ignore_ascii_case("CRC32") {
            Ok(Checksum::Crc32)
        } else {
            Err(Error::Unsupported(format!("binlog checksum {name:?}")))
        }
    }

    /// The SQL name: `NONE` or `CRC32`.
    pub const fn name(self) -> &'static str {
        match self {
            Checksum::None => "NONE",
            Checksum::Crc32 => "CRC32",
        }
    }
}

/// CRC-32 (IEEE) of `data`, as the binlog stores it.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn algorithms() {
        assert_eq!(Checksum::from_alg(0).unwrap(), Checksum::None);
        assert_eq!(Checksum::from_alg(1).unwrap(), Checksum::Crc32);
        assert!(matches!(Checksum::from_alg(2), Err(Error::Unsupported(_))));
        assert!(Checksum::from_alg(255).is_err());
        assert_eq!(Checksum::Crc32.alg(), 1);
        assert_eq!(Checksum::None.alg(), 0);
        assert_eq!(Checksum::Crc32.trailer_len(), 4);
        assert_eq!(Checksum::None.trailer_len(), 0);
        assert!(Checksum::None.is_none());
        assert_eq!(Checksum::default(), Checksum::Crc32);
    }

    #[test]
    fn names() {
        assert_eq!(Checksum::from_name("crc32").unwrap(), Checksum::Crc32);
        assert_eq!(Checksum::from_name("NONE").unwrap(), Checksum::None);
        assert!(Checksum::from_name("").is_err());
        assert!(Checksum::from_name("CRC32C").is_err());
        assert_eq!(Checksum::Crc32.name(), "CRC32");
        assert_eq!(Checksum::None.name(), "NONE");
    }
}
