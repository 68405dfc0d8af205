//! `longpoll`: what a fleet holding long-polls costs the server, and how soon a wave opening
//! reaches the fleet (issue 12: 100,000 requests held within 1 GiB of server RSS; the last
//! device of a 10,000-device wave has its new doc within 2 s of `rollout approve`).
//!
//! Held requests: N devices are enrolled and check in once (so the server knows them and each
//! has its doc's entity tag), and the server's RSS is read with none of them connected. Then
//! every device opens a connection of its own and holds `GET /device/v1/assignments?wait=60s`
//! with its tag; once every request is written and the server has gone idle, its RSS again:
//! the difference is what the held requests cost it.
//!
//! Wake latency: M more devices, in a group of their own, hold long-polls too, while the N
//! stay held as bystanders. A rollout to the M with its one wave (100%) behind a manual gate
//! is created, then `wavecast rollout approve`d; the figures are the times from starting the
//! approve command to each device of the wave having a doc that assigns it the install. Any
//! other answer before its wait runs out is a spurious wake: the rollout's creation (its wave
//! is closed) and the approval change nothing for the bystanders.
//!
//! The client side shares the machine with the server, so it is kept small: a [`RawConn`] and
//! a task per device, nothing read until an answer arrives. Past about 28,000 connections to
//! one port a source address runs out of ports, so the sockets are spread over 127.0.0.2,
//! 127.0.0.3, …; and this process raises its open-file limit, which the server inherits.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hyper::header::HeaderValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wavecast_core::assignment::{Action, SignedAssignments};

use crate::checkins::{self, ASSIGNMENTS};
use crate::figures::percentile;
use crate::fleet;
use crate::http::{Head, RawConn, get_request, source_addr};
use crate::setup::{self, Installation, mib, status_kib};

/// What `longpoll` was asked to do.
pub struct Options {
    /// Devices holding long-polls for the memory figure (and as bystanders of the wave).
    pub devices: u32,
    /// Devices in the wave whose opening is timed.
    pub wake_devices: u32,
    pub database_url: Option<String>,
    /// Client sockets per source address; by default as many as the ephemeral port range allows.
    pub per_address: Option<usize>,
}

/// How long each long-poll asks to be held: the longest the server accepts.
const WAIT: Duration = Duration::from_secs(60);
/// The held request; `wait` as [`WAIT`].
const HOLD: &str = "/device/v1/assignments?wait=60s";
/// Connections being opened at once: more would overflow the server's accept backlog.
const CONNECTING: usize = 128;
/// Open files this process and the server need besides one socket per device each.
const SPARE_FILES: u64 = 1_000;
/// What the `longpoll` figures are compared with (issue 12).
const GOAL_HELD: u32 = 100_000;

/// What an answer to a held long-poll means.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// The wait ran out (a 304 after it): the device asks again at once.
    Renewed,
    /// The device's wave opened: a doc assigning it the install, after the approval.
    Woken,
    /// A new doc after the approval, without the install in it.
    WokenWithoutInstall,
    /// A new doc to a bystander, or to a device of the wave before the approval.
    Spurious200,
    /// A 304 before the wait ran out: the doc had not changed, and the device was woken.
    Spurious304,
    /// Any other status.
    Refused(u16),
}

/// Judges an answer with `status` to a long-poll held for `held_for`, the server holding
/// them for `hold`. `approved`: the device is in the wave and the approval has been sent;
/// `installs`: the answer's doc assigns it the install. The server may end a wait up to a
/// tenth early (jitter that spreads the renewals) and it still counts as run out.
fn judge(status: u16, held_for: Duration, hold: Duration, approved: bool, installs: bool) -> Verdict {
    match status {
        304 if held_for >= hold.mul_f64(0.9) => Verdict::Renewed,
        304 => Verdict::Spurious304,
        200 if approved && installs => Verdict::Woken,
        200 if approved => Verdict::WokenWithoutInstall,
        200 => Verdict::Spurious200,
        other => Verdict::Refused(other),
    }
}

/// The wave whose opening is timed.
struct Wave {
    rollout_id: OnceLock<String>,
    /// When `rollout approve` was started.
    approved_at: OnceLock<Instant>,
    /// Per device of the wave: µs from the approval to its new doc, plus one (0: not yet).
    woken_us: Vec<AtomicU64>,
}

