//! `checkins`: how many idle check-ins a server answers per second with a large fleet
//! registered, against a trivial axum handler under the same load generator (brief, section 8:
//! ≥ 0.5×), and what the fleet costs in server memory.
//!
//! The generator runs in this process: `connections` keep-alive connections, each cycling
//! through its share of the fleet, so every request carries another device's credential and
//! that device's last entity tag, as a device that checked in before would. (wrk would need a
//! Lua script to rotate 100,000 credentials and could not keep each device's tag.) The
//! baseline is this same program serving a trivial handler from a child process, so both
//! servers are measured across a process boundary with a runtime of their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use crate::figures::percentile;
use crate::fleet;
use crate::http::Conn;
use crate::setup::{self, Proc, mib, status_kib};

/// What `checkins` was asked to do.
pub struct Options {
    pub devices: u32,
    pub database_url: Option<String>,
    pub connections: usize,
    pub seconds: u64,
}

/// The route an idle device polls.
pub const ASSIGNMENTS: &str = "/device/v1/assignments";

/// One device as a simulated client sees it.
pub struct Slot {
    pub auth: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
}

/// How the generator runs.
#[derive(Clone, Copy)]
enum Plan {
    /// Every device once, without an entity tag: its first check-in.
    EachOnce,
    /// Round and round the fleet with each device's tag; counted after `warmup`, for `measure`.
    Timed { warmup: Duration, measure: Duration },
}

/// What one run of the generator saw in its counted window.
#[derive(Default)]
pub struct Tally {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    latencies_us: Vec<u32>,
    window: Duration,
}

impl Tally {
    fn answered(&self) -> u64 {
        self.by_status.values().sum()
    }

    fn per_second(&self) -> f64 {
        self.answered() as f64 / self.window.as_secs_f64()
    }

