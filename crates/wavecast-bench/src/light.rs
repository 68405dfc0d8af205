//! `rollout --light`: the rollout engine driven by lightweight devices, to measure the server
//! alone at fleet scale.
//!
//! A light device does over HTTP what a real agent does, and nothing on disk: it polls its
//! assignments with its last entity tag, and when a doc assigns it an install it reports the
//! states an agent reports, in the batches an agent sends them (downloading; verifying,
//! installing and probing; succeeded, with what it runs now). No signature check, no TUF, no
//! download, no probe. The fleet polls over `connections` keep-alive connections, each taking
//! the device whose next poll is most overdue, so when the server cannot keep up with the poll
//! interval every device is polled as often as the server allows; reports go over as many
//! connections again, so slow reports hold up their own devices and not everyone's polls.
//!
//! The server's audit log says when each wave opened (`wave.opened`, on the same clock as ours);
//! a device starts when a doc with its install reaches it. A wave's devices are the ones that
//! start between its opening and the next wave's, since a wave opens only once every device of
//! the one before has an outcome.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hyper::header::HeaderValue;
use tokio::sync::mpsc::UnboundedSender;
use wavecast_core::assignment::{
    Action, ActiveArtifact, Assignment, DeviceState, Report, ReportAck, ReportBatch, SignedAssignments,
};
use wavecast_core::audit::{AuditAction, AuditEvent};
use wavecast_core::rollout::RolloutState;
use wavecast_os::clock::now_ms;

use crate::http::Conn;
use crate::setup::{self, Installation, mib, status_kib};
use crate::{checkins, fleet};

/// What `rollout --light` was asked to do.
pub struct Options {
    pub devices: u32,
    pub connections: usize,
    pub poll_interval: Duration,
    pub database_url: Option<String>,
}

/// The report batches a real agent sends for a healthy install, in order.
const BATCHES: [&[DeviceState]; 3] = [
    &[DeviceState::Downloading],
    &[DeviceState::Verifying, DeviceState::Installing, DeviceState::Probing],
    &[DeviceState::Succeeded],
];

/// A light device, due for its next step at `due`.
struct Device {
    due: Instant,
    id: String,
    auth: HeaderValue,
    etag: Option<HeaderValue>,
    /// The server's suggested wait before the next poll, from the last answer.
    poll_after: Option<Duration>,
    /// The install it is reporting, and the next batch to send.
    work: Option<(Assignment, usize)>,
    /// The rollout whose install it finished.
    done: Option<String>,
    /// When a doc with its install reached it (Unix ms).
    started_ms: Option<i64>,
}

/// The fleet ordered by due time, earliest first.
struct Due(Box<Device>);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0.due == other.0.due
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.due.cmp(&self.0.due)
    }
}

/// What the fleet did, counted as it goes.
#[derive(Default)]
struct Stats {
    polls_200: AtomicU64,
    polls_304: AtomicU64,
    polls_other: AtomicU64,
    reports: AtomicU64,
    reports_failed: AtomicU64,
    refused: AtomicU64,
    bad_docs: AtomicU64,
    errors: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn polls(&self) -> u64 {
        Self::get(&self.polls_200) + Self::get(&self.polls_304)
    }
}

struct Fleet {
    heap: Mutex<BinaryHeap<Due>>,
    stop: AtomicBool,
    stats: Stats,
    poll_interval: Duration,
}

