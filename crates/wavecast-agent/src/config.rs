//! `agent.toml`: read once, checked once, and carried as a typed [`AgentConfig`].
//!
//! Every problem is reported as one error naming the key and what is wrong with it, so a
//! device that will not start says why in one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wavecast_core::duration::parse_duration;
use wavecast_core::secret::{Secret, SecretKind};
use wavecast_core::{ArtifactName, DeviceName};

use crate::probe::{Allowlist, HttpHosts};

/// Errors reading `agent.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// A key's value is not acceptable.
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, like `artifacts[0].path`.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A key's value does not parse as what it names (a name, a duration, a token).
    #[error("{path}: `{key}`")]
    Unparsable {
        /// The file.
        path: PathBuf,
        /// The key, like `artifacts[0].name`.
        key: String,
        /// What the parser said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: String,
    state_dir: PathBuf,
    trust_root: PathBuf,
    enrollment_token: Option<String>,
    device_name: String,
    hardware: String,
    #[serde(default = "default_poll")]
    poll_interval: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default)]
    download: RawDownload,
    #[serde(default)]
    artifacts: Vec<RawArtifact>,
    #[serde(default)]
    probes: BTreeMap<String, PathBuf>,
    #[serde(default)]
    readiness_files: BTreeMap<String, PathBuf>,
    #[serde(default)]
    http_probes: RawHttpProbes,
    max_assignment_bytes: Option<u64>,
    #[serde(default)]
    artifact_dirs_writable_by_others: SharedDirs,
}

fn default_poll() -> String {
    "30s".to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownload {
    min_bytes_per_sec: Option<u64>,
    stall_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpProbes {
    hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: String,
    path: PathBuf,
}

/// One artifact the agent manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactConfig {
    /// The artifact's name on the server.
    pub name: ArtifactName,
    /// The file the application reads.
    pub path: PathBuf,
}

/// Download speed guard: abort when slower than `min_bytes_per_sec` over `stall_timeout`.
/// `stall_timeout` also bounds every other wait on the network: for response headers, and for
/// the next bytes of any body (a timer on silence, never on a whole download's duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadPolicy {
    /// The floor.
    pub min_bytes_per_sec: u64,
    /// The window over which the floor applies, and the longest silence tolerated.
    pub stall_timeout: Duration,
}

/// The default cap on an assignment doc: a doc names a few artifacts per device, so a
/// megabyte is generous, and a server sending more is broken or hostile.
pub const DEFAULT_MAX_ASSIGNMENT_BYTES: u64 = 1 << 20;

