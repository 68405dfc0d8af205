//! Audit evidence: the signed checkpoint, exports with inclusion proofs, consistency proofs,
//! and the raw rows and checkpoints `wavecast audit verify` recomputes the tree from.
//!
//! Nothing here asks the client to trust the server: every answer is checkable against the
//! checkpoint keys the trust anchor's root chain names, and the raw rows are served unparsed
//! so damage shows.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use utoipa::IntoParams;
use wavecast_core::audit::AuditEvent;
use wavecast_core::evidence::{
    ConsistencyProof, EXPORT_FORMAT, Export, ExportedEvent, LeafRow, StoredCheckpoint, concerns_rollout,
};

use super::openapi::{BadRequest, Conflict, Internal, NotFound, Unauthorized};
use super::{ApiError, ApiQuery, CanRead};
use crate::checkpoints::{CheckpointError, VerifiedCheckpoint};
use crate::state::AppState;

/// Rows or checkpoints per page, at most.
const MAX_PAGE: u64 = 10_000;

fn evidence_error(e: CheckpointError) -> ApiError {
    match e {
        CheckpointError::Store(e) => e.into(),
        // The log disagrees with its own checkpoints: the client should run a verification,
        // which names the damage; a 500 would hide that it is the data, not the server.
        damaged @ (CheckpointError::ShortLog { .. } | CheckpointError::Altered { .. }) => {
            ApiError::Conflict(wavecast_os::error::chain(&damaged))
        }
        other => ApiError::Evidence(other),
    }
}

async fn latest_or_404(state: &AppState) -> Result<VerifiedCheckpoint, ApiError> {
    state.checkpoints().latest().await.map_err(evidence_error)?.ok_or_else(|| {
        ApiError::NotFound("no audit checkpoint is signed yet; the server signs one within a second of a write".into())
    })
}

/// The newest signed checkpoint, as the C2SP note text (save it to prove growth later).
#[utoipa::path(
    get,
    path = "/audit/checkpoint",
    operation_id = "auditCheckpoint",
    tag = "operator",
    summary = "The newest signed audit checkpoint",
    description = "404: nothing is signed yet. 409: the log is shorter than its checkpoint says (run `wavecast audit verify`).",
    security(("apiToken" = [])),
    responses(
        (status = 200, description = "The checkpoint as C2SP signed-note text.", body = String, content_type = "text/plain"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    )
)]
pub async fn checkpoint(State(state): State<AppState>, _: CanRead) -> Result<impl IntoResponse, ApiError> {
    let latest = latest_or_404(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], latest.note))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only events concerning this rollout: its id, or any unique start of it. One that names
    /// no rollout is a 404, never an empty export.
    #[param(min_length = 1, max_length = 64)]
    rollout: Option<String>,
}

