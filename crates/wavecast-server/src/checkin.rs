//! The check-in fast path: what a replica keeps in memory so that a device's idle check-in is
//! answered without the database, and how every replica learns what to forget.
//!
//! Two caches, both filled from the database on a miss: device credentials (credential hash →
//! device) and each device's current assignment ETag. The database stays the source of truth.
//! Every transaction that changes what a device may do or is served writes a change event in
//! the same transaction ([`Change`]: one device, or a whole group); every replica reads the
//! events after its own writes commit, when PostgreSQL notifies it, and every few seconds in
//! any case (see `Store::sync_changes`), and forgets what they name. A replica that misses a
//! notification therefore converges at its next poll, and one that restarts starts empty.
//! As a last safety net every entry is refreshed after [`ENTRY_TTL`] whatever the events say.
//!
//! Ages here are on the monotonic clock: a wall clock stepped back (or another replica's clock
//! running behind) must not keep an entry alive, nor hold the feed back.
//!
//! Fills race with changes: an entry is computed from the database *after* its stamp is taken,
//! so an entry whose stamp is older than a change that concerns it is never trusted (each
//! change takes a new, larger generation).
//!
//! Held check-ins (long-poll) wait on a [`Watch`] of their device and group, woken by exactly
//! the changes that name them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wavecast_core::{GroupName, Sha256Digest};

use crate::store::DeviceRecord;

/// How long any cached entry is trusted at most, whatever the change events say: the bound on
/// how stale a replica can be if every other mechanism failed.
pub const ENTRY_TTL: Duration = Duration::from_secs(5 * 60);

/// A sequence number in the change feed that has not shown up this long after this replica
/// read a later one belongs to a transaction that rolled back (or hangs); it is skipped, and the caches are
/// cleared in case it was a slow commit.
pub const HOLE_GRACE: Duration = Duration::from_secs(10);

/// What a change event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One device (by id): its credential, group or assignments changed.
    Device(String),
    /// Every device of a group: a rollout of the group was created or changed state.
    Group(GroupName),
}

impl Change {
    /// The `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Device(_) => "device",
            Change::Group(_) => "group",
        }
    }

    /// The `subject` column.
    pub fn subject(&self) -> &str {
        match self {
            Change::Device(id) => id,
            Change::Group(g) => g.as_str(),
        }
    }

    /// Reads a stored event back; `None` for one this version does not know (the caller then
    /// forgets everything, which is always safe).
    pub fn parse(kind: &str, subject: &str) -> Option<Change> {
        match kind {
            "device" => Some(Change::Device(subject.to_owned())),
            "group" => GroupName::new(subject.to_owned()).ok().map(Change::Group),
            _ => None,
        }
    }
}

/// One row of the change feed.
#[derive(Debug, Clone)]
pub struct FeedRow {
    /// Its sequence number.
    pub seq: i64,
    /// What it names, if this version understands it.
    pub change: Option<Change>,
}

/// What a device's check-in needs to know without the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedDoc {
    /// The ETag of the device's current assignment doc.
    pub etag: String,
    /// Whether something is happening for the device (its wave is open and it has not
    /// settled): it is paced faster.
    pub busy: bool,
}

/// How a group paces its devices' check-ins, as the operator set it (`None`: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupPacing {
    /// Between check-ins of a device with nothing to do, ms.
    pub idle_ms: Option<i64>,
    /// Between check-ins of a device whose wave is open, ms.
    pub active_ms: Option<i64>,
    /// The longest a check-in is held waiting for a change, ms (0: never).
    pub long_poll_ms: Option<i64>,
}

struct Entry<T> {
    value: T,
    stamp: u64,
    filled: Instant,
}

