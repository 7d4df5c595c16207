//! The Paxos values of the write path and the state machine's output.
//!
//! # Value format
//!
//! Two kinds of application item, told apart by their first bytes:
//!
//! * a whole batch, [`BinlogValue`]: postcard of the struct, byte for byte
//!   the format of the first release (no tag, so values already in Paxos
//!   logs decode as before);
//! * anything newer: [`TAGGED_MAGIC`] followed by postcard of the
//!   [`TaggedValue`] enum. Its serde variant index is the kind; new kinds
//!   are added as new variants at the end. Variant 0 is
//!   [`TaggedValue::Part`], one part of a transaction too large for one
//!   value.
//!
//! The magic is the postcard varint of a string length of 2^32 - 1: as a
//! [`BinlogValue`] it would announce a `prev` of 4 GiB, which no value
//! (bounded by the transport's 64 MiB frame) can hold, so a tagged value
//! never decodes as a batch (an older binary rejects it as undecodable).

use binlog::Checksum;
use serde::{Deserialize, Serialize};

/// Largest value the write path proposes in one batch (sum of the raw
/// transaction bytes). Matches the Paxos core's default `max_batch_bytes`.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Highest per-value limit the write path accepts (one value, under the
/// transport's 64 MiB frame limit with room to spare): a transaction
/// larger than the limit is split into parts of at most that many event
/// bytes, each its own Paxos value ([`PartValue`]), applied with
/// `EventStore::append_part`.
pub const MAX_TRANSACTION_BYTES: usize = 32 << 20;

/// The default per-value limit. Lease renewals are Paxos values too, and
/// take effect only once applied, in log order: a value of tens of MiB ahead
/// of a renewal can delay it past the lease (measured: a 64 MiB transaction
/// in 32 MiB parts cost a debug-build master its lease). Small parts let
/// renewals through between them.
pub const DEFAULT_VALUE_BYTES: usize = MAX_BATCH_BYTES;

/// The default bound on the bytes the write path has in flight (submitted
/// values whose outcome it has not seen), for the same reason.
pub const DEFAULT_INFLIGHT_BYTES: usize = 2 * MAX_BATCH_BYTES;

/// Smallest per-value limit the write path accepts (part 0 must hold the
/// whole GTID event, which is far smaller).
pub const MIN_VALUE_BYTES: usize = 64 << 10;

/// First bytes of a [`TaggedValue`] (see the module docs).
pub const TAGGED_MAGIC: [u8; 5] = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F];

/// One Paxos value of the write path: a batch of whole transactions that
/// extends the log only if the log still ends at `prev` with rolling
/// checksum `prev_checksum` (compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogValue {
    /// The store's last GTID position the batch was built on (text form,
    /// `GtidPos` display: `0-1-5,1-2-7`).
    pub prev: String,
    /// The store's rolling checksum the batch was built on.
    pub prev_checksum: u32,
    /// The checksum setting of the events (`binlog_checksum` of the
    /// master): 0 = NONE, 1 = CRC32.
    pub checksum: u8,
    /// The transactions, raw events byte for byte, in binlog order.
    pub transactions: Vec<serde_bytes::ByteBuf>,
}

impl BinlogValue {
    /// Encodes for `NodeHandle::propose`.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// Decodes an applied item.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The events' checksum setting.
    pub fn checksum_alg(&self) -> Checksum {
        if self.checksum == 0 {
            Checksum::None
        } else {
            Checksum::Crc32
        }
    }

    /// The wire code of a checksum setting.
    pub fn checksum_code(c: Checksum) -> u8 {
        match c {
            Checksum::None => 0,
            Checksum::Crc32 => 1,
        }
    }
}

