//! Multi-Paxos for phxsql-rs: a sans-IO consensus core with a master lease
//! and membership, a durable segment log, a TCP transport and a tokio driver.

pub mod storage;
pub mod transport;
