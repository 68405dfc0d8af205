//! The counts `GET /status` reports. None scans the fleet beyond one count: the per-state
//! counts of devices come from the rows of the unfinished rollouts, which keep them.

use wavecast_core::rollout::WaveCounts;

use super::row::{Row, read_all};
use super::{Store, StoreError, q};

impl Store {
    /// How many devices are enrolled: one `COUNT(*)` over the devices' primary key (an index
    /// scan: a few milliseconds at 100,000 devices on either database).
    pub async fn enrolled_devices(&self) -> Result<i64, StoreError> {
        let op = "counting devices";
        let row = sqlx::query("SELECT COUNT(*) FROM devices").fetch_one(&self.pool).await.map_err(q(op))?;
        Row::new(&row, op).get(0)
    }

    /// The per-wave device counts of every rollout not finished yet (one row each, found
    /// through the unique index on `active_key`, which only unfinished rollouts set).
    pub async fn running_rollout_counts(&self) -> Result<Vec<Vec<WaveCounts>>, StoreError> {
        let op = "reading the counts of running rollouts";
        let rows = sqlx::query("SELECT counts FROM rollouts WHERE active_key IS NOT NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(q(op))?;
        read_all(&rows, op, |r| r.json(0, "rollout counts"))
    }
}
