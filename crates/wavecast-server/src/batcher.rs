//! Group commit of device reports: reports about one rollout that arrive while a batch of them
//! is being applied wait, and are applied together in the next batch, in one transaction.
//!
//! Every report about a rollout changes that rollout's row, under its lock, and most append to
//! the audit log under its head's: one transaction (and one durable commit) per report made a
//! 10,000-device rollout queue on those locks. Batching is natural rather than timed: the first
//! report to arrive for an idle rollout starts a drain at once (no added latency), and what
//! arrives meanwhile queues for the next batch, so batches grow exactly as far as the database
//! is the bottleneck. A batch is one rollout's (the lock order in `store::rollouts` holds per
//! transaction) and at most [`MAX_BATCH_REPORTS`] reports.
//!
//! Each caller gets its own outcomes. When a batch fails, every caller in it gets the error and
//! nothing of the batch is applied; the next batch is tried afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::store::{DeviceReports, ReportOutcome, Store, StoreError};

/// The most reports one batch applies; a part (one device's reports) is never split.
pub const MAX_BATCH_REPORTS: usize = 256;

/// Why a part's reports were not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch's transaction failed: nothing of it was applied.
    #[error("applying a batch of {reports} device reports about rollout {rollout}")]
    Store {
        /// The rollout.
        rollout: String,
        /// Reports in the batch.
        reports: usize,
        /// Why.
        #[source]
        source: Arc<StoreError>,
    },
    /// The task applying the batch ended before it answered (the server is stopping).
    #[error("the batch of device reports about rollout {rollout} was abandoned before it was applied")]
    Abandoned {
        /// The rollout.
        rollout: String,
    },
}

/// One caller's part of a batch and where its outcomes go.
struct Job {
    part: DeviceReports,
    reply: oneshot::Sender<Result<Vec<ReportOutcome>, BatchError>>,
}

/// Parts waiting for a rollout. A rollout has an entry exactly while a drain runs for it.
type Queues = Arc<Mutex<HashMap<String, VecDeque<Job>>>>;

/// Applies device reports in batches, one rollout's at a time per batch. Cheap to clone; clones
/// share their queues.
#[derive(Clone)]
pub struct ReportBatcher {
    store: Store,
    queues: Queues,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    reports: AtomicU64,
}

/// How many batches were committed, and the reports in them: for `/metrics` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches committed.
    pub batches: u64,
    /// Reports in them.
    pub reports: u64,
}

impl std::fmt::Debug for ReportBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportBatcher").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

fn lock(queues: &Queues) -> MutexGuard<'_, HashMap<String, VecDeque<Job>>> {
    // The map is only ever changed whole under the lock, so a poisoned one is still sound.
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReportBatcher {
    /// A batcher over `store`, with nothing queued.
    pub fn new(store: Store) -> Self {
        Self { store, queues: Arc::default(), stats: Arc::default() }
    }

    /// Queues `part` (whose reports are all about `rollout_id`) behind the parts already waiting
    /// for that rollout, at once: parts queued by one caller one after the other are applied in
    /// that order. The returned future resolves to the part's outcomes, one per report.
    ///
    /// The batch runs in a task of its own, so a caller that goes away (a request cancelled by
    /// its client) never leaves a batch half done or other callers waiting.
    pub fn submit(
        &self,
        rollout_id: &str,
        part: DeviceReports,
    ) -> impl Future<Output = Result<Vec<ReportOutcome>, BatchError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let start_drain = {
            let mut queues = lock(&self.queues);
            let start = !queues.contains_key(rollout_id);
            queues.entry(rollout_id.to_owned()).or_default().push_back(Job { part, reply });
            start
        };
        if start_drain {
            tokio::spawn(self.clone().drain(rollout_id.to_owned()));
        }
        let rollout = rollout_id.to_owned();
        async move { answer.await.unwrap_or(Err(BatchError::Abandoned { rollout })) }
    }

    /// Batches committed so far, and the reports in them.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            reports: self.stats.reports.load(Ordering::Relaxed),
        }
    }

    /// Applies what waits for `rollout`, a batch at a time, until nothing does.
    async fn drain(self, rollout: String) {
        let mut guard = Draining { queues: &self.queues, rollout: &rollout, done: false };
        while let Some(jobs) = guard.next_batch() {
            let (parts, replies): (Vec<DeviceReports>, Vec<_>) = jobs.into_iter().map(|j| (j.part, j.reply)).unzip();
            let reports = parts.iter().map(|p| p.reports.len()).sum::<usize>();
            match self.store.apply_reports(&rollout, &parts).await {
                Ok(outcomes) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.reports.fetch_add(reports as u64, Ordering::Relaxed);
                    for (reply, outcomes) in replies.into_iter().zip(outcomes) {
                        // A caller that went away needs no answer.
                        let _ = reply.send(Ok(outcomes));
                    }
                }
                Err(e) => {
                    let source = Arc::new(e);
                    for reply in replies {
                        let error = BatchError::Store { rollout: rollout.clone(), reports, source: source.clone() };
                        let _ = reply.send(Err(error));
                    }
                }
            }
        }
    }
}

/// The drain of one rollout's queue. Whatever ends it (nothing left, or a panic) removes the
/// rollout's entry, so the next part to arrive starts a new drain; parts still queued after a
/// panic are dropped, and their callers told the batch was abandoned.
struct Draining<'a> {
    queues: &'a Queues,
    rollout: &'a str,
    done: bool,
}

impl Draining<'_> {
    /// The next batch: queued parts, oldest first, up to [`MAX_BATCH_REPORTS`] reports (at
    /// least one part). `None`, and the rollout's entry removed, when nothing waits.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let mut queues = lock(self.queues);
        let queue = queues.get_mut(self.rollout)?;
        let mut batch = Vec::new();
        let mut reports = 0;
        while let Some(job) = queue.front() {
            let n = job.part.reports.len();
            if !batch.is_empty() && reports + n > MAX_BATCH_REPORTS {
                break;
            }
            reports += n;
            batch.extend(queue.pop_front());
        }
        if batch.is_empty() {
            queues.remove(self.rollout);
            self.done = true;
            return None;
        }
        Some(batch)
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(self.queues).remove(self.rollout);
        }
    }
}
