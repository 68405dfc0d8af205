//! `fsyncs`: what one real agent flushes and writes to its own state for two installs of a
//! 1 MiB artifact — the first, onto nothing, and an update that keeps the previous version —
//! step by step, and for check-ins with nothing to do (issue 19: ≤ 9 flushes per install; none
//! for an idle check-in).
//!
//! The release agent runs under `strace -f -y`, which names the file behind every descriptor.
//! Steps are told apart by what the agent itself writes: each write to its state that queues
//! reports (`"state": "downloading"`, … `"succeeded"`) starts the step of the reports it names
//! (one step for several reports written together), the check-in that brought the assignment
//! starts the install, and the first check-in after the outcome ends it. Files are told apart
//! by where they live in the state directory (journal, outbox, trusted record, TUF metadata)
//! or next to the application's file (the model and its swap). Each step's flushes and bytes
//! are broken down by file, so what a step costs and where it goes are read in one place.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use wavecast_core::assignment::DeviceState;
use wavecast_core::rollout::RolloutState;

use crate::setup::{self, Proc};
use crate::strace::{self, Call};

/// The fsync family: every call that asks the kernel to make data durable.
const SYNCS: &[&str] = &["fsync", "fdatasync", "sync_file_range", "syncfs", "sync", "msync"];
const WRITES: &[&str] = &["write", "pwrite64", "writev", "pwritev", "pwritev2", "sendto", "sendmsg"];
const READS: &[&str] = &["read", "recvfrom", "recvmsg"];
const RENAMES: &[&str] = &["rename", "renameat", "renameat2"];

/// What a traced call did, as far as the count goes.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Sync,
    Write(u64),
    Rename,
    /// A request to the server: a check-in, or something else.
    Request {
        check_in: bool,
    },
    /// The status line of the server's answer.
    Answer(u16),
}

#[derive(Debug, Clone, PartialEq)]
struct Op {
    kind: Kind,
    /// The file written, flushed, or renamed to. A directory's flush is put down to the file
    /// last renamed into it, the one it makes durable.
    path: Option<String>,
    is_dir: bool,
    /// The states of the reports a write to a file queues, in order: the step they start.
    reports: Vec<DeviceState>,
}

/// The calls that count, in order. `is_dir` says whether a path is a directory.
fn ops(calls: &[Call], is_dir: &dyn Fn(&str) -> bool) -> Vec<Op> {
    let mut out = Vec::new();
    let mut renamed_into: std::collections::HashMap<String, String> = Default::default();
    let op = |kind, path| Op { kind, path, is_dir: false, reports: Vec::new() };
    for c in calls {
        let name = c.name.as_str();
        let file = c.fd_path().filter(|p| p.starts_with('/'));
        let text = || c.strings().into_iter().next().unwrap_or_default();
        out.push(if SYNCS.contains(&name) {
            let dir = file.is_some_and(is_dir);
            let path = match file {
                Some(d) if dir => renamed_into.get(d).cloned().or_else(|| Some(d.to_owned())),
                f => f.map(str::to_owned),
            };
            Op { is_dir: dir, ..op(Kind::Sync, path) }
        } else if RENAMES.contains(&name) {
            let to = c.strings().get(1).cloned();
            if let Some(parent) = to.as_deref().and_then(|t| Path::new(t).parent()) {
                renamed_into.insert(parent.to_string_lossy().into_owned(), to.clone().unwrap_or_default());
            }
            op(Kind::Rename, to)
        } else if WRITES.contains(&name) {
            let text = text();
            match file {
                Some(p) => Op {
                    reports: reported_states(&text),
                    ..op(Kind::Write(c.ret.unwrap_or(0).max(0) as u64), Some(p.to_owned()))
                },
                None if text.starts_with("GET /device/v1/assignments") => op(Kind::Request { check_in: true }, None),
                None if text.starts_with("GET ") || text.starts_with("POST ") => {
                    op(Kind::Request { check_in: false }, None)
                }
                None => continue,
            }
        } else if READS.contains(&name) && file.is_none() {
            let text = text();
            let Some(status) = text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)?.parse().ok()) else { continue };
            op(Kind::Answer(status), None)
        } else {
            continue;
        });
    }
    out
}