#[derive(Default)]
struct Inner {
    epoch: u64,
    all_gen: u64,
    group_gen: HashMap<GroupName, u64>,
    device_gen: HashMap<String, u64>,
    credentials: HashMap<Sha256Digest, Entry<DeviceRecord>>,
    docs: HashMap<String, Entry<CachedDoc>>,
    pacing: HashMap<GroupName, Entry<GroupPacing>>,
    group_watch: HashMap<GroupName, Arc<Notify>>,
    device_watch: HashMap<String, Arc<Notify>>,
    /// Every feed row up to here has been applied (or skipped as a hole); `None` until the
    /// first poll says where the feed stands.
    low: Option<i64>,
    /// Rows after `low` already applied, with when this replica first read them.
    seen: BTreeMap<i64, Instant>,
}

impl Inner {
    fn fresh(
        &self,
        stamp: u64,
        filled: Instant,
        now: Instant,
        device: Option<&str>,
        group: Option<&GroupName>,
    ) -> bool {
        now.saturating_duration_since(filled) < ENTRY_TTL
            && stamp >= self.all_gen
            && device.is_none_or(|d| self.device_gen.get(d).is_none_or(|&g| stamp >= g))
            && group.is_none_or(|g| self.group_gen.get(g).is_none_or(|&n| stamp >= n))
    }

    fn apply(&mut self, change: Option<&Change>) {
        self.epoch += 1;
        let generation = self.epoch;
        match change {
            Some(Change::Device(id)) => {
                self.device_gen.insert(id.clone(), generation);
                self.docs.remove(id);
                if let Some(n) = self.device_watch.get(id) {
                    n.notify_waiters();
                }
            }
            Some(Change::Group(g)) => {
                self.group_gen.insert(g.clone(), generation);
                self.pacing.remove(g);
                if let Some(n) = self.group_watch.get(g) {
                    n.notify_waiters();
                }
            }
            None => self.clear(),
        }
    }

    fn clear(&mut self) {
        // A generation of its own, so a fill stamped before the clear is not kept after it.
        self.epoch += 1;
        self.all_gen = self.epoch;
        self.credentials.clear();
        self.docs.clear();
        self.pacing.clear();
        for n in self.group_watch.values().chain(self.device_watch.values()) {
            n.notify_waiters();
        }
    }
}

/// A replica's in-memory check-in state; cheap to share.
#[derive(Default)]
pub struct CheckinCache {
    inner: Mutex<Inner>,
    /// Serialises polls of the change feed.
    poll: tokio::sync::Mutex<()>,
    polls_started: AtomicU64,
    /// The number of the latest poll that finished (polls are numbered as they start).
    polls_done: AtomicU64,
    /// Set when the server stops: held check-ins answer at once.
    closing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for CheckinCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckinCache").finish_non_exhaustive()
    }
}

