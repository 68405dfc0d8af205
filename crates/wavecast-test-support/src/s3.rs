//! A real S3-compatible server on loopback (moto, from `scripts/s3-server`), one per caller.
//!
//! Object storage is tested against a peer that speaks the protocol (multipart uploads,
//! conditional writes, presigned URLs, ranges) rather than a mock. moto keeps objects in
//! memory and takes any credentials; [`S3Server::env`] gives a client the ones it expects.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running S3 server; stopped when dropped or when this process ends.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl S3Server {
    /// Installs (once per checkout) and starts the server on a free loopback port, and waits
    /// until it answers.
    pub fn start() -> Self {
        let script = repo_root().join("scripts/s3-server");
        let install = Command::new(&script).arg("install").status().expect("running scripts/s3-server install");
        assert!(install.success(), "scripts/s3-server install failed: the S3 tests need PyPI's moto");
        let port = crate::free_port();
        let log = std::env::temp_dir().join(format!("wavecast-s3-{port}.log"));
        let child = Command::new(&script)
            .args(["run", &port.to_string(), &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the S3 server's log"))
            .spawn()
            .expect("starting scripts/s3-server run");
        let server = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while request(port, "GET", "/").is_none() {
            assert!(Instant::now() < deadline, "the S3 server did not come up:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket (a fresh name per test keeps tests apart on one server).
    pub fn create_bucket(&self, name: &str) {
        let status = request(self.port, "PUT", &format!("/{name}"));
        assert_eq!(status, Some(200), "creating bucket {name}:\n{}", self.log());
    }

    /// The keys in a bucket under a prefix.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = get(self.port, &format!("/{bucket}?list-type=2&prefix={prefix}")).expect("listing the bucket");
        body.split("<Key>").skip(1).filter_map(|s| s.split_once("</Key>")).map(|(k, _)| k.to_owned()).collect()
    }

    /// Writes an object as it is, behind the back of whoever owns the bucket (to corrupt one).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to the S3 server");
        write!(
            s,
            "PUT /{bucket}/{key} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n\r\n",
            self.port,
            body.len()
        )
        .expect("sending a PUT to the S3 server");
        s.write_all(body).expect("sending the object to the S3 server");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "PUT {key}: {out}");
    }

    /// The environment a client needs: credentials moto accepts and a region.
    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", "wavecast-test"),
            ("AWS_SECRET_ACCESS_KEY", "wavecast-test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // The script's trap stops the server when the script ends.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A bare HTTP/1.0 request (moto checks no signature on these); its status, if it answered.
fn request(port: u16, method: &str, path: &str) -> Option<u16> {
    exchange(port, method, path).map(|(status, _)| status)
}

fn get(port: u16, path: &str) -> Option<String> {
    exchange(port, "GET", path).filter(|(status, _)| *status == 200).map(|(_, body)| body)
}

fn exchange(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}