/// The states of the reports a write queues: a report file (`{"id": …, "state": "probing"}`),
/// or a record of the agent's journal log (`CHECKSUM {"reports": [{…, "state": …}], …}`). A
/// journal's own `last_outcome` names a state too, but queues no report, so it does not count.
fn reported_states(text: &str) -> Vec<DeviceState> {
    let json = match text.split_once(' ') {
        Some((sum, rest)) if sum.len() == 16 && sum.bytes().all(|b| b.is_ascii_hexdigit()) => rest,
        _ => text,
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json.trim_end()) else { return Vec::new() };
    let state = |r: &serde_json::Value| r["state"].as_str().and_then(|s| s.parse().ok());
    match value["reports"].as_array() {
        Some(reports) => reports.iter().filter_map(state).collect(),
        None if value["id"].is_string() => state(&value).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The steps of an install, named by the report that starts each, in order.
const STEPS: [(DeviceState, &str); 5] = [
    (DeviceState::Downloading, "downloading (TUF metadata, the artifact)"),
    (DeviceState::Verifying, "verifying"),
    (DeviceState::Installing, "installing (the swap)"),
    (DeviceState::Probing, "probing"),
    (DeviceState::Succeeded, "succeeded (outcome kept and delivered)"),
];

/// What starts the install: the check-in that brought the assignment.
const CHECK_IN: &str = "check-in that brought the assignment";

/// The trace cut into what happened: before the install, its steps, after it.
#[derive(Debug, PartialEq)]
struct Phases {
    startup: Range<usize>,
    idle_before: Range<usize>,
    steps: Vec<(String, Range<usize>)>,
    idle_after: Range<usize>,
}

/// The first install in `ops[from..]`.
fn phases(ops: &[Op], from: usize) -> anyhow::Result<Phases> {
    let check_ins: Vec<usize> =
        (from..ops.len()).filter(|&i| ops[i].kind == Kind::Request { check_in: true }).collect();
    let Some(downloading) = (from..ops.len()).find(|&i| ops[i].reports.contains(&DeviceState::Downloading)) else {
        bail!("the trace holds no report of `downloading` written to a file: did the install start?")
    };
    let install_start = check_ins.iter().copied().filter(|&i| i < downloading).max().unwrap_or(from);
    // Each write that queues the report of a step not begun yet starts a step; reports written
    // together make one step, named after all of them.
    let mut bounds = vec![(CHECK_IN.to_owned(), install_start)];
    let mut next = 0;
    for (i, op) in ops.iter().enumerate().skip(downloading) {
        let named: Vec<usize> = (next..STEPS.len()).filter(|&k| op.reports.contains(&STEPS[k].0)).collect();
        if let Some(&last) = named.last() {
            bounds.push((named.iter().map(|&k| STEPS[k].1).collect::<Vec<_>>().join(" + "), i));
            next = last + 1;
        }
        if next == STEPS.len() {
            break;
        }
    }
    let last = bounds.last().map_or(0, |b| b.1);
    let install_end = check_ins.iter().copied().find(|&i| i > last).unwrap_or(ops.len());
    let steps = bounds
        .iter()
        .enumerate()
        .map(|(k, (label, from))| (label.clone(), *from..bounds.get(k + 1).map_or(install_end, |b| b.1)))
        .collect();
    // Enrolling and the first check-in (the first doc, the first trusted record) are setup.
    let startup_end = check_ins.get(1).copied().filter(|&i| i <= install_start).unwrap_or(install_start);
    Ok(Phases {
        startup: from..startup_end,
        idle_before: startup_end..install_start,
        steps,
        idle_after: install_end..ops.len(),
    })
}

/// Where a path belongs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// The agent's own state, by kind.
    State(String),
    /// The application's file: the artifact, its partial download, the kept previous version.
    Model,
    /// The agent's log (stderr): not state.
    Log,
}

/// Sorts paths under the agent's directories.
struct Layout {
    state: PathBuf,
    app: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn place(&self, path: &str) -> Place {
        let p = Path::new(path);
        if p == self.log {
            return Place::Log;
        }
        if p.starts_with(&self.app) {
            return Place::Model;
        }
        let Ok(rel) = p.strip_prefix(&self.state) else { return Place::State(format!("elsewhere: {path}")) };
        let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        // Temporary files are `.NAME.tmp` beside the file they replace.
        let name = first.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(&first);
        Place::State(
            match name {
                "" => "state directory",
                "artifacts" => "journal",
                "outbox" => "outbox",
                "tuf" => "TUF metadata (tough's datastore)",
                "trusted.json" => "trusted record",
                "journal.log" => "journal log (journal, outbox, trusted record)",
                "delivered.log" => "delivered reports (not flushed)",
                "device.json" => "identity",
                other => other,
            }
            .to_owned(),
        )
    }
}

/// Flushes and writes in a stretch of the trace.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    syncs: u64,
    dir_syncs: u64,
    /// Bytes written to the agent's state (everything but the model and the log).
    state_bytes: u64,
    model_bytes: u64,
    renames: u64,
    check_ins: u64,
    /// Flushes and bytes by place.
    by_place: BTreeMap<Place, (u64, u64)>,
}

