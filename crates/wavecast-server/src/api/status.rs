//! `GET /api/v1/status`: what `wavecast status` prints. The server's version and database, the
//! newest version of each TUF role and when it expires (with the warnings an operator must act
//! on), the audit log and its newest checkpoint, and the fleet in counts.
//!
//! What it costs, whatever the fleet's size: one query per TUF role (the newest row by primary
//! key), the audit head, the newest checkpoint, one `COUNT(*)` over the devices' primary key
//! (an index scan of a few milliseconds at 100,000 devices), and the count columns of the
//! unfinished rollouts, which keep per-state counts in their own rows. No per-device row is
//! read.

use axum::Json;
use axum::extract::State;
use wavecast_api::{AuditStatus, CheckpointStatus, DeviceCounts, RoleStatus, StateCounts, Status};
use wavecast_core::trust::expiry_warning;

use super::openapi::{Internal, Unauthorized};
use super::{ApiError, CanRead};
use crate::state::AppState;

/// The status report.
#[utoipa::path(
    get,
    path = "/status",
    operation_id = "status",
    tag = "operator",
    summary = "Server health, TUF metadata expiries, the audit checkpoint and device counts",
    description = "Any role. Warns (in `warnings`) when root or targets expire within 30 days, and about anything expired. Reads no per-device row: device counts come from one count over the devices and the counts running rollouts keep.",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "The status.", body = Status),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn status(State(state): State<AppState>, _: CanRead) -> Result<Json<Status>, ApiError> {
    let now_ms = wavecast_os::clock::now_ms();
    let store = state.store();
    let mut metadata = Vec::new();
    let mut warnings = Vec::new();
    for (role, head) in crate::metadata_heads(store).await? {
        let expires_at = head.expires.as_millisecond();
        warnings.extend(expiry_warning(role, head.version, expires_at, now_ms));
        metadata.push(RoleStatus {
            role,
            version: head.version,
            expires_at: wavecast_api::Timestamp::from_unix_ms(expires_at),
            expires_in_secs: expires_at.saturating_sub(now_ms).div_euclid(1000),
            signed_offline: role.signed_offline(),
        });
    }
    for missing in state.trust().current().missing() {
        warnings.push(format!("this server cannot sign: {}", wavecast_os::error::chain(&missing)));
    }
    if let Err(e) = state.blobs().check().await {
        warnings.push(format!(
            "publishing and downloads fail until the blob store answers: {}",
            wavecast_os::error::chain(&e)
        ));
    }
    let checkpoint = state
        .checkpoints()
        .latest()
        .await
        .map_err(ApiError::Evidence)?
        .map(|v| CheckpointStatus { size: v.checkpoint.size, root: v.checkpoint.root });
    let rollouts = store.running_rollout_counts().await?;
    let in_running_rollouts =
        StateCounts::from_fn(|s| rollouts.iter().flat_map(|waves| waves.iter()).map(|c| c.get(s)).sum());
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        database: store.backend().name().to_owned(),
        blob_store: state.blobs().describe(),
        server_time: wavecast_api::Timestamp::from_unix_ms(now_ms),
        metadata,
        warnings,
        audit: AuditStatus { events: store.audit_size().await?.max(0) as u64, checkpoint },
        devices: DeviceCounts { enrolled: store.enrolled_devices().await?.max(0) as u64, in_running_rollouts },
        rollouts_running: rollouts.len() as u64,
    }))
}
