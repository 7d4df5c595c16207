//! The event store: every chosen transaction, on every node, in chosen
//! order, durably; the log the replication master serves to the local
//! MariaDB, and the checkpoint a far-behind node installs from a peer.
//!
//! # What it holds
//!
//! A sequence of complete transactions (MariaDB event groups, their raw
//! events byte for byte), each with a dense *log index* (0, 1, 2, ... across
//! the cluster's whole history: every node applies the same chosen values,
//! so the same transaction has the same index everywhere) and the Paxos
//! instance it was chosen in. In memory it keeps only an index: per
//! transaction its records' keys and size, per domain seq_no -> log index
//! (gtid_strict_mode makes seq_nos grow within a domain), and the running
//! state: the last GTID of each domain, the rolling checksum, and the
//! checkpoint (every instance below it is stored and durable).
//!
//! The rolling checksum is a crc32 chained over every transaction:
//! `crc32(previous value LE || domain LE || server LE || seq LE || events)`,
//! starting at 0. The write path's compare-and-set carries the previous
//! GTID and this value, so a chosen value can only extend the log it was
//! built on.
//!
//! # Writing
//!
//! [`EventStore`] is the single writer (the Paxos state machine's thread).
//! Each applied instance is one call: [`EventStore::append`] (its
//! transactions), [`EventStore::append_part`] (one part of a transaction too
//! large for one value), or [`EventStore::mark_applied`] (nothing to store).
//! Appends are written to the OS at once; [`EventStore::sync`] makes all of
//! them durable with one fsync (group commit) and only then shows the new
//! transactions to readers, wakes waiting dumps and moves the checkpoint.
//! `last_pos`/`rolling_checksum`/`contains` count everything appended (what
//! the next append must extend); readers and `checkpoint` only what is
//! durable.
//!
//! # Large transactions
//!
//! A transaction may arrive as parts 0..n, each chosen in its own instance.
//! Parts are stored durably as they come but readers see the transaction
//! only when its last part is stored. Part 0 starts a transaction; part k
//! must follow part k-1 of the same GTID. Anything else that completes or
//! starts a transaction (a whole transaction, another part 0) abandons the
//! one in progress: the chosen log moved on without it (its master died).
//! After a crash the parts held come back from the log and the next parts
//! complete the transaction. The rolling checksum is fed part by part, so
//! no transaction has to be in memory whole except when a reader reads it.
//!
//! # On disk
//!
//! See [`layout`] for the directory (generations and the `CURRENT`
//! pointer). A generation is a `paxos::storage::SegmentLog` (segments with a
//! CRC per record, group commit, torn tails cut, corruption refused),
//! holding the records of [`record`]:
//!
//! * DATA, keyed by a dense store key: one transaction, or one part of one,
//!   with its instance, GTID, checksum setting, part index, a flag on the
//!   last record of each instance, and the rolling checksum after the
//!   transaction on its last part;
//! * BASE, the first record of every segment: the state at that point (next
//!   key, next log index, checkpoint, rolling checksum, GTID position). When
//!   trimming removes older segments, the first one left says where the log
//!   now starts and what was trimmed; each later BASE is checked against
//!   the replay;
//! * PROGRESS, written by `sync` when instances with nothing to store moved
//!   the checkpoint.
//!
//! The store starts segments itself (the segment log never rolls on its
//! own), always between instances, and fsyncs each BASE at once.
//!
//! # Recovery
//!
//! `open` replays the log (verifying every record's CRC, parsing only the
//! record headers; the chain is recomputed and compared with the stored
//! values). The records of an instance count only once its last record is
//! seen: a crash in the middle of an instance (torn tail, or records never
//! synced) leaves a prefix of whole instances, and the checkpoint before the
//! cut instance, which Paxos then applies again (reusing its keys: the
//! segment log serves the newest record of a key). `open` then starts a new
//! segment with a BASE record, which closes off whatever the crash left.
//!
//! # Retention
//!
//! [`EventStore::trim`] removes whole segments below both limits: what the
//! local MariaDB has applied and the newest `min_window` transactions.
//! A reader at a trimmed position gets [`SourceError::Trimmed`] naming its
//! GTID (from [`plan_start`]).
//!
//! # Checkpoint images
//!
//! [`EventStore::checkpoint_reader`] / [`EventStore::read_checkpoint`]
//! stream the durable content as one byte stream ([`image`] has the format);
//! [`EventStore::begin_install`] / [`EventStore::install`] /
//! [`EventStore::write_checkpoint`] rebuild it in a staging directory,
//! verify it, and switch generations atomically. These back
//! `paxos::StateMachine::{read_checkpoint, write_checkpoint}`.
//!
//! One process must own a store directory at a time; nothing here locks it.
//!
//! [`SourceError::Trimmed`]: crate::master::SourceError::Trimmed
//! [`plan_start`]: crate::master::plan_start

mod error;
pub mod image;
pub mod layout;
mod reader;
pub mod record;
mod state;
mod writer;

pub use error::StoreError;
pub use image::{CheckpointReader, CheckpointWriter};
pub use reader::StoreReader;
pub use record::chain_start;
pub use writer::{EventStore, OpenReport, PartOutcome, StoreOptions, TrimReport, TxnPart};
