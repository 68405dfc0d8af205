//! `POST /api/v1/artifacts`: accept a publisher-signed targets file and the artifact's bytes.
//!
//! The request is multipart with two parts in this order: `targets` (the signed targets.json)
//! and `blob` (the artifact), and a third, `golden` (the golden bundle), exactly when the new
//! target's signed custom metadata names one. The metadata comes first so a bad signature or a duplicate is
//! refused before a gigabyte is uploaded. The blob is hashed while it streams to a temporary
//! file and placed only once it matches the signed target; one transaction then records the
//! new metadata, the artifact and the audit event. Any refusal leaves nothing stored.
//!
//! Blobs are content-addressed, so two publishes of the same bytes (under two names) share
//! one file. Placing it and committing the rows that refer to it happen under the blob's lock
//! (`Store::lock_blob`), and a publish that fails removes the file only if it created it and,
//! under the lock again, no committed artifact refers to it.
//!
//! `POST /api/v1/artifacts/resign` takes the current targets signed again (a new version and
//! expiry, nothing else changed) and signs snapshot and timestamp over it, the same way.

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use tough::schema::{Signed, Targets};
use wavecast_api::{Artifact, ResignTargets, TargetsResigned};
use wavecast_core::audit::{AuditAction, NewAuditEvent};
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;
use wavecast_tuf::repo::{AcceptError, Submission, accept_submission, accept_targets};

use super::openapi::{
    BadRequest, Conflict, Forbidden, Internal, PublishUpload, TooLarge, Unauthorized, Unavailable, Unprocessable,
};
use super::{ApiError, ApiJson, CanPublish};
use crate::state::AppState;
use crate::store::{GoldenRecord, MetadataWrite, NewArtifact, OnlineMetadata, Publish, StoreError};

/// tough's own limit for a targets file.
const MAX_TARGETS_BYTES: usize = 10 * 1024 * 1024;

