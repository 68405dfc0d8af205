//! Real-process tests of the `wavecast` binary: init, server, publish, list, restart.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use wavecast_test_support::{PgDatabase, free_port, wait_until};

mod audit;
mod dashboard;
mod first_hour;
mod limits;
mod pipes;
mod publish;
mod replicas;
mod rollouts;
mod trust;
mod watch;

/// Runs `async fn NAME(database_url: Option<&str>)` as two tests, `NAME::sqlite` and
/// `NAME::postgres` (on a fresh database).
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(None).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = wavecast_test_support::PgDatabase::create().await;
                super::$name(Some(db.url())).await
            }
        }
    )*};
}

pub(crate) fn wavecast() -> Command {
    wavecast_at(None)
}

/// `wavecast`, or with `clock` (a faketime offset like `+360d`) under libfaketime, so its wall
/// clock runs that far ahead. Timers run on the real monotonic clock either way. The library is
/// preloaded directly rather than through the `faketime` wrapper, which forks: signals sent to
/// the process must reach wavecast itself.
pub(crate) fn wavecast_at(clock: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wavecast"));
    if let Some(offset) = clock {
        ensure_faketime();
        // `$LIB` is expanded by the dynamic loader to this machine's library directory.
        c.env("LD_PRELOAD", "/usr/$LIB/faketime/libfaketime.so.1")
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    c.env_remove("WAVECAST_SERVER")
        .env_remove("WAVECAST_TOKEN")
        .env_remove("WAVECAST_DATABASE_URL")
        .env_remove("WAVECAST_BLOB_STORE");
    c
}

/// Installs Debian's `faketime` when it is missing (the tests run as root in CI).
fn ensure_faketime() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let present = Command::new("faketime").arg("--version").output().is_ok_and(|o| o.status.success());
        if !present {
            let installed = Command::new("apt-get")
                .args(["install", "-y", "faketime"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(installed, "these tests need faketime: `apt-get install -y faketime` (as root)");
        }
    });
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running wavecast")
}

pub(crate) fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    log: PathBuf,
}

impl Server {
    pub(crate) async fn start(dir: &Path, database_url: Option<&str>) -> Self {
        Self::start_at(dir, database_url, None).await
    }

    /// Starts a server whose clock runs `clock` ahead (see [`wavecast_at`]).
    pub(crate) async fn start_at(dir: &Path, database_url: Option<&str>, clock: Option<&str>) -> Self {
        Self::start_with(dir, database_url, ServerOptions { clock, ..ServerOptions::default() }).await
    }

