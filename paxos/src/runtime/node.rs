//! Starting a node.

use super::StateMachine;
use super::clock;
use super::config::NodeConfig;
use super::driver::Driver;
use super::error::RuntimeError;
use super::handle::{NodeHandle, Shared, StopReason};
use super::log::{LogEntries, open_log};
use crate::core::Core;
use crate::transport::{Transport, TransportConfig};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::info;

/// Commands queued from handles before `propose` waits (backpressure).
const COMMAND_QUEUE_LEN: usize = 4096;

/// Entry point: `Node::start(cfg, sm)`.
pub struct Node;

impl Node {
    /// Recovers the node from `cfg.data_dir`, starts its transport and its driver,
    /// and returns a handle to it.
    ///
    /// Must be called inside a tokio runtime; the transport's tasks run on it. The
    /// driver gets a thread (and a single-threaded runtime) of its own.
    pub async fn start<SM: StateMachine>(
        cfg: NodeConfig,
        sm: SM,
    ) -> Result<NodeHandle<SM::Output>, RuntimeError> {
        let NodeConfig {
            core: mut core_cfg,
            cluster_id,
            listen,
            data_dir,
            initial,
            seeds,
            tick_interval,
            log: log_opts,
        } = cfg;
        if tick_interval.is_zero() {
            return Err(RuntimeError::Config(
                "tick_interval must not be zero".into(),
            ));
        }
        if core_cfg.incarnation == 0 {
            // Batch ids must never repeat across restarts; never 0 either.
            core_cfg.incarnation = rand::random::<u64>() | 1;
        }
        let node = core_cfg.node_id;

        // Recovery reads the whole log: blocking work, off the async threads.
        let log_dir = data_dir.join("paxos");
        let (log, core, sm) = tokio::task::spawn_blocking(move || {
            let (log, recovery) = open_log(&log_dir, log_opts)?;
            let reader = Box::new(LogEntries(log.reader()));
            let app_checkpoint = sm.checkpoint();
            let core = Core::new(
                core_cfg,
                initial,
                recovery,
                reader,
                app_checkpoint,
                clock::now(),
            )?;
            Ok::<_, RuntimeError>((log, core, sm))
        })
        .await
        .map_err(|_| RuntimeError::Panicked)??;
        let status = core.status();
        info!(
            node,
            chosen_prefix = status.chosen_prefix,
            log_start = status.log_start,
            app_checkpoint = sm.checkpoint(),
            bootstrapping = status.bootstrapping,
            members = ?status.membership,
            "core recovered"
        );

        let (transport, incoming) =
            Transport::start(TransportConfig::new(cluster_id, node, listen))
                .await
                .map_err(|source| RuntimeError::Listen {
                    addr: listen,
                    source,
                })?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::Spawn)?;
        let shared = Arc::new(Shared::new(node));
        let (stop_tx, stop_rx) = watch::channel::<Option<StopReason>>(None);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE_LEN);
        let driver = Driver::new(
            core,
            log,
            sm,
            transport.clone(),
            incoming,
            cmd_rx,
            Arc::clone(&shared),
            stop_tx.clone(),
            seeds,
            tick_interval,
        );
        let guard = PanicGuard {
            stop: stop_tx,
            transport: transport.clone(),
        };
        std::thread::Builder::new()
            .name(format!("paxos-{node}"))
            .spawn(move || {
                let _guard = guard;
                runtime.block_on(driver.run());
            })
            .map_err(RuntimeError::Spawn)?;

        Ok(NodeHandle {
            commands: cmd_tx,
            shared,
            stop: stop_rx,
            transport,
        })
    }
}

/// Lives on the driver thread: if the driver dies without stopping the node (a
/// panic, e.g. in the state machine), stop the transport and report it.
struct PanicGuard {
    stop: watch::Sender<Option<StopReason>>,
    transport: Transport,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if self.stop.borrow().is_none() {
            tracing::error!("the node's driver panicked; node stopped");
            self.transport.shutdown();
            self.stop
                .send_replace(Some(Err(Arc::new(RuntimeError::Panicked))));
        }
    }
}
