//! The dashboard's pages: rollouts, one rollout, devices, one device, artifacts, one artifact,
//! and the audit trail. Each reads a bounded amount: see the module above.

use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::{Markup, html};
use serde::Deserialize;
use wavecast_api::{Rollout, WaveState};
use wavecast_core::Permission;
use wavecast_core::assignment::DeviceState;
use wavecast_core::audit::AuditAction;
use wavecast_core::fleet::DeviceStatus;
use wavecast_core::probe::describe_result;
use wavecast_core::rollout::{Gate, RolloutState};

use super::DashboardError;
use super::session::Viewer;
use super::view::{self, Section, badge, bar, bytes, csrf_field, may, time, time_ms};
use crate::api::{ApiError, bodies, rollouts::rollout_id};
use crate::checkpoints::CheckpointError;
use crate::state::AppState;
use crate::store::HeartbeatRecord;

/// Devices per page on the rollout and devices pages.
pub const DEVICES_PER_PAGE: usize = 50;
/// Events per page of the audit trail.
const EVENTS_PER_PAGE: i64 = 50;
/// Rollouts listed, newest first.
const ROLLOUTS_LISTED: usize = 200;

/// Every rollout, newest first, with its progress.
pub async fn rollouts(State(state): State<AppState>, viewer: Viewer) -> Result<Html<String>, DashboardError> {
    let records = state.store().recent_rollouts(ROLLOUTS_LISTED as i64).await?;
    let shown = records.len();
    let rollouts = bodies::all(records, bodies::rollout)?;
    let body = html! {
        h1 { "Rollouts" }
        @if rollouts.is_empty() {
            p.empty { "No rollouts yet. Publish an artifact, then start a rollout from its page or with "
                code { "wavecast rollout create" } "." }
        } @else {
            div.table-wrap {
                table {
                    caption.sr-only { "Rollouts, newest first" }
                    thead { tr { th scope="col" { "Rollout" } th scope="col" { "Artifact" } th scope="col" { "Group" }
                        th scope="col" { "State" } th scope="col" { "Progress" } th scope="col" { "Created" } } }
                    tbody {
                        @for r in &rollouts {
                            tr {
                                td { a href=(format!("/ui/rollouts/{}", r.id)) { (r.id) } }
                                td { (r.artifact) }
                                td { (r.group) }
                                td { (badge(r.state.as_str())) }
                                td.progress { (bar(&r.counts, r.device_count)) }
                                td { (time(r.created_at)) br; span.muted { "by " (r.created_by) } }
                            }
                        }
                    }
                }
            }
            @if shown == ROLLOUTS_LISTED { p.muted { "The newest " (ROLLOUTS_LISTED) " rollouts are shown." } }
        }
    };
    Ok(view::page("Rollouts", &viewer, Section::Rollouts, Some("/ui/events"), body))
}

#[derive(Debug, Deserialize)]
pub struct DevicePage {
    /// Only devices in this state.
    state: Option<String>,
    /// Page number, from 1.
    page: Option<u64>,
}

fn parse_state(given: Option<&str>) -> Result<Option<DeviceState>, ApiError> {
    match given.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| ApiError::bad_request(&e)),
    }
}

