//! Health probes: exec (allowlisted binaries only, no shell), HTTP GET to a listed host, and
//! a listed readiness file.
//!
//! The device owner decides what a probe may touch, in agent.toml: `[probes]` names the
//! binaries, `[readiness_files]` the files, `[http_probes] hosts` the hosts (loopback by
//! default). A rollout's probe names an entry ([`resolve`] finds it, or says why not); a name or
//! host that is not listed is refused before anything runs, any file is touched or any
//! connection is made.
//!
//! "Could not run" — a name missing from a list, a binary that cannot be started — is its own
//! outcome, distinct from a probe that ran and said unhealthy. Both lead to rollback; the
//! distinction is for the operator reading the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt as _;
use wavecast_core::probe::{MAX_PROBE_RESULT, ProbeKind, ProbeSpec};

/// The hosts an HTTP probe may ask when agent.toml lists none: this device only.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What this device lets a rollout's probe use; read from agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    /// Exec probes: name → absolute path of the binary (`[probes]`).
    pub exec: BTreeMap<String, PathBuf>,
    /// File probes: name → absolute path of the readiness file (`[readiness_files]`). The
    /// agent removes a listed file before each swap, so only the owner decides what it removes.
    pub readiness_files: BTreeMap<String, PathBuf>,
    /// The hosts HTTP probes may ask, redirects included (`[http_probes] hosts`).
    pub http_hosts: HttpHosts,
}

/// The hosts HTTP probes may ask: domain names and IP addresses, compared with a URL's host
/// after the URL parser has normalised it (lower case, IP literals in their canonical form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHosts(Vec<url::Host>);

/// A host entry that is neither a domain name nor an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host name or IP address (no scheme, port or path)")]
pub struct BadHost(String);

impl HttpHosts {
    /// Parses host names and IP addresses (`::1` and `[::1]` alike).
    pub fn parse<S: AsRef<str>>(hosts: &[S]) -> Result<Self, BadHost> {
        let mut out = Vec::new();
        for h in hosts {
            let h = h.as_ref();
            let bare = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
            let host = match bare.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => url::Host::Ipv4(ip),
                Ok(std::net::IpAddr::V6(ip)) => url::Host::Ipv6(ip),
                Err(_) => match url::Host::parse(h) {
                    Ok(host @ url::Host::Domain(_)) if !h.is_empty() => host,
                    _ => return Err(BadHost(h.to_owned())),
                },
            };
            out.push(host);
        }
        Ok(Self(out))
    }

    /// `localhost`, `127.0.0.1` and `::1`.
    pub fn loopback() -> Self {
        Self::parse(&LOOPBACK_HOSTS).unwrap_or(Self(Vec::new()))
    }

    /// Whether `url` names a listed host.
    pub fn allows(&self, url: &url::Url) -> bool {
        url.host().is_some_and(|h| self.0.iter().any(|l| *l == h.to_owned()))
    }
}

/// A probe resolved against the device's lists: what exactly it will run, ask or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// Run `binary` (the allowlist's entry `name`) with `args`.
    Exec {
        /// The allowlist key.
        name: &'a str,
        /// Its binary.
        binary: &'a Path,
        /// Arguments before the artifact path.
        args: &'a [String],
    },
    /// GET `url`, whose host is listed.
    Http {
        /// The URL.
        url: url::Url,
    },
    /// Wait for the readiness file the device lists as `name`.
    File {
        /// The list's key.
        name: &'a str,
        /// Its path.
        path: &'a Path,
    },
}

/// Finds what `kind` names on the device's lists, touching nothing: the reason when it names
/// something the device does not list.
pub fn resolve<'a>(kind: &'a ProbeKind, allow: &'a Allowlist) -> Result<Resolved<'a>, String> {
    match kind {
        ProbeKind::Exec { name, args } => match allow.exec.get(name) {
            Some(binary) => Ok(Resolved::Exec { name, binary, args }),
            None => Err(format!(
                "probe exec:{name} is not on this device's allowlist ([probes] in agent.toml); nothing was run"
            )),
        },
        ProbeKind::File { name } => match allow.readiness_files.get(name) {
            Some(path) => Ok(Resolved::File { name, path }),
            None => Err(format!(
                "probe file:{name} is not on this device's list of readiness files ([readiness_files] in agent.toml); \
                 no file was touched"
            )),
        },
        ProbeKind::Http { url: text } => {
            let url = url::Url::parse(text)
                .map_err(|e| format!("probe URL {text:?} is not a URL: {e}; nothing was requested"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("probe URL {url} is not http(s); nothing was requested"));
            }
            if !allow.http_hosts.allows(&url) {
                return Err(format!(
                    "probe {url} asks host {}, which is not on this device's list ([http_probes] hosts in agent.toml; \
                     this device only by default); nothing was requested",
                    url.host_str().unwrap_or_default()
                ));
            }
            Ok(Resolved::Http { url })
        }
    }
}

