//! The dashboard's markup: the page frame, and the pieces pages share (times, states, bars).
//!
//! maud escapes every value it interpolates, so a device name or a probe's output is text on
//! the page, never markup.

use axum::http::StatusCode;
use axum::response::Html;
use maud::{DOCTYPE, Markup, html};
use wavecast_api::{StateCounts, Timestamp};
use wavecast_core::Permission;

use super::session::Viewer;

/// The section a page belongs to, marked in the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Rollouts,
    Devices,
    Artifacts,
    Audit,
}

/// A whole page: navigation, who is signed in, and `body`. When `live` names an events URL, the
/// element marked `data-live` is refreshed as the server reports changes.
pub fn page(title: &str, viewer: &Viewer, section: Section, live: Option<&str>, body: Markup) -> Html<String> {
    let nav = [
        (Section::Rollouts, "/ui/rollouts", "Rollouts"),
        (Section::Devices, "/ui/devices", "Devices"),
        (Section::Artifacts, "/ui/artifacts", "Artifacts"),
        (Section::Audit, "/ui/audit", "Audit"),
    ];
    let body = html! {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/rollouts" { "wavecast" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, href, label) in nav {
                                li {
                                    @if s == section {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Signed in as " strong { (viewer.op.name) } " (" (viewer.op.role) ")" }
                        form method="post" action="/ui/sign-out" {
                            (csrf_field(viewer))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    @if let Some(events) = live {
                        // Not a live region: announcing the time of every refresh would drown
                        // what changed on the page.
                        p.live-status #live-status data-events=(events) { "Live" }
                    }
                    div data-live[live.is_some()] { (body) }
                }
    };
    document(title, false, true, body)
}

/// The HTML document around `body`: the stylesheet, and the script for pages that use it.
fn document(title: &str, narrow: bool, script: bool, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wavecast" }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
                @if script { script src="/ui/assets/dashboard.js" defer {} }
            }
            body class=[narrow.then_some("narrow")] { (body) }
        }
    };
    Html(markup.into_string())
}

/// A page for someone not signed in: only the sign-in form.
pub fn sign_in(next: &str, problem: Option<&str>) -> Html<String> {
    let body = html! {
                main #main {
                    h1 { "wavecast" }
                    @if let Some(problem) = problem {
                        p.problem role="alert" { (problem) }
                    }
                    form.card method="post" action="/ui/sign-in" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="off" required autofocus
                            aria-describedby="token-help";
                        p.hint #token-help {
                            "A token from " code { "wavecast token create" } ", or the admin token "
                            code { "wavecast init" } " printed. It is sent once; the browser keeps only a session cookie."
                        }
                        button type="submit" { "Sign in" }
                    }
                }
    };
    document("Sign in", true, false, body)
}

/// A page saying why a request was refused, with the way back.
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    let body = html! {
        main #main {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.problem role="alert" { (message) }
            p { a href="/ui/rollouts" { "Back to the rollouts" } }
        }
    };
    document(status.as_str(), true, false, body)
}

/// The hidden field every form of a session carries.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// Whether the viewer's role allows `permission`: what decides which actions a page offers.
/// (The action itself checks again.)
pub fn may(viewer: &Viewer, permission: Permission) -> bool {
    viewer.op.role.allows(permission)
}

/// How every page shows a time: UTC, to the second.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S UTC";

/// A time as UTC to the second, in a `<time>` element a script or reader can parse.
pub fn time_ms(ms: i64) -> Markup {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => {
            let shown = t.strftime(TIME_FORMAT).to_string();
            html! { time datetime=(t.to_string()) { (shown) } }
        }
        Err(_) => html! { (ms) },
    }
}

/// [`time_ms`] of a wire timestamp.
pub fn time(t: Timestamp) -> Markup {
    time_ms(t.unix_ms())
}

/// A state as a badge whose colour class follows the state's name.
pub fn badge(state: &str) -> Markup {
    let class = format!("badge s-{}", state.replace(' ', "_"));
    html! { span class=(class) { (state.replace('_', " ")) } }
}

/// Bytes in a unit a person reads at a glance.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The groups of device states a bar shows, in the order drawn, with their colour class.
fn bar_segments(c: &StateCounts) -> [(&'static str, &'static str, u64); 5] {
    [
        ("succeeded", "succeeded", c.succeeded),
        ("working", "downloading", c.assigned + c.downloading + c.verifying + c.installing + c.probing),
        ("failed", "failed", c.failed + c.timed_out),
        ("reverted", "reverted", c.reverted + c.revert_skipped),
        ("waiting", "pending", c.pending + c.unreachable + c.removed),
    ]
}

/// A bar of device states over `total` devices, drawn as SVG (the page's content policy allows
/// no inline style), labelled in words for screen readers and with a legend for everyone.
pub fn bar(c: &StateCounts, total: u64) -> Markup {
    let segments = bar_segments(c);
    let words: Vec<String> =
        segments.iter().filter(|(_, _, n)| *n > 0).map(|(label, _, n)| format!("{n} {label}")).collect();
    let label = if words.is_empty() { "no devices".to_owned() } else { words.join(", ") };
    let total = total.max(1) as f64;
    let mut x = 0.0;
    let mut rects = Vec::new();
    for (_, class, n) in segments {
        if n > 0 {
            let w = (n as f64) * 1000.0 / total;
            rects.push((format!("s-{class}"), format!("{x:.1}"), format!("{w:.1}")));
            x += w;
        }
    }
    html! {
        div.bar {
            svg viewBox="0 0 1000 14" preserveAspectRatio="none" role="img" aria-label=(label) {
                rect.track x="0" y="0" width="1000" height="14" {}
                @for (class, x, w) in &rects {
                    rect class=(class) x=(x) y="0" width=(w) height="14" {}
                }
            }
            span.legend { (label) }
        }
    }
}
