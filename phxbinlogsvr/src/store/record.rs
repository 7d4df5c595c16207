//! The payloads the store writes into its [`SegmentLog`](paxos::storage::SegmentLog)
//! records (the segment log adds length, key and CRC around them).
//!
//! ```text
//! DATA (keyed by the store key; one part of a transaction, or all of it):
//!   u8 kind = 1 | u8 flags | u8 binlog checksum alg | u8 0
//!   u64 instance | u32 domain | u32 server | u64 seq
//!   u32 part index | u32 rolling checksum after the transaction (0 unless last part)
//!   event bytes
//!   flags: bit 0 = last record of its Paxos instance, bit 1 = last part
//!
//! BASE (unkeyed; the first record of every segment: the log's state there):
//!   u8 kind = 2 | u8 0 | u8 0 | u8 0
//!   u64 next key | u64 next transaction index | u64 checkpoint | u32 rolling checksum
//!   u32 number of domains | per domain: u32 domain, u32 server, u64 seq
//!
//! PROGRESS (unkeyed; instances applied with nothing to store, written at sync):
//!   u8 kind = 3 | u8 0 | u8 0 | u8 0 | u64 checkpoint
//! ```
//!
//! Every integer is little-endian. Decoding is strict (exact lengths, zero
//! reserved bytes): the segment log's CRC already rules out bit rot, so a
//! record that does not decode was written by something else and is refused.

use binlog::{Checksum, Gtid, GtidPos};

const KIND_DATA: u8 = 1;
const KIND_BASE: u8 = 2;
const KIND_PROGRESS: u8 = 3;

const FLAG_ENDS_INSTANCE: u8 = 1;
const FLAG_LAST_PART: u8 = 2;

/// Bytes of a DATA record before the event bytes.
pub(crate) const DATA_HEADER_LEN: usize = 36;

/// Header of a DATA record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataHeader {
    /// The Paxos instance the record came from.
    pub instance: u64,
    /// Last record written for that instance (its apply is complete).
    pub ends_instance: bool,
    /// The transaction's GTID.
    pub gtid: Gtid,
    /// The checksum setting of its events.
    pub checksum: Checksum,
    /// Which part this is (0 for a transaction stored whole).
    pub part: u32,
    /// This part completes the transaction.
    pub last: bool,
    /// Rolling checksum after the transaction (when `last`), checked on replay.
    pub chain_after: u32,
}

/// The log's running state at a point: what a BASE record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseState {
    /// Key of the next DATA record.
    pub next_key: u64,
    /// Index of the next complete transaction.
    pub next_txn: u64,
    /// Every instance below this is applied.
    pub checkpoint: u64,
    /// Rolling checksum over every transaction before this point.
    pub chain: u32,
    /// Last GTID of each domain before this point.
    pub pos: GtidPos,
}

/// A decoded record.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Data(DataHeader, &'a [u8]),
    Base(BaseState),
    Progress(u64),
}

pub(crate) fn encode_data_header(h: &DataHeader, out: &mut Vec<u8>) {
    let mut flags = 0;
    if h.ends_instance {
        flags |= FLAG_ENDS_INSTANCE;
    }
    if h.last {
        flags |= FLAG_LAST_PART;
    }
    out.extend_from_slice(&[KIND_DATA, flags, h.checksum.alg(), 0]);
    out.extend_from_slice(&h.instance.to_le_bytes());
    out.extend_from_slice(&h.gtid.domain.to_le_bytes());
    out.extend_from_slice(&h.gtid.server.to_le_bytes());
    out.extend_from_slice(&h.gtid.seq.to_le_bytes());
    out.extend_from_slice(&h.part.to_le_bytes());
    out.extend_from_slice(&h.chain_after.to_le_bytes());
}

pub(crate) fn encode_base(b: &BaseState) -> Vec<u8> {
    let mut out = Vec::with_capacity(36 + 16 * b.pos.len());
    out.extend_from_slice(&[KIND_BASE, 0, 0, 0]);
    out.extend_from_slice(&b.next_key.to_le_bytes());
    out.extend_from_slice(&b.next_txn.to_le_bytes());
    out.extend_from_slice(&b.checkpoint.to_le_bytes());
    out.extend_from_slice(&b.chain.to_le_bytes());
    // A GtidPos holds one GTID per u32 domain, so the count fits a u32.
    out.extend_from_slice(&(b.pos.len() as u32).to_le_bytes());
    for g in b.pos.iter() {
        out.extend_from_slice(&g.domain.to_le_bytes());
        out.extend_from_slice(&g.server.to_le_bytes());
        out.extend_from_slice(&g.seq.to_le_bytes());
    }
    out
}

pub(crate) fn encode_progress(checkpoint: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&[KIND_PROGRESS, 0, 0, 0]);
    out.extend_from_slice(&checkpoint.to_le_bytes());
    out
}

