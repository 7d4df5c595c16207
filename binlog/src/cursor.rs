//! Bounds-checked little-endian reading and writing helpers.

use crate::error::{Error, Result};

/// A read position over a byte slice. Every read is checked and fails with
/// [`Error::Truncated`] instead of panicking.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, pos: 0, what }
    }

    fn short(&self, n: usize) -> Error {
        Error::Truncated {
            what: self.what,
            needed: self.pos.saturating_add(n),
            available: self.buf.len(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short(n))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.short(n))?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        let a = rest.first_chunk::<N>().ok_or_else(|| self.short(N))?;
        self.pos += N;
        Ok(*a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let r = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        r
    }
}

/// Reads a little-endian u32 at `at`, if the slice is long enough.
pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let a = buf.get(at..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*a))
}

/// Writes `bytes` at `at`; false if the slice is too short.
pub(crate) fn put_at(buf: &mut [u8], at: usize, bytes: &[u8]) -> bool {
    let Some(end) = at.checked_add(bytes.len()) else {
        return false;
    };
    match buf.get_mut(at..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// A `&str` view of a name field, or a typed error.
pub(crate) fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| Error::Malformed {
        what,
        reason: "not valid UTF-8",
    })
}