#[utoipa::path(
    post,
    path = "/artifacts",
    operation_id = "publishArtifact",
    tag = "operator",
    summary = "Publish an artifact version",
    description = "Multipart upload with two parts in this order: `targets` (the publisher-signed targets.json, adding exactly one target) and `blob` (the artifact). Needs the publisher or admin role. 409: another publish landed first (sign again); 422: bad signature, wrong bytes or not one new target. A refused upload stores nothing.",
    security(("apiToken" = [])),
    request_body(content = PublishUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Published.", body = Artifact),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    // Authorization (CanPublish) is decided before the body is even looked at.
    CanPublish(op): CanPublish,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Artifact>), ApiError> {
    let mut multipart =
        multipart.map_err(|e| ApiError::BadRequest(format!("expected a multipart upload: {}", e.body_text())))?;
    let bad_multipart = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("reading the upload: {}", chain(&e)))
    };

    // Part 1: the signed targets metadata.
    let mut field = multipart
        .next_field()
        .await
        .map_err(bad_multipart)?
        .ok_or_else(|| ApiError::BadRequest("the upload has no `targets` part".into()))?;
    if field.name() != Some("targets") {
        return Err(ApiError::BadRequest("the first part of the upload must be `targets`".into()));
    }
    let mut targets_bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        targets_bytes.extend_from_slice(&chunk);
        if targets_bytes.len() > MAX_TARGETS_BYTES {
            return Err(ApiError::TooLarge(format!("targets metadata is larger than {MAX_TARGETS_BYTES} bytes")));
        }
    }
    drop(field);
    let targets_text = String::from_utf8(targets_bytes)
        .map_err(|_| ApiError::Unprocessable("targets metadata is not UTF-8 JSON".into()))?;

    let current = current_targets(&state).await?;
    let now = wavecast_os::clock::now();
    let view = state.trust().refresh(state.store()).await?;
    let accepted = match accept_targets(&view.root().signed, &current.signed, targets_text.as_bytes(), now) {
        Ok(accepted) => accepted,
        Err(e @ AcceptError::VersionNotNext { .. }) => {
            // The publisher raced another publish and will sign again on top of it. It is
            // still sending the blob: answering now would close the connection under it, and
            // it would see a broken pipe instead of this answer.
            drain(&mut multipart).await;
            return Err(ApiError::Conflict(format!(
                "{}: another publish landed first; fetch the current targets and sign again",
                chain(&e)
            )));
        }
        Err(other) => return Err(ApiError::Unprocessable(format!("{}; nothing was stored", chain(&other)))),
    };
    let [target] = accepted.added.as_slice() else {
        return Err(ApiError::Unprocessable(format!(
            "targets metadata adds {} targets; publish one artifact at a time; nothing was stored",
            accepted.added.len()
        )));
    };

    // Part 2: the blob, capped at the signed length.
    let field = multipart
        .next_field()
        .await
        .map_err(bad_multipart)?
        .ok_or_else(|| ApiError::BadRequest("the upload has no `blob` part".into()))?;
    if field.name() != Some("blob") {
        return Err(ApiError::BadRequest("the second part of the upload must be `blob`".into()));
    }
    let mismatch = format!("the uploaded bytes do not match the signed target {}", target.target);
    let receiving = state.blobs().receive(field, &target.sha256, target.length).await;
    let received = match signed_bytes(receiving, &target.sha256, target.length, &mismatch) {
        Ok(received) => received,
        Err(Refused { error, drain_first }) => {
            if drain_first {
                drain(&mut multipart).await;
            }
            return Err(error);
        }
    };

    // Part 3: the golden bundle the target names, and only then.
    let next = multipart.next_field().await.map_err(bad_multipart)?;
    let golden = match (target.golden, next) {
        (None, None) => None,
        (None, Some(field)) => {
            return Err(ApiError::BadRequest(format!(
                "the upload has a part `{}` after `blob`, but the signed target {} names no golden set; nothing was stored",
                field.name().unwrap_or_default(),
                target.target
            )));
        }
        (Some(_), None) => {
            return Err(ApiError::BadRequest(format!(
                "the signed target {} names a golden set, but the upload has no `golden` part; nothing was stored",
                target.target
            )));
        }
        (Some(signed), Some(field)) => {
            if field.name() != Some("golden") {
                return Err(ApiError::BadRequest("the third part of the upload must be `golden`".into()));
            }
            let mismatch = format!("the uploaded golden set does not match the one signed into {}", target.target);
            let receiving = state.blobs().receive(field, &signed.sha256, signed.length).await;
            let got = match signed_bytes(receiving, &signed.sha256, signed.length, &mismatch) {
                Ok(got) => got,
                Err(Refused { error, drain_first }) => {
                    if drain_first {
                        drain(&mut multipart).await;
                    }
                    return Err(error);
                }
            };
            Some((signed, got))
        }
    };

    // Online signatures over the publisher's bytes exactly as received.
    let targets_version = accepted.targets.signed.version.get() as i64;
    let online = sign_online_over(&state, view.version(), &targets_text, targets_version, now).await?;

    let digest = received.sha256;
    let record = NewArtifact {
        name: target.target.name().clone(),
        version: target.target.version().clone(),
        length: target.length as i64,
        sha256: target.sha256,
        hardware: target.hardware.clone(),
        golden: golden.as_ref().map(|(g, _)| GoldenRecord {
            sha256: g.sha256,
            length: g.length as i64,
            local_check: g.local_check.as_str().to_owned(),
        }),
        published_by: op.name.clone(),
    };
    let now_ms = now_ms();
    let publish = Publish {
        now_ms,
        targets_version,
        targets: targets_text,
        online,
        artifacts: vec![record.clone()],
        events: vec![NewAuditEvent {
            actor: op.actor(),
            action: AuditAction::ArtifactPublished,
            subject: target.target.to_string(),
            detail: serde_json::json!({
                "sha256": record.sha256,
                "length": record.length,
                "hardware": record.hardware,
                "targets_version": targets_version,
                "golden": golden.as_ref().map(|(g, _)| serde_json::json!({
                    "sha256": g.sha256,
                    "length": g.length,
                    "local_check": g.local_check.as_str(),
                })),
            }),
        }],
    };
    // The files go into place and the rows that refer to them are committed under the blobs'
    // lock, so a failed publish of the same bytes can never remove them in between.
    let golden_digest = golden.as_ref().map(|(g, _)| g.sha256);
    let lock =
        state.store().lock_blobs(&[Some(digest), golden_digest].into_iter().flatten().collect::<Vec<_>>()).await?;
    let mut created = Vec::new();
    let placing = async {
        if state.blobs().place(received).await?.created {
            created.push(digest);
        }
        if let Some((signed, got)) = golden
            && state.blobs().place(got).await?.created
        {
            created.push(signed.sha256);
        }
        Ok::<_, ApiError>(())
    };
    let placed = placing.await;
    let committed = match placed {
        Ok(()) => state.store().publish(lock, &publish).await,
        Err(e) => {
            let _ = lock.release().await;
            for d in &created {
                remove_unreferenced(&state, d).await;
            }
            return Err(e);
        }
    };
    if let Err(e) = committed {
        for d in &created {
            remove_unreferenced(&state, d).await;
        }
        tracing::warn!(target = %target.target, digest = %digest, "publish not recorded");
        return Err(match e {
            StoreError::Conflict { what } => ApiError::Conflict(format!(
                "{what} was written by a concurrent publish; fetch the current targets and sign again"
            )),
            other => other.into(),
        });
    }
    state.metrics().published();
    tracing::info!(target = %target.target, sha256 = %target.sha256, length = target.length, actor = %op.name, "published");
    Ok((
        StatusCode::CREATED,
        Json(Artifact {
            name: record.name,
            version: record.version,
            length: target.length,
            sha256: record.sha256,
            hardware: record.hardware,
            golden: record.golden.map(|g| wavecast_api::ArtifactGolden {
                sha256: g.sha256,
                length: g.length as u64,
                local_check: g.local_check,
            }),
            published_at: wavecast_api::Timestamp::from_unix_ms(now_ms),
            published_by: record.published_by,
        }),
    ))
}

