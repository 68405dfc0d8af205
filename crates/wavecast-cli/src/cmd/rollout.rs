//! `wavecast rollout`: create, inspect, watch and steer rollouts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use std::io::IsTerminal as _;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wavecast_api::{
    AbortMode, AbortRequest, CreateRollout, DeviceProgress, Failures, InProgress, ResumeRequest, Rollout, StateCounts,
    Wave, WaveState,
};
use wavecast_core::rollout::{Gate, RolloutState};

use crate::output;
use crate::{Client, JsonRemote, Remote};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start rolling an artifact version out to a group, in waves.
    #[command(
        after_help = "Example: a gated canary at 10%, then half the group, then all of it:\n  wavecast rollout create --artifact yolo-v8n@2.1.0 \
--group plant-7 --waves 10,50,100 --gate 1 --halt-after 1 --probe exec:check-model\n\n\
Waves are cumulative percentages of the group. A wave opens by itself once the earlier waves \
are settled and healthy, unless it has a --gate: then it waits for `wavecast rollout approve`. \
--gate 1 gates the canary itself. When the failures counted since the last acknowledgement \
reach --halt-after, the rollout pauses fleet-wide.\n\nProbes: exec:NAME [ARGS…] runs the \
device's allowlisted binary NAME; http(s)://… must answer 2xx from a host the device lists; \
file:NAME names a readiness file on the device's own list, which the application writes after \
the swap."
    )]
    #[command(mut_arg("json", |a| a.help("Print the new rollout as JSON")))]
    Create {
        /// The artifact version, NAME@VERSION.
        #[arg(long, value_name = "NAME@VERSION")]
        artifact: String,
        /// The device group.
        #[arg(long)]
        group: String,
        /// Cumulative wave percentages, comma-separated; the last must be 100.
        #[arg(long, value_delimiter = ',', default_value = "100")]
        waves: Vec<u8>,
        /// Make wave K (1-based) wait for approval. Repeatable.
        #[arg(long = "gate", value_name = "K")]
        gates: Vec<usize>,
        /// Pause after this many failed devices (since the last acknowledgement).
        #[arg(long, default_value_t = 1)]
        halt_after: u32,
        /// A device that does not pick up its assignment in this time is unreachable; one that
        /// started but does not finish in it is timed out (a failure).
        #[arg(long, default_value = "10m", value_parser = wavecast_core::duration::parse_duration)]
        device_timeout: Duration,
        /// The health probe devices run after the swap.
        #[arg(long)]
        probe: String,
        /// Timeout of one probe attempt.
        #[arg(long, default_value = "30s", value_parser = wavecast_core::duration::parse_duration)]
        probe_timeout: Duration,
        /// Probe attempts; healthy if any passes.
        #[arg(long, default_value_t = 3)]
        probe_attempts: u32,
        /// Pause between probe attempts.
        #[arg(long, default_value = "5s", value_parser = wavecast_core::duration::parse_duration)]
        probe_interval: Duration,
        /// Pause before the first probe attempt (model warm-up).
        #[arg(long, default_value = "0s", value_parser = wavecast_core::duration::parse_duration)]
        probe_initial_delay: Duration,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// List rollouts, newest first.
    List(JsonRemote),
    /// Show a rollout's plan, live counts, the devices it waits for with their progress, the
    /// devices that failed with why, and what to run next.
    #[command(mut_arg("json", |a| a.help("Print JSON (with `next_commands`: what to run next)")))]
    Show {
        /// Rollout id (or any unique start of one).
        id: String,
        #[command(flatten)]
        args: JsonRemote,
    },
    /// Follow a rollout until it ends or needs an operator; exit 0 only if it completed.
    #[command(after_help = "On a terminal: a progress bar per wave. Otherwise (a pipe, a CI log): one \
plain line each time the state or a wave's counts change, from the first poll on.\n\n\
Without --until-done, watch stops when the rollout needs an operator (paused by the halt rule, \
or waiting at a gate) and says what to run next.\n\n\
Exit status: 0 completed; 3 completed with failures; 4 aborted; 5 paused; 6 waiting for \
approval; 1 error.")]
    Watch {
        /// Rollout id (or any unique start of one).
        id: String,
        /// How often to poll.
        #[arg(long, default_value = "1s", value_parser = wavecast_core::duration::parse_duration)]
        interval: Duration,
        /// Keep following through pauses and gates until the rollout completes or is aborted.
        #[arg(long)]
        until_done: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Open the next wave, which waits at a manual gate.
    Approve {
        /// Rollout id (or any unique start of one).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Acknowledge the failures counted so far and continue a paused rollout.
    Resume {
        /// Rollout id (or any unique start of one).
        id: String,
        /// Acknowledge the counted failures (required: the failed devices stay on their
        /// previous version).
        #[arg(long, required = true)]
        ack: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a rollout: --keep leaves devices as they are; --revert sends every device it
    /// updated back to its previous version (from the device's local copy).
    Abort {
        /// Rollout id (or any unique start of one).
        id: String,
        /// Devices keep what they have.
        #[arg(long, conflicts_with = "revert")]
        keep: bool,
        /// Updated devices go back to their previous version.
        #[arg(long)]
        revert: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

pub async fn run(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCommand::Create {
            artifact,
            group,
            waves,
            gates,
            halt_after,
            device_timeout,
            probe,
            probe_timeout,
            probe_attempts,
            probe_interval,
            probe_initial_delay,
            args: JsonRemote { json, remote },
        } => {
            wavecast_core::TargetName::parse(&artifact)?;
            probe.parse::<wavecast_core::probe::ProbeKind>()?;
            wavecast_core::rollout::Plan::new(&waves, &gates, halt_after, device_timeout.as_millis() as u64)?;
            let body = CreateRollout {
                artifact,
                group,
                waves,
                gates,
                halt_after: Some(halt_after),
                device_timeout_ms: Some(device_timeout.as_millis() as u64),
                probe,
                probe_timeout_ms: Some(probe_timeout.as_millis() as u64),
                probe_attempts: Some(probe_attempts),
                probe_interval_ms: Some(probe_interval.as_millis() as u64),
                probe_initial_delay_ms: Some(probe_initial_delay.as_millis() as u64),
            };
            let created: Rollout = remote.client()?.post("/api/v1/rollouts", &body).await?;
            for warning in &created.warnings {
                eprintln!("warning: {warning}");
            }
            if json {
                output::json(&created)?;
            } else {
                println!("{}", render(&created));
            }
        }
        RolloutCommand::List(JsonRemote { json, remote }) => {
            let list: Vec<Rollout> = remote.client()?.get("/api/v1/rollouts").await?;
            output::list(json, &list, &["ID", "ARTIFACT", "GROUP", "STATE", "SUCCEEDED", "CREATED"], |r| {
                vec![
                    r.id.clone(),
                    r.artifact.to_string(),
                    r.group.to_string(),
                    r.state.to_string(),
                    format!("{}/{}", r.counts.succeeded, r.device_count),
                    output::time(r.created_at),
                ]
            })?;
        }
        RolloutCommand::Show { id, args: JsonRemote { json, remote } } => {
            let r: Rollout = remote.client()?.get(&format!("/api/v1/rollouts/{}", path_id(&id)?)).await?;
            if json {
                let mut value = serde_json::to_value(&r)?;
                if let Some(fields) = value.as_object_mut() {
                    fields.insert("next_commands".into(), serde_json::json!(next_commands(&r)));
                }
                output::json(&value)?;
            } else {
                println!("{}", render(&r));
                let next = next_commands(&r);
                if !next.is_empty() {
                    println!("  next: {}", next.join("\n     or "));
                }
            }
        }
        RolloutCommand::Watch { id, interval, until_done, remote } => {
            return watch(&remote, &id, interval, until_done).await;
        }
        RolloutCommand::Approve { id, remote } => {
            let r: Rollout = remote
                .client()?
                .post(&format!("/api/v1/rollouts/{}/approve", path_id(&id)?), &serde_json::json!({}))
                .await?;
            println!("{}", render(&r));
        }
        RolloutCommand::Resume { id, ack, remote } => {
            let r: Rollout = remote
                .client()?
                .post(&format!("/api/v1/rollouts/{}/resume", path_id(&id)?), &ResumeRequest { ack })
                .await?;
            println!("{}", render(&r));
        }
        RolloutCommand::Abort { id, keep, revert, remote } => {
            if !keep && !revert {
                // A usage error, like clap's own (exit 2), in words that say what to do.
                clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!(
                        "choose --keep or --revert: `wavecast rollout abort {id} --keep` leaves devices on what they \
                         run now; `--revert` sends every device the rollout updated back to its previous version\n"
                    ),
                )
                .exit();
            }
            let mode = if revert { AbortMode::Revert } else { AbortMode::Keep };
            let r: Rollout = remote
                .client()?
                .post(&format!("/api/v1/rollouts/{}/abort", path_id(&id)?), &AbortRequest { mode })
                .await?;
            println!("{}", render(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn path_id(id: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{id:?} is not a rollout id (like r-7f3a09c2)"
    );
    Ok(id)
}

/// One wave's plan in words, like "canary, manual gate".
fn describe_wave(i: usize, total: usize, manual: bool) -> String {
    match (i, manual) {
        (0, true) => "canary, manual gate".into(),
        (0, false) => "canary".into(),
        (_, true) => "manual gate".into(),
        (_, false) if i + 1 == total => "auto".into(),
        (_, false) => format!("auto when wave {i} healthy"),
    }
}

/// A wave's live counts: "31/48 succeeded · 1 failed · 2 unreachable".
fn describe_counts(w: &Wave) -> String {
    match w.state {
        WaveState::Pending => return "pending".into(),
        WaveState::WaitingApproval => return "waiting for approval".into(),
        WaveState::Open | WaveState::Settled => {}
    }
    let c: &StateCounts = &w.counts;
    let mut parts = vec![format!("{}/{} succeeded", c.succeeded, w.devices)];
    for (n, label) in [
        (c.failed, "failed"),
        (c.timed_out, "timed out"),
        (c.unreachable, "unreachable"),
        (c.reverted, "reverted"),
        (c.revert_skipped, "revert skipped"),
        (c.removed, "removed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    let in_progress = c.in_progress();
    if in_progress > 0 {
        parts.push(format!("{in_progress} in progress"));
    }
    parts.join(" · ")
}

/// The brief's rendering of a rollout.
pub fn render(r: &Rollout) -> String {
    let mut out = format!("rollout {} — {} → {}            {}\n", r.id, r.artifact, r.group, r.state);
    for (i, w) in r.waves.iter().enumerate() {
        out.push_str(&format!(
            "  wave {}/{} {:>3}%  {:<24}  {}\n",
            i + 1,
            r.waves.len(),
            w.percent,
            describe_wave(i, r.waves.len(), w.gate == Gate::Manual),
            describe_counts(w)
        ));
    }
    let halt = r.halt_after;
    out.push_str(&format!(
        "  halt rule: pause after {halt} failed device{}  ({} counted)",
        if halt == 1 { "" } else { "s" },
        r.failures_counted
    ));
    if let Some(mode) = r.abort_mode {
        out.push_str(&format!("\n  aborted: {mode}"));
    }
    if r.state == RolloutState::CompletedWithFailures {
        let c = &r.counts;
        out.push_str(&format!(
            "\n  COMPLETED WITH FAILURES: {} failed, {} timed out, {} of {} devices succeeded",
            c.failed, c.timed_out, c.succeeded, r.device_count
        ));
    }
    if let Some(at_work) = &r.in_progress {
        out.push_str(&render_in_progress(at_work));
    }
    if let Some(failures) = &r.failures {
        out.push_str(&render_failures(failures));
    }
    out
}

/// What an operator runs next for a rollout in its state, with its id: resume or abort a
/// paused one, approve or abort one at a gate; nothing for one that runs or ended.
pub fn next_commands(r: &Rollout) -> Vec<String> {
    let id = &r.id;
    let abort = format!("wavecast rollout abort {id} --keep|--revert");
    match r.state {
        RolloutState::Paused => vec![format!("wavecast rollout resume {id} --ack"), abort],
        RolloutState::WaitingApproval => vec![format!("wavecast rollout approve {id}"), abort],
        RolloutState::Running
        | RolloutState::Completed
        | RolloutState::CompletedWithFailures
        | RolloutState::Aborted => Vec::new(),
    }
}

/// The devices that failed or timed out, one line each with why, and how many more there are.
fn render_failures(failures: &Failures) -> String {
    if failures.total == 0 {
        return String::new();
    }
    let n = failures.total;
    let mut out = format!("\n  failed or timed out: {n} device{}", if n == 1 { "" } else { "s" });
    let width = failures.devices.iter().map(|d| d.device.as_str().len()).max().unwrap_or(0);
    for d in &failures.devices {
        out.push_str(&format!(
            "\n    {:<width$}  wave {}  {:<9}  {}",
            d.device.as_str(),
            d.wave,
            d.state.as_str(),
            d.reason.as_deref().unwrap_or("(no reason given)")
        ));
        if let Some(check) = d.probe_result.as_ref().and_then(wavecast_core::probe::describe_result) {
            out.push_str(&format!("\n    {:<width$}  {check}", ""));
        }
    }
    let unlisted = n.saturating_sub(failures.devices.len() as u64);
    if unlisted > 0 {
        out.push_str(&format!("\n    … and {unlisted} more (`wavecast device show NAME` for any device)"));
    }
    out
}

/// The devices a rollout waits for, one line each: where they are, how far they got or what
/// they wait out, and when they were last heard from.
fn render_in_progress(at_work: &InProgress) -> String {
    if at_work.total == 0 {
        return String::new();
    }
    let mut out = format!("\n  in progress: {} device{}", at_work.total, if at_work.total == 1 { "" } else { "s" });
    let width = at_work.devices.iter().map(|d| d.device.as_str().len()).max().unwrap_or(0);
    for d in &at_work.devices {
        out.push_str(&format!("\n    {:<width$}  wave {}  {:<11}", d.device.as_str(), d.wave, d.state.as_str()));
        if let Some(p) = &d.progress {
            out.push_str(&format!("  {}", describe_progress(p)));
        }
        out.push_str(&format!("  (heard {})", output::time(d.last_heard_at)));
    }
    let unlisted = at_work.total.saturating_sub(at_work.devices.len() as u64);
    if unlisted > 0 {
        out.push_str(&format!("\n    … and {unlisted} more"));
    }
    out
}

/// A working device's latest heartbeat in words: "waiting: disk — needs 812 MiB, …" or
/// "downloading 120.0 MiB of 812.0 MiB (14%), 1.2 MiB/s".
pub(crate) fn describe_progress(p: &DeviceProgress) -> String {
    if let Some(w) = &p.waiting {
        return format!("waiting: {} — {}", w.class, w.reason);
    }
    if p.bytes_total == 0 {
        return p.state.to_string();
    }
    let percent = p.bytes_done.saturating_mul(100) / p.bytes_total;
    let mut out =
        format!("{} {} of {} ({percent}%)", p.state, output::bytes(p.bytes_done), output::bytes(p.bytes_total));
    if p.bytes_per_sec > 0 {
        out.push_str(&format!(", {}/s", output::bytes(p.bytes_per_sec)));
    }
    out
}

/// How `rollout watch` exits for a rollout it stopped following in `state`.
fn watch_exit(state: RolloutState) -> ExitCode {
    ExitCode::from(match state {
        RolloutState::Completed => 0,
        RolloutState::Running => 1,
        RolloutState::CompletedWithFailures => 3,
        RolloutState::Aborted => 4,
        RolloutState::Paused => 5,
        RolloutState::WaitingApproval => 6,
    })
}

/// Whether `watch` stops following a rollout in `state`: once it ended, or, unless told to go on
/// until it is done, once it needs an operator.
fn watch_stops(state: RolloutState, until_done: bool) -> bool {
    state.is_terminal() || (!until_done && matches!(state, RolloutState::Paused | RolloutState::WaitingApproval))
}

/// One plain line for a log: the state, each wave's settled devices and counts, the halt rule.
fn watch_line(r: &Rollout) -> String {
    let waves: Vec<String> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!(
                "wave {}/{} {}/{} settled ({})",
                i + 1,
                r.waves.len(),
                w.counts.settled(),
                w.devices,
                describe_counts(w)
            )
        })
        .collect();
    format!("{}  {}  failures {}/{}", r.state, waves.join("; "), r.failures_counted, r.halt_after)
}

async fn watch(remote: &Remote, id: &str, interval: Duration, until_done: bool) -> anyhow::Result<ExitCode> {
    let client = remote.client()?;
    let path = format!("/api/v1/rollouts/{}", path_id(id)?);
    if !std::io::stdout().is_terminal() {
        return watch_plain(&client, &path, interval, until_done).await;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template("  wave {prefix:<5} [{bar:30}] {pos}/{len} settled  {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let header = multi.add(ProgressBar::new_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    loop {
        let r: Rollout = client.get(&path).await.context("polling the rollout")?;
        if bars.is_empty() {
            for (i, w) in r.waves.iter().enumerate() {
                let bar = multi.add(ProgressBar::new(w.devices));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{}/{}", i + 1, r.waves.len()));
                bars.push(bar);
            }
        }
        header.set_message(format!(
            "rollout {} — {} → {}  {}  ({} of {} failures counted)",
            r.id, r.artifact, r.group, r.state, r.failures_counted, r.halt_after
        ));
        header.tick();
        for (bar, w) in bars.iter().zip(&r.waves) {
            bar.set_position(w.counts.settled());
            bar.set_message(describe_counts(w));
        }
        if watch_stops(r.state, until_done) {
            for bar in &bars {
                bar.finish();
            }
            header.finish();
            drop(multi);
            println!("{}", render(&r));
            print_next(&r);
            return Ok(watch_exit(r.state));
        }
        if let Some(next) = next_commands(&r).first() {
            header.set_message(format!("rollout {} is {}: next, `{next}`", r.id, r.state));
        }
        tokio::time::sleep(interval).await;
    }
}

/// `watch` without a terminal: a line with the time at the first poll and at every change,
/// and the outcome at the end.
async fn watch_plain(client: &Client, path: &str, interval: Duration, until_done: bool) -> anyhow::Result<ExitCode> {
    let mut last = String::new();
    loop {
        let r: Rollout = client.get(path).await.context("polling the rollout")?;
        let line = watch_line(&r);
        if line != last {
            println!("{} rollout {}  {line}", output::now(), r.id);
            if !watch_stops(r.state, until_done)
                && let Some(next) = next_commands(&r).first()
            {
                println!("  waiting for an operator: {next}");
            }
            last = line;
        }
        if watch_stops(r.state, until_done) {
            println!("{}", render(&r));
            print_next(&r);
            return Ok(watch_exit(r.state));
        }
        tokio::time::sleep(interval).await;
    }
}

fn print_next(r: &Rollout) {
    let next = next_commands(r);
    if !next.is_empty() {
        println!("  next: {}", next.join("\n     or "));
    }
}

#[cfg(test)]
mod tests {
    use wavecast_api::{DeviceAtWork, WaitClass, Waiting};
    use wavecast_core::DeviceName;
    use wavecast_core::assignment::DeviceState;

    use super::*;

    fn progress(done: u64, total: u64, rate: u64, waiting: Option<Waiting>) -> DeviceProgress {
        DeviceProgress {
            at: wavecast_api::Timestamp::from_unix_ms(0),
            state: DeviceState::Downloading,
            bytes_done: done,
            bytes_total: total,
            bytes_per_sec: rate,
            waiting,
        }
    }

    #[test]
    fn progress_reads_as_how_far_or_what_is_waited_out() {
        let disk = Waiting { class: WaitClass::Disk, reason: "needs 812.0 MiB, 120.0 MiB free".into() };
        let table = [
            (progress(120 << 20, 812 << 20, 3 << 19, None), "downloading 120.0 MiB of 812.0 MiB (14%), 1.5 MiB/s"),
            (progress(0, 812 << 20, 0, None), "downloading 0 B of 812.0 MiB (0%)"),
            (progress(0, 0, 0, None), "downloading"),
            (progress(5, 10, 1, Some(disk)), "waiting: disk — needs 812.0 MiB, 120.0 MiB free"),
        ];
        for (p, words) in table {
            assert_eq!(describe_progress(&p), words);
        }
    }

    #[test]
    fn devices_at_work_are_listed_with_the_rest_counted() {
        let device = |name: &str, progress| DeviceAtWork {
            device: DeviceName::new(name).expect("valid name"),
            wave: 2,
            state: DeviceState::Downloading,
            last_heard_at: wavecast_api::Timestamp::from_unix_ms(0),
            progress,
        };
        let at_work = InProgress {
            total: 5,
            devices: vec![device("cam-1", Some(progress(1, 4, 0, None))), device("camera-22", None)],
        };
        let text = render_in_progress(&at_work);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines[0], "  in progress: 5 devices");
        assert_eq!(
            lines[1],
            "    cam-1      wave 2  downloading  downloading 1 B of 4 B (25%)  (heard 1970-01-01T00:00:00Z)"
        );
        assert_eq!(lines[2], "    camera-22  wave 2  downloading  (heard 1970-01-01T00:00:00Z)");
        assert_eq!(lines[3], "    … and 3 more");
        assert_eq!(render_in_progress(&InProgress { total: 0, devices: vec![] }), "");
    }
}
