//! Several instances started together.

use std::ops::{Deref, Index};

use tokio::task::JoinSet;

use crate::builder::Builder;
use crate::error::{Result, TestkitError};
use crate::instance::MariaDb;

/// `n` instances, started concurrently, each with its own server id, port
/// and directory. Derefs to `[MariaDb]`; dropping it drops them all.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<MariaDb>,
}

impl Cluster {
    /// Starts `n` instances with default options (server ids are unique).
    pub async fn start(n: usize) -> Result<Cluster> {
        Cluster::start_with(n, |_| MariaDb::builder()).await
    }

    /// Starts `n` instances concurrently; `options(i)` gives node `i`'s
    /// options (e.g. `|i| MariaDb::builder().server_id(i as u32 + 1)`).
    /// If one fails, the others are stopped and removed, and the first error
    /// is returned.
    pub async fn start_with<F>(n: usize, mut options: F) -> Result<Cluster>
    where
        F: FnMut(usize) -> Builder,
    {
        let mut set = JoinSet::new();
        for i in 0..n {
            let builder = options(i);
            set.spawn(async move { (i, builder.start().await) });
        }
        let mut slots: Vec<Option<MariaDb>> = (0..n).map(|_| None).collect();
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(db))) => {
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = Some(db);
                    }
                }
                Ok((_, Err(e))) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error
                        .get_or_insert(TestkitError::Config(format!("a start task failed: {e}")));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(Cluster {
            nodes: slots.into_iter().flatten().collect(),
        })
    }

    /// The instances.
    pub fn nodes(&self) -> &[MariaDb] {
        &self.nodes
    }

    /// Takes the instances out.
    pub fn into_nodes(self) -> Vec<MariaDb> {
        self.nodes
    }
}

impl Deref for Cluster {
    type Target = [MariaDb];
    fn deref(&self) -> &[MariaDb] {
        &self.nodes
    }
}

impl Index<usize> for Cluster {
    type Output = MariaDb;
    fn index(&self, i: usize) -> &MariaDb {
        &self.nodes[i]
    }
}

impl<'a> IntoIterator for &'a Cluster {
    type Item = &'a MariaDb;
    type IntoIter = std::slice::Iter<'a, MariaDb>;
    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter()
    }
}

/// Starts `n` instances with default options concurrently.
pub async fn start_many(n: usize) -> Result<Vec<MariaDb>> {
    Ok(Cluster::start(n).await?.into_nodes())
}