/// One part of a transaction too large for one value. It extends the log
/// only if the log still ends at `prev` / `prev_checksum` (the position
/// before the transaction: parts do not move it until the last one) and,
/// for `index > 0`, the store holds exactly parts `0..index` of this GTID
/// with the running checksum `part_chain` (compare-and-set extended to
/// parts). Part 0 starts the transaction (abandoning unfinished parts of
/// any other attempt); the last part makes it visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartValue {
    /// The store's last GTID position before the transaction (text form).
    pub prev: String,
    /// The store's rolling checksum before the transaction.
    pub prev_checksum: u32,
    /// The checksum setting of the events: 0 = NONE, 1 = CRC32.
    pub checksum: u8,
    /// The transaction's GTID.
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
    /// 0, 1, 2, ...
    pub index: u32,
    /// This part completes the transaction.
    pub last: bool,
    /// For `index > 0`: the store's running checksum of the parts held,
    /// crc32 over (`prev_checksum` LE, domain LE, server LE, seq LE, the
    /// bytes of parts `0..index`). 0 for part 0.
    pub part_chain: u32,
    /// The next bytes of the transaction's events.
    pub bytes: serde_bytes::ByteBuf,
}

impl PartValue {
    /// The parts of `txn` (raw events, GTID `gtid`, checksum code
    /// `checksum`) built on the log position `prev` / `prev_checksum`: cuts
    /// of at most `max` bytes (at least 1), made one at a time (only one
    /// part is copied at a time), each with the running checksum of the
    /// parts before it.
    pub fn split<'a>(
        prev: &str,
        prev_checksum: u32,
        gtid: binlog::Gtid,
        checksum: u8,
        bytes: &'a [u8],
        max: usize,
    ) -> PartSplitter<'a> {
        let max = max.max(1);
        let chain = crate::store::chain_start(prev_checksum, gtid);
        PartSplitter {
            prev: prev.to_string(),
            prev_checksum,
            checksum,
            gtid,
            count: bytes.len().div_ceil(max),
            chunks: bytes.chunks(max),
            index: 0,
            chain,
        }
    }

    /// The transaction's GTID.
    pub fn gtid(&self) -> binlog::Gtid {
        binlog::Gtid::new(self.domain, self.server, self.seq)
    }

    /// Encodes for `NodeHandle::propose` (tagged).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_extend(&TaggedValueRef::Part(self), TAGGED_MAGIC.to_vec())
    }
}

/// The parts of one transaction, in order; see [`PartValue::split`].
#[derive(Debug, Clone)]
pub struct PartSplitter<'a> {
    prev: String,
    prev_checksum: u32,
    checksum: u8,
    gtid: binlog::Gtid,
    count: usize,
    chunks: std::slice::Chunks<'a, u8>,
    index: u32,
    chain: crc32fast::Hasher,
}

impl PartSplitter<'_> {
    /// How many parts there are in all.
    pub fn total(&self) -> usize {
        self.count
    }

    /// Skips the next `n` parts without building them.
    pub fn skip_parts(&mut self, n: u32) {
        for _ in 0..n {
            let Some(chunk) = self.chunks.next() else {
                return;
            };
            self.chain.update(chunk);
            self.index = self.index.saturating_add(1);
        }
    }

    /// The running checksum after the parts produced or skipped so far
    /// (what the store reports as `pending_chain` once it holds them).
    pub fn running_chain(&self) -> u32 {
        self.chain.clone().finalize()
    }
}

impl Iterator for PartSplitter<'_> {
    type Item = PartValue;

    fn next(&mut self) -> Option<PartValue> {
        let chunk = self.chunks.next()?;
        let index = self.index;
        let part = PartValue {
            prev: self.prev.clone(),
            prev_checksum: self.prev_checksum,
            checksum: self.checksum,
            domain: self.gtid.domain,
            server: self.gtid.server,
            seq: self.gtid.seq,
            index,
            last: self.chunks.len() == 0,
            part_chain: if index == 0 {
                0
            } else {
                self.chain.clone().finalize()
            },
            bytes: serde_bytes::ByteBuf::from(chunk.to_vec()),
        };
        self.chain.update(chunk);
        self.index = index.saturating_add(1);
        Some(part)
    }
}

