//! The change feed: events written in the transactions that change what a device may do or is
//! served, read by every replica to keep its check-in caches true (see `crate::checkin`), and
//! per-group check-in pacing.

use sqlx::{Any, Transaction};
use wavecast_core::GroupName;
use wavecast_core::audit::NewAuditEvent;

use super::audit::append_audit;
use super::row::{Row, read_all};
use super::{Backend, Store, StoreError, q};
use crate::checkin::{Change, FeedRow, GroupPacing};

/// The PostgreSQL channel replicas listen on; a notification only says "read the feed".
pub const CHANNEL: &str = "wavecast_changes";

/// How many feed rows one read takes at most.
const FEED_PAGE: i64 = 10_000;

/// Records `change` inside `tx`. On PostgreSQL every replica is notified when `tx` commits
/// (and not at all if it rolls back).
pub(super) async fn record(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    change: &Change,
    now_ms: i64,
) -> Result<(), StoreError> {
    let op = "recording a change for the check-in caches";
    sqlx::query("INSERT INTO change_events (at, kind, subject) VALUES ($1, $2, $3)")
        .bind(now_ms)
        .bind(change.kind())
        .bind(change.subject())
        .execute(&mut **tx)
        .await
        .map_err(q(op))?;
    if backend == Backend::Postgres {
        // Notifications of one transaction with the same payload are delivered once.
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut **tx).await.map_err(q(op))?;
    }
    Ok(())
}

/// Which of a rollout's devices a change concerns.
pub(super) enum RolloutDevices<'a> {
    /// Those of one wave (0-based).
    Wave(usize),
    /// Those in one of these states.
    InStates(&'a [wavecast_core::assignment::DeviceState]),
}

/// Records a change of each of rollout `rollout_id`'s devices that `which` names, inside `tx`:
/// one event per device, so a wave opening wakes the wave's devices and no others.
pub(super) async fn record_rollout_devices(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    rollout_id: &str,
    which: RolloutDevices<'_>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let op = "recording a change for the check-in caches";
    let select = "INSERT INTO change_events (at, kind, subject) SELECT $1, 'device', device_id FROM rollout_devices \
                  WHERE rollout_id = $2";
    let sql = match &which {
        RolloutDevices::Wave(_) => format!("{select} AND wave = $3"),
        RolloutDevices::InStates(states) => {
            format!("{select} AND state IN ({})", super::placeholders(3, states.len().max(1)))
        }
    };
    let mut query = sqlx::query(&sql).bind(now_ms).bind(rollout_id);
    match which {
        RolloutDevices::Wave(wave) => query = query.bind(wave as i64),
        RolloutDevices::InStates([]) => query = query.bind(""),
        RolloutDevices::InStates(states) => {
            for state in states {
                query = query.bind(state.as_str());
            }
        }
    }
    query.execute(&mut **tx).await.map_err(q(op))?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut **tx).await.map_err(q(op))?;
    }
    Ok(())
}

impl Store {
    /// Commits `tx`, then brings this replica's check-in caches up to date with the feed, so
    /// that the caller's own change is in force here when this returns (other replicas follow
    /// when notified, or at their next poll). A failure to read the feed after the commit is
    /// logged, not returned: the change is made, and the background poll catches up.
    pub(super) async fn commit(&self, tx: Transaction<'static, Any>, op: &'static str) -> Result<(), StoreError> {
        tx.commit().await.map_err(q(op))?;
        if let Err(e) = self.sync_changes().await {
            tracing::warn!(error = %wavecast_os::error::chain(&e), "reading the change feed after a commit failed; the next poll will");
        }
        Ok(())
    }

