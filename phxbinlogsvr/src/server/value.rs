//! The Paxos value of the write path and the state machine's output.

use binlog::Checksum;
use serde::{Deserialize, Serialize};

/// Largest value the write path proposes in one batch (sum of the raw
/// transaction bytes). Matches the Paxos core's default `max_batch_bytes`.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Largest single transaction the write path can propose today (one value,
/// under the transport's 64 MiB frame limit with room to spare). Larger
/// transactions need splitting into parts (`EventStore::append_part`), a
/// later step: until then the write path refuses them and retries, so the
/// commit waits (it is never acknowledged unchosen).
pub const MAX_TRANSACTION_BYTES: usize = 32 << 20;

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
