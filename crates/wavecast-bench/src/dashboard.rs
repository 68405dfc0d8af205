//! `dashboard`: what the dashboard's pages cost the server with a large group, against the
//! trivial axum handler on the same connection type (the baseline), so a page that started to
//! read the whole fleet shows up as a ratio, not as a guess.
//!
//! One signed-in browser session asks for each page over one keep-alive connection, one
//! request at a time (an operator's browser, not a load test): the rollout's page at its first
//! and its middle page of devices and filtered by state, the rollouts list, the devices page
//! at its first page and deep into the fleet, and the audit trail. The figure is the time to a
//! whole answer on loopback, p50 and p99 over `requests` requests after a few to warm up.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use hyper::Method;
use hyper::header::{self, HeaderValue};

use crate::figures::percentile;
use crate::fleet;
use crate::http::Conn;
use crate::setup::{self, write_file};

/// What `dashboard` was asked to do.
pub struct Options {
    pub devices: u32,
    pub database_url: Option<String>,
    pub requests: u32,
}

/// Requests before the counted ones.
const WARMUP: u32 = 5;

/// p50 and p99 of `requests` sequential GETs of `path` (after [`WARMUP`]), in microseconds, and
/// the page's size; fails on any answer but 200.
async fn time_page(
    conn: &mut Conn,
    path: &str,
    headers: &[(header::HeaderName, HeaderValue)],
    requests: u32,
) -> anyhow::Result<(u32, u32, usize)> {
    let mut latencies = Vec::with_capacity(requests as usize);
    let mut size = 0;
    for i in 0..WARMUP + requests {
        let sent = Instant::now();
        let a = conn.request(Method::GET, path, headers, Bytes::new()).await?;
        let took = sent.elapsed();
        anyhow::ensure!(a.status.is_success(), "GET {path}: {} {}", a.status, String::from_utf8_lossy(&a.body));
        if i >= WARMUP {
            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
        size = a.body.len();
    }
    latencies.sort_unstable();
    Ok((percentile(&latencies, 50), percentile(&latencies, 99), size))
}

pub async fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let backend = setup::Installation::backend(opts.database_url.as_deref());
    let tag = format!("dashboard ({backend}, {} devices in one group)", opts.devices);
    let inst = setup::install(root, opts.database_url.as_deref()).await?;
    let token = setup::enroll_token(&inst, "fleet")?;
    println!("{tag}: enrolling…");
    let enrolled = fleet::enroll(inst.addr, &token, "dev-", opts.devices, 32).await?;
    println!("{tag}: {}", enrolled.describe());
    let file = root.join("model.bin");
    write_file(&file, 1024 * 1024)?;
    setup::publish(&inst, &file)?;
    // Every device of the group gets a row in the rollout; the first wave opens at once.
    let rollout = setup::create_rollout(&inst, "fleet", "exec:check", &["--waves", "1,10,50,100"])?;

    let mut conn = Conn::new(inst.addr);
    let form = format!("token={}&next=%2Fui%2Frollouts", inst.token);
    let signed_in = conn
        .request(
            Method::POST,
            "/ui/sign-in",
            &[(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"))],
            Bytes::from(form),
        )
        .await?;
    let cookie = signed_in
        .set_cookie
        .as_ref()
        .and_then(|c| c.to_str().ok()?.split(';').next().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("signing in to the dashboard set no cookie: {}", signed_in.status))?;
    let headers = [(header::COOKIE, HeaderValue::from_str(&cookie)?)];

    let id = &rollout.id;
    let middle = u64::from(opts.devices).div_ceil(2 * 50).max(1);
    let pages = [
        format!("/ui/rollouts/{id}"),
        format!("/ui/rollouts/{id}?page={middle}"),
        format!("/ui/rollouts/{id}?state=assigned"),
        "/ui/rollouts".to_owned(),
        "/ui/devices".to_owned(),
        format!("/ui/devices?after=dev-{:06}", opts.devices / 2),
        "/ui/audit".to_owned(),
    ];
    let mut timed = Vec::new();
    for path in &pages {
        timed.push(("", path, time_page(&mut conn, path, &headers, opts.requests).await?));
    }
    // Right after a bulk insert PostgreSQL's planner still believes the tables nearly empty and
    // may read a rollout's every row to sort a page; autovacuum's ANALYZE corrects that within
    // about a minute. Both are figures: the first is what an operator sees at once.
    if let Some(url) = &opts.database_url {
        use sqlx::Connection as _;
        let mut db = sqlx::PgConnection::connect(url).await?;
        sqlx::query("ANALYZE").execute(&mut db).await?;
        db.close().await?;
        for path in &pages {
            timed.push((" (after ANALYZE)", path, time_page(&mut conn, path, &headers, opts.requests).await?));
        }
    }
    drop(inst.server);

    let (trivial, addr) = crate::checkins::start_trivial().await?;
    let mut baseline_conn = Conn::new(addr);
    let mut latencies = Vec::new();
    for i in 0..WARMUP + opts.requests {
        let sent = Instant::now();
        baseline_conn.get("/", None, None).await?;
        if i >= WARMUP {
            latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    drop(trivial);
    latencies.sort_unstable();
    let baseline = percentile(&latencies, 50).max(1);
    let ms = |us: u32| f64::from(us) / 1000.0;
    println!("{tag}: baseline, a trivial axum handler on the same kind of connection: p50 {:.2} ms", ms(baseline));
    for (when, path, (p50, p99, size)) in timed {
        println!(
            "{tag}: GET {path}{when}: p50 {:.2} ms, p99 {:.2} ms, {:.1} KiB; {:.1}x the baseline (target: a few tens of ms)",
            ms(p50),
            ms(p99),
            size as f64 / 1024.0,
            f64::from(p50) / f64::from(baseline)
        );
    }
    Ok(())
}