impl CheckinCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Taken before reading what will be cached: an entry is trusted only while no change
    /// that concerns it has happened since.
    pub fn stamp(&self) -> u64 {
        self.lock().epoch
    }

    /// The device holding this credential, if known and fresh.
    pub fn device(&self, credential: &Sha256Digest, now: Instant) -> Option<DeviceRecord> {
        let inner = self.lock();
        let e = inner.credentials.get(credential)?;
        inner.fresh(e.stamp, e.filled, now, Some(&e.value.id), None).then(|| e.value.clone())
    }

    /// Keeps a device read from the database under a stamp taken before the read.
    pub fn keep_device(&self, stamp: u64, credential: Sha256Digest, device: DeviceRecord, now: Instant) {
        let mut inner = self.lock();
        if inner.fresh(stamp, now, now, Some(&device.id), None) {
            inner.credentials.insert(credential, Entry { value: device, stamp, filled: now });
        }
    }

    /// The device's current doc ETag, if known and fresh.
    pub fn doc(&self, device_id: &str, group: &GroupName, now: Instant) -> Option<CachedDoc> {
        let inner = self.lock();
        let e = inner.docs.get(device_id)?;
        inner.fresh(e.stamp, e.filled, now, Some(device_id), Some(group)).then(|| e.value.clone())
    }

    /// Keeps a device's doc ETag computed under a stamp taken before the read.
    pub fn keep_doc(&self, stamp: u64, device_id: &str, group: &GroupName, doc: CachedDoc, now: Instant) {
        let mut inner = self.lock();
        if inner.fresh(stamp, now, now, Some(device_id), Some(group)) {
            inner.docs.insert(device_id.to_owned(), Entry { value: doc, stamp, filled: now });
        }
    }

    /// The group's pacing, if known and fresh.
    pub fn pacing(&self, group: &GroupName, now: Instant) -> Option<GroupPacing> {
        let inner = self.lock();
        let e = inner.pacing.get(group)?;
        inner.fresh(e.stamp, e.filled, now, None, Some(group)).then_some(e.value)
    }

    /// Keeps a group's pacing read under a stamp taken before the read.
    pub fn keep_pacing(&self, stamp: u64, group: &GroupName, pacing: GroupPacing, now: Instant) {
        let mut inner = self.lock();
        if inner.fresh(stamp, now, now, None, Some(group)) {
            inner.pacing.insert(group.clone(), Entry { value: pacing, stamp, filled: now });
        }
    }

    /// Forgets what `changes` name and wakes the check-ins held on them.
    pub fn apply(&self, changes: &[Change]) {
        let mut inner = self.lock();
        for c in changes {
            inner.apply(Some(c));
        }
    }

    /// Forgets everything and wakes every held check-in.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Where the feed stands: every row up to this was applied. `None` before the first poll.
    pub fn feed_low(&self) -> Option<i64> {
        self.lock().low
    }

    /// Starts following the feed after `seq` (the newest row when this replica started: the
    /// caches are empty then, so nothing before it matters).
    pub fn start_feed(&self, seq: i64) {
        let mut inner = self.lock();
        if inner.low.is_none() {
            inner.low = Some(seq);
        }
    }

    /// Applies the rows of the feed not applied yet, and moves `low` past every row applied
    /// and every hole older than [`HOLE_GRACE`]. Returns whether a hole was skipped (then
    /// everything was forgotten, in case the hole was a slow commit rather than a rollback).
    pub fn absorb(&self, rows: &[FeedRow], now: Instant) -> bool {
        let mut inner = self.lock();
        let Some(mut low) = inner.low else { return false };
        for row in rows {
            if row.seq <= low || inner.seen.contains_key(&row.seq) {
                continue;
            }
            inner.apply(row.change.as_ref());
            inner.seen.insert(row.seq, now);
        }
        let mut skipped = false;
        while let Some((&seq, &at)) = inner.seen.first_key_value() {
            if seq == low + 1 {
                low = seq;
            } else if now.saturating_duration_since(at) > HOLE_GRACE {
                low = seq;
                skipped = true;
            } else {
                break;
            }
            inner.seen.remove(&seq);
        }
        inner.low = Some(low);
        if skipped {
            inner.clear();
        }
        skipped
    }

    /// A watch on the device's and its group's changes, for a held check-in.
    pub fn watch(self: &Arc<Self>, device_id: &str, group: &GroupName) -> Watch {
        let mut inner = self.lock();
        let device = inner.device_watch.entry(device_id.to_owned()).or_default().clone();
        let group_n = inner.group_watch.entry(group.clone()).or_default().clone();
        Watch {
            cache: self.clone(),
            device_id: device_id.to_owned(),
            group: group.clone(),
            device: Some(device),
            group_n: Some(group_n),
        }
    }

    /// The server is stopping: every held check-in answers now, and none is held any more,
    /// so a graceful shutdown does not wait out the long-polls.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let inner = self.lock();
        for n in inner.group_watch.values().chain(inner.device_watch.values()) {
            n.notify_waiters();
        }
    }

    /// Whether [`CheckinCache::close`] was called.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// How many check-ins are held now (for `/metrics`): devices with a watch.
    pub fn held(&self) -> usize {
        self.lock().device_watch.len()
    }

    /// The poll lock and the number of polls started before the caller's commit; see
    /// `Store::sync_changes`.
    pub(crate) fn poll_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.poll
    }

    /// Polls started so far.
    pub(crate) fn polls_started(&self) -> u64 {
        self.polls_started.load(Ordering::Acquire)
    }

    /// Whether a poll that started after `started` polls has finished: it saw every commit made
    /// before it started.
    pub(crate) fn polled_after(&self, started: u64) -> bool {
        self.polls_done.load(Ordering::Acquire) > started
    }

    /// Numbers a poll as it starts.
    pub(crate) fn begin_poll(&self) -> u64 {
        self.polls_started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records that poll `n` finished.
    pub(crate) fn end_poll(&self, n: u64) {
        self.polls_done.fetch_max(n, Ordering::AcqRel);
    }
}