/// One rollout: the plan with each wave's state and a bar of its devices, the halt rule, who did
/// what, the actions the viewer may take, the failures, and one page of devices.
pub async fn rollout(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(given): Path<String>,
    Query(q): Query<DevicePage>,
) -> Result<Html<String>, DashboardError> {
    let id = rollout_id(&state, &given).await?;
    let record =
        state.store().rollout(&id).await?.ok_or_else(|| ApiError::NotFound(format!("rollout {id:?} not found")))?;
    let only = parse_state(q.state.as_deref())?;
    let page = q.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(DEVICES_PER_PAGE as u64);
    let (total, devices) = state.store().rollout_devices_page(&record, only, offset, DEVICES_PER_PAGE).await?;
    let failed = bodies::failures(state.store().failed_devices(&record).await?)?;
    let at_work = bodies::in_progress(state.store().devices_at_work(&record).await?)?;
    let history = state.store().audit_events_about(&id, 30).await?;
    // Failures up to the last resume were acknowledged then; the rest are what resuming now
    // acknowledges.
    let last_ack = history
        .iter()
        .find(|e| e.action == AuditAction::RolloutResumed)
        .and_then(|e| e.at.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond());
    let r = bodies::rollout(record)?;
    let pages = total.div_ceil(DEVICES_PER_PAGE as u64).max(1);
    // Downloads report progress between audit events: only then is the page refreshed on a timer.
    let live = if at_work.total > 0 { "/ui/events?progress=1" } else { "/ui/events" };
    let filter_link = |p: u64| match only {
        Some(s) => format!("/ui/rollouts/{id}?state={}&page={p}", s.as_str()),
        None => format!("/ui/rollouts/{id}?page={p}"),
    };
    let body = html! {
        h1 { "Rollout " (r.id) " " (badge(r.state.as_str())) }
        p.lead { (r.artifact) " to group " strong { (r.group) } ", " (plural(r.device_count, "device")) }
        (actions(&viewer, &r, &failed, last_ack))
        section aria-labelledby="plan-h" {
            h2 #plan-h { "Plan" }
            div.table-wrap {
                table.plan {
                    thead { tr { th scope="col" { "Wave" } th scope="col" { "Cumulative" } th scope="col" { "Gate" }
                        th scope="col" { "State" } th scope="col" { "Devices" } th scope="col" { "Progress" } } }
                    tbody {
                        @for w in &r.waves {
                            tr {
                                td { (w.number) }
                                td { (w.percent) "%" }
                                td { @match w.gate { Gate::Auto => "automatic", Gate::Manual => "manual approval" } }
                                td { (badge(wave_state(w.state))) }
                                td { (w.devices) }
                                td.progress { (bar(&w.counts, w.devices)) }
                            }
                        }
                    }
                }
            }
            dl.facts {
                dt { "Halt rule" } dd { "pause after " (r.halt_after) " failed or timed-out device" @if r.halt_after != 1 { "s" } }
                dt { "Failures since the last acknowledgement" } dd { (r.failures_counted) }
                dt { "Device timeout" } dd { (r.device_timeout_ms / 1000) " s of silence" }
                dt { "Health probe" } dd { (r.probe) }
                @if let Some(mode) = r.abort_mode { dt { "Aborted" } dd { "devices " (mode.as_str()) } }
                dt { "Created" } dd { (time(r.created_at)) " by " (r.created_by) }
            }
        }
        @if failed.total > 0 {
            section aria-labelledby="failures-h" {
                h2 #failures-h { "Failures (" (failed.total) ")" }
                @for f in &failed.devices {
                    article.failure {
                        h3 { a href=(format!("/ui/devices/{}", f.device)) { (f.device) } " " (badge(f.state.as_str()))
                            span.muted { " wave " (f.wave) ", " (time(f.at))
                                @if acknowledged(f, last_ack) { ", acknowledged" } } }
                        @if let Some(reason) = &f.reason { pre.reason { (reason) } }
                        @if let Some(check) = f.probe_result.as_ref().and_then(describe_result) { p.check { (check) } }
                    }
                }
                @if failed.total as usize > failed.devices.len() {
                    p { a href=(format!("/ui/rollouts/{id}?state=failed")) { "All failed devices" } }
                }
            }
        }
        @if at_work.total > 0 {
            section aria-labelledby="work-h" {
                h2 #work-h { "At work (" (at_work.total) ")" }
                div.table-wrap {
                    table.devices {
                        thead { tr { th scope="col" { "Device" } th scope="col" { "Wave" } th scope="col" { "State" }
                            th scope="col" { "Progress" } th scope="col" { "Last heard" } } }
                        tbody {
                            @for d in &at_work.devices {
                                tr {
                                    td { a href=(format!("/ui/devices/{}", d.device)) { (d.device) } }
                                    td { (d.wave) }
                                    td { (badge(d.state.as_str())) }
                                    td { @if let Some(p) = &d.progress { (wire_progress(p)) } }
                                    td { (time(d.last_heard_at)) }
                                }
                            }
                        }
                    }
                }
                @if at_work.total as usize > at_work.devices.len() {
                    p.muted { "The first " (at_work.devices.len()) " by wave are shown." }
                }
            }
        }
        section aria-labelledby="devices-h" {
            h2 #devices-h { "Devices" }
            form.filters method="get" action=(format!("/ui/rollouts/{id}")) {
                label for="state-filter" { "State" }
                select #state-filter name="state" {
                    option value="" selected[only.is_none()] { "any" }
                    @for s in DeviceState::ALL {
                        option value=(s.as_str()) selected[only == Some(s)] { (s.as_str().replace('_', " ")) }
                    }
                }
                button type="submit" { "Filter" }
            }
            (rollout_devices_table(&devices))
            nav.pager aria-label="Device pages" {
                span { "Page " (page) " of " (pages) " (" (plural(total, "device")) ")" }
                @if page > 1 { a href=(filter_link(page - 1)) { "Previous" } }
                @if page < pages { a href=(filter_link(page + 1)) { "Next" } }
            }
        }
        section aria-labelledby="history-h" {
            h2 #history-h { "History" }
            (events_table(&history))
        }
    };
    Ok(view::page(&format!("Rollout {id}"), &viewer, Section::Rollouts, Some(live), body))
}