impl Wave {
    fn new(devices: usize) -> Self {
        Self {
            rollout_id: OnceLock::new(),
            approved_at: OnceLock::new(),
            woken_us: (0..devices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `body`, a signed doc, assigns the install of the timed rollout.
    fn installs(&self, body: &[u8]) -> bool {
        let Some(id) = self.rollout_id.get() else { return false };
        serde_json::from_slice::<SignedAssignments>(body)
            .is_ok_and(|doc| doc.signed.assignments.iter().any(|a| a.action == Action::Install && a.rollout_id == *id))
    }

    /// The wake times so far, in µs, sorted.
    fn latencies_us(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .woken_us
            .iter()
            .filter_map(|t| t.load(Ordering::Relaxed).checked_sub(1))
            .map(|us| u32::try_from(us).unwrap_or(u32::MAX))
            .collect();
        v.sort_unstable();
        v
    }
}

/// One group of devices holding long-polls, and what they heard, counted as it goes.
struct Watch {
    to: SocketAddr,
    host: String,
    /// How long the server holds a long-poll: [`WAIT`], or less if it offers less; `None` if it
    /// offers no long-poll.
    offered: Option<Duration>,
    hold: Duration,
    /// Devices whose long-poll has been written at least once.
    holding: AtomicU64,
    /// Devices whose connection failed, and the first error.
    lost: AtomicU64,
    first_error: Mutex<Option<String>>,
    renewed: AtomicU64,
    woken: AtomicU64,
    woken_without_install: AtomicU64,
    spurious_200: AtomicU64,
    spurious_304: AtomicU64,
    refused: AtomicU64,
    /// The smallest and largest `Wavecast-Poll-After` heard (u64::MAX and 0 before any).
    poll_after_min: AtomicU64,
    poll_after_max: AtomicU64,
    wave: Option<Wave>,
}

impl Watch {
    fn new(inst: &Installation, offered: Option<Duration>, wave: Option<Wave>) -> Self {
        Self {
            to: inst.addr,
            host: inst.addr.to_string(),
            offered,
            hold: offered.unwrap_or(WAIT),
            holding: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            first_error: Mutex::new(None),
            renewed: AtomicU64::new(0),
            woken: AtomicU64::new(0),
            woken_without_install: AtomicU64::new(0),
            spurious_200: AtomicU64::new(0),
            spurious_304: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            poll_after_min: AtomicU64::new(u64::MAX),
            poll_after_max: AtomicU64::new(0),
            wave,
        }
    }

    /// How long to wait for the server to go idle once everything it should do has been asked.
    /// A server without long-poll answers every device at once and is asked again and again:
    /// it never goes idle.
    fn settle_limit(&self) -> Duration {
        if self.offered.is_some() { Duration::from_secs(60) } else { Duration::from_secs(5) }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn lose(&self, e: &anyhow::Error) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| format!("{e:#}"));
    }

    /// Every answer of any kind.
    fn answered(&self) -> u64 {
        [&self.renewed, &self.woken, &self.woken_without_install, &self.spurious_200, &self.spurious_304, &self.refused]
            .into_iter()
            .map(Self::get)
            .sum()
    }

    fn spurious(&self) -> u64 {
        Self::get(&self.spurious_200) + Self::get(&self.spurious_304)
    }

    /// Judges and counts the answer (`head`, `body`) that device `index` got after holding
    /// its long-poll for `held_for`.
    fn hear(&self, index: usize, head: &Head, body: &[u8], held_for: Duration) -> Verdict {
        if let Some(ms) = head.poll_after_ms {
            self.poll_after_min.fetch_min(ms, Ordering::Relaxed);
            self.poll_after_max.fetch_max(ms, Ordering::Relaxed);
        }
        let approved = self.wave.as_ref().and_then(|w| w.approved_at.get());
        let installs = head.status == 200 && approved.is_some() && self.wave.as_ref().is_some_and(|w| w.installs(body));
        let verdict = judge(head.status, held_for, self.hold, approved.is_some(), installs);
        let counter = match verdict {
            Verdict::Renewed => &self.renewed,
            Verdict::Woken => &self.woken,
            Verdict::WokenWithoutInstall => &self.woken_without_install,
            Verdict::Spurious200 => &self.spurious_200,
            Verdict::Spurious304 => &self.spurious_304,
            Verdict::Refused(_) => &self.refused,
        };
        if let (Verdict::Woken, Some(at), Some(wave)) = (verdict, approved, &self.wave) {
            let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
            wave.woken_us[index].store(us + 1, Ordering::Relaxed);
        }
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    /// `Wavecast-Poll-After` as heard, for printing.
    fn poll_after(&self) -> String {
        match (Self::get(&self.poll_after_min), Self::get(&self.poll_after_max)) {
            (u64::MAX, _) => "no Wavecast-Poll-After heard".to_owned(),
            (lo, hi) if lo == hi => format!("Wavecast-Poll-After {lo} ms"),
            (lo, hi) => format!("Wavecast-Poll-After {lo}–{hi} ms"),
        }
    }

    /// Lost connections, with the first error, for printing; empty when there were none.
    fn losses(&self) -> String {
        match Self::get(&self.lost) {
            0 => String::new(),
            n => format!(
                "; {n} connections lost, the first: {}",
                self.first_error.lock().unwrap_or_else(PoisonError::into_inner).as_deref().unwrap_or("?")
            ),
        }
    }
}

/// One device holding long-polls on a connection of its own until its wave wakes it (or the
/// run ends). When a wait runs out it asks again after the delay the server suggests (up to
/// 5 s), as a device does; at once when its doc changed; after an answer that should not have
/// come, after the suggested delay within 0.1-5 s (1 s if none), so a server that holds
/// nothing is polled, not hammered.
async fn hold_long_polls(
    watch: Arc<Watch>,
    index: usize,
    from: Ipv4Addr,
    auth: HeaderValue,
    mut etag: HeaderValue,
    gate: Arc<Semaphore>,
) {
    // Held until the first long-poll is written, so only so many connections open at once.
    let mut connecting = Some(gate.acquire_owned().await);
    let mut conn = match RawConn::connect(from, watch.to).await {
        Ok(c) => c,
        Err(e) => return watch.lose(&e),
    };
    loop {
        let request =
            get_request(&watch.host, HOLD, &[("Authorization", auth.as_bytes()), ("If-None-Match", etag.as_bytes())]);
        if let Err(e) = conn.send(&request).await {
            return watch.lose(&e);
        }
        drop(request);
        let sent = Instant::now();
        if connecting.take().is_some() {
            watch.holding.fetch_add(1, Ordering::Relaxed);
        }
        let (head, body) = match conn.receive().await {
            Ok(answer) => answer,
            Err(e) => return watch.lose(&e),
        };
        let suggested = head.poll_after_ms.map(Duration::from_millis);
        let pause = match watch.hear(index, &head, &body, sent.elapsed()) {
            Verdict::Woken => return,
            // The server spreads the renewals of a fleet whose waits ran out together.
            Verdict::Renewed => suggested.unwrap_or_default().min(Duration::from_secs(5)),
            Verdict::WokenWithoutInstall | Verdict::Spurious200 => {
                if let Some(tag) = head.etag {
                    etag = tag;
                }
                Duration::ZERO
            }
            Verdict::Spurious304 | Verdict::Refused(_) => {
                suggested.unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(100), Duration::from_secs(5))
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A group of devices enrolled and checked in once: each one's credential and tag.
struct Group {
    devices: Vec<(HeaderValue, HeaderValue)>,
}

impl Group {
    /// Creates `group`, enrolls `n` devices in it and has each check in once.
    async fn enroll(inst: &Installation, tag: &str, group: &str, n: u32) -> anyhow::Result<Self> {
        let token = setup::enroll_token(inst, group)?;
        println!("{tag}: enrolling {n} devices in group {group}…");
        let enrolled = fleet::enroll(inst.addr, &token, &format!("{group}-"), n, 32).await?;
        println!("{tag}: {}", enrolled.describe());
        let (shares, mut first) = checkins::first_checkins(inst.addr, enrolled.devices, 64).await;
        println!("{tag}: first check-in of every device in {group}: {}", first.describe(200));
        let devices: Vec<_> = shares.into_iter().flatten().filter_map(|s| Some((s.auth?, s.etag?))).collect();
        ensure!(devices.len() == n as usize, "only {} of {n} devices in {group} got a doc", devices.len());
        Ok(Self { devices })
    }

    /// Has every device hold long-polls, its socket from the source addresses after the
    /// `dealt` sockets before it.
    fn hold_all(self, watch: &Arc<Watch>, dealt: &mut usize, per_addr: usize, tasks: &mut JoinSet<()>) {
        let gate = Arc::new(Semaphore::new(CONNECTING));
        for (index, (auth, etag)) in self.devices.into_iter().enumerate() {
            let from = source_addr(*dealt, per_addr);
            *dealt += 1;
            tasks.spawn(hold_long_polls(watch.clone(), index, from, auth, etag, gate.clone()));
        }
    }
}

/// Waits until each of `n` devices has written its long-poll or lost its connection, then
/// until the server is idle: every request it will hold is held.
async fn wait_held(watch: &Watch, n: u32, pid: u32, tag: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut said = Instant::now();
    while Watch::get(&watch.holding) + Watch::get(&watch.lost) < u64::from(n) {
        ensure!(started.elapsed() < Duration::from_secs(1800), "{n} long-polls were not written in 30 minutes");
        if said.elapsed() >= Duration::from_secs(10) {
            println!(
                "  … {} of {n} long-polls written after {:.0} s",
                Watch::get(&watch.holding),
                started.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limit = watch.settle_limit();
    if !setup::settle(pid, limit).await && watch.offered.is_some() {
        println!("{tag}: the server was still busy {limit:?} after the last long-poll was written");
    }
    Ok(())
}

/// Asks as a device of `group`, without a tag, what the server offers, and says it: the longest
/// wait it holds (`Wavecast-Long-Poll`), if it holds any, and its suggested poll interval.
/// Returns how long it holds a long-poll, if it does.
async fn offer(inst: &Installation, tag: &str, group: &Group) -> anyhow::Result<Option<Duration>> {
    let auth = &group.devices.first().context("a group without devices")?.0;
    let mut conn = RawConn::connect(Ipv4Addr::LOCALHOST, inst.addr).await?;
    conn.send(&get_request(&inst.addr.to_string(), ASSIGNMENTS, &[("Authorization", auth.as_bytes())])).await?;
    let (head, _) = conn.receive().await?;
    ensure!(head.status == 200, "a device's check-in was answered {}", head.status);
    let pace = head
        .poll_after_ms
        .map_or_else(|| "no Wavecast-Poll-After".to_owned(), |ms| format!("Wavecast-Poll-After {ms} ms"));
    match head.long_poll_s {
        Some(s) => println!(
            "{tag}: the server holds long-polls for up to {s} s (Wavecast-Long-Poll); a check-in is answered with {pace}"
        ),
        None => println!(
            "{tag}: NOTE the server does not offer long-poll (no Wavecast-Long-Poll header; {pace}): it answers every request at once, and the figures below show it"
        ),
    }
    Ok(head.long_poll_s.map(|s| WAIT.min(Duration::from_secs(s))))
}

/// One run: the server, and the devices holding long-polls on it so far.
struct Run {
    inst: Installation,
    tag: String,
    rss_empty: u64,
    /// Client sockets per source address, and how many have been dealt.
    per_addr: usize,
    dealt: usize,
    /// How long the server holds a long-poll (if it does), once a device has asked.
    offered: Option<Option<Duration>>,
    tasks: JoinSet<()>,
}

impl Run {
    fn pid(&self) -> u32 {
        self.inst.server_pid()
    }

    /// Enrolls `n` devices in `group` (each checks in once) and, the first time, asks what the
    /// server offers: a group and a watch for it, not yet holding.
    async fn group(
        &mut self,
        tag: &str,
        group: &str,
        n: u32,
        wave: Option<Wave>,
    ) -> anyhow::Result<(Group, Arc<Watch>)> {
        let devices = Group::enroll(&self.inst, tag, group, n).await?;
        let offered = match self.offered {
            Some(o) => o,
            None => *self.offered.insert(offer(&self.inst, tag, &devices).await?),
        };
        Ok((devices, Arc::new(Watch::new(&self.inst, offered, wave))))
    }

    /// Has every device of `group` hold long-polls, and waits until they all do.
    async fn hold(&mut self, tag: &str, group: Group, watch: &Arc<Watch>) -> anyhow::Result<()> {
        let n = u32::try_from(group.devices.len())?;
        group.hold_all(watch, &mut self.dealt, self.per_addr, &mut self.tasks);
        wait_held(watch, n, self.pid(), tag).await
    }

    /// Held requests: what `n` of them cost the server. Returns their watch, for the devices
    /// stay held as the wave's bystanders.
    async fn held(&mut self, n: u32) -> anyhow::Result<Arc<Watch>> {
        let tag = format!("{}, {n} held", self.tag);
        let (group, watch) = self.group(&tag, "held", n, None).await?;
        setup::settle(self.pid(), Duration::from_secs(30)).await;
        let rss_idle = status_kib(self.pid(), "VmRSS:");
        let me_before = status_kib(std::process::id(), "VmRSS:");
        self.hold(&tag, group, &watch).await?;
        let rss_held = status_kib(self.pid(), "VmRSS:");
        let me = status_kib(std::process::id(), "VmRSS:").saturating_sub(me_before);
        let (answered, lost) = (watch.answered(), Watch::get(&watch.lost));
        let holding = u64::from(n).saturating_sub(answered + lost);
        println!(
            "{tag}: {holding} long-polls held (GET {HOLD} with each device's tag, a connection each, from {} source address(es); {:.2} KiB each on this side); answered at once: {answered}{}",
            self.dealt.div_ceil(self.per_addr),
            me as f64 / f64::from(n),
            watch.losses()
        );
        if holding < u64::from(n) {
            println!("{tag}: NOTE not every request is held, so the memory below is not that of {n} held requests");
        }
        let above = rss_held.saturating_sub(rss_idle);
        let at_goal = if n == GOAL_HELD {
            String::new()
        } else {
            // Everything above the empty server grows with the fleet: scale it to the goal's.
            let grown = rss_held.saturating_sub(self.rss_empty) as f64 * f64::from(GOAL_HELD) / f64::from(n);
            format!("; scaled linearly to 100,000: {:.0} MiB", (self.rss_empty as f64 + grown) / 1024.0)
        };
        println!(
            "{tag}: server RSS {:.1} MiB with the long-polls held, {:.1} MiB before they connected (the fleet enrolled and checked in once), {:.1} MiB empty: {:.1} MiB for the held requests, {:.2} KiB per held request (goal ≤ 1 GiB with 100,000 held{at_goal})",
            mib(rss_held),
            mib(rss_idle),
            mib(self.rss_empty),
            mib(above),
            above as f64 / f64::from(n),
        );
        Ok(watch)
    }

    /// Wake latency: `n` devices in a gated wave, from `rollout approve` to each one's new doc.
    async fn wake(&mut self, n: u32, bystanders: u32) -> anyhow::Result<()> {
        let tag = format!("{}, wave of {n}", self.tag);
        let (group, watch) = self.group(&tag, "wave", n, Some(Wave::new(n as usize))).await?;
        let wave = watch.wave.as_ref().context("the wave")?;
        self.hold(&tag, group, &watch).await?;
        let before = watch.answered();
        let created = setup::create_rollout(&self.inst, "wave", "exec:ok", &["--waves", "100", "--gate", "1"])?;
        let _ = wave.rollout_id.set(created.id.clone());
        // Whatever the creation woke (it should wake no one: the wave is closed) has arrived.
        setup::settle(self.pid(), watch.settle_limit()).await;
        let woken_by_creation = watch.answered() - before;

        let mut approve = setup::wavecast(&self.inst.url, &self.inst.token)?;
        approve.args(["rollout", "approve", &created.id]);
        let approved_at = Instant::now();
        let _ = wave.approved_at.set(approved_at);
        tokio::task::spawn_blocking(move || setup::run_ok(&mut approve)).await??;
        let approve_took = approved_at.elapsed();
        // A wake the server missed shows as a wait run out and a 200 at once to the renewal.
        let deadline = approved_at + watch.hold + Duration::from_secs(15);
        while Watch::get(&watch.woken) + Watch::get(&watch.lost) < u64::from(n) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anyone else the approval woke has heard by now.
        setup::settle(self.pid(), watch.settle_limit()).await;

        let lat = wave.latencies_us();
        let s = |us: Option<u32>| us.map_or_else(|| "-".to_owned(), |us| format!("{:.3} s", f64::from(us) / 1e6));
        println!(
            "{tag}: a rollout to group wave, one 100% wave behind a manual gate; `wavecast rollout approve` (starting the command) to each device's new doc: first {}, p50 {}, last {} ({} of {n} woken; goal: last ≤ 2 s at 10,000 devices); the approve command took {:.3} s{}",
            s(lat.first().copied()),
            s((!lat.is_empty()).then(|| percentile(&lat, 50))),
            s(lat.last().copied()),
            lat.len(),
            approve_took.as_secs_f64(),
            if bystanders > 0 {
                format!(", with {bystanders} bystanders holding in group held")
            } else {
                String::new()
            },
        );
        let without = Watch::get(&watch.woken_without_install);
        println!(
            "{tag}: spurious wakes in the wave: {} (goal 0; {woken_by_creation} answers while the rollout was created and not approved: {} new docs, {} early 304s){}{}; {}",
            watch.spurious(),
            Watch::get(&watch.spurious_200),
            Watch::get(&watch.spurious_304),
            if without > 0 {
                format!("; {without} new docs after the approval without the install")
            } else {
                String::new()
            },
            watch.losses(),
            watch.poll_after()
        );
        Ok(())
    }
}

pub async fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let tag = format!("longpoll ({})", Installation::backend(opts.database_url.as_deref()));
    let (mut held, mut wake) = (opts.devices, opts.wake_devices);
    // A socket per device on this side and one on the server's, which inherits the limit.
    let want = u64::from(held) + u64::from(wake) + SPARE_FILES;
    let limit = setup::raise_open_files(want);
    if limit >= want {
        println!("{tag}: open-file limit {limit} (this process and the server it starts; {want} needed)");
    } else {
        let room = u32::try_from(limit.saturating_sub(SPARE_FILES)).unwrap_or(u32::MAX);
        wake = wake.min(room);
        held = held.min(room - wake);
        println!(
            "{tag}: COULD NOT raise the open-file limit to {want} (it stays {limit}; raising the hard limit takes CAP_SYS_RESOURCE, which root in a container may lack): capped at {held} devices held and {wake} in the wave"
        );
    }
    if let Some(room) = setup::conntrack_room().filter(|&r| r < u64::from(held) + u64::from(wake)) {
        println!(
            "{tag}: WARNING: the kernel's connection-tracking table has room for {room} more connections, fewer than this run opens; connections past it are dropped (raise net.netfilter.nf_conntrack_max)"
        );
    }

    let inst = setup::install(root, opts.database_url.as_deref()).await?;
    let rss_empty = status_kib(inst.server_pid(), "VmRSS:");
    let file = root.join("model.bin");
    setup::write_file(&file, 64 << 10)?;
    setup::publish(&inst, &file)?;
    let mut run = Run {
        inst,
        tag: tag.clone(),
        rss_empty,
        per_addr: opts.per_address.unwrap_or_else(setup::connections_per_source_addr).max(1),
        dealt: 0,
        offered: None,
        tasks: JoinSet::new(),
    };
    let bystanders = if held > 0 { Some(run.held(held).await?) } else { None };
    if wake > 0 {
        run.wake(wake, held).await?;
    }
    if let Some(watch) = bystanders {
        println!(
            "{tag}, {held} held: spurious wakes of the held devices over the whole run: {} (goal 0; {} new docs, {} early 304s); {} waits ran out and were renewed; {} other answers{}; {}",
            watch.spurious(),
            Watch::get(&watch.spurious_200),
            Watch::get(&watch.spurious_304),
            Watch::get(&watch.renewed),
            Watch::get(&watch.refused),
            watch.losses(),
            watch.poll_after()
        );
    }
    // The devices go before the server, so none of them counts its going as a lost connection.
    run.tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD_FOR: Duration = Duration::from_secs(60);

    fn verdict(status: u16, held_s: u64, approved: bool, installs: bool) -> Verdict {
        judge(status, Duration::from_secs(held_s), HOLD_FOR, approved, installs)
    }

    #[test]
    fn a_304_is_a_renewal_only_once_the_wait_has_run_out() {
        assert_eq!(verdict(304, 60, false, false), Verdict::Renewed);
        assert_eq!(verdict(304, 54, true, false), Verdict::Renewed, "a tenth early is still the wait running out");
        assert_eq!(verdict(304, 53, false, false), Verdict::Spurious304);
        assert_eq!(verdict(304, 0, true, false), Verdict::Spurious304);
    }

    #[test]
    fn a_new_doc_wakes_only_after_the_approval_and_only_with_the_install() {
        assert_eq!(verdict(200, 1, true, true), Verdict::Woken);
        assert_eq!(verdict(200, 1, true, false), Verdict::WokenWithoutInstall);
        assert_eq!(verdict(200, 1, false, false), Verdict::Spurious200, "a bystander, or before the approval");
        assert_eq!(verdict(200, 59, false, true), Verdict::Spurious200);
    }

    #[test]
    fn other_statuses_are_refusals() {
        assert_eq!(verdict(429, 0, false, false), Verdict::Refused(429));
        assert_eq!(verdict(503, 60, true, true), Verdict::Refused(503));
    }

    #[test]
    fn wake_times_are_sorted_and_the_unwoken_left_out() {
        let wave = Wave::new(4);
        for (i, us) in [(0, 3000), (2, 1000), (3, 2000)] {
            wave.woken_us[i].store(us + 1, Ordering::Relaxed);
        }
        assert_eq!(wave.latencies_us(), [1000, 2000, 3000]);
    }
}