/// The tagged kinds of value (after [`TAGGED_MAGIC`]). Append new variants
/// at the end only: the variant index is the wire tag.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum TaggedValue {
    /// Variant 0: one part of a large transaction.
    Part(PartValue),
}

/// [`TaggedValue`] by reference, for encoding without a copy.
#[derive(Serialize)]
enum TaggedValueRef<'a> {
    Part(&'a PartValue),
}

/// A decoded application item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Whole transactions.
    Batch(BinlogValue),
    /// One part of a large transaction.
    Part(PartValue),
}

impl Value {
    /// Decodes an applied item of either kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        match bytes.strip_prefix(&TAGGED_MAGIC[..]) {
            Some(rest) => match postcard::from_bytes::<TaggedValue>(rest)? {
                TaggedValue::Part(p) => Ok(Value::Part(p)),
            },
            None => BinlogValue::decode(bytes).map(Value::Batch),
        }
    }
}

/// What applying one item did (returned to the proposer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The batch extended the log.
    Applied {
        /// Log index of its first transaction.
        first_index: u64,
        /// Transactions stored.
        count: u64,
        /// The log's GTID position after it.
        pos: String,
        /// The rolling checksum after it.
        checksum: u32,
    },
    /// A part (not the last) was stored; the transaction stays invisible to
    /// readers until its last part is applied. (The last part's outcome is
    /// `Applied` with `count` 1.)
    PartHeld {
        /// The transaction.
        gtid: String,
        /// Parts held so far.
        parts: u32,
    },
    /// The compare-and-set failed: the log no longer ends where the batch
    /// was built. Nothing was appended.
    Conflict {
        /// Where the log ends.
        pos: String,
        /// Its rolling checksum.
        checksum: u32,
    },
    /// The item is not a valid batch (undecodable, malformed transaction,
    /// GTID out of order). Nothing was appended.
    Rejected(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn batches_keep_their_format_and_parts_are_tagged() {
        let batch = BinlogValue {
            prev: "0-1-5".into(),
            prev_checksum: 7,
            checksum: 1,
            transactions: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
        };
        let bytes = batch.encode().unwrap();
        // The first release's encoding: no tag in front.
        assert_eq!(&bytes[..6], b"\x050-1-5");
        assert_eq!(Value::decode(&bytes).unwrap(), Value::Batch(batch));

        let data: Vec<u8> = (0..=255).collect();
        let parts: Vec<PartValue> =
            PartValue::split("0-1-5", 7, binlog::Gtid::new(0, 1, 6), 1, &data, 100).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|p| (p.index, p.last)).collect::<Vec<_>>(),
            [(0, false), (1, false), (2, true)]
        );
        assert_eq!(parts[0].part_chain, 0);
        let mut h = crc32fast::Hasher::new();
        h.update(&7u32.to_le_bytes());
        h.update(&0u32.to_le_bytes());
        h.update(&1u32.to_le_bytes());
        h.update(&6u64.to_le_bytes());
        h.update(&data[..100]);
        assert_eq!(parts[1].part_chain, h.finalize());
        // Resuming after 2 parts: the same third part.
        let mut rest = PartValue::split("0-1-5", 7, binlog::Gtid::new(0, 1, 6), 1, &data, 100);
        rest.skip_parts(2);
        assert_eq!(rest.running_chain(), parts[2].part_chain);
        assert_eq!(rest.collect::<Vec<_>>(), &parts[2..]);
        for p in &parts {
            let bytes = p.encode().unwrap();
            assert!(bytes.starts_with(&TAGGED_MAGIC));
            assert_eq!(Value::decode(&bytes).unwrap(), Value::Part(p.clone()));
            // Never mistaken for a batch (what an older binary would try).
            assert!(BinlogValue::decode(&bytes).is_err());
        }
    }
}