fn wave_state(s: WaveState) -> &'static str {
    match s {
        WaveState::Pending => "pending",
        WaveState::WaitingApproval => "waiting_approval",
        WaveState::Open => "open",
        WaveState::Settled => "settled",
    }
}

/// The actions `viewer` may take on rollout `r` in its state. A viewer without the permission
/// sees none.
fn actions(viewer: &Viewer, r: &Rollout, failed: &wavecast_api::Failures, last_ack: Option<i64>) -> Markup {
    let can_approve = may(viewer, Permission::ApproveGates) && r.state == RolloutState::WaitingApproval;
    let can_resume = may(viewer, Permission::OperateRollouts) && r.state == RolloutState::Paused;
    let can_abort = may(viewer, Permission::OperateRollouts) && !r.state.is_terminal();
    if !(can_approve || can_resume || can_abort) {
        return html! {};
    }
    let waiting = r.waves.iter().find(|w| w.state == WaveState::WaitingApproval);
    html! {
        section.actions aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            @if can_approve {
                form method="post" action=(format!("/ui/rollouts/{}/approve", r.id))
                    data-confirm=(format!("Open wave {} of rollout {}? Devices start installing at once.", waiting.map_or(0, |w| w.number), r.id)) {
                    (csrf_field(viewer))
                    // The wave this page showed: approving opens it, or nothing if another waits now.
                    input type="hidden" name="wave" value=(waiting.map_or(0, |w| w.number));
                    p { @if let Some(w) = waiting { "Wave " (w.number) " (" (w.percent) "%) waits for approval." } }
                    button.primary type="submit" { "Approve wave " @if let Some(w) = waiting { (w.number) } }
                }
            }
            @if can_resume {
                form method="post" action=(format!("/ui/rollouts/{}/resume", r.id)) {
                    (csrf_field(viewer))
                    // What this page showed: resuming is refused if more failures arrived since.
                    input type="hidden" name="failures" value=(r.failures_counted);
                    p { "The rollout paused after " (plural(u64::from(r.failures_counted), "failure"))
                        " since the last acknowledgement. Resuming acknowledges them:" }
                    @let fresh: Vec<_> = failed.devices.iter().filter(|f| !acknowledged(f, last_ack)).collect();
                    ul.acks {
                        @for f in &fresh {
                            li { (f.device) " (wave " (f.wave) ", " (f.state.as_str().replace('_', " ")) ")"
                                @if let Some(reason) = &f.reason { ": " span.muted { (first_line(reason)) } } }
                        }
                        @if (r.failures_counted as usize) > fresh.len() {
                            li { "and " (r.failures_counted as usize - fresh.len()) " more (see Failures below)" }
                        }
                    }
                    label.check { input type="checkbox" name="ack" value="yes" required; " I acknowledge these failures" }
                    button.primary type="submit" { "Resume" }
                }
            }
            @if can_abort {
                form.abort method="post" action=(format!("/ui/rollouts/{}/abort", r.id)) {
                    (csrf_field(viewer))
                    fieldset {
                        legend { "Abort the rollout" }
                        p.muted { "Either way no more devices start. This cannot be undone." }
                        button.danger type="submit" name="mode" value="keep"
                            data-confirm=(format!("Abort rollout {} and KEEP devices on {}? This cannot be undone.", r.id, r.artifact)) {
                            "Abort, keep devices on " (r.version) }
                        button.danger type="submit" name="mode" value="revert"
                            data-confirm=(format!("Abort rollout {} and REVERT devices to their previous version? This cannot be undone.", r.id)) {
                            "Abort, revert devices" }
                    }
                }
            }
        }
    }
}

