//! How to run one node.

use crate::core::CoreConfig;
use crate::storage::LogOptions;
use crate::types::NodeId;
use crate::value::SystemState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The consensus tunables; `core.node_id` is this node's id. An `incarnation`
    /// of 0 is replaced by a random one at every start.
    pub core: CoreConfig,
    /// Frames from other clusters are rejected.
    pub cluster_id: u64,
    /// Address the transport listens on.
    pub listen: SocketAddr,
    /// The node's directory; the log lives in `data_dir/paxos`.
    pub data_dir: PathBuf,
    /// `Some` for the founding members of a new cluster (the same on all of them),
    /// `None` for a node joining an existing one (it installs a checkpoint first).
    /// Ignored once the log holds a snapshot.
    pub initial: Option<SystemState>,
    /// Peers to talk to before the membership is known (joiners).
    pub seeds: HashMap<NodeId, SocketAddr>,
    /// How often the core's timers are advanced (~5-10 ms).
    pub tick_interval: Duration,
    pub log: LogOptions,
}

impl NodeConfig {
    /// A configuration with default tunables, no initial state and no seeds.
    pub fn new(node_id: NodeId, cluster_id: u64, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            core: CoreConfig::new(node_id),
            cluster_id,
            listen,
            data_dir,
            initial: None,
            seeds: HashMap::new(),
            tick_interval: Duration::from_millis(5),
            log: LogOptions::default(),
        }
    }
}
