//! The model check on a device: the real agent installs real ONNX models whose golden sets are
//! signed with them, runs the real `wavecast-model-check` as its exec probe, keeps a model that
//! answers its golden set, rolls back one that does not (reporting how far it was off), and
//! refuses a golden set that is not the one signed before the check ever runs.

use std::path::PathBuf;

use wavecast_model_check::{BuildOptions, Expectations, Tolerance, bundle};

use crate::support::*;

fn fixture(path: &str) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../wavecast-model-check/tests/fixtures");
    std::fs::read(format!("{dir}/{path}")).unwrap()
}

/// The `wavecast-model-check` binary built beside the agent (`cargo test --workspace` builds
/// it for its own tests).
fn model_check_binary() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_wavecast-agent"));
    let binary = agent.with_file_name("wavecast-model-check");
    assert!(
        binary.is_file(),
        "{} is not built: run the tests with `cargo test --workspace`, or `cargo build -p wavecast-model-check` first",
        binary.display()
    );
    binary
}

/// The golden bundle for `model` with the classifier's golden set, as `artifact publish` packs it.
fn golden_bundle(model: &[u8], options: &BuildOptions) -> Vec<u8> {
    let npz = fixture("classifier/golden.npz");
    let expectations = Expectations::build(model, &npz, options).unwrap();
    bundle::pack(&expectations, &npz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_check_keeps_a_good_model_rolls_back_a_regressed_one_and_refuses_a_tampered_golden_set() {
    let env = Env::new().await;
    // A wrapper on the allowlist that records each run, then runs the real check.
    let runs = env.path("check-runs");
    let check = script(
        &env.probes_dir(),
        "model-check",
        &format!(
            "echo \"$WAVECAST_GOLDEN_PATH\" >> '{}'\nexec '{}' \"$@\"",
            runs.display(),
            model_check_binary().display()
        ),
    );
    let agent = env.start_agent("dev-1", &[("model", check)], None).await;
    let probe = Probe::new("exec:model").timeout(30_000);
    let run_count = || std::fs::read_to_string(&runs).map(|t| t.lines().count()).unwrap_or(0);

    // A good model with its golden set: checked on the device and kept.
    let good = fixture("classifier/model.onnx");
    let strict = BuildOptions::default();
    env.publish_with_golden("model@1.0.0", &good, None, Some(&golden_bundle(&good, &strict))).await;
    let id = env.rollout("model@1.0.0", &probe).await;
    let entry = env.wait_final(&agent, &id).await;
    assert_succeeded(&entry, &agent);
    assert_eq!(run_count(), 1, "the check ran once");
    // The check's report travels with the outcome.
    let result = &entry["probe_result"];
    assert_eq!(result["outcome"], "healthy", "{entry}");
    assert_eq!(result["cases"], 8);
    assert!(result["latency"]["p95_us"].as_f64().is_some_and(|us| us > 0.0), "{result}");
    assert_eq!(agent.sha(), Some(sha_hex(&good)));
    let golden_seen = std::fs::read_to_string(&runs).unwrap();
    assert!(golden_seen.contains(".wavecast-golden-"), "the probe got the golden set's path: {golden_seen}");

    // A perturbed copy: same signature, outputs a few hundredths off. The check fails it on the
    // device, the agent rolls back, and the report says by how much.
    let perturbed = fixture("perturbed/model.onnx");
    env.publish_with_golden("model@1.1.0", &perturbed, None, Some(&golden_bundle(&perturbed, &strict))).await;
    let id = env.rollout("model@1.1.0", &probe).await;
    let entry = env.wait_final(&agent, &id).await;
    let reason = assert_failed(&entry, &["probe failed", "wavecast-model-check: unhealthy", "expected"], &agent);
    assert!(reason.contains("got"), "the reason names the value found: {reason}");
    let result = &entry["probe_result"];
    assert_eq!(result["outcome"], "unhealthy", "{entry}");
    assert_eq!(result["failures"][0]["reason"], "out_of_tolerance");
    let deviation = result["outputs"][0]["max_abs_error"].as_f64().unwrap();
    assert!((0.01..0.2).contains(&deviation), "a few hundredths off: {deviation}");
    let failures = env.rollout_view(&id).await["failures"]["devices"].clone();
    assert_eq!(failures[0]["probe_result"], *result, "rollout show has it too: {failures}");
    assert_eq!(agent.sha(), Some(sha_hex(&good)), "rolled back to the good model");
    assert_eq!(run_count(), 2);
    // The failure halted its rollout; end it so the next can start.
    env.abort(&id, "keep").await;

    // Drift: the same perturbed weights pass a top-1 golden set, but move further from the
    // kept version than the publisher allowed; caught against the previous model on the device.
    let lenient = BuildOptions {
        tolerance: Tolerance::TopK { k: 1 },
        max_drift: Some(Tolerance::Close { abs: 1e-3, rel: 0.0 }),
        ..BuildOptions::default()
    };
    env.publish_with_golden("model@1.2.0", &perturbed, None, Some(&golden_bundle(&perturbed, &lenient))).await;
    let id = env.rollout("model@1.2.0", &probe).await;
    let entry = env.wait_final(&agent, &id).await;
    assert_failed(&entry, &["probe failed", "drift"], &agent);
    assert_eq!(agent.sha(), Some(sha_hex(&good)), "rolled back to the good model");
    assert_eq!(run_count(), 3);
    env.abort(&id, "keep").await;

    // A golden set changed in the server's store: the agent checks it against the digest signed
    // into the target and refuses the install before the swap; the check never sees it.
    // (The perturbed model with a top-1 golden set and no drift limit would pass.)
    let top1 = BuildOptions { tolerance: Tolerance::TopK { k: 1 }, ..BuildOptions::default() };
    let bundle = golden_bundle(&perturbed, &top1);
    env.publish_with_golden("model@1.3.0", &perturbed, None, Some(&bundle)).await;
    let stored = env.blob_path(&sha_hex(&bundle));
    let mut tampered = std::fs::read(&stored).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&stored, &tampered).unwrap();
    let id = env.rollout("model@1.3.0", &probe).await;
    let entry = env.wait_final(&agent, &id).await;
    assert_failed(&entry, &["golden set", "does not match the one signed into it", "did not run"], &agent);
    assert_eq!(run_count(), 3, "the check did not run on a golden set that is not the signed one");
    assert_eq!(agent.sha(), Some(sha_hex(&good)));
}