impl Figures {
    fn add(&mut self, other: Figures) {
        self.syncs += other.syncs;
        self.dir_syncs += other.dir_syncs;
        self.state_bytes += other.state_bytes;
        self.model_bytes += other.model_bytes;
        self.renames += other.renames;
        self.check_ins += other.check_ins;
        for (p, (s, b)) in other.by_place {
            let e = self.by_place.entry(p).or_default();
            e.0 += s;
            e.1 += b;
        }
    }
}

fn figures(ops: &[Op], range: Range<usize>, layout: &Layout) -> Figures {
    let mut f = Figures::default();
    for op in &ops[range] {
        let place = op.path.as_deref().map(|p| layout.place(p));
        match (&op.kind, &place) {
            (_, Some(Place::Log)) => {}
            (Kind::Sync, _) => {
                f.syncs += 1;
                f.dir_syncs += u64::from(op.is_dir);
                if let Some(p) = place {
                    f.by_place.entry(p).or_default().0 += 1;
                }
            }
            (Kind::Write(n), Some(p)) => {
                if *p == Place::Model {
                    f.model_bytes += n;
                } else {
                    f.state_bytes += n;
                    f.by_place.entry(p.clone()).or_default().1 += n;
                }
            }
            (Kind::Write(_), None) => {}
            (Kind::Rename, _) => f.renames += 1,
            (Kind::Request { check_in }, _) => f.check_ins += u64::from(*check_in),
            (Kind::Answer(_), _) => {}
        }
    }
    f
}

/// Figures for the check-ins in `range` (which starts at one), split by the server's answer:
/// those answered 304, and those that brought a new doc (with nothing to install in it).
fn by_answer(ops: &[Op], range: Range<usize>, layout: &Layout) -> (Figures, Figures) {
    let starts: Vec<usize> = range.clone().filter(|&i| ops[i].kind == Kind::Request { check_in: true }).collect();
    let (mut quiet, mut changed) = (Figures::default(), Figures::default());
    for (k, &from) in starts.iter().enumerate() {
        let cycle = from..starts.get(k + 1).copied().unwrap_or(range.end);
        let answer = ops[cycle.clone()].iter().find_map(|o| match o.kind {
            Kind::Answer(s) => Some(s),
            _ => None,
        });
        let into = if answer == Some(304) { &mut quiet } else { &mut changed };
        into.add(figures(ops, cycle, layout));
    }
    (quiet, changed)
}

fn bytes(n: u64) -> String {
    if n < 10_000 { format!("{n} B") } else { format!("{:.1} KiB", n as f64 / 1024.0) }
}

/// The agent under strace; both are stopped when this is dropped.
struct Traced {
    strace: Proc,
    trace: PathBuf,
    agent: Option<u32>,
}