/// A little-endian reader over a record that reports short input as an error.
struct Take<'a>(&'a [u8]);

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "record ends early ({} bytes left, {n} needed)",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decodes a record payload; the error says what is wrong with it.
pub(crate) fn decode(payload: &[u8]) -> Result<Record<'_>, String> {
    let mut t = Take(payload);
    let head = t.bytes(4)?;
    let (kind, flags, alg, zero) = (head[0], head[1], head[2], head[3]);
    if zero != 0 {
        return Err(format!("reserved byte is {zero}, not 0"));
    }
    match kind {
        KIND_DATA => {
            if flags & !(FLAG_ENDS_INSTANCE | FLAG_LAST_PART) != 0 {
                return Err(format!("unknown DATA flags {flags:#04x}"));
            }
            let checksum = Checksum::from_alg(alg).map_err(|e| e.to_string())?;
            let instance = t.u64()?;
            let domain = t.u32()?;
            let server = t.u32()?;
            let seq = t.u64()?;
            let part = t.u32()?;
            let chain_after = t.u32()?;
            let last = flags & FLAG_LAST_PART != 0;
            if !last && chain_after != 0 {
                return Err("a non-final part carries a rolling checksum".into());
            }
            Ok(Record::Data(
                DataHeader {
                    instance,
                    ends_instance: flags & FLAG_ENDS_INSTANCE != 0,
                    gtid: Gtid::new(domain, server, seq),
                    checksum,
                    part,
                    last,
                    chain_after,
                },
                t.0,
            ))
        }
        KIND_BASE | KIND_PROGRESS if flags != 0 || alg != 0 => {
            Err(format!("record kind {kind} with non-zero reserved bytes"))
        }
        KIND_BASE => {
            let next_key = t.u64()?;
            let next_txn = t.u64()?;
            let checkpoint = t.u64()?;
            let chain = t.u32()?;
            let n = t.u32()? as usize;
            if t.0.len() != n.saturating_mul(16) {
                return Err(format!(
                    "BASE record says {n} domains but holds {} bytes for them",
                    t.0.len()
                ));
            }
            let mut pos = GtidPos::new();
            for _ in 0..n {
                let g = Gtid::new(t.u32()?, t.u32()?, t.u64()?);
                if pos.set(g).is_some() {
                    return Err(format!("BASE record names domain {} twice", g.domain));
                }
            }
            Ok(Record::Base(BaseState {
                next_key,
                next_txn,
                checkpoint,
                chain,
                pos,
            }))
        }
        KIND_PROGRESS => {
            let checkpoint = t.u64()?;
            if !t.0.is_empty() {
                return Err("PROGRESS record has trailing bytes".into());
            }
            Ok(Record::Progress(checkpoint))
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

/// Starts the rolling checksum of a transaction: it chains the previous value
/// and the GTID, and then every byte of the transaction (fed part by part, so
/// a transaction split into parts never has to be in memory whole).
pub fn chain_start(prev: u32, gtid: Gtid) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev.to_le_bytes());
    h.update(&gtid.domain.to_le_bytes());
    h.update(&gtid.server.to_le_bytes());
    h.update(&gtid.seq.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_strictness() {
        let h = DataHeader {
            instance: 7,
            ends_instance: true,
            gtid: Gtid::new(1, 2, 3),
            checksum: Checksum::None,
            part: 4,
            last: true,
            chain_after: 0xdead_beef,
        };
        let mut buf = Vec::new();
        encode_data_header(&h, &mut buf);
        assert_eq!(buf.len(), DATA_HEADER_LEN);
        buf.extend_from_slice(b"events");
        match decode(&buf).unwrap() {
            Record::Data(d, bytes) => {
                assert_eq!(d, h);
                assert_eq!(bytes, b"events");
            }
            other => panic!("{other:?}"),
        }
        let b = BaseState {
            next_key: 10,
            next_txn: 9,
            checkpoint: 8,
            chain: 7,
            pos: "0-1-5,2-3-4".parse().unwrap(),
        };
        match decode(&encode_base(&b)).unwrap() {
            Record::Base(d) => assert_eq!(d, b),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&encode_progress(5)).unwrap(),
            Record::Progress(5)
        ));
        // Truncations and stray bytes are refused.
        let base = encode_base(&b);
        for n in 0..base.len() {
            assert!(decode(&base[..n]).is_err(), "{n}");
        }
        let mut p = encode_progress(5);
        p.push(0);
        assert!(decode(&p).is_err());
        assert!(decode(&[9, 0, 0, 0]).is_err());
        let mut bad = buf.clone();
        bad[1] |= 0x80;
        assert!(decode(&bad).is_err());
    }
}