/// `POST /api/v1/artifacts/resign`: the current targets signed again by the publisher with a
/// new version and expiry. Checked as a publish is (signed by the newest root's targets key,
/// the next version, not expired, nothing removed or changed) and adding nothing; audited as
/// `targets.resigned`.
#[utoipa::path(
    post,
    path = "/artifacts/resign",
    operation_id = "resignTargets",
    tag = "operator",
    summary = "Install the current targets signed again with a new expiry",
    description = "Needs the publisher or admin role. The targets must be signed by the newest root's targets key, be the next version, not be expired, and add, remove and change no target. Snapshot and timestamp are signed over them at once. Audited as `targets.resigned`. 409: the targets changed meanwhile; sign again on top of them.",
    security(("apiToken" = [])),
    request_body(content = ResignTargets, content_type = "application/json"),
    responses(
        (status = 200, description = "Installed.", body = TargetsResigned),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn resign(
    State(state): State<AppState>,
    CanPublish(op): CanPublish,
    ApiJson(req): ApiJson<ResignTargets>,
) -> Result<Json<TargetsResigned>, ApiError> {
    let current = current_targets(&state).await?;
    let now = wavecast_os::clock::now();
    let view = state.trust().refresh(state.store()).await?;
    let accepted =
        accept_submission(&view.root().signed, &current.signed, req.targets.as_bytes(), now, Submission::Resign)
            .map_err(|e| match e {
                e @ AcceptError::VersionNotNext { .. } => ApiError::Conflict(format!(
                    "{}: the targets changed meanwhile; fetch the current targets and sign again",
                    chain(&e)
                )),
                other => ApiError::Unprocessable(format!("{}; nothing was stored", chain(&other))),
            })?;
    let (from, version) = (current.signed.version.get(), accepted.targets.signed.version.get());
    let expires = accepted.targets.signed.expires;
    let online = sign_online_over(&state, view.version(), &req.targets, version as i64, now).await?;
    let write = MetadataWrite {
        now_ms: now_ms(),
        root: None,
        targets: Some((version as i64, req.targets)),
        online,
        events: vec![NewAuditEvent {
            actor: op.actor(),
            action: AuditAction::TargetsResigned,
            subject: "targets.json".into(),
            detail: serde_json::json!({ "from_version": from, "to_version": version, "expires": expires.to_string() }),
        }],
    };
    state.store().write_metadata(&write).await.map_err(|e| match e {
        StoreError::Conflict { what } => {
            ApiError::Conflict(format!("{what} was written meanwhile; fetch the current targets and sign again"))
        }
        other => other.into(),
    })?;
    tracing::info!(from, to = version, expires = %expires, actor = %op.name, "targets signed again");
    Ok(Json(TargetsResigned { version, expires_at: wavecast_api::Timestamp::from_unix_ms(expires.as_millisecond()) }))
}

/// The newest targets metadata, parsed.
async fn current_targets(state: &AppState) -> Result<Signed<Targets>, ApiError> {
    let (version, body) = state
        .store()
        .latest_metadata("targets")
        .await?
        .ok_or_else(|| ApiError::internal("the repository has no targets metadata"))?;
    serde_json::from_str(&body)
        .map_err(|e| ApiError::internal_from(format!("stored targets version {version} does not parse"), e))
}

/// The next snapshot and timestamp over `targets` (version `targets_version`), signed with the
/// online keys of the newest root, which must still be version `root_version` (the one the
/// targets were checked against).
///
/// The versions are read before the root is looked up again: a rotation landing after that
/// look-up writes the same snapshot version, so one of the two writes conflicts and nothing
/// signed with a key the newest root no longer names is ever stored.
pub(super) async fn sign_online_over(
    state: &AppState,
    root_version: u64,
    targets: &str,
    targets_version: i64,
    now: jiff::Timestamp,
) -> Result<OnlineMetadata, ApiError> {
    let snapshot_version = state.store().latest_metadata("snapshot").await?.map_or(0, |(v, _)| v) + 1;
    let timestamp_version = state.store().latest_metadata("timestamp").await?.map_or(0, |(v, _)| v) + 1;
    let view = state.trust().refresh(state.store()).await?;
    if view.version() != root_version {
        return Err(ApiError::Conflict(format!(
            "root.json moved from version {root_version} to {} meanwhile; fetch the current root and targets and sign again",
            view.version()
        )));
    }
    let plan = (snapshot_version, timestamp_version, targets_version);
    crate::sign_snapshot_and_timestamp(&view.root().signed, &view.online()?, targets, plan, now)
        .await
        .map_err(|e| ApiError::internal_from("signing snapshot and timestamp", e))
}

/// A part of an upload that is refused: the answer, and whether to read the rest of the
/// upload first so the publisher, still sending, gets it rather than a broken pipe.
struct Refused {
    error: ApiError,
    drain_first: bool,
}

/// The bytes of one part as received (`receiving`), if they are exactly the signed `sha256` and
/// `length`; `mismatch` begins the refusal ("the uploaded bytes do not match …").
fn signed_bytes(
    receiving: Result<crate::blobs::Received, crate::blobs::BlobError>,
    sha256: &wavecast_core::Sha256Digest,
    length: u64,
    mismatch: &str,
) -> Result<crate::blobs::Received, Refused> {
    let refuse = |error| Refused { error, drain_first: false };
    let received = match receiving {
        Ok(received) => received,
        Err(crate::blobs::BlobError::TooLong { .. }) => {
            return Err(refuse(ApiError::Unprocessable(format!(
                "{mismatch}: more than the signed {length} bytes; nothing was stored"
            ))));
        }
        // The object store failed mid-upload while the publisher is still sending: as for a
        // conflict, the rest is read (bounded) so it gets this answer.
        Err(e @ crate::blobs::BlobError::Store { .. }) => return Err(Refused { error: e.into(), drain_first: true }),
        Err(other) => return Err(refuse(other.into())),
    };
    if received.sha256 != *sha256 || received.length != length {
        return Err(refuse(ApiError::Unprocessable(format!(
            "{mismatch}: signed sha256 {sha256} ({length} bytes), received sha256 {} ({} bytes); nothing was stored",
            received.sha256, received.length
        ))));
    }
    Ok(received)
}

/// The most of a conflicting upload [`drain`] reads so its sender gets the answer; past it,
/// the connection is closed under the sender.
const MAX_DRAIN_BYTES: u64 = 1 << 30;

/// Reads and discards the rest of an upload (at most [`MAX_DRAIN_BYTES`]).
async fn drain(multipart: &mut Multipart) {
    let mut read = 0u64;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            read += chunk.len() as u64;
            if read > MAX_DRAIN_BYTES {
                return;
            }
        }
    }
}

/// After a failed publish that created the blob's file: removes it unless a committed artifact
/// refers to it (a publish of the same bytes under another name that got in first), under the
/// blob's lock. Only the publish that placed the file may remove it; a failure to is logged,
/// and leaves an unreferenced file, never a missing one.
async fn remove_unreferenced(state: &AppState, digest: &wavecast_core::Sha256Digest) {
    let removed = async {
        let mut lock = state.store().lock_blobs(&[*digest]).await?;
        if !state.store().blob_referenced_locked(&mut lock, digest).await? {
            state.blobs().remove(digest).await?;
        }
        lock.release().await?;
        Ok::<_, ApiError>(())
    };
    if let Err(e) = removed.await {
        tracing::warn!(digest = %digest, error = %chain(&e), "removing the blob of a failed publish");
    }
}