    /// Starts a server with more settings than the defaults.
    pub(crate) async fn start_with(dir: &Path, database_url: Option<&str>, options: ServerOptions<'_>) -> Self {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let port = options.port.unwrap_or_else(free_port);
        // Numbered: a server restarted on its port keeps the earlier run's log readable.
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.with_extension(format!("server-{port}-{n}.log"));
        let mut cmd = wavecast_at(options.clock);
        cmd.args(["server", "--data-dir"]).arg(dir).args(["--listen", &format!("127.0.0.1:{port}")]);
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        cmd.args(options.args).envs(options.env);

        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning wavecast server");
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/healthz");
        let up = wait_until(Duration::from_secs(30), || {
            let h = health.clone();
            async move { reqwest::get(&h).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        let server = Self { child, url, log };
        assert!(up, "server did not come up:\n{}", server.log());
        server
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the URL")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the process must exit cleanly on its own.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status} after SIGTERM:\n{}", self.log());
                assert!(self.log().contains("wavecast server stopped"), "{}", self.log());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop within 10s of SIGTERM:\n{}", self.log());
    }
}

/// What [`Server::start_with`] changes.
#[derive(Debug, Default)]
pub(crate) struct ServerOptions<'a> {
    /// A faketime offset (see [`wavecast_at`]).
    pub(crate) clock: Option<&'a str>,
    /// A port to listen on (to restart a server where its clients expect it); free otherwise.
    pub(crate) port: Option<u16>,
    /// More `wavecast server` flags.
    pub(crate) args: Vec<String>,
    /// More environment variables.
    pub(crate) env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Devices played over the device API: enrolled, then reporting exactly what a test says.
pub(crate) struct Devices {
    server: String,
    credentials: Vec<String>,
    next_report: u32,
}

impl Devices {
    /// Enrolls `names` into `group`, with `hardware`.
    pub(crate) async fn enroll(server: &Server, token: &str, group: &str, hardware: &str, names: &[&str]) -> Self {
        let minted: serde_json::Value =
            serde_json::from_str(&ok(op(server, token).args(["device", "enroll-token", "--group", group, "--json"])))
                .unwrap();
        let mut credentials = Vec::new();
        for name in names {
            let body = serde_json::json!({ "token": minted["token"], "name": name, "hardware": hardware });
            let r = reqwest::Client::new().post(format!("{}/device/v1/enroll", server.url)).json(&body).send().await;
            let enrolled: serde_json::Value = r.unwrap().json().await.unwrap();
            credentials.push(enrolled["credential"].as_str().unwrap().to_owned());
        }
        Self { server: server.url.clone(), credentials, next_report: 0 }
    }

    /// Device `i` reports `state` (with `reason`) about `rollout`.
    pub(crate) async fn report(&mut self, i: usize, rollout: &str, state: &str, reason: Option<&str>) {
        self.next_report += 1;
        let body = serde_json::json!({ "reports": [{
            "id": format!("r{}", self.next_report), "rollout_id": rollout, "artifact": "m", "version": "0",
            "state": state, "reason": reason, "at_ms": 1
        }], "active": [] });
        let r = reqwest::Client::new()
            .post(format!("{}/device/v1/reports", self.server))
            .bearer_auth(&self.credentials[i])
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
    }
}

pub(crate) fn op(server: &Server, token: &str) -> Command {
    op_at(server, token, None)
}

/// An operator command against `server` whose clock runs `clock` ahead.
pub(crate) fn op_at(server: &Server, token: &str, clock: Option<&str>) -> Command {
    op_url(&server.url, token, clock)
}

/// An operator command against the server (or balancer) at `url`.
pub(crate) fn op_url(url: &str, token: &str, clock: Option<&str>) -> Command {
    let mut c = wavecast_at(clock);
    c.env("WAVECAST_SERVER", url).env("WAVECAST_TOKEN", token);
    c
}

pub(crate) fn init(dir: &Path) -> serde_json::Value {
    let out = ok(wavecast().args(["init", "--json", "--dir"]).arg(dir));
    serde_json::from_str(&out).unwrap()
}

/// A fresh installation at `dir`, as `wavecast init --json` reports it.
pub(crate) struct Installation {
    /// The report.
    pub(crate) report: serde_json::Value,
    /// The admin API token.
    pub(crate) token: String,
    /// The publisher key file.
    pub(crate) key: String,
}

pub(crate) fn installation(dir: &Path) -> Installation {
    let report = init(dir);
    let token = std::fs::read_to_string(report["admin_token_file"].as_str().unwrap()).unwrap().trim().to_owned();
    let key = report["publisher_key"].as_str().unwrap().to_owned();
    Installation { report, token, key }
}

#[test]
fn init_writes_an_installation_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let report = init(&dir);
    for key in ["root_json", "publisher_key", "admin_token_file", "data_dir"] {
        let p = PathBuf::from(report[key].as_str().unwrap_or_else(|| panic!("init --json lacks {key}")));
        assert!(p.exists(), "{key}: {p:?}");
    }
    for secret in ["publisher_key", "admin_token_file"] {
        let mode = std::fs::metadata(report[secret].as_str().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret}");
    }
    let root = std::fs::read(report["root_json"].as_str().unwrap()).unwrap();
    let again = run(wavecast().args(["init", "--dir"]).arg(&dir));
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("refusing to overwrite") && err.contains("holds a wavecast installation"), "{err}");
    assert_eq!(
        std::fs::read(report["root_json"].as_str().unwrap()).unwrap(),
        root,
        "init must not touch an installation"
    );

    let human = ok(wavecast().args(["init", "--dir"]).arg(tmp.path().join("second")));
    assert!(human.contains("Move these offline"), "{human}");
}