    /// Reads the change feed past what this replica has applied and applies it. Callers that
    /// arrive while a read runs wait for it and for one that starts after them, unless one
    /// already has: every commit made before this call is applied when it returns.
    pub async fn sync_changes(&self) -> Result<(), StoreError> {
        let cache = self.checkin();
        let started_before = cache.polls_started();
        let _turn = cache.poll_lock().lock().await;
        if cache.polled_after(started_before) {
            return Ok(());
        }
        let n = cache.begin_poll();
        let op = "reading the change feed";
        let Some(mut from) = cache.feed_low() else {
            return Err(StoreError::NotFound { what: "the change feed's start".into() });
        };
        loop {
            let rows = sqlx::query("SELECT seq, kind, subject FROM change_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(from)
                .bind(FEED_PAGE)
                .fetch_all(&self.pool)
                .await
                .map_err(q(op))?;
            let feed = read_all(&rows, op, |r| {
                let kind: String = r.get(1)?;
                let subject: String = r.get(2)?;
                Ok(FeedRow { seq: r.get(0)?, change: Change::parse(&kind, &subject) })
            })?;
            if cache.absorb(&feed, std::time::Instant::now()) {
                tracing::warn!("a change event did not show up in time; this replica forgot its check-in caches");
            }
            match feed.last() {
                Some(last) if feed.len() as i64 == FEED_PAGE => from = last.seq,
                _ => break,
            }
        }
        cache.end_poll(n);
        Ok(())
    }

    /// Starts this replica's feed at the newest event: its caches are empty, so nothing
    /// before concerns them.
    pub(super) async fn start_change_feed(&self) -> Result<(), StoreError> {
        let op = "reading the change feed";
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM change_events")
            .fetch_one(&self.pool)
            .await
            .map_err(q(op))?;
        self.checkin.start_feed(Row::new(&row, op).get(0)?);
        Ok(())
    }

    /// Deletes change events written before `before_ms`: a replica reads the feed every few
    /// seconds, and one that starts reads from the newest row.
    pub async fn forget_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let op = "pruning the change feed";
        let done = sqlx::query("DELETE FROM change_events WHERE at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(q(op))?;
        Ok(done.rows_affected())
    }

    /// A listener for the feed's notifications on PostgreSQL; `None` on SQLite, where one
    /// server owns the database and only the periodic read is needed as a safety net.
    pub async fn change_listener(&self) -> Result<Option<ChangeListener>, StoreError> {
        let Some(url) = &self.postgres_url else { return Ok(None) };
        let op = "listening for changes";
        let mut listener = sqlx::postgres::PgListener::connect(url).await.map_err(q(op))?;
        listener.listen(CHANNEL).await.map_err(q(op))?;
        Ok(Some(ChangeListener(listener)))
    }

    /// How the group paces its devices' check-ins; `None` when there is no such group.
    pub async fn group_pacing(&self, group: &GroupName) -> Result<Option<GroupPacing>, StoreError> {
        let op = "reading a group's check-in pacing";
        let row = sqlx::query("SELECT poll_idle_ms, poll_active_ms, long_poll_ms FROM device_groups WHERE name = $1")
            .bind(group.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(q(op))?;
        let Some(row) = row else { return Ok(None) };
        let r = Row::new(&row, op);
        Ok(Some(GroupPacing { idle_ms: r.get(0)?, active_ms: r.get(1)?, long_poll_ms: r.get(2)? }))
    }

    /// Sets how the group paces its devices' check-ins (`None` fields: back to the default),
    /// audited as `event`.
    pub async fn set_group_pacing(
        &self,
        group: &GroupName,
        pacing: GroupPacing,
        now_ms: i64,
        event: NewAuditEvent,
    ) -> Result<(), StoreError> {
        let op = "setting a group's check-in pacing";
        let mut tx = self.begin(op).await?;
        let updated = sqlx::query(
            "UPDATE device_groups SET poll_idle_ms = $2, poll_active_ms = $3, long_poll_ms = $4 WHERE name = $1",
        )
        .bind(group.as_str())
        .bind(pacing.idle_ms)
        .bind(pacing.active_ms)
        .bind(pacing.long_poll_ms)
        .execute(&mut *tx)
        .await
        .map_err(q(op))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("group {group}") });
        }
        append_audit(&mut tx, now_ms, event).await?;
        record(&mut tx, self.backend, &Change::Group(group.clone()), now_ms).await?;
        self.commit(tx, op).await
    }
}

/// Notifications that the change feed grew, from PostgreSQL.
pub struct ChangeListener(sqlx::postgres::PgListener);

impl ChangeListener {
    /// Waits for the next notification. `Ok(false)` when the connection was lost and made
    /// again: notifications may have been missed meanwhile, so the caller reads the feed.
    pub async fn next(&mut self) -> Result<bool, StoreError> {
        Ok(self.0.try_recv().await.map_err(q("listening for changes"))?.is_some())
    }
}
