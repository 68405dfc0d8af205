//! `wavecast rollout watch` on a real server, with and without a terminal: it shows the
//! rollout while it runs, stops when the rollout ends or needs an operator, and its exit
//! status says which. Devices are played over the device API, so each outcome is exact.

use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Devices, Installation, Server, installation, ok, op, run};

/// A running `rollout watch`, its output collected as it arrives.
struct Watch {
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Watch {
    /// Starts `wavecast rollout watch ID ARGS…`, on a pseudo-terminal (through util-linux's
    /// `script`) when `tty`, else with its output piped.
    fn start(server: &Server, token: &str, id: &str, args: &[&str], tty: bool) -> Self {
        let mut watch = op(server, token);
        watch.args(["rollout", "watch", id, "--interval", "100ms"]).args(args);
        let mut cmd = if tty {
            let line = std::iter::once(watch.get_program().to_string_lossy().into_owned())
                .chain(watch.get_args().map(|a| a.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut script = Command::new("script");
            script.args(["--quiet", "--flush", "--return", "--command", &line, "/dev/null"]);
            script.env("WAVECAST_SERVER", &server.url).env("WAVECAST_TOKEN", token).env_remove("NO_COLOR");
            script
        } else {
            watch
        };
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, output) = mpsc::channel();
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, output, seen: Vec::new() }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until the output so far contains `needle`, while the watch still runs.
    fn shows_while_running(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.text().contains(needle) {
            assert!(Instant::now() < deadline, "watch did not show {needle:?} within 30 s:\n{}", self.text());
            if let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(100)) {
                self.seen.extend(chunk);
            }
        }
        assert!(self.child.try_wait().unwrap().is_none(), "watch ended early:\n{}", self.text());
    }

    /// Waits for the watch to end; its status and everything it printed.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "watch did not end within 30 s:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        };
        // The readers end with the pipes.
        while let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(500)) {
            self.seen.extend(chunk);
        }
        (status, self.text())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create(server: &Server, token: &str, version: &str, extra: &[&str]) -> String {
    let out = ok(op(server, token)
        .args(["rollout", "create", "--artifact", &format!("m@{version}"), "--group", "g", "--probe", "exec:check"])
        .args(["--json"])
        .args(extra));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    r["id"].as_str().unwrap().to_owned()
}

/// Completed, completed with failures, paused, waiting at a gate and aborted, each watched
/// with and without a terminal: the watch shows the rollout before it ends, then exits with
/// the status its help promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_rollout_and_exits_with_what_became_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let Installation { token, key, .. } = installation(&dir);
    let server = Server::start(&dir, None).await;
    for v in 1..=10 {
        let file = tmp.path().join(format!("m{v}"));
        std::fs::write(&file, format!("model {v}")).unwrap();
        ok(op(&server, &token)
            .args(["artifact", "publish", "--name", "m", "--version", &format!("{v}.0.0"), "--key", &key, "--file"])
            .arg(&file));
    }
    ok(op(&server, &token).args(["group", "create", "g"]));
    let mut devices = Devices::enroll(&server, &token, "g", "hw", &["d1", "d2"]).await;
    let mut version = 0;
    let mut next_version = || {
        version += 1;
        format!("{version}.0.0")
    };

    for tty in [false, true] {
        // What a watch shows first: a bar per wave on a terminal, else a line with the state
        // and the waves' counts.
        let shown = if tty { "] 0/2 settled" } else { "running  wave 1/1 0/2 settled" };

        // Completed: exit 0.
        let id = create(&server, &token, &next_version(), &["--halt-after", "5"]);
        let mut watch = Watch::start(&server, &token, &id, &[], tty);
        watch.shows_while_running(shown);
        devices.report(0, &id, "succeeded", None).await;
        devices.report(1, &id, "succeeded", None).await;
        let (status, out) = watch.finish();
        assert_eq!(status.code(), Some(0), "tty {tty}:\n{out}");
        assert!(out.contains("completed") && !out.contains("completed_with_failures"), "{out}");

        // Completed with failures: exit 3, and said in capitals.
        let id = create(&server, &token, &next_version(), &["--halt-after", "5"]);
        let mut watch = Watch::start(&server, &token, &id, &[], tty);
        watch.shows_while_running(shown);
        devices.report(0, &id, "failed", Some("exec:check exited with 1: accuracy 0.41")).await;
        if !tty {
            // Without a terminal, each change is a line of its own.
            watch.shows_while_running("running  wave 1/1 1/2 settled (0/2 succeeded · 1 failed · 1 in progress)");
        }
        devices.report(1, &id, "succeeded", None).await;
        let (status, out) = watch.finish();
        assert_eq!(status.code(), Some(3), "tty {tty}:\n{out}");
        assert!(out.contains("COMPLETED WITH FAILURES: 1 failed, 0 timed out, 1 of 2 devices succeeded"), "{out}");

        // Paused by the halt rule: exit 5, with the command that resumes it; then aborted: 4.
        let id = create(&server, &token, &next_version(), &["--halt-after", "1"]);
        let mut watch = Watch::start(&server, &token, &id, &[], tty);
        watch.shows_while_running(shown);
        devices.report(0, &id, "failed", Some("exec:check exited with 1: accuracy 0.41")).await;
        let (status, out) = watch.finish();
        assert_eq!(status.code(), Some(5), "tty {tty}:\n{out}");
        assert!(out.contains(&format!("wavecast rollout resume {id} --ack")), "{out}");
        let mut watch = Watch::start(&server, &token, &id, &["--until-done"], tty);
        watch.shows_while_running(if tty { "] 1/2 settled" } else { "paused" });
        ok(op(&server, &token).args(["rollout", "abort", &id, "--keep"]));
        let (status, out) = watch.finish();
        assert_eq!(status.code(), Some(4), "tty {tty}:\n{out}");

        // At a gate: exit 6 without --until-done; with it, the watch waits for the approval and
        // follows the rollout to its end.
        let id = create(&server, &token, &next_version(), &["--gate", "1", "--halt-after", "5"]);
        let out = run(op(&server, &token).args(["rollout", "watch", &id]));
        assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("wavecast rollout approve {id}")));
        let mut watch = Watch::start(&server, &token, &id, &["--until-done"], tty);
        watch.shows_while_running(if tty { "waiting_approval" } else { "waiting_approval  wave 1/1" });
        ok(op(&server, &token).args(["rollout", "approve", &id]));
        devices.report(0, &id, "succeeded", None).await;
        devices.report(1, &id, "succeeded", None).await;
        let (status, out) = watch.finish();
        assert_eq!(status.code(), Some(0), "tty {tty}:\n{out}");
        if tty {
            // On a terminal, bars and no log lines; without one, lines and no escape codes.
            assert!(out.contains("] 0/2 settled") && !out.contains("  wave 1/1 0/2 settled ("), "{out}");
        } else {
            assert!(!out.contains('\x1b') && !out.contains("] 0/2 settled"), "escape codes or bars in a pipe:\n{out}");
        }
    }
}