async fn publish_list_range_restart(database_url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let report = init(&dir);
    let token = std::fs::read_to_string(report["admin_token_file"].as_str().unwrap()).unwrap().trim().to_owned();
    let key = report["publisher_key"].as_str().unwrap().to_owned();

    // 50 MiB that are not all alike.
    let model = tmp.path().join("model.onnx");
    let mut bytes = vec![0u8; 50 << 20];
    for (i, chunk) in bytes.chunks_mut(32).enumerate() {
        let d = *wavecast_core::Sha256Digest::of(&(i as u64).to_le_bytes()).as_bytes();
        chunk.copy_from_slice(&d[..chunk.len()]);
    }
    std::fs::write(&model, &bytes).unwrap();
    let sha = wavecast_core::Sha256Digest::of(&bytes).to_hex();

    let server = Server::start(&dir, database_url).await;
    ok(op(&server, &token)
        .args([
            "artifact",
            "publish",
            "--name",
            "yolo-v8n",
            "--version",
            "2.1.0",
            "--hardware",
            "jetson-orin-nano",
            "--key",
            &key,
            "--file",
        ])
        .arg(&model));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(op(&server, &token).args(["artifact", "list", "--json"]))).unwrap();
    assert_eq!(listed[0]["name"], "yolo-v8n");
    assert_eq!(listed[0]["version"], "2.1.0");
    assert_eq!(listed[0]["sha256"], sha);
    assert_eq!(listed[0]["length"], bytes.len());
    assert_eq!(listed[0]["hardware"], "jetson-orin-nano");

    let http = reqwest::Client::new();
    let blob = format!("{}/api/v1/blobs/{sha}", server.url);
    let (lo, hi) = (10_000_000usize, 30_000_000usize);
    let resp =
        http.get(&blob).bearer_auth(&token).header("range", format!("bytes={lo}-{}", hi - 1)).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    let got = resp.bytes().await.unwrap();
    assert!(got[..] == bytes[lo..hi], "range bytes differ");

    // Same name@version with other bytes is refused, and says why.
    let other = tmp.path().join("other.onnx");
    std::fs::write(&other, b"something else").unwrap();
    let refused = run(op(&server, &token)
        .args(["artifact", "publish", "--name", "yolo-v8n", "--version", "2.1.0", "--key", &key, "--file"])
        .arg(&other));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already published with different content"));

    ok(op(&server, &token).args(["group", "create", "plant-7"]));
    let minted: serde_json::Value =
        serde_json::from_str(&ok(op(&server, &token).args(["device", "enroll-token", "--group", "plant-7", "--json"])))
            .unwrap();
    let enroll = http
        .post(format!("{}/device/v1/enroll", server.url))
        .json(&serde_json::json!({ "token": minted["token"], "name": "cam-001", "hardware": "jetson-orin-nano" }))
        .send()
        .await
        .unwrap();
    assert_eq!(enroll.status(), reqwest::StatusCode::CREATED);

    let before = (
        ok(op(&server, &token).args(["artifact", "list", "--json"])),
        ok(op(&server, &token).args(["group", "list", "--json"])),
        ok(op(&server, &token).args(["device", "list", "--json"])),
        ok(op(&server, &token).args(["audit", "list", "--json"])),
    );
    server.stop();

    let server = Server::start(&dir, database_url).await;
    let after = (
        ok(op(&server, &token).args(["artifact", "list", "--json"])),
        ok(op(&server, &token).args(["group", "list", "--json"])),
        ok(op(&server, &token).args(["device", "list", "--json"])),
        ok(op(&server, &token).args(["audit", "list", "--json"])),
    );
    assert_eq!(before, after, "a restart lost something");
    let show: serde_json::Value =
        serde_json::from_str(&ok(op(&server, &token).args(["device", "show", "cam-001", "--json"]))).unwrap();
    assert_eq!(show["group"], "plant-7");
    let blob = format!("{}/api/v1/blobs/{sha}", server.url);
    let resp = http.get(&blob).bearer_auth(&token).send().await.unwrap();
    assert_eq!(wavecast_core::Sha256Digest::of(&resp.bytes().await.unwrap()).to_hex(), sha);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_list_range_restart_sqlite() {
    publish_list_range_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_list_range_restart_postgres() {
    let db = PgDatabase::create().await;
    publish_list_range_restart(Some(db.url())).await;
}

#[test]
fn errors_are_clear_and_exit_1() {
    let no_server = run(wavecast().args(["artifact", "list", "--server", "http://127.0.0.1:9", "--token", "wct_x"]));
    assert_eq!(no_server.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_server.stderr).contains("cannot reach the wavecast server"));
    let no_token = run(wavecast().args(["group", "list"]));
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no API token"));
    let not_installed = run(wavecast().args(["server", "--data-dir", "/nonexistent-wavecast"]));
    assert_eq!(not_installed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_installed.stderr).contains("is not a wavecast installation"));
    let bad_url = run(wavecast().args(["server", "--data-dir", "/tmp", "--database-url", "mysql://x"]));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("must start with postgres://"));
    let usage = run(wavecast().args(["artifact", "publish"]));
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn demo_tells_the_story() {
    let out = run(wavecast().arg("demo"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The story's milestones, in the order the seed tells it.
    let mut from = 0;
    for needle in [
        "wavecast init",
        "artifact publish",
        "devices enrolled",
        "waiting_approval",
        "rollout approve",
        "rolls back by itself",
        "paused",
        "resume --ack",
        "completed",
        "artifact publish --golden",
        "model check on the publisher's machine passed",
        "model check unhealthy",
        "drift",
        "rollout abort --keep",
        "rollout.paused",
        "audit verify (live): all",
        "Done in",
    ] {
        let at = stdout[from..].find(needle).map(|i| i + from);
        assert!(at.is_some(), "demo output lacks {needle:?} after byte {from}:\n{stdout}");
        from = at.unwrap_or(from);
    }
    for needle in ["1 failed", "unreachable"] {
        assert!(stdout.contains(needle), "demo output lacks {needle:?}:\n{stdout}");
    }
}
