//! `POST /api/v1/artifacts`: accept a publisher-signed targets file and the artifact's bytes.
//!
//! The request is multipart with two parts in this order: `targets` (the signed targets.json)
//! and `blob` (the artifact). The metadata comes first so a bad signature or a duplicate is
//! refused before a gigabyte is uploaded. The blob is hashed while it streams to a temporary
//! file and placed only once it matches the signed target; one transaction then records the
//! new metadata, the artifact and the audit event. Any refusal leaves nothing stored.
//!
//! Blobs are content-addressed, so two publishes of the same bytes (under two names) share
//! one file. Placing it and committing the rows that refer to it happen under the blob's lock
//! (`Store::lock_blob`), and a publish that fails removes the file only if it created it and,
//! under the lock again, no committed artifact refers to it.

use std::num::NonZeroU64;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use tough::schema::{Signed, Targets};
use wavecast_api::Artifact;
use wavecast_core::audit::{AuditAction, NewAuditEvent};
use wavecast_os::clock::now_ms;
use wavecast_os::error::chain;
use wavecast_tuf::repo::{AcceptError, OnlinePlan, accept_targets, sign_online};

use super::{ApiError, CanPublish};
use crate::install::{SNAPSHOT_LIFETIME_DAYS, TIMESTAMP_LIFETIME_DAYS};
use crate::state::AppState;
use crate::store::{NewArtifact, OnlineMetadata, Publish, StoreError};

/// tough's own limit for a targets file.
const MAX_TARGETS_BYTES: usize = 10 * 1024 * 1024;

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

    let (current_version, current_body) = state
        .store()
        .latest_metadata("targets")
        .await?
        .ok_or_else(|| ApiError::internal("the repository has no targets metadata"))?;
    let current: Signed<Targets> = serde_json::from_str(&current_body)
        .map_err(|e| ApiError::internal_from(format!("stored targets version {current_version} does not parse"), e))?;
    let now = wavecast_os::clock::now();
    let accepted = match accept_targets(&state.trust().root.signed, &current.signed, targets_text.as_bytes(), now) {
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
    let received = state.blobs().receive(field, target.length).await.map_err(|e| match e {
        crate::blobs::BlobError::TooLong { .. } => ApiError::Unprocessable(format!(
            "the uploaded bytes do not match the signed target {}: more than the signed {} bytes; nothing was stored",
            target.target, target.length
        )),
        other => other.into(),
    })?;
    if received.sha256 != target.sha256 || received.length != target.length {
        return Err(ApiError::Unprocessable(format!(
            "the uploaded bytes do not match the signed target {}: signed sha256 {} ({} bytes), received sha256 {} ({} bytes); nothing was stored",
            target.target, target.sha256, target.length, received.sha256, received.length
        )));
    }

    // Online signatures over the publisher's bytes exactly as received.
    let snapshot_version = state.store().latest_metadata("snapshot").await?.map_or(0, |(v, _)| v) + 1;
    let timestamp_version = state.store().latest_metadata("timestamp").await?.map_or(0, |(v, _)| v) + 1;
    let nz = |v: i64| NonZeroU64::new(v as u64).unwrap_or(NonZeroU64::MIN);
    let days = |d: i64| now + jiff::SignedDuration::from_hours(24 * d);
    let targets_version = accepted.targets.signed.version.get() as i64;
    let online = sign_online(
        &state.trust().root.signed,
        &state.trust().online,
        targets_text.as_bytes(),
        OnlinePlan {
            targets_version: nz(targets_version),
            snapshot_version: nz(snapshot_version),
            timestamp_version: nz(timestamp_version),
            snapshot_expires: days(SNAPSHOT_LIFETIME_DAYS),
            timestamp_expires: days(TIMESTAMP_LIFETIME_DAYS),
        },
    )
    .await
    .map_err(|e| ApiError::internal_from("signing snapshot and timestamp", e))?;

    let digest = received.sha256;
    let record = NewArtifact {
        name: target.target.name().clone(),
        version: target.target.version().clone(),
        length: target.length as i64,
        sha256: target.sha256,
        hardware: target.hardware.clone(),
        published_by: op.name.clone(),
    };
    let now_ms = now_ms();
    let publish = Publish {
        now_ms,
        targets_version,
        targets: targets_text,
        online: OnlineMetadata {
            snapshot_version,
            snapshot: String::from_utf8_lossy(&online.snapshot).into_owned(),
            timestamp_version,
            timestamp: String::from_utf8_lossy(&online.timestamp).into_owned(),
        },
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
            }),
        }],
    };
    // The file goes into place and the rows that refer to it are committed under the blob's
    // lock, so a failed publish of the same bytes can never remove it in between.
    let lock = state.store().lock_blob(&digest).await?;
    let placed = state.blobs().place(received).await?;
    if let Err(e) = state.store().publish(lock, &publish).await {
        if placed.created {
            remove_unreferenced(&state, &digest).await;
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
            published_at: wavecast_api::Timestamp::from_unix_ms(now_ms),
            published_by: record.published_by,
        }),
    ))
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
        let mut lock = state.store().lock_blob(digest).await?;
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