/// The HTTP client's redirect rule for probes: follow (at most five) only to listed hosts, so a
/// listed application cannot send the device anywhere else.
pub fn redirect_policy(hosts: HttpHosts) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("more than 5 redirects")
        } else if hosts.allows(attempt.url()) {
            attempt.follow()
        } else {
            let host = attempt.url().host_str().unwrap_or_default().to_owned();
            attempt.error(format!(
                "a redirect to host {host}, which is not on this device's list ([http_probes] hosts in agent.toml); not followed"
            ))
        }
    })
}

/// What a probe found, and what its last attempt printed (see [`Probed::result`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The verdict.
    pub outcome: ProbeOutcome,
    /// The last exec attempt's stdout when it was one JSON object of at most
    /// [`MAX_PROBE_RESULT`] bytes (a model check's report); `None` otherwise.
    pub result: Option<serde_json::Value>,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// An attempt passed.
    Healthy,
    /// Every attempt ran and failed; the last reason.
    Unhealthy(String),
    /// The probe could not be run at all.
    CouldNotRun(String),
}

/// What a probe checks: the artifact's path, and the environment an exec probe gets beside
/// `WAVECAST_ARTIFACT_PATH` (the golden set and the previous version, for a model check).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The active artifact.
    pub artifact: &'a Path,
    /// More variables for an exec probe, each naming a file.
    pub env: &'a [(&'static str, PathBuf)],
}

/// Runs `spec` against `target`. `swapped_at` is when the new file went in (a readiness file
/// must be newer). `http` is the probes' client (with [`redirect_policy`]). `on_attempt` runs
/// before each attempt (a test hook).
pub async fn run(
    spec: &ProbeSpec,
    allow: &Allowlist,
    target: Target<'_>,
    swapped_at: SystemTime,
    http: &reqwest::Client,
    mut on_attempt: impl FnMut(),
) -> Probed {
    // Resolved before waiting: what the device does not list is refused at once, untouched.
    let probe = match resolve(&spec.kind, allow) {
        Ok(p) => p,
        Err(reason) => return Probed { outcome: ProbeOutcome::CouldNotRun(reason), result: None },
    };
    tokio::time::sleep(Duration::from_millis(spec.initial_delay_ms)).await;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let mut last = String::new();
    let mut result = None;
    for attempt in 1..=spec.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(spec.interval_ms)).await;
        }
        on_attempt();
        let verdict = match &probe {
            Resolved::Exec { name, binary, args } => {
                let (verdict, printed) = exec(binary, name, args, target, timeout).await;
                result = printed;
                verdict
            }
            Resolved::Http { url } => get(http, url, timeout).await,
            Resolved::File { path, .. } => readiness(path, swapped_at, timeout).await,
        };
        match verdict {
            Ok(()) => return Probed { outcome: ProbeOutcome::Healthy, result },
            Err(Attempt::CouldNotRun(reason)) => return Probed { outcome: ProbeOutcome::CouldNotRun(reason), result },
            Err(Attempt::Unhealthy(reason)) => last = format!("attempt {attempt}/{}: {reason}", spec.attempts),
        }
    }
    Probed { outcome: ProbeOutcome::Unhealthy(last), result }
}

enum Attempt {
    Unhealthy(String),
    CouldNotRun(String),
}

