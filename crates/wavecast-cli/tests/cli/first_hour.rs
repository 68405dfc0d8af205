//! An operator's first hour, on the real binaries: mistakes caught at the door, a halt that
//! says why, ids that take any unique start, times scripts can read, and a device config to
//! start from.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Devices, Installation, Server, installation, ok, op, run, wavecast};

/// The stderr of a command that must fail with `code`.
fn fails(cmd: &mut std::process::Command, code: i32) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: {stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    stderr
}

/// Every time field in `value` (a key ending in `_at` or `_time`, or `at`) with where it is.
fn times(value: &serde_json::Value, at: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (k, v) in fields {
                let here = format!("{at}.{k}");
                if (k.ends_with("_at") || k.ends_with("_time") || k == "at") && !v.is_null() {
                    out.push((here.clone(), v.clone()));
                }
                times(v, &here, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                times(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks that every time in `json` is RFC 3339 in UTC with milliseconds; returns how many.
fn rfc3339_times(json: &str, what: &str) -> usize {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}: {e}\n{json}"));
    let mut found = Vec::new();
    times(&value, what, &mut found);
    for (at, time) in &found {
        let text = time.as_str().unwrap_or_else(|| panic!("{at} is not a string: {time}"));
        assert!(text.parse::<jiff::Timestamp>().is_ok(), "{at}: {text:?} is not RFC 3339");
        let b = text.as_bytes();
        assert!(
            b.len() == 24 && text.ends_with('Z') && b[19] == b'.' && b[20..23].iter().all(u8::is_ascii_digit),
            "{at}: {text:?} is not UTC with milliseconds"
        );
    }
    found.len()
}

async fn first_hour(database_url: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    let Installation { report, token, key } = installation(&dir);
    let server = Server::start(&dir, database_url).await;
    let wc = || op(&server, &token);
    let publish = |version: &str, bytes: &[u8], hardware: Option<&str>| {
        let file = tmp.path().join(format!("m-{version}-{}", bytes.len()));
        std::fs::write(&file, bytes).unwrap();
        let mut cmd = wc();
        cmd.args(["artifact", "publish", "--name", "m", "--version", version, "--key", &key, "--file"]).arg(&file);
        if let Some(hw) = hardware {
            cmd.args(["--hardware", hw]);
        }
        run(&mut cmd)
    };
    assert!(publish("1.0.0", b"one", Some("hw-a")).status.success());
    assert!(publish("2.0.0", b"two", None).status.success());
    assert!(publish("3.0.0", b"three", Some("hw-b")).status.success());
    // A retry of the same bytes is a success that says so; other bytes are still refused.
    let again = publish("2.0.0", b"two", None);
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("already published m@2.0.0"));
    let other = publish("2.0.0", b"not two", None);
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("already published with different content"));

    ok(wc().args(["group", "create", "g"]));
    let mut d1 = Devices::enroll(&server, &token, "g", "hw-a", &["d1"]).await;
    let mut d2 = Devices::enroll(&server, &token, "g", "hw-c", &["d2"]).await;
    let create = |version: &str, extra: &[&str]| {
        let mut cmd = wc();
        cmd.args(["rollout", "create", "--artifact", &format!("m@{version}"), "--group", "g", "--probe", "exec:c"])
            .args(extra);
        cmd
    };

    // Hardware: none of the group fits → refused; only some → a warning with the counts.
    let refused = fails(&mut create("3.0.0", &[]), 1);
    assert!(
        refused.contains("m@3.0.0 is built for hardware hw-b, and none of the 2 device(s) of group g is"),
        "{refused}"
    );
    let out = run(create("1.0.0", &["--halt-after", "1", "--json"]).stderr(Stdio::piped()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains("warning: only 1 of the 2 devices of group g have hardware hw-a"), "{warned}");
    let created: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let id1 = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["warnings"].as_array().map(Vec::len), Some(1));

    // A halt says why: the failed device, its reason with the probe's output, what to run.
    let why = "exec:c exited with 1: model file truncated at 4096 bytes";
    d2.report(0, &id1, "failed", Some(why)).await;
    let text = ok(wc().args(["rollout", "show", &id1]));
    assert!(text.contains("paused") && text.contains("failed or timed out: 1 device"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("d2  wave 1  failed") && l.ends_with(why)), "{text}");
    assert!(text.contains(&format!("next: wavecast rollout resume {id1} --ack")), "{text}");
    assert!(text.contains(&format!("or wavecast rollout abort {id1} --keep|--revert")), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(wc().args(["rollout", "show", &id1, "--json"]))).unwrap();
    assert_eq!(
        (json["failures"]["total"].as_u64(), json["failures"]["devices"][0]["reason"].as_str()),
        (Some(1), Some(why))
    );
    assert_eq!(json["next_commands"][0], format!("wavecast rollout resume {id1} --ack"));
    let device = ok(wc().args(["device", "show", "d2"]));
    assert!(device.contains(&format!("rollout   {id1} m@1.0.0 wave 1 failed — {why}")), "{device}");

    // Ids: any unique start, with or without `r-`.
    for short in [&id1[..5], &id1[2..6]] {
        let shown: serde_json::Value =
            serde_json::from_str(&ok(wc().args(["rollout", "show", short, "--json"]))).unwrap();
        assert_eq!(shown["id"], id1.as_str(), "{short}");
    }
    // Abort needs a mode, and says which.
    let usage = fails(wc().args(["rollout", "abort", &id1]), 2);
    assert!(usage.contains("choose --keep or --revert"), "{usage}");
    assert!(ok(wc().args(["rollout", "abort", &id1[..6], "--keep"])).contains("aborted"));

    let created: serde_json::Value =
        serde_json::from_str(&ok(&mut create("2.0.0", &["--halt-after", "5", "--json"]))).unwrap();
    let id2 = created["id"].as_str().unwrap().to_owned();
    d1.report(0, &id2, "succeeded", None).await;
    d2.report(0, &id2, "succeeded", None).await;
    // Two rollouts now: `r-` starts both, and the error names them.
    let ambiguous = fails(wc().args(["rollout", "show", "r-"]), 1);
    assert!(ambiguous.contains("is the start of more than one rollout id"), "{ambiguous}");
    assert!(ambiguous.contains(&id1) && ambiguous.contains(&id2), "{ambiguous}");
    // An unknown id is an error everywhere, the audit export included (and no file is written).
    let evidence = tmp.path().join("evidence.json");
    for args in [
        &["rollout", "show", "r-unknown"][..],
        &["rollout", "approve", "r-unknown"],
        &["rollout", "resume", "r-unknown", "--ack"],
        &["rollout", "abort", "r-unknown", "--revert"],
        &["rollout", "watch", "r-unknown"],
        &["audit", "export", "--rollout", "r-unknown", "--out", evidence.to_str().unwrap()],
    ] {
        let err = fails(wc().args(args), 1);
        assert!(err.contains("no rollout has an id starting with \"r-unknown\""), "{args:?}: {err}");
    }
    assert!(!evidence.exists(), "an export of an unknown rollout was written");
    // A known one by its start: its events, once a checkpoint covers them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(wc().args(["audit", "export", "--rollout", &id2[..6], "--out", evidence.to_str().unwrap()]));
        let export: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&evidence).unwrap_or_default()).unwrap_or_default();
        if out.status.success() && export["events"].as_array().is_some_and(|e| e.len() >= 4) {
            assert_eq!(export["rollout"], id2.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "no export of {id2}: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Roles: what was refused, in the user's words; tokens revoked by name.
    let viewer = ok(wc().args(["token", "create", "--role", "viewer", "--name", "ci"])).trim().to_owned();
    let denied = fails(op(&server, &viewer).args(["rollout", "approve", &id2]), 1);
    assert!(denied.contains("token ci has role viewer, which may not approve rollout gates"), "{denied}");
    assert!(ok(wc().args(["token", "revoke", "ci"])).starts_with("revoked token ci ("));

    // Every time in every list and show, as JSON, is RFC 3339 with milliseconds.
    let mut counted = 0;
    for args in [
        &["artifact", "list"][..],
        &["group", "list"],
        &["device", "list"],
        &["device", "show", "d2"],
        &["device", "enroll-token", "list"],
        &["device", "enroll-token", "--group", "g"],
        &["token", "list"],
        &["rollout", "list"],
        &["rollout", "show", &id1],
        &["rollout", "show", &id2],
        &["audit", "list"],
        &["status"],
    ] {
        let n = rfc3339_times(&ok(wc().args(args).arg("--json")), &args.join(" "));
        assert!(n > 0, "{args:?} shows no time");
        counted += n;
    }
    assert!(counted > 40, "{counted} times checked");

    // A device to start from: a complete agent.toml the agent accepts once its root is in place.
    let config = ok(wc().args([
        "device",
        "enroll-token",
        "--group",
        "g",
        "--agent-config",
        "--device-name",
        "cam-9",
        "--hardware",
        "hw-a",
    ]));
    let root = report["root_json"].as_str().unwrap();
    let filled = config.replace("/etc/wavecast/root.json", root);
    let agent = wavecast_agent::AgentConfig::parse(std::path::Path::new("agent.toml"), &filled)
        .unwrap_or_else(|e| panic!("{e:#?}\n{config}"));
    assert_eq!(agent.server.as_str().trim_end_matches('/'), server.url);
    assert_eq!((agent.device_name.as_str(), agent.hardware.as_str()), ("cam-9", "hw-a"));
    assert!(agent.enrollment_token.is_some());
}

crate::both!(first_hour);

/// Mistakes in the command line are caught before anything is sent, with what to do instead.
#[test]
fn command_line_mistakes_say_what_to_do() {
    let bare = fails(wavecast().args(["group", "list", "--server", "127.0.0.1:7700", "--token", "wct_x"]), 1);
    assert!(bare.contains("did you mean --server http://127.0.0.1:7700?"), "{bare}");
    let host = fails(wavecast().args(["group", "list", "--server", "localhost:7700", "--token", "wct_x"]), 1);
    assert!(host.contains("did you mean --server http://localhost:7700?"), "{host}");
    let zero =
        fails(wavecast().args(["device", "enroll-token", "--group", "g", "--expires-in", "0s", "--token", "wct_x"]), 1);
    assert!(zero.contains("--expires-in must be at least 1s"), "{zero}");
}

/// A second server on the same SQLite installation refuses to start, naming the first; once
/// the first stops, the installation starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_sqlite_installation_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    installation(&dir);
    let first = Server::start(&dir, None).await;
    let port = wavecast_test_support::free_port();
    let second =
        fails(wavecast().args(["server", "--data-dir"]).arg(&dir).args(["--listen", &format!("127.0.0.1:{port}")]), 1);
    let holder = format!("another wavecast server (process {}) is serving", first.pid());
    assert!(second.contains(&holder), "{second}");
    first.stop();
    Server::start(&dir, None).await.stop();
}
