//! The server under resource exhaustion: out of file descriptors, it pauses and recovers
//! instead of spinning a core on failing accepts.

use std::time::Duration;

use crate::{Server, init};

/// CPU time (user + system) the process has used, in clock ticks (100 per second here).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_the_server_waits_instead_of_spinning_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("install");
    init(&dir);
    let server = Server::start(&dir, None).await;
    let pid = server.pid();
    let addr = server.url.trim_start_matches("http://").to_owned();

    // Leave the server a handful of descriptors beyond what it holds now.
    let limit = open_fds(pid) + 6;
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");

    // Silent clients: the server keeps each accepted one open until its header timeout
    // (15 s), so these use up its descriptors and the rest wait in the listen backlog.
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let exhausted = wavecast_test_support::wait_until(Duration::from_secs(10), || {
        let log = server.log();
        async move { log.contains("accepting connections fails") }
    })
    .await;
    assert!(exhausted, "the server never ran out of descriptors:\n{}", server.log());

    // While exhausted, the accept loop must not burn a core: a spinning loop uses about one
    // second of CPU per second. Allow a third of that for everything else the server does.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used < 100, "the server used {used} ticks of CPU in 3 s while out of descriptors:\n{}", server.log());
    // One warning per run of failures, not one per attempt (which would be hundreds). A run
    // may end and start again when a background task frees and retakes a descriptor.
    let warnings = server.log().matches("accepting connections fails").count();
    assert!((1..=5).contains(&warnings), "{warnings} warnings:\n{}", server.log());

    // Descriptors free up: the server serves again and says so.
    drop(clients);
    let health = format!("{}/healthz", server.url);
    let back = wavecast_test_support::wait_until(Duration::from_secs(20), || {
        let h = health.clone();
        async move { reqwest::get(&h).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    assert!(back, "the server did not recover once descriptors were free:\n{}", server.log());
    assert!(server.log().contains("accepting connections works again"), "{}", server.log());
    server.stop();
}