/// Every event covered by the newest checkpoint (or those of one rollout), each with its
/// inclusion proof, and the checkpoint: a file that verifies offline.
#[utoipa::path(
    get,
    path = "/audit/export",
    operation_id = "auditExport",
    tag = "operator",
    summary = "Events with inclusion proofs and the checkpoint",
    description = "404: nothing is signed yet, or `rollout` names no rollout. 409: the log is shorter than its checkpoint says.",
    security(("apiToken" = [])),
    params(ExportQuery),
    responses(
        (status = 200, description = "An export that verifies offline.", body = Export),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Json<Export>, ApiError> {
    // An id that names no rollout is an error, never an empty (and verifiable) export.
    let rollout = match &query.rollout {
        Some(given) => Some(super::rollouts::rollout_id(&state, given).await?),
        None => None,
    };
    let latest = latest_or_404(&state).await?;
    let size = latest.checkpoint.size;
    let kept = match &rollout {
        None => events_below(&state, size).await?,
        Some(id) => events_about(&state, id, size).await?,
    };
    let seqs: Vec<u64> = kept.iter().map(|(seq, _)| *seq).collect();
    let proofs = state.checkpoints().inclusion_proofs(&latest, &seqs).await.map_err(evidence_error)?;
    let events = kept
        .into_iter()
        .zip(proofs)
        .map(|((seq, body), inclusion_proof)| ExportedEvent { seq, body, inclusion_proof })
        .collect();
    // After a rotation the export carries the root chain, so a verifier holding any of its
    // roots reaches the root whose checkpoint key signed it.
    let view = state.trust().current();
    let roots = if view.chain().len() > 1 { view.chain().iter().map(|r| r.text.clone()).collect() } else { vec![] };
    Ok(Json(Export { format: EXPORT_FORMAT.into(), checkpoint: latest.note, rollout, events, roots }))
}

/// Every row of the first `size` positions, as stored: fewer rows than that is a log shorter
/// than its checkpoint says.
async fn events_below(state: &AppState, size: u64) -> Result<Vec<(u64, String)>, ApiError> {
    let mut rows = Vec::new();
    let below = i64::try_from(size).unwrap_or(i64::MAX);
    let mut from = 0;
    loop {
        let page = state.store().audit_leaves(from, below, MAX_PAGE as i64).await?;
        let Some(last) = page.last() else { break };
        from = last.0 + 1;
        // Seqs are the primary key: `size` rows below `size` are positions 0, 1, … in order.
        rows.extend(page.into_iter().map(|(seq, body)| (seq.max(0) as u64, body)));
    }
    if (rows.len() as u64) < size {
        return Err(evidence_error(CheckpointError::ShortLog { held: rows.len() as u64, size }));
    }
    Ok(rows)
}

/// The rows of the first `size` positions that are events about rollout `id`.
async fn events_about(state: &AppState, id: &str, size: u64) -> Result<Vec<(u64, String)>, ApiError> {
    let mut rows = Vec::new();
    let below = i64::try_from(size).unwrap_or(i64::MAX);
    let mut from = 0;
    loop {
        let page = state.store().audit_leaves_naming(id, from, below, MAX_PAGE as i64).await?;
        let Some(last) = page.last() else { break };
        from = last.0 + 1;
        rows.extend(
            page.into_iter()
                .filter(|(_, body)| AuditEvent::from_bytes(body.as_bytes()).is_ok_and(|e| concerns_rollout(&e, id)))
                .map(|(seq, body)| (seq.max(0) as u64, body)),
        );
    }
    Ok(rows)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older tree size.
    from: u64,
    /// The size of a stored checkpoint (default: the newest).
    to: Option<u64>,
}

/// The consistency proof from size `from` to the checkpoint of size `to` (default: newest).
#[utoipa::path(
    get,
    path = "/audit/consistency",
    operation_id = "auditConsistency",
    tag = "operator",
    summary = "Proof that the log only grew",
    description = "400: `from` is past `to`. 404: no valid checkpoint of size `to` (or none at all). 409: the log is shorter than its checkpoint says.",
    security(("apiToken" = [])),
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "The consistency proof from `from` to `to`.", body = ConsistencyProof),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    )
)]
pub async fn consistency(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let target = match query.to {
        None => latest_or_404(&state).await?,
        Some(to) => state
            .checkpoints()
            .at_size(to)
            .await
            .map_err(evidence_error)?
            .ok_or_else(|| ApiError::NotFound(format!("no valid audit checkpoint has size {to}")))?,
    };
    let to = target.checkpoint.size;
    if query.from > to {
        return Err(ApiError::BadRequest(format!(
            "from {} is past the checkpoint's size {to}: the log is smaller than the older checkpoint says",
            query.from
        )));
    }
    let proof = state.checkpoints().consistency_proof(&target, query.from).await.map_err(evidence_error)?;
    Ok(Json(ConsistencyProof { from: query.from, to, checkpoint: target.note, proof }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Start at this value (default 0).
    from: Option<u64>,
    /// At most this many (default and cap 10000; 0 counts as 1).
    limit: Option<u64>,
}

impl Page {
    fn bounds(&self) -> (i64, i64) {
        let from = self.from.unwrap_or(0).min(i64::MAX as u64) as i64;
        (from, self.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE) as i64)
    }
}

/// Raw stored rows with `seq >= from`, by seq, exactly as stored.
#[utoipa::path(
    get,
    path = "/audit/leaves",
    operation_id = "auditLeaves",
    tag = "operator",
    summary = "Raw audit log rows",
    security(("apiToken" = [])),
    params(Page),
    responses(
        (status = 200, description = "Rows with `seq >= from`, exactly as stored.", body = Vec<LeafRow>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn leaves(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<LeafRow>>, ApiError> {
    let (from, limit) = page.bounds();
    let rows = state.store().audit_leaves(from, i64::MAX, limit).await?;
    Ok(Json(rows.into_iter().map(|(seq, body)| LeafRow { seq: seq.max(0) as u64, body }).collect()))
}

/// Stored checkpoint rows with `size >= from`, smallest first, unverified: the client checks.
#[utoipa::path(
    get,
    path = "/audit/checkpoints",
    operation_id = "auditCheckpointRows",
    tag = "operator",
    summary = "Stored checkpoints, unverified",
    security(("apiToken" = [])),
    params(Page),
    responses(
        (status = 200, description = "Checkpoints with `size >= from`, smallest first.", body = Vec<StoredCheckpoint>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    )
)]
pub async fn checkpoint_rows(
    State(state): State<AppState>,
    _: CanRead,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<StoredCheckpoint>>, ApiError> {
    let (from, limit) = page.bounds();
    let rows = state.store().audit_checkpoints(from, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| StoredCheckpoint { size: r.size.max(0) as u64, note: r.note, created_at: r.created_at })
            .collect(),
    ))
}