async fn exec(
    binary: &Path,
    name: &str,
    args: &[String],
    target: Target<'_>,
    timeout: Duration,
) -> (Result<(), Attempt>, Option<serde_json::Value>) {
    let spawned = tokio::process::Command::new(binary)
        .args(args)
        .arg(target.artifact)
        .env("WAVECAST_ARTIFACT_PATH", target.artifact)
        // Only what this install sets, never a value the agent itself was started with.
        .env_remove("WAVECAST_GOLDEN_PATH")
        .env_remove("WAVECAST_PREVIOUS_PATH")
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let why = format!("probe exec:{name} ({}) could not be started: {e}", binary.display());
            return (Err(Attempt::CouldNotRun(why)), None);
        }
    };
    // Both pipes are read while the probe runs, so a chatty probe never blocks on a full pipe;
    // only the start of stdout (a result) and the end of stderr (the reason) are kept.
    let stdout = child.stdout.take().map(|out| tokio::spawn(keep(out, Keep::Head(MAX_PROBE_RESULT + 1))));
    let stderr = child.stderr.take().map(|err| tokio::spawn(keep(err, Keep::Tail(STDERR_KEPT))));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return (Err(Attempt::CouldNotRun(format!("waiting for probe exec:{name}: {e}"))), None),
        Err(_) => {
            let _ = child.kill().await;
            let why = format!("exec:{name} did not finish within {} ms and was killed", timeout.as_millis());
            return (Err(Attempt::Unhealthy(why)), None);
        }
    };
    let result = json_object(&collect(stdout).await);
    if status.success() {
        return (Ok(()), result);
    }
    let buf = collect(stderr).await;
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    let start = text.len().saturating_sub(200);
    let tail = text.get(start..).unwrap_or(text).replace('\n', " ");
    let code = status.code().map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
    let why = if tail.is_empty() {
        format!("exec:{name} exited with {code}")
    } else {
        format!("exec:{name} exited with {code}: {tail}")
    };
    (Err(Attempt::Unhealthy(why)), result)
}

/// How much of stderr is read back for a failure's reason (its last 200 characters are used).
const STDERR_KEPT: usize = 4096;

/// Which bytes of a pipe to keep.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// The first n.
    Head(usize),
    /// The last n.
    Tail(usize),
}

/// Reads `pipe` to its end, keeping what `which` says and dropping the rest.
async fn keep(mut pipe: impl tokio::io::AsyncRead + Unpin, which: Keep) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => n,
        };
        match which {
            Keep::Head(limit) => kept.extend_from_slice(&buf[..n.min(limit.saturating_sub(kept.len()))]),
            Keep::Tail(limit) => {
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(limit);
                kept.drain(..excess);
            }
        }
    }
}

/// What a reader kept, waiting at most 200 ms after the probe exited (a child it left behind
/// may hold the pipe open).
async fn collect(reader: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut reader) = reader else { return Vec::new() };
    match tokio::time::timeout(Duration::from_millis(200), &mut reader).await {
        Ok(Ok(kept)) => kept,
        _ => {
            reader.abort();
            Vec::new()
        }
    }
}

/// `bytes` as a JSON object when they are exactly one of at most [`MAX_PROBE_RESULT`] bytes.
fn json_object(bytes: &[u8]) -> Option<serde_json::Value> {
    if bytes.len() > MAX_PROBE_RESULT {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).ok().filter(serde_json::Value::is_object)
}