/// A held check-in's interest in its device and group; dropping it forgets the interest.
pub struct Watch {
    cache: Arc<CheckinCache>,
    device_id: String,
    group: GroupName,
    device: Option<Arc<Notify>>,
    group_n: Option<Arc<Notify>>,
}

impl Watch {
    /// The two notifiers to wait on: the device's and the group's.
    pub fn notifiers(&self) -> (Arc<Notify>, Arc<Notify>) {
        (self.device.clone().unwrap_or_default(), self.group_n.clone().unwrap_or_default())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        // Dropped under the lock, so the last watcher of a key is the one that sees itself
        // alone and removes the notifier.
        if let Some(n) = self.device.take() {
            drop(n);
            if inner.device_watch.get(&self.device_id).is_some_and(|n| Arc::strong_count(n) == 1) {
                inner.device_watch.remove(&self.device_id);
            }
        }
        if let Some(n) = self.group_n.take() {
            drop(n);
            if inner.group_watch.get(&self.group).is_some_and(|n| Arc::strong_count(n) == 1) {
                inner.group_watch.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            name: wavecast_core::DeviceName::new("cam-1".to_owned()).unwrap(),
            group: group("lab"),
            hardware: "jetson".into(),
            enrolled_at: 0,
            last_seen_at: None,
            revoked_at: None,
        }
    }

    fn group(g: &str) -> GroupName {
        GroupName::new(g.to_owned()).unwrap()
    }

    fn doc(etag: &str) -> CachedDoc {
        CachedDoc { etag: etag.into(), busy: false }
    }

    /// `ms` milliseconds into a test's run, on the monotonic clock.
    fn t(ms: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_change_during_a_fill_keeps_the_stale_fill_out() {
        let c = CheckinCache::default();
        let stamp = c.stamp();
        // The database changed (and said so) while this fill was reading the old state.
        c.apply(&[Change::Device("d1".into())]);
        c.keep_doc(stamp, "d1", &group("lab"), doc("old"), t(0));
        assert_eq!(c.doc("d1", &group("lab"), t(0)), None, "a fill older than the change is not kept");
        let stamp = c.stamp();
        c.keep_doc(stamp, "d1", &group("lab"), doc("new"), t(0));
        assert_eq!(c.doc("d1", &group("lab"), t(0)), Some(doc("new")));
    }

    #[test]
    fn each_change_forgets_exactly_what_it_names() {
        let c = CheckinCache::default();
        let cred = Sha256Digest::of(b"cred");
        let s = c.stamp();
        c.keep_device(s, cred, device("d1"), t(0));
        c.keep_doc(s, "d1", &group("lab"), doc("a"), t(0));
        c.keep_doc(s, "d2", &group("lab"), doc("b"), t(0));
        c.keep_doc(s, "d3", &group("other"), doc("c"), t(0));
        let cases: &[(Change, &[&str], bool)] = &[
            // (change, docs still known afterwards, credential of d1 still known)
            (Change::Group(group("other")), &["d1", "d2"], true),
            (Change::Device("d2".into()), &["d1"], true),
            (Change::Device("d1".into()), &[], false),
        ];
        for (change, kept, cred_kept) in cases {
            c.apply(std::slice::from_ref(change));
            for (id, g) in [("d1", "lab"), ("d2", "lab"), ("d3", "other")] {
                assert_eq!(c.doc(id, &group(g), t(0)).is_some(), kept.contains(&id), "{id} after {change:?}");
            }
            assert_eq!(c.device(&cred, t(0)).is_some(), *cred_kept, "credential after {change:?}");
        }
    }

    #[test]
    fn entries_expire_whatever_the_feed_says() {
        let c = CheckinCache::default();
        c.keep_doc(c.stamp(), "d1", &group("lab"), doc("a"), t(1_000));
        let ttl = ENTRY_TTL.as_millis() as u64;
        assert!(c.doc("d1", &group("lab"), t(1_000 + ttl - 1)).is_some());
        assert!(c.doc("d1", &group("lab"), t(1_000 + ttl)).is_none());
    }

    fn row(seq: i64, device: &str) -> FeedRow {
        FeedRow { seq, change: Some(Change::Device(device.into())) }
    }

    #[test]
    fn the_feed_applies_each_row_once_and_waits_for_young_holes() {
        let c = CheckinCache::default();
        c.start_feed(10);
        let fill = |id: &str| c.keep_doc(c.stamp(), id, &group("lab"), doc("x"), t(0));
        fill("a");
        fill("b");
        // Row 11 is not visible yet (a transaction still committing); 12 is.
        assert!(!c.absorb(&[row(12, "b")], t(1_000)));
        assert_eq!(c.feed_low(), Some(10), "a young hole holds the feed back");
        assert!(c.doc("b", &group("lab"), t(0)).is_none(), "but later rows apply at once");
        assert!(c.doc("a", &group("lab"), t(0)).is_some());
        fill("b");
        // 11 commits: it applies; 12 is not applied twice.
        assert!(!c.absorb(&[row(11, "a"), row(12, "b")], t(1_100)));
        assert_eq!(c.feed_low(), Some(12));
        assert!(c.doc("a", &group("lab"), t(0)).is_none());
        assert!(c.doc("b", &group("lab"), t(0)).is_some(), "a row seen before is not applied again");
        // A hole that stays past the grace, counted from when this replica first read a later
        // row (never from another replica's clock), is skipped, and everything is forgotten in
        // case it was a slow commit.
        fill("a");
        assert!(!c.absorb(&[row(14, "z")], t(2_000)));
        fill("a");
        let grace = HOLE_GRACE.as_millis() as u64;
        assert!(!c.absorb(&[row(14, "z")], t(2_000 + grace)), "the hole is not older than the grace yet");
        assert!(c.doc("a", &group("lab"), t(0)).is_some());
        let stamp = c.stamp();
        assert!(c.absorb(&[row(14, "z")], t(2_000 + grace + 1)));
        assert_eq!(c.feed_low(), Some(14));
        assert!(c.doc("a", &group("lab"), t(0)).is_none());
        c.keep_doc(stamp, "b", &group("lab"), doc("x"), t(0));
        assert!(c.doc("b", &group("lab"), t(0)).is_none(), "a fill that began before the clear is not kept");
    }

    #[tokio::test]
    async fn a_watch_wakes_on_its_device_and_group_only() {
        let c = Arc::new(CheckinCache::default());
        let w = c.watch("d1", &group("lab"));
        let (dev, grp) = w.notifiers();
        for (change, wakes) in [
            (Change::Device("d2".into()), false),
            (Change::Group(group("other")), false),
            (Change::Device("d1".into()), true),
            (Change::Group(group("lab")), true),
        ] {
            let d = dev.notified();
            let g = grp.notified();
            tokio::pin!(d, g);
            d.as_mut().enable();
            g.as_mut().enable();
            c.apply(std::slice::from_ref(&change));
            let woke = tokio::select! {
                biased;
                () = &mut d => true,
                () = &mut g => true,
                () = std::future::ready(()) => false,
            };
            assert_eq!(woke, wakes, "{change:?}");
        }
        assert_eq!(c.held(), 1);
        drop((dev, grp));
        drop(w);
        assert_eq!(c.held(), 0, "a dropped watch leaves nothing behind");
    }
}