impl Traced {
    /// The agent's pid: the first line of the trace is its `execve`.
    async fn agent_pid(&mut self) -> anyhow::Result<u32> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
                self.agent = Some(pid);
                return Ok(pid);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("strace wrote nothing to {}", self.trace.display())
    }

    /// Stops the agent as a service manager would (SIGTERM) and waits for strace to finish.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.agent {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.strace.0.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "the agent did not stop within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.agent = None;
        Ok(())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = self.agent {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

pub async fn run(root: &Path, check_ins: u32) -> anyhow::Result<()> {
    let found = Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    ensure!(found.is_ok_and(|s| s.success()), "fsyncs needs strace (Debian: apt-get install strace)");
    let root = std::fs::canonicalize(root)?;
    let file = root.join("model-1mib.bin");
    setup::write_file(&file, 1 << 20)?;
    let inst = setup::install(&root, None).await?;
    setup::publish(&inst, &file)?;
    let token = setup::enroll_token(&inst, "bench")?;
    let probe = setup::ok_probe(&root)?;
    let cfg = setup::agent_config(&root, &inst, &token, "device-1", &probe)?;
    let home = root.join("device-1");
    let layout = Layout { state: home.join("state"), app: home.join("app"), log: root.join("agent.log") };

    let trace = root.join("agent.strace");
    let strace = Command::new("strace")
        .args(["-f", "-ttt", "-y", "-s", "8192", "-e", &format!("trace={}", strace::TRACED), "-o"])
        .arg(&trace)
        .arg("--")
        .arg(setup::bin("wavecast-agent")?)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&layout.log)?)
        .spawn()?;
    let mut traced = Traced { strace: Proc(strace), trace: trace.clone(), agent: None };
    traced.agent_pid().await?;
    // Idle check-ins every 100 ms, a few more than asked for: strace slows the agent down.
    let idle = Duration::from_millis(150) * check_ins + Duration::from_millis(500);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !layout.state.join("device.json").exists() {
        ensure!(Instant::now() < deadline, "the agent did not enroll within a minute; see {}", layout.log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(idle).await;
    // The first install, onto nothing; then an update, which keeps the first as the previous
    // version.
    let update = root.join("model-1mib-v2.bin");
    setup::write_file(&update, 1 << 20)?;
    {
        use std::os::unix::fs::FileExt as _;
        std::fs::OpenOptions::new().write(true).open(&update)?.write_all_at(b"update", 8)?;
    }
    for (version, file) in [("1.0.0", None), ("2.0.0", Some(&update))] {
        if let Some(file) = file {
            setup::publish_version(&inst, file, version)?;
        }
        let created = setup::create_rollout_of(&inst, version, "bench", "exec:ok", &[])?;
        let r = setup::wait_rollout(&inst, &created.id, Duration::from_millis(20), Duration::from_secs(300)).await?;
        ensure!(r.state == RolloutState::Completed, "the install of {version} did not succeed: {r:?}");
        tokio::time::sleep(idle).await;
    }
    traced.stop().await?;
    drop(inst.server);

    let text = std::fs::read_to_string(&trace).with_context(|| format!("reading {}", trace.display()))?;
    let ops = ops(&strace::calls(&text), &|p| Path::new(p).is_dir());
    let first = phases(&ops, 0)?;
    let second = phases(&ops, first.idle_after.start)?;
    let tag = "fsyncs";
    println!(
        "{tag}: one real agent, two installs of a 1 MiB artifact with a probe that passes, under strace -f; fsync family = {}",
        SYNCS.join(", ")
    );
    let row = |label: &str, f: &Figures| {
        println!(
            "{tag}:   {label:<58} {:>13} {:>13} {:>8}",
            format!("{} ({})", f.syncs, f.dir_syncs),
            bytes(f.state_bytes),
            f.renames
        )
    };
    // What each file took in a step (or the install): the model's bytes are the artifact's.
    let by_file = |f: &Figures| {
        for (place, (syncs, written)) in &f.by_place {
            let (name, written) = match place {
                Place::State(n) => (n.as_str(), bytes(*written)),
                Place::Model => ("the model and its swap", format!("({} of artifact)", bytes(f.model_bytes))),
                Place::Log => continue,
            };
            println!("{tag}:       {name:<54} {syncs:>13} {written:>13}");
        }
    };
    let mut totals = Vec::new();
    for (what, install) in
        [("first install (nothing at the path)", &first), ("update (the previous version kept)", &second)]
    {
        println!("{tag}: {what}");
        println!(
            "{tag}:   {:<58} {:>13} {:>13} {:>8}",
            "step, then by file", "fsyncs (dirs)", "state bytes", "renames"
        );
        let mut sum = Figures::default();
        for (label, range) in &install.steps {
            let f = figures(&ops, range.clone(), &layout);
            row(label, &f);
            by_file(&f);
            sum.add(f);
        }
        row("per install", &sum);
        by_file(&sum);
        totals.push((what, sum));
    }
    for (what, sum) in &totals {
        println!(
            "{tag}: per install, {what}: {} fsync-family calls (target ≤ 9), {} written to the agent's state (a directory's flush counts for the file renamed into it)",
            sum.syncs,
            bytes(sum.state_bytes)
        );
    }
    let between = first.idle_after.start..second.steps[0].1.start;
    let (quiet_between, changed_between) = by_answer(&ops, between, &layout);
    let (quiet_before, changed_before) = by_answer(&ops, first.idle_before.clone(), &layout);
    let (mut quiet_after, mut changed_after) = by_answer(&ops, second.idle_after.clone(), &layout);
    quiet_after.add(quiet_between);
    changed_after.add(changed_between);
    let line = |f: &Figures| {
        format!(
            "{} check-ins: {} fsyncs, {} written ({:.2} fsyncs per check-in)",
            f.check_ins,
            f.syncs,
            bytes(f.state_bytes),
            f.syncs as f64 / f.check_ins.max(1) as f64
        )
    };
    println!(
        "{tag}: idle check-ins (answered 304), before the installs {}; after them {} (target: none)",
        line(&quiet_before),
        line(&quiet_after)
    );
    let mut changed = changed_before;
    changed.add(changed_after);
    if changed.check_ins > 0 {
        println!(
            "{tag}: check-ins that brought a new doc with nothing to install (the rollout's end changes every device's doc): {}",
            line(&changed)
        );
    }
    let startup = figures(&ops, first.startup.clone(), &layout);
    println!(
        "{tag}: enrolling and the first check-in: {} fsyncs, {} written",
        startup.syncs,
        bytes(startup.state_bytes)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout { state: "/d/state".into(), app: "/d/app".into(), log: "/d/agent.log".into() }
    }

    /// A trace as the agent writes it, shortened: `S` lines are filled in with a pid and time.
    fn trace(lines: &[&str]) -> Vec<Op> {
        let text: String = lines.iter().enumerate().map(|(i, l)| format!("7 {}.0 {l}\n", 100 + i)).collect();
        ops(&strace::calls(&text), &|p| !p.contains('.') && !p.ends_with("model.bin"))
    }

    const GET: &str =
        r#"writev(9<socket:[1]>, [{iov_base="GET /device/v1/assignments HTTP/1.1\r\n", iov_len=37}], 1) = 37"#;
    const POST: &str =
        r#"writev(9<socket:[1]>, [{iov_base="POST /device/v1/reports HTTP/1.1\r\n", iov_len=34}], 1) = 34"#;

    fn report(state: &str) -> String {
        format!(
            r#"write(5</d/state/outbox/.1.json.tmp>, "{{\n  \"id\": \"ab\",\n  \"state\": \"{state}\"\n}}", 40) = 40"#
        )
    }

    /// A record of the agent's journal log queueing reports of `states`, with a journal whose
    /// last outcome names a state of its own.
    fn record(states: &[&str]) -> String {
        let reports: Vec<String> = states.iter().map(|s| format!(r#"{{\"id\":\"ab\",\"state\":\"{s}\"}}"#)).collect();
        let text = format!(
            r#"0123456789abcdef {{\"reports\":[{}],\"journals\":{{\"model\":{{\"last_outcome\":{{\"state\":\"failed\"}}}}}}}}\n"#,
            reports.join(",")
        );
        format!(r#"write(5</d/state/journal.log>, "{text}", 90) = 90"#)
    }

    #[test]
    fn writes_name_the_reports_they_queue() {
        use DeviceState::*;
        for (text, want) in [
            ("{\"id\": \"x\", \"state\":\"probing\"}", vec![Probing]),
            ("{\n  \"id\": \"x\",\n  \"state\" :  \"succeeded\"\n}", vec![Succeeded]),
            (
                "0123456789abcdef {\"reports\":[{\"state\":\"verifying\"},{\"state\":\"installing\"}]}\n",
                vec![Verifying, Installing],
            ),
            // A journal names states that are not reports.
            ("{\"phase\": \"probing\", \"last_outcome\": {\"state\": \"failed\"}}", vec![]),
            ("0123456789abcdef {\"journals\":{\"m\":{\"last_outcome\":{\"state\":\"failed\"}}}}\n", vec![]),
            ("{\"id\": \"x\", \"state\": \"no-such-state\"}", vec![]),
            ("{\"id\": \"x\", \"state\": \"downl", vec![]),
        ] {
            assert_eq!(reported_states(text), want, "{text}");
        }
    }

    #[test]
    fn reports_written_together_make_one_step() {
        let ops = trace(&[
            GET,
            &record(&["downloading"]),
            "fsync(5</d/state/journal.log>) = 0",
            &record(&["verifying", "installing"]),
            "fsync(5</d/state/journal.log>) = 0",
            "fsync(8</d/app>) = 0",
            &record(&["probing"]),
            "fsync(5</d/state/journal.log>) = 0",
            &record(&["succeeded"]),
            "fsync(5</d/state/journal.log>) = 0",
            GET,
        ]);
        let p = phases(&ops, 0).unwrap();
        let labels: Vec<&str> = p.steps.iter().map(|(l, _)| l.as_str()).collect();
        let merged = format!("{} + {}", STEPS[1].1, STEPS[2].1);
        assert_eq!(labels, [CHECK_IN, STEPS[0].1, &merged, STEPS[3].1, STEPS[4].1]);
        assert_eq!(p.steps[2].1, 3..6);
        let l = layout();
        let swap = figures(&ops, p.steps[2].1.clone(), &l);
        assert_eq!((swap.syncs, swap.dir_syncs), (2, 1));
        assert_eq!(
            swap.by_place.get(&Place::State("journal log (journal, outbox, trusted record)".into())),
            Some(&(1, 90))
        );
        assert_eq!(p.idle_after, 10..11);
    }

    #[test]
    fn the_trace_is_cut_at_the_reports_and_the_check_ins_around_them() {
        let lines: Vec<String> = vec![
            "write(5</d/state/device.json>, \"{}\", 2) = 2".into(), // 0: enrolling
            GET.into(),                                             // 1: first check-in
            "fsync(6</d/state/trusted.json>) = 0".into(),           // 2
            GET.into(),                                             // 3: idle
            GET.into(),                                             // 4: brings the assignment
            "fsync(6</d/state/artifacts/.model.json.tmp>) = 0".into(),
            report("downloading"), // 6
            "fsync(5</d/state/outbox>) = 0".into(),
            POST.into(),
            "write(8</d/app/.model.bin.partial>, \"xx\", 1048576) = 1048576".into(),
            report("verifying"), // 10
            report("installing"),
            "rename(\"/d/app/.model.bin.partial\", \"/d/app/model.bin\") = 0".into(),
            "fsync(8</d/app>) = 0".into(),
            report("probing"), // 14
            report("succeeded"),
            "write(2</d/agent.log>, \"WARN\", 4) = 4".into(),
            POST.into(),
            GET.into(), // 18: idle again
            "fsync(6</d/state/outbox>) = 0".into(),
            GET.into(),
        ];
        let ops = trace(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let p = phases(&ops, 0).unwrap();
        assert_eq!(p.startup, 0..3);
        assert_eq!(p.idle_before, 3..4);
        let steps: Vec<(&str, Range<usize>)> = p.steps.iter().map(|(l, r)| (l.as_str(), r.clone())).collect();
        assert_eq!(
            steps,
            [
                (CHECK_IN, 4..6),
                (STEPS[0].1, 6..10),
                (STEPS[1].1, 10..11),
                (STEPS[2].1, 11..14),
                (STEPS[3].1, 14..15),
                (STEPS[4].1, 15..18)
            ]
        );
        assert_eq!(p.idle_after, 18..21);

        let l = layout();
        let download = figures(&ops, p.steps[1].1.clone(), &l);
        assert_eq!(
            (download.syncs, download.dir_syncs, download.state_bytes, download.model_bytes),
            (1, 1, 40, 1_048_576)
        );
        let swap = figures(&ops, p.steps[3].1.clone(), &l);
        assert_eq!((swap.syncs, swap.dir_syncs, swap.renames), (1, 1, 1));
        assert_eq!(swap.by_place.get(&Place::Model), Some(&(1, 0)));
        let done = figures(&ops, p.steps[5].1.clone(), &l);
        assert_eq!(done.state_bytes, 40, "the log is not state");
        let after = figures(&ops, p.idle_after.clone(), &l);
        assert_eq!((after.check_ins, after.syncs), (2, 1));
        assert_eq!(figures(&ops, p.idle_before.clone(), &l).check_ins, 1);
    }

    #[test]
    fn check_ins_are_told_apart_by_the_answer_and_a_directory_flush_counts_for_its_file() {
        let ops = trace(&[
            GET,
            r#"recvfrom(9<socket:[1]>, "HTTP/1.1 304 Not Modified\r\n", 8192, 0, NULL, NULL) = 27"#,
            GET,
            "read(9<socket:[1]>, <unfinished ...>",
            r#"<... read resumed>"HTTP/1.1 200 OK\r\n", 8192) = 17"#,
            r#"write(5</d/state/.trusted.json.tmp>, "{}", 10) = 10"#,
            "fsync(5</d/state/.trusted.json.tmp>) = 0",
            r#"rename("/d/state/.trusted.json.tmp", "/d/state/trusted.json") = 0"#,
            "fsync(5</d/state>) = 0",
            GET,
            r#"read(9<socket:[1]>, "HTTP/1.1 304 Not Modified\r\n", 8192) = 27"#,
        ]);
        let (quiet, changed) = by_answer(&ops, 0..ops.len(), &layout());
        assert_eq!((quiet.check_ins, quiet.syncs, quiet.state_bytes), (2, 0, 0));
        assert_eq!((changed.check_ins, changed.syncs, changed.dir_syncs, changed.renames), (1, 2, 1, 1));
        assert_eq!(
            changed.by_place.into_iter().collect::<Vec<_>>(),
            [(Place::State("trusted record".into()), (2, 10))]
        );
    }

    #[test]
    fn a_trace_without_an_install_is_refused() {
        assert!(phases(&trace(&[GET, GET]), 0).is_err());
    }

    #[test]
    fn paths_are_sorted_by_what_they_hold() {
        let l = layout();
        for (path, want) in [
            ("/d/state/artifacts/model.json", Place::State("journal".into())),
            ("/d/state/artifacts/.model.json.tmp", Place::State("journal".into())),
            ("/d/state/outbox", Place::State("outbox".into())),
            ("/d/state/.trusted.json.tmp", Place::State("trusted record".into())),
            ("/d/state/journal.log", Place::State("journal log (journal, outbox, trusted record)".into())),
            ("/d/state/.journal.log.tmp", Place::State("journal log (journal, outbox, trusted record)".into())),
            ("/d/state/tuf/timestamp.json", Place::State("TUF metadata (tough's datastore)".into())),
            ("/d/state", Place::State("state directory".into())),
            ("/d/state/new-file", Place::State("new-file".into())),
            ("/d/app/.model.bin.partial", Place::Model),
            ("/d/agent.log", Place::Log),
            ("/tmp/x", Place::State("elsewhere: /tmp/x".into())),
        ] {
            assert_eq!(l.place(path), want, "{path}");
        }
    }
}
