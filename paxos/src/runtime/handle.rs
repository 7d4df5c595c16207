//! [`NodeHandle`]: the application's side of a running node.

use super::clock;
use super::error::{ProposeFailed, RuntimeError};
use crate::core::{Counters, Status};
use crate::transport::{Transport, TransportStats};
use crate::types::{InstanceId, NodeId, Time};
use crate::value::MembershipChange;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// A request from a handle to the driver.
pub(crate) enum Command<O> {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(InstanceId, O), ProposeFailed>>,
    },
    ProposeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<InstanceId, ProposeFailed>>,
    },
    StepDown {
        to: Option<NodeId>,
        reply: oneshot::Sender<Result<Option<InstanceId>, ProposeFailed>>,
    },
    SetLeaseDuration {
        duration: Duration,
        reply: oneshot::Sender<Result<InstanceId, ProposeFailed>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Shutdown,
}

/// The outcome of a value placed with [`NodeHandle::submit`]: resolves like
/// [`NodeHandle::propose`] once the value is chosen and applied here (or
/// failed). Dropping it does not withdraw the value.
pub struct Pending<O> {
    rx: oneshot::Receiver<Result<(InstanceId, O), ProposeFailed>>,
}

impl<O> std::fmt::Debug for Pending<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<O> std::future::Future for Pending<O> {
    type Output = Result<(InstanceId, O), ProposeFailed>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProposeFailed::NodeStopped)))
    }
}

/// The driver's own counters (the core and the transport count the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeCounters {
    /// Frames taken from the transport.
    pub messages_received: u64,
    /// Frames whose payload was not a valid message (dropped).
    pub undecodable_messages: u64,
    pub messages_sent: u64,
    pub records_appended: u64,
    /// `sync` calls that had records to make durable.
    pub log_syncs: u64,
    pub readies: u64,
    pub compactions: u64,
    /// Instances and application items handed to the state machine.
    pub instances_applied: u64,
    pub items_applied: u64,
    pub checkpoint_chunks_served: u64,
    pub checkpoint_serve_errors: u64,
    pub checkpoint_chunks_received: u64,
    pub checkpoint_fetches_started: u64,
    /// Transfers started over because the source's checkpoint moved on.
    pub checkpoint_fetch_restarts: u64,
    /// Transfers abandoned (stalled, rejected chunk, write error).
    pub checkpoint_fetches_failed: u64,
    pub checkpoints_installed: u64,
}

/// Every counter of a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCounters {
    pub core: Counters,
    pub transport: TransportStats,
    pub runtime: RuntimeCounters,
}

/// What the driver publishes after every turn of its loop, for the handle's
/// cheap, non-async getters.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The master as the core saw it, with the end of its lease on the node clock:
    /// for this node that is exactly the core's own (conservative) lease end.
    pub master: Option<(NodeId, Time)>,
    /// Step-downs requested through a handle and not yet carried out: while
    /// any is pending this node does not claim to be master.
    pub pending_step_downs: u32,
    /// The lease value's version as last applied here.
    pub lease_version: u64,
    /// The cluster's lease length (the last applied lease value's).
    pub lease_duration: std::time::Duration,
    pub counters: Counters,
    pub runtime: RuntimeCounters,
}

/// State shared by the driver and every handle.
pub(crate) struct Shared {
    pub node: NodeId,
    published: Mutex<Published>,
}

impl Shared {
    pub fn new(node: NodeId) -> Self {
        Shared {
            node,
            published: Mutex::new(Published::default()),
        }
    }

    /// Short critical sections with no await and no panics inside; a poisoned
    /// lock still holds consistent data.
    pub fn published(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// How the node stopped: `Ok` after a clean shutdown, the error if it failed.
pub(crate) type StopReason = Result<(), Arc<RuntimeError>>;

/// A cheap, cloneable handle to a running node. The node shuts down cleanly
/// when the last handle is dropped (or on [`NodeHandle::shutdown`]).
pub struct NodeHandle<O> {
    pub(crate) commands: mpsc::Sender<Command<O>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: watch::Receiver<Option<StopReason>>,
    pub(crate) transport: Transport,
}

impl<O> Clone for NodeHandle<O> {
    fn clone(&self) -> Self {
        NodeHandle {
            commands: self.commands.clone(),
            shared: Arc::clone(&self.shared),
            stop: self.stop.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl<O> std::fmt::Debug for NodeHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node", &self.shared.node)
            .field("local_addr", &self.transport.local_addr())
            .finish_non_exhaustive()
    }
}

impl<O: Send + 'static> NodeHandle<O> {
    pub fn node_id(&self) -> NodeId {
        self.shared.node
    }

    /// The address the transport listens on (useful when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Proposes an application value. Resolves once it has been chosen and applied
    /// by this node's state machine, with the instance and the state machine's
    /// output for it.
    pub async fn propose(&self, data: Vec<u8>) -> Result<(InstanceId, O), ProposeFailed> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Propose { data, reply }).await?;
        rx.await.map_err(|_| ProposeFailed::NodeStopped)?
    }