impl Fleet {
    fn heap(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Due>> {
        self.heap.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A small deterministic generator for poll jitter: spreading polls needs no secrecy.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `base` ± 20%, as the agent polls.
fn jitter(base: Duration, rng: &mut u64) -> Duration {
    base.mul_f64(0.8 + 0.4 * (splitmix(rng) % 10_000) as f64 / 10_000.0)
}

/// Devices with reports to send, waiting for a reporter.
type Reports = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Box<Device>>>>;

/// One polling connection: take the most overdue device and poll for it; hand a device with
/// an install to the reporters, or put it back due one poll interval later.
async fn poller(addr: SocketAddr, fleet: Arc<Fleet>, reports: UnboundedSender<Box<Device>>, seed: u64) {
    let mut conn = Conn::new(addr);
    let mut rng = seed;
    while !fleet.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = {
            let mut heap = fleet.heap();
            match heap.peek() {
                Some(d) if d.0.due <= now => heap.pop().map(|d| d.0).ok_or(Duration::ZERO),
                Some(d) => Err(d.0.due - now),
                None => Err(Duration::from_millis(20)),
            }
        };
        match next {
            Ok(mut device) => {
                if device.work.is_none() {
                    poll(&mut conn, &mut device, &fleet.stats).await;
                }
                if device.work.is_some() {
                    match reports.send(device) {
                        Ok(()) => continue,
                        Err(unsent) => device = unsent.0,
                    }
                }
                device.due = Instant::now() + next_poll(&device, fleet.poll_interval, &mut rng);
                fleet.heap().push(Due(device));
            }
            // Devices are put back due a whole interval later, so a short sleep misses none.
            Err(wait) => tokio::time::sleep(wait.min(Duration::from_millis(20))).await,
        }
    }
}

/// One reporting connection: send a device's reports, then put it back among the pollers.
/// Reports have connections of their own, as each device has its own: a slow report holds up
/// that device, not the polls of the rest of the fleet.
async fn reporter(addr: SocketAddr, fleet: Arc<Fleet>, queue: Reports, seed: u64) {
    let mut conn = Conn::new(addr);
    let mut rng = seed;
    loop {
        let next = queue.lock().await.recv().await;
        let Some(mut device) = next else { return };
        report(&mut conn, &mut device, &fleet.stats).await;
        device.due = Instant::now() + next_poll(&device, fleet.poll_interval, &mut rng);
        fleet.heap().push(Due(device));
    }
}

/// When `device` polls next: as an agent does, when the server suggests (fast while its wave
/// is open, slowly while nothing happens), but never later than the owner's poll interval.
fn next_poll(device: &Device, poll_interval: Duration, rng: &mut u64) -> Duration {
    let ours = jitter(poll_interval, rng);
    device.poll_after.map_or(ours, |theirs| theirs.min(ours))
}

/// Polls for `device`; a doc that assigns it an install it has not done starts the work.
async fn poll(conn: &mut Conn, device: &mut Device, stats: &Stats) {
    let answer = match conn.get(checkins::ASSIGNMENTS, Some(&device.auth), device.etag.as_ref()).await {
        Ok(a) => a,
        Err(_) => return Stats::add(&stats.errors),
    };
    device.poll_after = answer.poll_after;
    if answer.status == hyper::StatusCode::NOT_MODIFIED {
        return Stats::add(&stats.polls_304);
    }
    if !answer.status.is_success() {
        return Stats::add(&stats.polls_other);
    }
    Stats::add(&stats.polls_200);
    device.etag = answer.etag;
    let Ok(doc) = serde_json::from_slice::<SignedAssignments>(&answer.body) else {
        return Stats::add(&stats.bad_docs);
    };
    let install = doc
        .signed
        .assignments
        .into_iter()
        .find(|a| a.action == Action::Install && device.done.as_deref() != Some(a.rollout_id.as_str()));
    if let Some(a) = install {
        device.started_ms.get_or_insert_with(now_ms);
        device.work = Some((a, 0));
    }
}

/// Sends the install's remaining report batches; a batch that fails is sent again a poll
/// interval later.
async fn report(conn: &mut Conn, device: &mut Device, stats: &Stats) {
    while let Some((assignment, next)) = &mut device.work {
        let Some(states) = BATCHES.get(*next) else {
            device.done = Some(assignment.rollout_id.clone());
            device.work = None;
            return;
        };
        let active = if states.contains(&DeviceState::Succeeded) {
            vec![ActiveArtifact {
                name: assignment.artifact.clone(),
                version: assignment.version.clone(),
                sha256: assignment.sha256,
            }]
        } else {
            Vec::new()
        };
        let reports = states.iter().map(|s| report_of(&device.id, assignment, *s)).collect();
        let answer = conn.post_json("/device/v1/reports", Some(&device.auth), &ReportBatch { reports, active }).await;
        match answer {
            Ok(a) if a.status.is_success() => {
                Stats::add(&stats.reports);
                if serde_json::from_slice::<ReportAck>(&a.body).is_ok_and(|ack| !ack.refused.is_empty()) {
                    Stats::add(&stats.refused);
                }
                *next += 1;
            }
            _ => return Stats::add(&stats.reports_failed),
        }
    }
}

/// The report of `state`, with the id an agent derives from the transition.
fn report_of(device_id: &str, a: &Assignment, state: DeviceState) -> Report {
    let mut h = wavecast_core::Sha256Hasher::new();
    for part in [device_id, &a.rollout_id, a.artifact.as_str(), &a.version.to_string(), state.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Report {
        id: hex::encode(&h.finish().as_bytes()[..16]),
        rollout_id: a.rollout_id.clone(),
        artifact: a.artifact.to_string(),
        version: a.version.to_string(),
        state,
        reason: None,
        probe_result: None,
        at_ms: now_ms(),
    }
}

/// One wave as the fleet lived it.
#[derive(Debug, PartialEq)]
struct WaveFigures {
    opened_ms: i64,
    /// Devices that started between this wave's opening and the next one's.
    started: usize,
    last_start_ms: Option<i64>,
    /// When the next wave opened, or the rollout completed.
    settled_ms: Option<i64>,
}

/// Sorts device start times into the waves whose openings are `opened` (ascending).
fn waves(opened: &[i64], completed_ms: Option<i64>, starts: &[i64]) -> Vec<WaveFigures> {
    opened
        .iter()
        .enumerate()
        .map(|(i, &open)| {
            let next = opened.get(i + 1).copied();
            let mine: Vec<i64> = starts.iter().copied().filter(|&s| s >= open && next.is_none_or(|n| s < n)).collect();
            WaveFigures {
                opened_ms: open,
                started: mine.len(),
                last_start_ms: mine.iter().copied().max(),
                settled_ms: next.or(completed_ms),
            }
        })
        .collect()
}

/// Audit events from `from` on, a page at a time.
async fn audit_from(inst: &Installation, from: u64, limit: u64) -> anyhow::Result<Vec<AuditEvent>> {
    Ok(reqwest::Client::new()
        .get(format!("{}/api/v1/audit?from={from}&limit={limit}", inst.url))
        .bearer_auth(&inst.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// How many events the audit log holds: the first `from` that returns none.
async fn audit_len(inst: &Installation) -> anyhow::Result<u64> {
    let mut hi = 1u64;
    while !audit_from(inst, hi, 1).await?.is_empty() {
        hi *= 2;
    }
    let mut lo = 0u64; // an index known to hold an event (the installation's first)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if audit_from(inst, mid, 1).await?.is_empty() { hi = mid } else { lo = mid }
    }
    Ok(hi)
}

/// When each wave of rollout `id` opened and when it completed, from the audit log since `from`.
async fn wave_openings(inst: &Installation, id: &str, mut from: u64) -> anyhow::Result<(Vec<i64>, Option<i64>)> {
    let at = |e: &AuditEvent| -> anyhow::Result<i64> {
        Ok(e.at.parse::<jiff::Timestamp>().with_context(|| format!("audit event time {:?}", e.at))?.as_millisecond())
    };
    let (mut opened, mut completed) = (Vec::new(), None);
    loop {
        let page = audit_from(inst, from, 10_000).await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for e in page.iter().filter(|e| e.subject == id) {
            match e.action {
                AuditAction::WaveOpened => opened.push(at(e)?),
                AuditAction::RolloutCompleted => completed = Some(at(e)?),
                _ => {}
            }
        }
    }
    opened.sort_unstable();
    Ok((opened, completed))
}

/// The warnings the server logged after the first `from` bytes of its log: how many, and the
/// first.
fn warnings(log: &Path, from: usize) -> (usize, String) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
    let mut lines = text.lines().filter(|l| l.contains("WARN"));
    let first: String = lines.next().map(|l| l.chars().take(200).collect()).unwrap_or_default();
    (usize::from(!first.is_empty()) + lines.count(), first)
}

pub async fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let backend = Installation::backend(opts.database_url.as_deref());
    let tag = format!("rollout --light ({backend}, {} devices)", opts.devices);
    let file = root.join("model-1mib.bin");
    setup::write_file(&file, 1 << 20)?;
    let inst = setup::install(root, opts.database_url.as_deref()).await?;
    setup::publish(&inst, &file)?;
    let token = setup::enroll_token(&inst, "fleet")?;
    println!("{tag}: enrolling…");
    let enrolled = fleet::enroll(inst.addr, &token, "light-", opts.devices, opts.connections.min(32)).await?;
    println!("{tag}: {}", enrolled.describe());

    let mut rng = 0x5eed_u64;
    let start = Instant::now();
    let heap = enrolled
        .devices
        .into_iter()
        .map(|d| {
            // The fleet's first polls are spread over one interval, as devices that booted at
            // different times would be.
            let due = start + opts.poll_interval.mul_f64((splitmix(&mut rng) % 10_000) as f64 / 10_000.0);
            Due(Box::new(Device {
                due,
                id: d.id,
                auth: d.auth,
                etag: None,
                poll_after: None,
                work: None,
                done: None,
                started_ms: None,
            }))
        })
        .collect();
    let fleet = Arc::new(Fleet {
        heap: Mutex::new(heap),
        stop: AtomicBool::new(false),
        stats: Stats::default(),
        poll_interval: opts.poll_interval,
    });
    let (to_report, queue) = tokio::sync::mpsc::unbounded_channel();
    let queue: Reports = Arc::new(tokio::sync::Mutex::new(queue));
    let connections = opts.connections.max(1);
    let pollers: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(poller(inst.addr, fleet.clone(), to_report.clone(), 0xC0FFEE ^ i as u64)))
        .collect();
    let reporters: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(reporter(inst.addr, fleet.clone(), queue.clone(), 0xFEED ^ i as u64)))
        .collect();
    // The reporters stop once the pollers have, and they have sent what was queued.
    drop(to_report);

    // Up: every device has had its first doc. Then a few intervals of an idle fleet.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while Stats::get(&fleet.stats.polls_200) < u64::from(opts.devices) {
        ensure!(Instant::now() < deadline, "the fleet did not check in within an hour");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A device's first check-in holds no doc, so the server asks it back within a second; the
    // idle rate is measured after those second check-ins, at the pace an idle fleet keeps.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_from, idle_polls) = (Instant::now(), fleet.stats.polls());
    tokio::time::sleep((opts.poll_interval * 3).min(Duration::from_secs(10))).await;
    let idle_rate = (fleet.stats.polls() - idle_polls) as f64 / idle_from.elapsed().as_secs_f64();
    let rss_before = status_kib(inst.server_pid(), "VmRSS:");
    let audit_start = audit_len(&inst).await?;

    let log = root.join("server.log");
    let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let (created_ms, clock) = (now_ms(), Instant::now());
    let created =
        setup::create_rollout(&inst, "fleet", "exec:ok", &["--waves", "10,50,100", "--device-timeout", "10m"])?;
    let create_took = clock.elapsed();
    let requests_before = fleet.stats.polls() + Stats::get(&fleet.stats.reports);
    let r = setup::wait_rollout(&inst, &created.id, Duration::from_millis(100), Duration::from_secs(4 * 3600)).await?;
    let took = clock.elapsed();
    let requests = fleet.stats.polls() + Stats::get(&fleet.stats.reports) - requests_before;
    let rss_peak = status_kib(inst.server_pid(), "VmHWM:");
    fleet.stop.store(true, Ordering::Relaxed);
    for w in pollers.into_iter().chain(reporters) {
        let _ = w.await;
    }
    ensure!(r.state == RolloutState::Completed, "the rollout did not complete: {r:?}");

    let starts: Vec<i64> = fleet.heap().iter().filter_map(|d| d.0.started_ms).collect();
    let (opened, completed_ms) = wave_openings(&inst, &created.id, audit_start).await?;
    let total_ms = completed_ms.map_or(took.as_millis() as i64, |c| c - created_ms);
    let s = &fleet.stats;
    println!(
        "{tag}: idle fleet polling as the server paces it, at most every {:?} ±20%, over {} connections (as many again for reports): {idle_rate:.0} check-ins/s (each device every {:.1} s)",
        opts.poll_interval,
        opts.connections,
        f64::from(opts.devices) / idle_rate.max(f64::MIN_POSITIVE)
    );
    println!(
        "{tag}: 3-wave automatic rollout completed in {:.2} s (creating it took {:.2} s); {:.0} requests/s meanwhile",
        total_ms as f64 / 1000.0,
        create_took.as_secs_f64(),
        requests as f64 / took.as_secs_f64()
    );
    for (i, w) in waves(&opened, completed_ms, &starts).iter().enumerate() {
        let since = |t: Option<i64>| {
            t.map_or_else(|| "?".to_owned(), |t| format!("{:.2} s", (t - w.opened_ms) as f64 / 1000.0))
        };
        println!(
            "{tag}: wave {} opened at +{:.2} s: {} devices started, the last {} after it opened; settled {} after it opened",
            i + 1,
            (w.opened_ms - created_ms) as f64 / 1000.0,
            w.started,
            since(w.last_start_ms),
            since(w.settled_ms)
        );
    }
    let (warned, first) = warnings(&log, log_from);
    println!(
        "{tag}: server RSS {:.1} MiB before the rollout, peak {:.1} MiB ({:.2} KiB per device); {warned} warnings logged during the rollout{}",
        mib(rss_before),
        mib(rss_peak),
        rss_peak as f64 / f64::from(opts.devices.max(1)),
        if first.is_empty() { String::new() } else { format!(", the first: {first}") }
    );
    let odd = [
        ("polls answered otherwise", Stats::get(&s.polls_other)),
        ("report batches failed", Stats::get(&s.reports_failed)),
        ("report batches with a refusal", Stats::get(&s.refused)),
        ("unreadable docs", Stats::get(&s.bad_docs)),
        ("connection errors", Stats::get(&s.errors)),
    ];
    let odd: Vec<String> = odd.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect();
    if !odd.is_empty() {
        println!("{tag}: also: {}", odd.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_fall_into_the_wave_open_when_they_happened() {
        let opened = [1_000, 5_000, 9_000];
        let starts = [1_200, 1_900, 5_000, 5_300, 8_999, 9_100, 9_050];
        let figures = waves(&opened, Some(12_000), &starts);
        assert_eq!(
            figures,
            [
                WaveFigures { opened_ms: 1_000, started: 2, last_start_ms: Some(1_900), settled_ms: Some(5_000) },
                WaveFigures { opened_ms: 5_000, started: 3, last_start_ms: Some(8_999), settled_ms: Some(9_000) },
                WaveFigures { opened_ms: 9_000, started: 2, last_start_ms: Some(9_100), settled_ms: Some(12_000) },
            ]
        );
    }

    #[test]
    fn a_wave_nobody_started_in_has_no_last_start() {
        assert_eq!(
            waves(&[10], None, &[]),
            [WaveFigures { opened_ms: 10, started: 0, last_start_ms: None, settled_ms: None }]
        );
    }

    #[test]
    fn the_most_overdue_device_comes_first() {
        let now = Instant::now();
        let device = |due| {
            Due(Box::new(Device {
                due,
                id: String::new(),
                auth: HeaderValue::from_static("x"),
                etag: None,
                poll_after: None,
                work: None,
                done: None,
                started_ms: None,
            }))
        };
        let mut heap: BinaryHeap<Due> =
            [now + Duration::from_secs(2), now, now + Duration::from_secs(1)].into_iter().map(device).collect();
        let order: Vec<Instant> = std::iter::from_fn(|| heap.pop().map(|d| d.0.due)).collect();
        assert_eq!(order, [now, now + Duration::from_secs(1), now + Duration::from_secs(2)]);
    }

    #[test]
    fn jitter_stays_within_a_fifth_of_the_interval() {
        let mut rng = 7;
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10), &mut rng);
            assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12), "{j:?}");
        }
    }
}