    fn merge(&mut self, other: Tally) {
        for (s, n) in other.by_status {
            *self.by_status.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
    }

    /// `12345/s, p50 1.23 ms, p99 4.56 ms`, and any answer other than `expected`.
    pub fn describe(&mut self, expected: u16) -> String {
        self.latencies_us.sort_unstable();
        let mut s = format!(
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            self.per_second(),
            percentile(&self.latencies_us, 50) as f64 / 1000.0,
            percentile(&self.latencies_us, 99) as f64 / 1000.0
        );
        let mut others: Vec<String> =
            self.by_status.iter().filter(|(st, _)| **st != expected).map(|(st, n)| format!("{n}× {st}")).collect();
        if self.errors > 0 {
            others.push(format!("{} failed", self.errors));
        }
        if !others.is_empty() {
            s += &format!(" (besides {expected}: {})", others.join(", "));
        }
        s
    }
}

/// Every device's first check-in, as a device that has just enrolled makes it (no entity tag:
/// a 200 with a signed doc each), over `connections` keep-alive connections: the fleet dealt
/// into shares of devices with the tag each got, and how the check-ins went.
pub async fn first_checkins(
    addr: SocketAddr,
    devices: Vec<fleet::Enrolled>,
    connections: usize,
) -> (Vec<Vec<Slot>>, Tally) {
    drive(addr, ASSIGNMENTS, deal(devices, connections), Plan::EachOnce).await
}

/// Runs the generator against `addr`: one task per share, each with its own connection.
async fn drive(addr: SocketAddr, path: &'static str, shares: Vec<Vec<Slot>>, plan: Plan) -> (Vec<Vec<Slot>>, Tally) {
    let start = Instant::now();
    let tasks: Vec<_> = shares.into_iter().map(|share| tokio::spawn(client(addr, path, share, plan, start))).collect();
    let mut shares = Vec::with_capacity(tasks.len());
    let mut total = Tally::default();
    for t in tasks {
        let Ok((share, tally)) = t.await else { continue };
        shares.push(share);
        total.merge(tally);
    }
    total.window = match plan {
        Plan::EachOnce => start.elapsed(),
        Plan::Timed { measure, .. } => measure,
    };
    (shares, total)
}

/// One simulated client: a connection cycling through its share of the fleet.
async fn client(addr: SocketAddr, path: &str, mut share: Vec<Slot>, plan: Plan, start: Instant) -> (Vec<Slot>, Tally) {
    let (from, until) = match plan {
        Plan::EachOnce => (start, None),
        Plan::Timed { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
    };
    let mut conn = Conn::new(addr);
    let mut tally = Tally::default();
    let mut k = 0usize;
    while !share.is_empty() {
        match (plan, until) {
            (Plan::EachOnce, _) if k == share.len() => break,
            (_, Some(u)) if Instant::now() >= u => break,
            _ => {}
        }
        let n = share.len();
        let slot = &mut share[k % n];
        k += 1;
        let tag = if matches!(plan, Plan::Timed { .. }) { slot.etag.as_ref() } else { None };
        let sent = Instant::now();
        let answer = conn.get(path, slot.auth.as_ref(), tag).await;
        let done = Instant::now();
        let counted = sent >= from && until.is_none_or(|u| done <= u);
        match answer {
            Ok(a) => {
                if a.status.is_success()
                    && let Some(e) = a.etag
                {
                    slot.etag = Some(e);
                }
                if counted {
                    *tally.by_status.entry(a.status.as_u16()).or_default() += 1;
                    tally.latencies_us.push(u32::try_from((done - sent).as_micros()).unwrap_or(u32::MAX));
                }
            }
            Err(_) => {
                if counted {
                    tally.errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (share, tally)
}

/// Deals `devices` out to `connections` shares, round robin.
fn deal(devices: Vec<fleet::Enrolled>, connections: usize) -> Vec<Vec<Slot>> {
    let mut shares: Vec<Vec<Slot>> = (0..connections.max(1)).map(|_| Vec::new()).collect();
    let n = shares.len();
    for (i, d) in devices.into_iter().enumerate() {
        shares[i % n].push(Slot { auth: Some(d.auth), etag: None });
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// The baseline: answers every request with a 304 and a fixed tag, as an idle check-in is
/// answered, and nothing else. Run as `wavecast-bench trivial-server` (a child process).
pub async fn serve_trivial(listen: SocketAddr) -> anyhow::Result<()> {
    async fn trivial() -> (axum::http::StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
        (axum::http::StatusCode::NOT_MODIFIED, [(axum::http::header::ETAG, "\"trivial\"")])
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {listen}");
    axum::serve(listener, axum::routing::get(trivial).into_make_service()).await?;
    Ok(())
}

/// Starts the trivial server as a child process and waits until it accepts connections.
pub async fn start_trivial() -> anyhow::Result<(Proc, SocketAddr)> {
    let addr: SocketAddr = ([127, 0, 0, 1], wavecast_test_support::free_port()).into();
    let child = Proc(
        Command::new(std::env::current_exe()?)
            .args(["trivial-server", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the trivial server did not start on {addr}")
}

pub async fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let backend = setup::Installation::backend(opts.database_url.as_deref());
    let tag = format!("checkins ({backend}, {} devices)", opts.devices);
    let inst = setup::install(root, opts.database_url.as_deref()).await?;
    let pid = inst.server_pid();
    let rss_empty = status_kib(pid, "VmRSS:");
    let token = setup::enroll_token(&inst, "fleet")?;
    println!("{tag}: enrolling…");
    let enrolled = fleet::enroll(inst.addr, &token, "dev-", opts.devices, opts.connections.min(32)).await?;
    println!("{tag}: {}", enrolled.describe());

    let (shares, mut first) = first_checkins(inst.addr, enrolled.devices, opts.connections).await;
    println!("{tag}: first check-in of every device (200, a signed doc each): {}", first.describe(200));
    let rss_enrolled = status_kib(pid, "VmRSS:");

    let timed = Plan::Timed { warmup: Duration::from_secs(1), measure: Duration::from_secs(opts.seconds) };
    let (shares, mut idle) = drive(inst.addr, ASSIGNMENTS, shares, timed).await;
    let (rss_loaded, rss_peak) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let (shares, mut healthz) = drive(inst.addr, "/healthz", shares, timed).await;
    drop(inst.server);

    let (trivial, addr) = start_trivial().await?;
    let (_, mut baseline) = drive(addr, ASSIGNMENTS, shares, timed).await;
    let rss_trivial = status_kib(trivial.0.id(), "VmHWM:");
    drop(trivial);

    let per_device = |kib: u64| kib as f64 / f64::from(opts.devices.max(1));
    println!(
        "{tag}: idle check-ins (304 with each device's tag), {} connections over {} s: {}",
        opts.connections,
        opts.seconds,
        idle.describe(304)
    );
    println!("{tag}: /healthz on the same server (reference): {}", healthz.describe(200));
    println!(
        "{tag}: baseline, a trivial axum handler (child process, peak RSS {:.1} MiB): {}",
        mib(rss_trivial),
        baseline.describe(304)
    );
    println!(
        "{tag}: ratio check-ins/baseline = {:.2}x  (target ≥ 0.50x)",
        idle.per_second() / baseline.per_second().max(f64::MIN_POSITIVE)
    );
    println!(
        "{tag}: server RSS {:.1} MiB empty, {:.1} MiB with the fleet enrolled and checked in once, {:.1} MiB after the load (peak {:.1} MiB): {:.2} KiB per registered device ({:.2} KiB above the empty server; target ≤ 2 KiB)",
        mib(rss_empty),
        mib(rss_enrolled),
        mib(rss_loaded),
        mib(rss_peak),
        per_device(rss_loaded),
        per_device(rss_loaded.saturating_sub(rss_empty)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(i: usize) -> fleet::Enrolled {
        fleet::Enrolled { id: i.to_string(), auth: HeaderValue::from_str(&format!("Bearer {i}")).unwrap() }
    }

    #[test]
    fn the_fleet_is_dealt_round_robin_and_no_share_is_empty() {
        let shares = deal((0..5).map(device).collect(), 8);
        let names: Vec<Vec<&str>> = shares
            .iter()
            .map(|s| s.iter().map(|d| d.auth.as_ref().and_then(|a| a.to_str().ok()).unwrap_or("")).collect())
            .collect();
        assert_eq!(names, [["Bearer 0"], ["Bearer 1"], ["Bearer 2"], ["Bearer 3"], ["Bearer 4"]]);
        let shares = deal((0..5).map(device).collect(), 2);
        assert_eq!(shares.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
    }
}