    /// Places an application value in the driver's queue and returns at once
    /// with its [`Pending`] outcome. Values submitted one after the other from
    /// one task are queued in that order, so the leader places them in
    /// increasing instances (possibly several in one instance, in order):
    /// this is how a caller keeps several values in flight yet applied in
    /// its order. A value placed ahead of an earlier one is impossible; a
    /// value whose earlier neighbour failed may still be chosen (the
    /// application's own checks, e.g. a compare-and-set, decide).
    pub async fn submit(&self, data: Vec<u8>) -> Result<Pending<O>, ProposeFailed> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Propose { data, reply }).await?;
        Ok(Pending { rx })
    }

    /// Proposes a membership change; resolves with the instance it took effect at.
    pub async fn propose_membership(
        &self,
        change: MembershipChange,
    ) -> Result<InstanceId, ProposeFailed> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ProposeMembership { change, reply })
            .await?;
        rx.await.map_err(|_| ProposeFailed::NodeStopped)?
    }

    /// True while this node holds the master lease by its own conservative clock.
    /// Never true past the core's own lease end, nor once a step-down was asked for.
    pub fn is_master(&self) -> bool {
        let p = self.shared.published();
        p.pending_step_downs == 0
            && matches!(p.master, Some((node, until)) if node == self.shared.node && clock::now() < until)
    }

    /// The master as this node sees it, with the lease time left (see
    /// `Core::master`); `None` when no lease is in force here.
    pub fn master(&self) -> Option<(NodeId, Duration)> {
        let p = self.shared.published();
        let (node, until) = p.master?;
        if node == self.shared.node && p.pending_step_downs > 0 {
            return None;
        }
        let now = clock::now();
        (now < until).then(|| (node, until - now))
    }

    /// The version of the lease value as this node last applied it (as of
    /// the driver's last loop turn). It moves on every grant and renewal,
    /// and one version has at most one holder: a holder can use the version
    /// it saw when it took the lease as a cluster-wide unique number.
    pub fn lease_version(&self) -> u64 {
        self.shared.published().lease_version
    }

    /// The cluster's lease length as last applied here.
    pub fn lease_duration(&self) -> Duration {
        self.shared.published().lease_duration
    }

    /// Gives up the lease, handing it to `to` (or to nobody). `Ok(None)` if this
    /// node was not master; otherwise the instance the hand-over took effect at.
    /// `is_master()` turns false as soon as this is called.
    pub async fn step_down(&self, to: Option<NodeId>) -> Result<Option<InstanceId>, ProposeFailed> {
        self.shared.published().pending_step_downs += 1;
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.send(Command::StepDown { to, reply }).await {
            self.shared.published().pending_step_downs -= 1;
            return Err(e);
        }
        rx.await.map_err(|_| ProposeFailed::NodeStopped)?
    }

    /// Changes the cluster's lease length (on the master; see
    /// `Core::set_lease_duration`); resolves with the instance it took
    /// effect at.
    pub async fn set_lease_duration(
        &self,
        duration: Duration,
    ) -> Result<InstanceId, ProposeFailed> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetLeaseDuration { duration, reply })
            .await?;
        rx.await.map_err(|_| ProposeFailed::NodeStopped)?
    }

    /// The core's status, asked of the driver (fails only once the node stopped).
    pub async fn status(&self) -> Result<Status, ProposeFailed> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| ProposeFailed::NodeStopped)
    }

    /// A snapshot of every counter (the core's and the driver's as of the driver's
    /// last loop turn, the transport's live).
    pub fn counters(&self) -> NodeCounters {
        let (core, runtime) = {
            let p = self.shared.published();
            (p.counters.clone(), p.runtime.clone())
        };
        NodeCounters {
            core,
            transport: self.transport.stats(),
            runtime,
        }
    }

    /// Resolves when the node has stopped: `Ok(())` after a clean shutdown, the
    /// fatal error otherwise.
    pub async fn stopped(&self) -> Result<(), Arc<RuntimeError>> {
        let mut stop = self.stop.clone();
        match stop.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(Ok(())),
            // The driver is gone without saying why: it panicked.
            Err(_) => Err(Arc::new(RuntimeError::Panicked)),
        }
    }

    /// The error that stopped the node, if it failed.
    pub fn fatal_error(&self) -> Option<Arc<RuntimeError>> {
        match &*self.stop.borrow() {
            Some(Err(e)) => Some(Arc::clone(e)),
            _ => None,
        }
    }

    /// Stops the node cleanly: the driver finishes the `Ready` in hand (so
    /// everything acknowledged is durable), stops the transport and fails the
    /// remaining waiters with `NodeStopped`. Returns once it has stopped.
    pub async fn shutdown(self) {
        // An error means the driver is already gone.
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.stopped().await;
    }

    async fn send(&self, cmd: Command<O>) -> Result<(), ProposeFailed> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| ProposeFailed::NodeStopped)
    }
}