/// Whether the agent writes into an artifact directory that users other than its own can write
/// to. Its partial, staging and previous-version files have predictable names there, so another
/// user could plant links at them; the agent opens them without following links either way, and
/// by default does not write there at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharedDirs {
    /// Refuse such a directory (the default): the install waits, naming the directory.
    #[default]
    Refuse,
    /// Write there anyway, because agent.toml says so explicitly.
    Allow,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self { min_bytes_per_sec: 1024, stall_timeout: Duration::from_secs(60) }
    }
}

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane's base URL.
    pub server: url::Url,
    /// Where the agent keeps its journal, outbox, credential and TUF metadata.
    pub state_dir: PathBuf,
    /// The pinned root.json, as bytes.
    pub trust_root: Vec<u8>,
    /// Its path, for messages.
    pub trust_root_path: PathBuf,
    /// Used once, to enroll.
    pub enrollment_token: Option<Secret>,
    /// This device's name.
    pub device_name: DeviceName,
    /// This device's hardware.
    pub hardware: String,
    /// Time between check-ins (jittered by ±20%).
    pub poll_interval: Duration,
    /// A CA bundle to trust for an https server, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// This device's client certificate and key (PEM), for servers that require mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Download speed guard, and the longest network silence tolerated.
    pub download: DownloadPolicy,
    /// The largest assignment doc read from the server (`max_assignment_bytes`, default 1 MiB).
    pub max_assignment_bytes: u64,
    /// Whether artifact directories writable by other users are written to
    /// (`artifact_dirs_writable_by_others = "refuse" | "allow"`, default `"refuse"`).
    pub shared_dirs: SharedDirs,
    /// The artifacts this device runs.
    pub artifacts: Vec<ArtifactConfig>,
    /// What a rollout's probe may use: the exec allowlist (`[probes]`, name → binary), the
    /// readiness files (`[readiness_files]`, name → file) and the hosts HTTP probes may ask
    /// (`[http_probes] hosts`, loopback by default).
    pub probes: Allowlist,
    /// Test builds only: a step at which the agent kills itself with SIGKILL.
    pub crash_at: Option<String>,
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Checks the text of a config file; `path` is for messages and relative lookups.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim().to_owned() })?;
        let invalid =
            |key: &str, problem: String| ConfigError::Invalid { path: path.into(), key: key.to_owned(), problem };
        let unparsable = |key: &str, e: Box<dyn std::error::Error + Send + Sync>| ConfigError::Unparsable {
            path: path.into(),
            key: key.to_owned(),
            source: e,
        };

        let server = url::Url::parse(&raw.server)
            .map_err(|e| invalid("server", format!("{:?} is not a URL: {e}", raw.server)))?;
        if !matches!(server.scheme(), "http" | "https") {
            return Err(invalid("server", format!("must be an http:// or https:// URL, got {:?}", raw.server)));
        }
        let absolute = |key: &str, p: &Path| {
            if p.is_absolute() {
                Ok(())
            } else {
                Err(invalid(key, format!("{} must be an absolute path", p.display())))
            }
        };
        absolute("state_dir", &raw.state_dir)?;
        absolute("trust_root", &raw.trust_root)?;
        let trust_root = std::fs::read(&raw.trust_root)
            .map_err(|e| invalid("trust_root", format!("cannot read {}: {e}", raw.trust_root.display())))?;
        let root = wavecast_tuf::root::parse_root(&trust_root).map_err(|e| {
            invalid("trust_root", format!("{} is not a usable TUF root: {e}", raw.trust_root.display()))
        })?;
        // Checked here so a device with an unusable anchor says so at once; the key the agent
        // uses is the newest verified root's (see `crate::roots`).
        wavecast_tuf::root::director_key(&root.signed).map_err(|e| unparsable("trust_root", e.into()))?;
        let enrollment_token = raw
            .enrollment_token
            .as_deref()
            .map(|t| Secret::parse(SecretKind::EnrollmentToken, t))
            .transpose()
            .map_err(|e| unparsable("enrollment_token", e.into()))?;
        let device_name = DeviceName::new(raw.device_name).map_err(|e| unparsable("device_name", e.into()))?;
        wavecast_core::name::validate("hardware", &raw.hardware).map_err(|e| unparsable("hardware", e.into()))?;
        let poll_interval = parse_duration(&raw.poll_interval).map_err(|e| unparsable("poll_interval", e.into()))?;
        if poll_interval < Duration::from_millis(100) {
            return Err(invalid("poll_interval", "must be at least 100ms".into()));
        }
        if let Some(ca) = &raw.ca_file {
            absolute("ca_file", ca)?;
        }
        let client_identity = match (raw.client_cert, raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                absolute("client_cert", &cert)?;
                absolute("client_key", &key)?;
                Some((cert, key))
            }
            (Some(_), None) => {
                return Err(invalid("client_key", "client_cert is set, so client_key must be too".into()));
            }
            (None, Some(_)) => {
                return Err(invalid("client_cert", "client_key is set, so client_cert must be too".into()));
            }
        };
        let mut download = DownloadPolicy::default();
        if let Some(rate) = raw.download.min_bytes_per_sec {
            download.min_bytes_per_sec = rate;
        }
        if let Some(t) = &raw.download.stall_timeout {
            download.stall_timeout = parse_duration(t).map_err(|e| unparsable("download.stall_timeout", e.into()))?;
            if download.stall_timeout.is_zero() {
                return Err(invalid("download.stall_timeout", "must be more than zero".into()));
            }
        }
        let max_assignment_bytes = raw.max_assignment_bytes.unwrap_or(DEFAULT_MAX_ASSIGNMENT_BYTES);
        if max_assignment_bytes < 4096 {
            return Err(invalid("max_assignment_bytes", "must be at least 4096".into()));
        }
        if raw.artifacts.is_empty() {
            return Err(invalid("artifacts", "list at least one [[artifacts]] entry (name and path)".into()));
        }
        let mut artifacts: Vec<ArtifactConfig> = Vec::new();
        for (i, a) in raw.artifacts.into_iter().enumerate() {
            let name = ArtifactName::new(a.name).map_err(|e| unparsable(&format!("artifacts[{i}].name"), e.into()))?;
            absolute(&format!("artifacts[{i}].path"), &a.path)?;
            if a.path.file_name().is_none() {
                return Err(invalid(&format!("artifacts[{i}].path"), "must name a file".into()));
            }
            if artifacts.iter().any(|o| o.name == name) {
                return Err(invalid(&format!("artifacts[{i}].name"), format!("{name} is listed twice")));
            }
            if artifacts.iter().any(|o| o.path == a.path) {
                return Err(invalid(
                    &format!("artifacts[{i}].path"),
                    format!("{} is used by another artifact", a.path.display()),
                ));
            }
            artifacts.push(ArtifactConfig { name, path: a.path });
        }
        for (name, p) in &raw.probes {
            wavecast_core::name::validate("probe", name)
                .map_err(|e| unparsable(&format!("probes.{name}"), e.into()))?;
            absolute(&format!("probes.{name}"), p)?;
        }
        for (name, p) in &raw.readiness_files {
            let key = format!("readiness_files.{name}");
            wavecast_core::name::validate("readiness file", name).map_err(|e| unparsable(&key, e.into()))?;
            absolute(&key, p)?;
            // The agent removes a readiness file before each swap: never an artifact's own file.
            if artifacts.iter().any(|a| a.path == *p) {
                return Err(invalid(&key, format!("{} is an artifact's path", p.display())));
            }
        }
        let http_hosts = match &raw.http_probes.hosts {
            None => HttpHosts::loopback(),
            Some(hosts) => HttpHosts::parse(hosts).map_err(|e| unparsable("http_probes.hosts", e.into()))?,
        };
        Ok(Self {
            server,
            state_dir: raw.state_dir,
            trust_root,
            trust_root_path: raw.trust_root,
            enrollment_token,
            device_name,
            hardware: raw.hardware,
            poll_interval,
            ca_file: raw.ca_file,
            client_identity,
            download,
            max_assignment_bytes,
            shared_dirs: raw.artifact_dirs_writable_by_others,
            artifacts,
            probes: Allowlist { exec: raw.probes, readiness_files: raw.readiness_files, http_hosts },
            crash_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_json(dir: &Path) -> PathBuf {
        let k = wavecast_tuf::keys::SigningKey::generate().unwrap();
        let keys = wavecast_tuf::root::RootKeys {
            root: &k,
            targets: &k,
            snapshot: &k,
            timestamp: &k,
            director: &k,
            checkpoint: &k,
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let root = rt
            .block_on(wavecast_tuf::root::build_root(
                &keys,
                wavecast_os::clock::now() + jiff::SignedDuration::from_hours(24),
            ))
            .unwrap();
        let p = dir.join("root.json");
        std::fs::write(&p, root.buffer()).unwrap();
        p
    }

    #[test]
    fn bad_configs_name_the_key_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let root = root_json(dir.path());
        let good = format!(
            "server = \"http://127.0.0.1:7700\"\nstate_dir = \"/var/lib/wavecast\"\ntrust_root = {root:?}\n\
             device_name = \"cam-001\"\nhardware = \"jetson\"\n[[artifacts]]\nname = \"yolo\"\npath = \"/opt/m/yolo.onnx\"\n\
             [probes]\ncheck = \"/usr/bin/check\"\n"
        );
        let cfg = AgentConfig::parse(Path::new("agent.toml"), &good).unwrap();
        assert_eq!(cfg.poll_interval, Duration::from_secs(30), "the default poll interval");
        assert_eq!(cfg.artifacts[0].name.as_str(), "yolo");
        assert_eq!(cfg.shared_dirs, SharedDirs::Refuse, "shared artifact directories are refused by default");
        assert_eq!(cfg.max_assignment_bytes, DEFAULT_MAX_ASSIGNMENT_BYTES);
        assert_eq!(cfg.probes.http_hosts, HttpHosts::loopback(), "HTTP probes may ask this device only by default");
        assert!(cfg.probes.readiness_files.is_empty(), "no readiness file unless listed");
        let listed = format!(
            "{good}[readiness_files]\nmodel-ready = \"/run/app/ready\"\n[http_probes]\nhosts = [\"infer.local\"]\n"
        );
        let cfg = AgentConfig::parse(Path::new("agent.toml"), &listed).unwrap();
        assert_eq!(cfg.probes.readiness_files["model-ready"], Path::new("/run/app/ready"));
        assert_eq!(cfg.probes.http_hosts, HttpHosts::parse(&["infer.local"]).unwrap());
        let shared = good.replacen(
            "hardware = \"jetson\"",
            "hardware = \"jetson\"\nartifact_dirs_writable_by_others = \"allow\"",
            1,
        );
        assert_eq!(AgentConfig::parse(Path::new("agent.toml"), &shared).unwrap().shared_dirs, SharedDirs::Allow);

        // (edit of the good file, the key the error must name, words it must contain)
        let cases: &[(&str, &str, &str, &str)] = &[
            ("server = \"http://127.0.0.1:7700\"", "server = \"ftp://x\"", "`server`", "http://"),
            ("state_dir = \"/var/lib/wavecast\"", "state_dir = \"relative/dir\"", "`state_dir`", "absolute"),
            ("device_name = \"cam-001\"", "device_name = \"../cam\"", "`device_name`", "'/'"),
            ("hardware = \"jetson\"", "hardware = \"\"", "`hardware`", "empty"),
            ("name = \"yolo\"", "name = \"a/b\"", "`artifacts[0].name`", "path separators"),
            ("path = \"/opt/m/yolo.onnx\"", "path = \"yolo.onnx\"", "`artifacts[0].path`", "absolute"),
            ("check = \"/usr/bin/check\"", "check = \"check\"", "`probes.check`", "absolute"),
            ("hardware = \"jetson\"", "hardware = \"jetson\"\npoll_interval = \"soon\"", "`poll_interval`", "duration"),
            (
                "hardware = \"jetson\"",
                "hardware = \"jetson\"\nenrollment_token = \"wct_123\"",
                "`enrollment_token`",
                "not an enrollment token",
            ),
            (
                "hardware = \"jetson\"",
                "hardware = \"jetson\"\nmax_assignment_bytes = 10",
                "`max_assignment_bytes`",
                "at least 4096",
            ),
            (
                "hardware = \"jetson\"",
                "hardware = \"jetson\"\nartifact_dirs_writable_by_others = \"yes\"",
                "artifact_dirs_writable_by_others",
                "unknown variant",
            ),
            (
                "hardware = \"jetson\"",
                "hardware = \"jetson\"\nclient_cert = \"/etc/c.pem\"",
                "`client_key`",
                "must be too",
            ),
            ("[probes]", "[readiness_files]\nready = \"run/ready\"\n[probes]", "`readiness_files.ready`", "absolute"),
            ("[probes]", "[readiness_files]\n\"../x\" = \"/run/ready\"\n[probes]", "`readiness_files.../x`", "'/'"),
            (
                "[probes]",
                "[readiness_files]\nmodel = \"/opt/m/yolo.onnx\"\n[probes]",
                "`readiness_files.model`",
                "an artifact's path",
            ),
            (
                "[probes]",
                "[http_probes]\nhosts = [\"localhost:8080\"]\n[probes]",
                "`http_probes.hosts`",
                "not a host name or IP address",
            ),
            ("[probes]", "[http_probes]\nhost = []\n[probes]", "host", "unknown field"),
        ];
        for (from, to, key, words) in cases {
            let text = good.replacen(from, to, 1);
            let err = wavecast_os::error::chain(&AgentConfig::parse(Path::new("agent.toml"), &text).unwrap_err());
            assert!(err.contains(key) && err.contains(words), "{to}: {err}");
        }
        let unknown =
            AgentConfig::parse(Path::new("agent.toml"), &format!("{good}\ncolour = 3\n")).unwrap_err().to_string();
        assert!(unknown.contains("colour"), "{unknown}");
        let no_root = AgentConfig::parse(
            Path::new("agent.toml"),
            &good.replace(root.to_str().unwrap(), "/nonexistent/root.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(no_root.contains("`trust_root`") && no_root.contains("cannot read"), "{no_root}");
    }
}