/// Whether failure `f` happened before the last resume, which acknowledged it.
fn acknowledged(f: &wavecast_api::DeviceFailure, last_ack: Option<i64>) -> bool {
    last_ack.is_some_and(|ack| f.at.unix_ms() <= ack)
}

/// "1 device", "2 devices".
fn plural(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// A heartbeat as the wire carries it (the devices at work).
fn wire_progress(p: &wavecast_api::DeviceProgress) -> Markup {
    progress(&HeartbeatRecord {
        at: p.at.unix_ms(),
        state: p.state,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        bytes_per_sec: p.bytes_per_sec,
        waiting: p.waiting.clone(),
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn progress(h: &HeartbeatRecord) -> Markup {
    html! {
        @if h.bytes_total > 0 {
            @let pct = h.bytes_done.saturating_mul(100) / h.bytes_total;
            progress value=(h.bytes_done) max=(h.bytes_total) aria-label="download" { (pct) "%" }
            " " (bytes(h.bytes_done)) " / " (bytes(h.bytes_total))
            @if h.bytes_per_sec > 0 { span.muted { " at " (bytes(h.bytes_per_sec)) "/s" } }
        }
        @if let Some(w) = &h.waiting { br; span.waiting { "waiting out " (w.reason) } }
    }
}

fn rollout_devices_table(devices: &[crate::store::RolloutDevicePageRecord]) -> Markup {
    html! {
        @if devices.is_empty() {
            p.empty { "No devices here." }
        } @else {
            div.table-wrap {
                table.devices {
                    thead { tr { th scope="col" { "Device" } th scope="col" { "Wave" } th scope="col" { "State" }
                        th scope="col" { "Progress" } th scope="col" { "Reason" } th scope="col" { "Changed" } } }
                    tbody {
                        @for d in devices {
                            tr {
                                td { a href=(format!("/ui/devices/{}", d.device)) { (d.device) } }
                                td { (d.wave) }
                                td { (badge(d.state.as_str())) }
                                td { @if let Some(h) = &d.heartbeat { (progress(h)) } }
                                td { @if let Some(reason) = &d.reason { pre.reason { (reason) } } }
                                td { (time_ms(d.updated_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An event's RFC 3339 time as the other pages show times: to the second, in UTC.
fn audit_time(at: &str) -> String {
    match at.parse::<jiff::Timestamp>() {
        Ok(t) => t.strftime(view::TIME_FORMAT).to_string(),
        Err(_) => at.to_owned(),
    }
}

fn events_table(events: &[wavecast_core::audit::AuditEvent]) -> Markup {
    html! {
        @if events.is_empty() {
            p.empty { "Nothing recorded yet." }
        } @else {
            div.table-wrap {
                table.events {
                    thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Who" }
                        th scope="col" { "What" } th scope="col" { "Subject" } th scope="col" { "Details" } } }
                    tbody {
                        @for e in events {
                            tr {
                                td { (e.seq) }
                                td { time datetime=(e.at) { (audit_time(&e.at)) } }
                                td { (e.actor) }
                                td { code { (e.action.as_str()) } }
                                td { (e.subject) }
                                td { @if !e.detail.is_null() { code.detail { (e.detail.to_string()) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct DeviceFilter {
    group: Option<String>,
    status: Option<String>,
    q: Option<String>,
    after: Option<String>,
}

/// Devices by name, a page at a time: filtered by group and status, searched by the start of
/// their name.
pub async fn devices(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<DeviceFilter>,
) -> Result<Html<String>, DashboardError> {
    let group = f.group.as_deref().filter(|g| !g.is_empty());
    let status = match f.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("active") => Some(DeviceStatus::Active),
        Some("revoked") => Some(DeviceStatus::Revoked),
        Some(other) => {
            return Err(ApiError::BadRequest(format!("status must be active or revoked, not {other:?}")).into());
        }
    };
    let prefix = f.q.as_deref().unwrap_or("").trim();
    let after = f.after.as_deref().unwrap_or("");
    let groups = state.store().group_names().await?;
    let mut rows = state.store().devices_page(group, status, prefix, after, DEVICES_PER_PAGE + 1).await?;
    let more = rows.len() > DEVICES_PER_PAGE;
    rows.truncate(DEVICES_PER_PAGE);
    let next = rows.last().filter(|_| more).map(|d| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("group", group.unwrap_or(""));
        q.append_pair("status", f.status.as_deref().unwrap_or(""));
        q.append_pair("q", prefix);
        q.append_pair("after", d.name.as_str());
        format!("/ui/devices?{}", q.finish())
    });
    let body = html! {
        h1 { "Devices" }
        form.filters method="get" action="/ui/devices" role="search" {
            label for="group" { "Group" }
            select #group name="group" {
                option value="" selected[group.is_none()] { "all" }
                @for g in &groups { option value=(g) selected[group == Some(g.as_str())] { (g) } }
            }
            label for="status" { "Status" }
            select #status name="status" {
                option value="" selected[status.is_none()] { "any" }
                option value="active" selected[status == Some(DeviceStatus::Active)] { "active" }
                option value="revoked" selected[status == Some(DeviceStatus::Revoked)] { "revoked" }
            }
            label for="q" { "Name starts with" }
            input #q type="search" name="q" value=(prefix);
            button type="submit" { "Search" }
        }
        @if rows.is_empty() {
            p.empty { "No devices match." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Device" } th scope="col" { "Group" } th scope="col" { "Hardware" }
                        th scope="col" { "Status" } th scope="col" { "Last seen" } } }
                    tbody {
                        @for d in &rows {
                            tr {
                                td { a href=(format!("/ui/devices/{}", d.name)) { (d.name) } }
                                td { (d.group) }
                                td { (d.hardware) }
                                td { (badge(if d.revoked_at.is_some() { "revoked" } else { "active" })) }
                                td { @if let Some(at) = d.last_seen_at { (time_ms(at)) } @else { span.muted { "never" } } }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Device pages" {
            @if !after.is_empty() { a href="/ui/devices" { "First page" } }
            @if let Some(next) = &next { a href=(next) { "Next" } }
        }
    };
    Ok(view::page("Devices", &viewer, Section::Devices, None, body))
}

/// One device: what it runs and its history in every rollout.
pub async fn device(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Html<String>, DashboardError> {
    let d = state
        .store()
        .device_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {name:?} not found")))?;
    let artifacts = state.store().device_artifacts(&d.id).await?;
    let history = state.store().device_rollouts(&d.id).await?;
    let body = html! {
        h1 { "Device " (d.name) " " (badge(if d.revoked_at.is_some() { "revoked" } else { "active" })) }
        dl.facts {
            dt { "Group" } dd { a href=(format!("/ui/devices?group={}", d.group)) { (d.group) } }
            dt { "Hardware" } dd { (d.hardware) }
            dt { "Enrolled" } dd { (time_ms(d.enrolled_at)) }
            dt { "Last seen" } dd { @if let Some(at) = d.last_seen_at { (time_ms(at)) } @else { "never" } }
        }
        section aria-labelledby="runs-h" {
            h2 #runs-h { "Runs" }
            @if artifacts.is_empty() { p.empty { "Nothing reported yet." } }
            ul { @for a in &artifacts { li { (a.name) " " strong { (a.version) } } } }
        }
        section aria-labelledby="dev-history-h" {
            h2 #dev-history-h { "Rollouts" }
            @if history.is_empty() { p.empty { "Not part of any rollout yet." } } @else {
                div.table-wrap {
                    table {
                        thead { tr { th scope="col" { "Rollout" } th scope="col" { "Artifact" } th scope="col" { "Wave" }
                            th scope="col" { "State" } th scope="col" { "Reason" } th scope="col" { "Changed" } } }
                        tbody {
                            @for h in &history {
                                tr {
                                    td { a href=(format!("/ui/rollouts/{}", h.rollout_id)) { (h.rollout_id) } }
                                    td { (h.artifact) "@" (h.version) }
                                    td { (h.wave) }
                                    td { (badge(h.state.as_str()))
                                        @if let Some(hb) = &h.heartbeat { br; (progress(hb)) } }
                                    td { @if let Some(reason) = &h.reason { pre.reason { (reason) } }
                                        @if let Some(check) = h.probe_result.as_ref().and_then(describe_result) { p.check { (check) } } }
                                    td { (time_ms(h.updated_at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let live = if history.iter().any(|h| h.heartbeat.is_some()) { "/ui/events?progress=1" } else { "/ui/events" };
    Ok(view::page(&format!("Device {name}"), &viewer, Section::Devices, Some(live), body))
}

/// Every published artifact version.
pub async fn artifacts(State(state): State<AppState>, viewer: Viewer) -> Result<Html<String>, DashboardError> {
    let artifacts = bodies::all(state.store().list_artifacts().await?, bodies::artifact)?;
    let body = html! {
        h1 { "Artifacts" }
        @if artifacts.is_empty() {
            p.empty { "Nothing published yet: " code { "wavecast artifact publish" } " signs and uploads a model." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Artifact" } th scope="col" { "Size" } th scope="col" { "SHA-256" }
                        th scope="col" { "Hardware" } th scope="col" { "Published" } } }
                    tbody {
                        @for a in &artifacts {
                            tr {
                                td { a href=(format!("/ui/artifacts/{}/{}", a.name, a.version)) { (a.name) "@" (a.version) } }
                                td { (bytes(a.length)) }
                                td { code.digest title=(a.sha256.to_hex()) { (a.sha256.to_hex()[..16]) "…" } }
                                td { (a.hardware.as_deref().unwrap_or("any")) }
                                td { (time(a.published_at)) br; span.muted { "by " (a.published_by) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(view::page("Artifacts", &viewer, Section::Artifacts, None, body))
}

/// One artifact version: what it is, the rollouts of it, and a form to start one.
pub async fn artifact(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((name, version)): Path<(String, String)>,
) -> Result<Html<String>, DashboardError> {
    let artifacts = bodies::all(state.store().list_artifacts().await?, bodies::artifact)?;
    let a = artifacts
        .into_iter()
        .find(|a| a.name.as_str() == name && a.version.to_string() == version)
        .ok_or_else(|| ApiError::NotFound(format!("artifact {name}@{version} not found")))?;
    let rollouts: Vec<Rollout> = bodies::all(
        state
            .store()
            .list_rollouts()
            .await?
            .into_iter()
            .filter(|r| r.artifact == a.name && r.version == a.version)
            .collect(),
        bodies::rollout,
    )?;
    let groups = state.store().group_names().await?;
    let target = format!("{}@{}", a.name, a.version);
    let body = html! {
        h1 { "Artifact " (target) }
        dl.facts {
            dt { "Size" } dd { (bytes(a.length)) " (" (a.length) " bytes)" }
            dt { "SHA-256" } dd { code.digest { (a.sha256.to_hex()) } }
            dt { "Hardware" } dd { (a.hardware.as_deref().unwrap_or("any")) }
            dt { "Published" } dd { (time(a.published_at)) " by " (a.published_by) }
            dt { "Golden set" } dd {
                @if let Some(g) = &a.golden {
                    code.digest { (g.sha256.to_hex()) } " (" (bytes(g.length)) "), signed with it; model check on the publisher's machine: " (g.local_check)
                } @else { "none" }
            }
        }
        section aria-labelledby="a-rollouts-h" {
            h2 #a-rollouts-h { "Rollouts of it" }
            @if rollouts.is_empty() { p.empty { "None yet." } }
            ul { @for r in &rollouts { li { a href=(format!("/ui/rollouts/{}", r.id)) { (r.id) } " to " (r.group) " " (badge(r.state.as_str())) } } }
        }
        @if may(&viewer, Permission::OperateRollouts) {
            section aria-labelledby="create-h" {
                h2 #create-h { "Start a rollout" }
                @if groups.is_empty() { p.empty { "Create a group and enroll devices first (" code { "wavecast group create" } ")." } } @else {
                    form.card method="post" action="/ui/rollouts"
                        data-confirm=(format!("Start rolling out {target}? The first wave opens at once unless it has a manual gate.")) {
                        (csrf_field(&viewer))
                        input type="hidden" name="artifact" value=(target);
                        label for="c-group" { "Group" }
                        select #c-group name="group" required { @for g in &groups { option value=(g) { (g) } } }
                        label for="c-waves" { "Waves (cumulative %)" }
                        input #c-waves name="waves" value="1,10,50,100" required aria-describedby="c-waves-help";
                        p.hint #c-waves-help { "Comma-separated, rising, ending at 100." }
                        label for="c-gates" { "Manual gates before waves" }
                        input #c-gates name="gates" value="2" aria-describedby="c-gates-help";
                        p.hint #c-gates-help { "Wave numbers that wait for an approver; empty for none." }
                        label for="c-halt" { "Pause after this many failures" }
                        input #c-halt name="halt_after" type="number" min="1" value="1" required;
                        label for="c-probe" { "Health probe" }
                        input #c-probe name="probe" placeholder="exec:NAME" required aria-describedby="c-probe-help";
                        p.hint #c-probe-help { code { "exec:NAME" } " (a probe the device allows), " code { "http://…" } " or " code { "file:NAME" } " (a readiness file)." }
                        button.primary type="submit" { "Start rollout" }
                    }
                }
            }
        }
    };
    Ok(view::page(&format!("Artifact {target}"), &viewer, Section::Artifacts, None, body))
}

#[derive(Debug, Deserialize)]
pub struct AuditPage {
    /// Events before this sequence number (the next page down); the newest when absent.
    before: Option<i64>,
}

/// The audit trail, newest first, a page at a time, with the newest signed checkpoint and
/// whether the rows of this page hash to its root now.
pub async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<AuditPage>,
) -> Result<Html<String>, DashboardError> {
    let size = state.store().audit_size().await?;
    let before = q.before.unwrap_or(size).clamp(0, size);
    let from = (before - EVENTS_PER_PAGE).max(0);
    let mut events = state.store().audit_events(from, before - from).await?;
    events.reverse();
    let checkpoint = state.checkpoints().latest().await.map_err(ApiError::Evidence)?;
    let verdict: Option<Result<(), String>> = match &checkpoint {
        None => None,
        Some(cp) => {
            let leaves: Vec<u64> = events.iter().map(|e| e.seq).filter(|s| *s < cp.checkpoint.size).collect();
            Some(match state.checkpoints().inclusion_proofs(cp, &leaves).await {
                Ok(_) => Ok(()),
                Err(e @ (CheckpointError::ShortLog { .. } | CheckpointError::Altered { .. })) => {
                    Err(wavecast_os::error::chain(&e))
                }
                Err(e) => return Err(ApiError::Evidence(e).into()),
            })
        }
    };
    let body = html! {
        h1 { "Audit trail" }
        section.checkpoint aria-labelledby="cp-h" {
            h2 #cp-h { "Latest checkpoint" }
            @match (&checkpoint, &verdict) {
                (Some(cp), Some(Ok(()))) => {
                    p.ok { "The log verifies against checkpoint " strong { (cp.checkpoint.size) } ": the rows up to it hash to its signed root." }
                }
                (Some(cp), Some(Err(why))) => {
                    p.problem role="alert" { "The log does NOT verify against checkpoint " (cp.checkpoint.size) ": " (why) }
                }
                _ => { p.muted { "No checkpoint is signed yet; the server signs one within a second of a write." } }
            }
            @if let Some(cp) = &checkpoint {
                dl.facts {
                    dt { "Events covered" } dd { (cp.checkpoint.size) " of " (size) }
                    dt { "Root" } dd { code.digest { (cp.checkpoint.root.to_hex()) } }
                }
            }
            p.hint { "For a check of every event by your own machine, run " code { "wavecast audit verify" } "." }
        }
        section aria-labelledby="events-h" {
            h2 #events-h { @if events.is_empty() { "No events" } @else { "Events " (from) "–" (before - 1) " of " (size) } }
            (events_table(&events))
            nav.pager aria-label="Audit pages" {
                @if before < size { a href="/ui/audit" { "Newest" } }
                @if from > 0 { a href=(format!("/ui/audit?before={from}")) { "Older" } }
            }
        }
    };
    Ok(view::page("Audit", &viewer, Section::Audit, Some("/ui/events"), body))
}
