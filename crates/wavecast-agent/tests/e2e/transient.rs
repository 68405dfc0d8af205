//! Transient is not failure: expired metadata, a wrong clock (before the agent's build, or
//! stepped back), a server answering 404 or 403 or nothing, a full disk (the application's
//! filesystem, or the metadata datastore). Each is
//! waited out with the reason told in heartbeats, and ends in a successful install once it
//! clears, with no operator action and no counted failure. (Verification failures are still
//! refused: `bad_artifacts`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wavecast_tuf::keys::SigningKey;
use wavecast_tuf::repo::{OnlineKeys, OnlinePlan, sign_online};

use crate::attacker::{Hostile, Proxy};
use crate::support::*;

/// A small tmpfs mounted over `dir` (we run as root), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs on {} (the test needs root)", dir.display());
        Self(dir.to_path_buf())
    }

    /// Fills the filesystem until at most `leave` bytes are free; returns the filler file.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.0.join(".filler");
        let s = rustix::fs::statvfs(&self.0).unwrap();
        let free = s.f_bavail * s.f_frsize;
        std::fs::write(&filler, vec![0u8; free.saturating_sub(leave) as usize]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// libfaketime, installed if missing.
pub fn faketime_lib() -> PathBuf {
    let lib = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1");
    if !lib.exists() {
        let _ = Command::new("apt-get").args(["install", "-y", "faketime"]).status();
    }
    assert!(lib.exists(), "{} is missing (apt-get install -y faketime)", lib.display());
    lib
}

/// Runs `agent` on a clock read from `file` (a libfaketime spec, re-read at every reading).
pub fn fake_clock(agent: &mut Agent, file: &Path) {
    agent.env = vec![
        ("LD_PRELOAD".into(), faketime_lib().display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
}

fn version_of(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(bytes).unwrap()["signed"]["version"].as_u64().unwrap()
}

/// A timestamp (and the snapshot it names) signed with the real online keys, but expired.
async fn expired_timestamp(env: &Env) -> Vec<(String, Vec<u8>)> {
    let root = wavecast_tuf::root::parse_root(&std::fs::read(env.root()).unwrap()).unwrap();
    let targets = env.metadata("targets.json").await;
    let snapshot_version = version_of(&env.metadata("snapshot.json").await);
    let timestamp_version = version_of(&env.metadata("timestamp.json").await);
    let nz = |v: u64| std::num::NonZeroU64::new(v).unwrap();
    let keys = OnlineKeys {
        snapshot: SigningKey::load(&env.install.join("keys/snapshot.key")).unwrap(),
        timestamp: SigningKey::load(&env.install.join("keys/timestamp.key")).unwrap(),
    };
    let expired = sign_online(
        &root.signed,
        &keys,
        &targets,
        OnlinePlan {
            targets_version: nz(version_of(&targets)),
            snapshot_version: nz(snapshot_version + 1),
            timestamp_version: nz(timestamp_version + 1),
            snapshot_expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
            timestamp_expires: jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
        },
    )
    .await
    .unwrap();
    vec![
        ("/device/v1/tuf/timestamp.json".into(), expired.timestamp),
        (format!("/device/v1/tuf/{}.snapshot.json", snapshot_version + 1), expired.snapshot),
    ]
}

/// One transient problem: how to cause it, the class the device must report, how to clear it.
enum Fault {
    ExpiredMetadata,
    MetadataStatus(u16),
    ArtifactStatus(u16),
    SilentMetadata,
    FullAppDisk,
    FullDatastore,
    ClockSteppedBack,
    ClockBeforeBuild,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_problems_are_waited_out_and_never_counted_as_failures() {
    let env = Env::new().await;
    let proxy = Proxy::start(&env.url, &env.install).await;
    let check = script(&env.probes_dir(), "check", "exit 0");
    let clock_file = env.path("fake-clock");
    std::fs::write(&clock_file, "+0").unwrap();
    let agent = env.agent("dev-1", &[("check", check)], Some(&proxy.url)).await;
    // Silence is noticed after 2 s (not 10): the silent server's case waits that long per try.
    agent.edit_config("stall_timeout = \"10s\"", "stall_timeout = \"2s\"");
    // Small filesystems of their own for the application's directory and tough's datastore,
    // dropped (unmounted) after the agent.
    let app_fs = Tmpfs::mount(agent.path.parent().unwrap(), "1m");
    let tuf_fs = Tmpfs::mount(&agent.state_dir.join("tuf"), "256k");
    let mut agent = agent;
    agent.start();
    env.wait_enrolled(&agent).await;
    let probe = Probe::new("exec:check");
    let v1 = blob("t-1", 64 * 1024);
    let (_, e) = update(&env, &agent, "1.0.0", &v1, &probe).await;
    assert_succeeded(&e, &agent);
    let mut running = sha_hex(&v1);

    let cases = [
        ("expired timestamp, then renewed", Fault::ExpiredMetadata, "metadata"),
        ("timestamp.json answers 404, then is there", Fault::MetadataStatus(404), "server"),
        ("the artifact answers 403, then is served", Fault::ArtifactStatus(403), "server"),
        ("the server sends headers and then nothing, then answers", Fault::SilentMetadata, "network"),
        ("the application's disk is full, then freed", Fault::FullAppDisk, "disk"),
        ("the metadata datastore is full, then freed", Fault::FullDatastore, "disk"),
        ("the clock is behind what tough saw last, then catches up", Fault::ClockSteppedBack, "clock"),
        ("the clock reads 2020, then is set", Fault::ClockBeforeBuild, "clock"),
    ];
    let mut reasons: Vec<(&str, String)> = Vec::new();
    for (i, (case, fault, class)) in cases.into_iter().enumerate() {
        let version = format!("2.{i}.0");
        let bytes = blob(&version, 64 * 1024);
        let target = format!("model@{version}");
        env.publish(&target, &bytes, None).await;

        let mut filler = None;
        match fault {
            Fault::ExpiredMetadata => {
                for (path, body) in expired_timestamp(&env).await {
                    proxy.set_override(&path, body);
                }
            }
            Fault::MetadataStatus(code) => proxy.set_hostile("/device/v1/tuf/timestamp.json", Hostile::Status(code)),
            Fault::ArtifactStatus(code) => {
                proxy.set_hostile(&format!("/device/v1/targets/{}.{target}", sha_hex(&bytes)), Hostile::Status(code))
            }
            Fault::SilentMetadata => proxy.set_hostile("/device/v1/tuf/timestamp.json", Hostile::Silent),
            Fault::FullAppDisk => filler = Some(app_fs.fill(16 * 1024)),
            Fault::FullDatastore => {
                // tough rewrites its files in place (no new room needed), so empty the store
                // first: what it writes then has nowhere to go. Our own record still refuses
                // rollbacks meanwhile.
                for e in std::fs::read_dir(&tuf_fs.0).unwrap().flatten() {
                    std::fs::remove_file(e.path()).unwrap();
                }
                filler = Some(tuf_fs.fill(0));
            }
            Fault::ClockSteppedBack => {
                // As if the clock had read 2099 at the last check and was set back since.
                std::fs::write(tuf_fs.0.join("latest_known_time.json"), "\"2099-01-01T00:00:00Z\"").unwrap();
            }
            Fault::ClockBeforeBuild => {
                agent.stop().await;
                std::fs::write(&clock_file, "@2020-01-01 00:00:00").unwrap();
                fake_clock(&mut agent, &clock_file);
                agent.start();
            }
        }
        let id = env.rollout(&target, &probe).await;

        // The device says what it waits for, and nothing fails.
        let told = |proxy: &Proxy| proxy.waiting(class).into_iter().find(|p| p["rollout_id"] == id.as_str());
        wait!(format!("{case}: a heartbeat saying `waiting: {class}`"), agent, told(&proxy).is_some());
        let said = told(&proxy).unwrap();
        assert_eq!(said["state"], "downloading", "{case}: {said}");
        assert_eq!(said["bytes_total"], bytes.len(), "{case}: {said}");
        let reason = said["waiting"]["reason"].as_str().unwrap_or_default().to_owned();
        eprintln!("{case}: waiting: {class} — {reason}");
        tokio::time::sleep(POLL * 5).await;
        let entry = env.device_rollout(&agent.name, &id).await.unwrap();
        assert!(!FINAL.contains(&entry["state"].as_str().unwrap_or_default()), "{case}: {entry}\n{}", agent.log_tail());
        assert_eq!(env.rollout_view(&id).await["failures_counted"], 0, "{case}");
        assert_eq!(agent.sha().as_deref(), Some(running.as_str()), "{case}: the running model changed");
        let st = agent.status();
        assert_eq!(st["healthy"], true, "{case}: the running model is still healthy: {st}");
        assert!(agent.journal()["refused"].as_array().unwrap().iter().all(|r| r["rollout_id"] != id.as_str()));
        assert!(agent.running(), "{case}\n{}", agent.log_tail());
        reasons.push((case, reason));

        // Cleared: the install goes through on its own.
        proxy.clear_overrides();
        proxy.clear_hostile();
        if let Some(f) = filler {
            std::fs::remove_file(f).unwrap();
        }
        match fault {
            Fault::ClockBeforeBuild => std::fs::write(&clock_file, "+0").unwrap(),
            Fault::ClockSteppedBack => std::fs::remove_file(tuf_fs.0.join("latest_known_time.json")).unwrap(),
            _ => {}
        }
        let entry = env.wait_final(&agent, &id).await;
        assert_succeeded(&entry, &agent);
        assert_eq!(agent.sha(), Some(sha_hex(&bytes)), "{case}");
        let events = env.outcome_events(&agent.name, &id).await;
        assert_eq!(events.len(), 1, "{case}: {events:?}");
        assert_eq!(events[0]["action"], "device.updated", "{case}");
        let view = env.rollout_view(&id).await;
        assert_eq!(
            (view["state"].as_str(), view["failures_counted"].as_u64()),
            (Some("completed"), Some(0)),
            "{case}: {view}"
        );
        running = sha_hex(&bytes);
    }
    // Each problem is told in its own words.
    for (i, (a, ra)) in reasons.iter().enumerate() {
        for (b, rb) in &reasons[i + 1..] {
            assert_ne!(ra, rb, "{a} and {b} were told the same way");
        }
    }
    let disk = &reasons.iter().find(|(c, _)| c.contains("application's disk")).unwrap().1;
    assert!(disk.contains("needs 64 KiB more") && disk.contains("free in"), "{disk}");
}

/// A resumed download whose bytes on disk went bad is downloaded once more from zero, and
/// installs; it is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_download_that_hashes_wrong_is_fetched_again_from_zero() {
    let env = Env::new().await;
    let ok = script(&env.probes_dir(), "ok", "exit 0");
    let mut agent = env.start_agent("dev-1", &[("ok", ok)], None).await;
    agent.stop().await;
    let size = 4 << 20;
    let bytes = blob("resume", size);
    env.publish("model@1.0.0", &bytes, None).await;
    let id = env.rollout("model@1.0.0", &Probe::new("exec:ok")).await;
    // The hook fires once half the bytes are received, but the writer thread may not have put
    // any on disk yet (it buffers a MiB): kill it again, resuming, until some are.
    let mut attempts = 0;
    let (partial, mut on_disk) = loop {
        agent.start_with(Some("mid-download"));
        agent.wait_killed().await;
        attempts += 1;
        let partial = agent.path.with_file_name(&agent.partials()[0]);
        let on_disk = std::fs::read(&partial).unwrap();
        if !on_disk.is_empty() || attempts == 5 {
            break (partial, on_disk);
        }
    };
    assert!(!on_disk.is_empty() && on_disk.len() < size, "not mid-download: {} bytes", on_disk.len());
    on_disk[0] ^= 0xff;
    std::fs::write(&partial, &on_disk).unwrap();

    agent.start();
    let entry = env.wait_final(&agent, &id).await;
    assert_succeeded(&entry, &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&bytes)));
    assert!(agent.log_text().contains("a resumed download does not hash right; downloading it again from zero"));
    assert_eq!(env.outcome_events(&agent.name, &id).await.len(), 1);
}