async fn get(http: &reqwest::Client, url: &url::Url, timeout: Duration) -> Result<(), Attempt> {
    match tokio::time::timeout(timeout, http.get(url.clone()).send()).await {
        Err(_) => Err(Attempt::Unhealthy(format!("GET {url} did not answer within {} ms", timeout.as_millis()))),
        Ok(Err(e)) => Err(Attempt::Unhealthy(format!("GET {url} failed: {}", wavecast_os::error::chain(&e)))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(Attempt::Unhealthy(format!("GET {url} answered {}", resp.status()))),
    }
}

async fn readiness(path: &Path, since: SystemTime, timeout: Duration) -> Result<(), Attempt> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // The agent removed any stale readiness file before the swap, so one that exists now
        // was written for the new version; the modification time is a second guard.
        if let Ok(meta) = std::fs::metadata(path) {
            let slack = Duration::from_secs(2);
            if meta.modified().is_ok_and(|m| m + slack >= since) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Attempt::Unhealthy(format!(
                "readiness file {} was not written within {} ms of the swap",
                path.display(),
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sh -c SCRIPT` as an exec probe.
    async fn run_sh(script: &str) -> (Result<(), Attempt>, Option<serde_json::Value>) {
        let args = ["-c".to_owned(), script.to_owned(), "probe".to_owned()];
        let target = Target { artifact: Path::new("/dev/null"), env: &[] };
        exec(Path::new("/bin/sh"), "sh", &args, target, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn an_exec_probes_json_is_its_result_and_a_flood_neither_blocks_nor_counts() {
        let (verdict, result) = run_sh(r#"printf '{"outcome":"healthy","cases":8}\n'"#).await;
        assert!(verdict.is_ok());
        assert_eq!(result, Some(serde_json::json!({"outcome": "healthy", "cases": 8})));
        // Failing, with a result on stdout and the reason on stderr.
        let (verdict, result) = run_sh(r#"printf '{"outcome":"unhealthy"}'; echo 'off by 0.05' >&2; exit 1"#).await;
        assert!(matches!(verdict, Err(Attempt::Unhealthy(r)) if r.ends_with("exited with status 1: off by 0.05")));
        assert_eq!(result, Some(serde_json::json!({"outcome": "unhealthy"})));
        // Megabytes on both pipes (more than a pipe holds): read while it runs, so the probe
        // finishes; too long to be a result; the reason is stderr's tail.
        let flood =
            "head -c 3000000 /dev/zero | tr '\\0' x; head -c 3000000 /dev/zero | tr '\\0' y >&2; echo end >&2; exit 2";
        let (verdict, result) = run_sh(flood).await;
        assert!(matches!(verdict, Err(Attempt::Unhealthy(r)) if r.ends_with("yyyyend")), "finished, not blocked");
        assert_eq!(result, None);
        // Plain text, or JSON that is not an object, is no result.
        for text in ["echo ok", "echo 42", "echo '[1,2]'"] {
            assert_eq!(run_sh(text).await.1, None, "{text}");
        }
    }

    fn allow() -> Allowlist {
        Allowlist {
            exec: [("check".to_owned(), PathBuf::from("/usr/bin/check"))].into(),
            readiness_files: [("model-ready".to_owned(), PathBuf::from("/run/app/ready"))].into(),
            http_hosts: HttpHosts::loopback(),
        }
    }

    #[test]
    fn probes_resolve_only_to_what_the_device_lists() {
        let allow = allow();
        let exec = |n: &str| ProbeKind::Exec { name: n.into(), args: vec!["-q".into()] };
        let file = |n: &str| ProbeKind::File { name: n.into() };
        let http = |u: &str| ProbeKind::Http { url: u.into() };
        let url = |u: &str| Resolved::Http { url: url::Url::parse(u).unwrap() };
        let args = ["-q".to_owned()];
        // (probe, what it resolves to, or words of the refusal)
        let cases: Vec<(ProbeKind, Result<Resolved, &str>)> = vec![
            (exec("check"), Ok(Resolved::Exec { name: "check", binary: Path::new("/usr/bin/check"), args: &args })),
            (exec("rm"), Err("not on this device's allowlist")),
            (file("model-ready"), Ok(Resolved::File { name: "model-ready", path: Path::new("/run/app/ready") })),
            (file("other"), Err("not on this device's list of readiness files")),
            // A hostile server naming a path directly: a name no device lists.
            (file("/run/app/ready"), Err("no file was touched")),
            (http("http://127.0.0.1:8080/healthz"), Ok(url("http://127.0.0.1:8080/healthz"))),
            (http("http://localhost/ready"), Ok(url("http://localhost/ready"))),
            (http("http://LOCALHOST/ready"), Ok(url("http://localhost/ready"))),
            (http("https://[::1]:8443/ready"), Ok(url("https://[::1]:8443/ready"))),
            // The same address written otherwise is the same host.
            (http("http://2130706433/"), Ok(url("http://127.0.0.1/"))),
            (http("http://127.0.0.2/"), Err("asks host 127.0.0.2, which is not on this device's list")),
            (http("http://10.0.0.1/admin"), Err("nothing was requested")),
            (http("http://localhost.example.com/"), Err("not on this device's list")),
            (http("http://127.0.0.1@example.com/"), Err("asks host example.com")),
            (http("ftp://127.0.0.1/"), Err("is not http(s)")),
            (http("not a url"), Err("is not a URL")),
        ];
        for (kind, want) in cases {
            match (resolve(&kind, &allow), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{kind}"),
                (Err(got), Err(words)) => assert!(got.contains(words), "{kind}: {got}"),
                (got, want) => panic!("{kind}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn listed_hosts_are_names_or_addresses() {
        let hosts = HttpHosts::parse(&["infer.local", "192.168.1.20", "[fe80::1]", "::2"]).unwrap();
        for (u, allowed) in [
            ("http://INFER.local:81/", true),
            ("http://192.168.1.20/", true),
            ("http://[fe80::1]/", true),
            ("http://[::2]/", true),
            ("http://127.0.0.1/", false),
            ("http://infer.local.evil/", false),
        ] {
            assert_eq!(hosts.allows(&url::Url::parse(u).unwrap()), allowed, "{u}");
        }
        for bad in ["", "host:80", "http://host", "a/b", "[::1"] {
            assert!(HttpHosts::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(HttpHosts::parse::<&str>(&[]).unwrap(), HttpHosts(Vec::new()), "an empty list allows no host");
    }
}
