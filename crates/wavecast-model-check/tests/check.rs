//! The model check against real ONNX models made by `scripts/model-fixtures`: one table of
//! scenarios through the library, the publisher's side (signatures, expectations, bundles), and
//! the binary's exit codes, environment and JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wavecast_model_check::bundle::{self, Bundle};
use wavecast_model_check::expectations::{BuildOptions, Expectations, ExpectationsError, Tolerance};
use wavecast_model_check::golden::GoldenSet;
use wavecast_model_check::memory::{CountingAllocator, MemoryMeter, counting_allocator};
use wavecast_model_check::model::Model;
use wavecast_model_check::signature::Dim;
use wavecast_model_check::{Outcome, Previous, Report, Subject, check};

#[global_allocator]
static ALLOCATOR: CountingAllocator = counting_allocator();
const METER: MemoryMeter = MemoryMeter::Heap(&ALLOCATOR);

fn fixture_path(scenario: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(scenario).join(file)
}

fn fixture(scenario: &str, file: &str) -> Vec<u8> {
    let path = fixture_path(scenario, file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/model-fixtures)", path.display()))
}

fn model(scenario: &str) -> Vec<u8> {
    fixture(scenario, "model.onnx")
}

/// The bundle a publisher makes for `scenario`'s model and golden set with `options`.
fn published(scenario: &str, golden: &str, options: BuildOptions) -> Bundle {
    let npz = fixture(golden, "golden.npz");
    let expectations = Expectations::build(&model(scenario), &npz, &options).expect("expectations build");
    bundle::unpack(&bundle::pack(&expectations, &npz)).expect("the bundle reads back")
}

fn options(f: impl FnOnce(&mut BuildOptions)) -> BuildOptions {
    let mut o = BuildOptions::default();
    f(&mut o);
    o
}

fn run(model: &[u8], bundle: &Bundle, previous: Previous<'_>) -> Report {
    check(&Subject { model, bundle, previous, max_drift: None }, METER)
}

/// The reasons in the report's JSON, as a program reading it sees them.
fn reasons(report: &Report) -> (String, Vec<String>) {
    let json: Value = serde_json::from_str(&report.to_json()).expect("the report is JSON");
    let failures = json["failures"].as_array().expect("failures is a list");
    let reasons = failures.iter().map(|f| f["reason"].as_str().expect("a reason").to_owned()).collect();
    (json["outcome"].as_str().expect("an outcome").to_owned(), reasons)
}

#[test]
fn scenarios() {
    let classifier = model("classifier");
    let perturbed = model("perturbed");
    let good = published("classifier", "classifier", BuildOptions::default());
    let dynamic = model("dynamic-batch");
    let wrong_shape = model("wrong-output-shape");
    let unsupported = model("unsupported-op");
    let mut half = classifier.clone();
    half.truncate(classifier.len() / 2);
    // The classifier's signature and golden set, paired with a golden set for another model.
    let mismatched = Bundle {
        expectations: good.expectations.clone(),
        golden: GoldenSet::from_npz(&fixture("unsupported-op", "golden.npz")).unwrap(),
    };
    let mut tflite = vec![0x1c, 0, 0, 0];
    tflite.extend_from_slice(b"TFL3\0\0\0\0");

    struct Case<'a> {
        what: &'a str,
        model: &'a [u8],
        bundle: Bundle,
        previous: Previous<'a>,
        outcome: &'a str,
        reasons: &'a [&'a str],
        /// Words the first failure's message must hold.
        message: &'a str,
    }
    let case = |what, model, bundle, outcome, reasons, message| Case {
        what,
        model,
        bundle,
        previous: Previous::None,
        outcome,
        reasons,
        message,
    };
    let cases = vec![
        case(
            "the classifier passes its own golden set within generous budgets",
            &classifier[..],
            published(
                "classifier",
                "classifier",
                options(|o| {
                    o.latency_budget = Some("10s".parse().unwrap());
                    o.memory_budget = Some("1GiB".parse().unwrap());
                }),
            ),
            "healthy",
            &[][..],
            "",
        ),
        case(
            "a dynamic batch takes the golden set's batch size",
            &dynamic[..],
            published("dynamic-batch", "dynamic-batch", BuildOptions::default()),
            "healthy",
            &[],
            "",
        ),
        case(
            "a model whose output shape differs from the recorded signature",
            &wrong_shape[..],
            good.clone(),
            "unhealthy",
            &["signature_mismatch"],
            "output recorded as probs: float32[1, 3], the model has probs: float32[1, 4]",
        ),
        case(
            "outputs out of tolerance",
            &perturbed[..],
            good.clone(),
            "unhealthy",
            &["out_of_tolerance"],
            "output \"probs\": 21 of 24 outside abs=0.0001,rel=0.0001; worst at case 7 index [0, 1]",
        ),
        case(
            "the perturbed model still agrees on the top class",
            &perturbed[..],
            published("classifier", "classifier", options(|o| o.tolerance = Tolerance::TopK { k: 1 })),
            "healthy",
            &[],
            "",
        ),
        case(
            // No inference, even a 4x8 matrix product, takes under a microsecond through the
            // engine: inputs are copied in and outputs out on every run.
            "latency over a tiny budget",
            &classifier[..],
            published("classifier", "classifier", options(|o| o.latency_budget = Some("1us".parse().unwrap()))),
            "unhealthy",
            &["latency_over_budget"],
            "is over the budget of 1 µs",
        ),
        case(
            "memory over a tiny budget",
            &classifier[..],
            published("classifier", "classifier", options(|o| o.memory_budget = Some("1B".parse().unwrap()))),
            "unhealthy",
            &["memory_over_budget"],
            "is over the budget of 1 bytes",
        ),
        case(
            "an operator the engine lacks",
            &unsupported[..],
            published("unsupported-op", "unsupported-op", BuildOptions::default()),
            "could_not_run",
            &["unsupported_operator"],
            "does not implement operator(s) Det",
        ),
        case(
            "a truncated model file",
            &half[..],
            good.clone(),
            "unhealthy",
            &["model_corrupt"],
            "not an ONNX protobuf",
        ),
        case(
            "a file that is not a model at all",
            &b"hello, I am a text file and not a model"[..],
            good.clone(),
            "unhealthy",
            &["model_corrupt"],
            "",
        ),
        case(
            "a TensorFlow Lite model",
            &tflite[..],
            good.clone(),
            "could_not_run",
            &["unsupported_format"],
            "reads ONNX only",
        ),
        case(
            "a golden set made for another model",
            &classifier[..],
            mismatched,
            "could_not_run",
            &["golden_mismatch"],
            "golden input/x has cases of shape [1, 2, 2], the model's input is x: float32[1, 4]",
        ),
        Case {
            previous: Previous::Model(&classifier),
            ..case(
                "drift over the limit against the previous version",
                &perturbed[..],
                published(
                    "classifier",
                    "classifier",
                    options(|o| {
                        o.tolerance = "abs=0.5".parse().unwrap();
                        o.max_drift = Some("abs=0.001".parse().unwrap());
                    }),
                ),
                "unhealthy",
                &["drift_over_limit"],
                "drift from the previous model: output \"probs\": 19 of 24 outside abs=0.001,rel=0; worst at case 7 index [0, 1]: previously 0.288554, now 0.233141",
            )
        },
        Case {
            previous: Previous::Model(&classifier),
            ..case(
                "no drift from an identical previous version",
                &classifier[..],
                published("classifier", "classifier", options(|o| o.max_drift = Some("abs=0.001".parse().unwrap()))),
                "healthy",
                &[],
                "",
            )
        },
        Case {
            previous: Previous::Model(b"garbage"),
            ..case(
                "a previous version that cannot be read",
                &classifier[..],
                published("classifier", "classifier", options(|o| o.max_drift = Some("top-k=1".parse().unwrap()))),
                "could_not_run",
                &["previous_unreadable"],
                "the previous model",
            )
        },
        Case {
            previous: Previous::Model(&wrong_shape),
            ..case(
                "a previous version with other outputs",
                &classifier[..],
                published("classifier", "classifier", options(|o| o.max_drift = Some("top-k=1".parse().unwrap()))),
                "could_not_run",
                &["previous_incompatible"],
                "the previous model cannot be compared",
            )
        },
        Case {
            previous: Previous::Model(&classifier),
            ..case(
                "a failed golden output stays unhealthy whatever drift finds",
                &perturbed[..],
                published("classifier", "classifier", options(|o| o.max_drift = Some("abs=0.001".parse().unwrap()))),
                "unhealthy",
                &["out_of_tolerance", "drift_over_limit"],
                "output \"probs\"",
            )
        },
        case(
            "drift is skipped on a first install",
            &classifier[..],
            published("classifier", "classifier", options(|o| o.max_drift = Some("abs=0.001".parse().unwrap()))),
            "healthy",
            &[],
            "",
        ),
    ];
    for c in cases {
        let report = run(c.model, &c.bundle, c.previous);
        let (outcome, found) = reasons(&report);
        assert_eq!(
            (outcome.as_str(), found.iter().map(String::as_str).collect::<Vec<_>>()),
            (c.outcome, c.reasons.to_vec()),
            "{}: {report:#?}",
            c.what
        );
        if let Some(first) = report.failures.first() {
            assert!(first.message.contains(c.message), "{}: {:?} lacks {:?}", c.what, first.message, c.message);
        }
        assert!(report.to_json().len() <= wavecast_model_check::report::MAX_REPORT_BYTES, "{}", c.what);
    }
}

#[test]
fn a_healthy_report_shows_deviation_latency_memory_and_drift() {
    let classifier = model("classifier");
    let bundle = published(
        "classifier",
        "classifier",
        options(|o| {
            o.latency_budget = Some("10s".parse().unwrap());
            o.memory_budget = Some("1GiB".parse().unwrap());
            o.max_drift = Some(Tolerance::TopK { k: 1 });
        }),
    );
    let report = run(&classifier, &bundle, Previous::Model(&classifier));
    assert_eq!(report.outcome, Outcome::Healthy, "{report:#?}");
    assert_eq!(report.cases, Some(8));
    let probs = &report.outputs[0];
    assert_eq!((probs.output.as_str(), probs.compared, probs.violations), ("probs", 24, 0));
    // The engine and ONNX's reference evaluator agree to float32 rounding.
    assert!(probs.max_abs_error.unwrap() < 1e-6, "{probs:?}");
    assert!(probs.worst.is_some());
    let latency = report.latency.as_ref().unwrap();
    assert!(latency.median_us > 0.0 && latency.p95_us >= latency.median_us);
    assert_eq!((latency.runs, latency.warmup, latency.budget_us), (20, 3, Some(10_000_000)));
    let memory = report.memory.as_ref().unwrap();
    assert!(memory.peak_bytes > 0);
    assert_eq!(memory.budget_bytes, Some(1 << 30));
    let drift = report.drift.as_ref().unwrap();
    assert_eq!(drift.outputs.len(), 1);
    assert_eq!(drift.outputs[0].violations, 0);
    assert_eq!(drift.outputs[0].max_abs_error, Some(0.0));

    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["outputs"][0]["tolerance"], serde_json::json!({"kind": "close", "abs": 1e-4, "rel": 1e-4}));
    assert_eq!(json["outputs"][0]["worst"]["kind"], "value");
    assert_eq!(json["drift"]["outputs"][0]["tolerance"]["kind"], "top_k");
}

#[test]
fn a_drift_limit_from_the_device_adds_to_the_publishers() {
    let classifier = model("classifier");
    let perturbed = model("perturbed");
    // The publisher allows any drift that keeps the top class; the device also asks for 0.001.
    let bundle = published(
        "classifier",
        "classifier",
        options(|o| {
            o.tolerance = "abs=0.5".parse().unwrap();
            o.max_drift = Some(Tolerance::TopK { k: 1 });
        }),
    );
    let subject =
        |max_drift| Subject { model: &perturbed, bundle: &bundle, previous: Previous::Model(&classifier), max_drift };
    let publisher_only = check(&subject(None), METER);
    assert_eq!(publisher_only.outcome, Outcome::Healthy, "{publisher_only:#?}");
    let both = check(&subject(Some("abs=0.001".parse().unwrap())), METER);
    assert_eq!(reasons(&both), ("unhealthy".to_owned(), vec!["drift_over_limit".to_owned()]));
    assert_eq!(both.drift.as_ref().unwrap().outputs.len(), 2, "one result per limit");
}

#[test]
fn signatures_read_from_the_fixtures() {
    let sig = Model::parse(&model("classifier")).unwrap().signature().clone();
    let json = serde_json::to_value(&sig).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "format": "onnx",
            "ir_version": 8,
            "opsets": [{"domain": "ai.onnx", "version": 13}],
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
            "outputs": [{"name": "probs", "dtype": "float32", "shape": [1, 3]}],
            "parameters": 4 * 8 + 8 + 8 * 3 + 3,
        })
    );
    let dynamic = Model::parse(&model("dynamic-batch")).unwrap();
    assert_eq!(dynamic.signature().inputs[0].shape, Some(vec![Dim::Named("batch".into()), Dim::Fixed(4)]));
    assert_eq!(dynamic.signature().outputs[0].to_string(), "probs: float32[batch, 3]");
    assert_eq!(Model::parse(&model("unsupported-op")).unwrap().unsupported_operators(), ["Det"]);
    assert!(Model::parse(&model("classifier")).unwrap().unsupported_operators().is_empty());
}

#[test]
fn publishing_refuses_a_golden_set_that_cannot_run_against_the_model() {
    let build = |scenario: &str, golden: &str, options: BuildOptions| {
        Expectations::build(&model(scenario), &fixture(golden, "golden.npz"), &options)
    };
    let cases: Vec<(&str, Result<Expectations, ExpectationsError>, &str)> = vec![
        (
            "another model's golden set",
            build("classifier", "unsupported-op", BuildOptions::default()),
            "golden input/x has cases of shape [1, 2, 2], the model's input is x: float32[1, 4]",
        ),
        (
            "a golden set whose outputs have another shape",
            build("wrong-output-shape", "classifier", BuildOptions::default()),
            "golden output/probs has cases of shape [1, 3], the model's output is probs: float32[1, 4]",
        ),
        (
            "more top classes than the model has",
            build("classifier", "classifier", options(|o| o.tolerance = Tolerance::TopK { k: 4 })),
            "output \"probs\" has 3 classes on its last axis, fewer than top-k=4",
        ),
        (
            "a model that is not one",
            Expectations::build(b"nope", &fixture("classifier", "golden.npz"), &BuildOptions::default()),
            "reading the model",
        ),
        (
            "a golden set that is not one",
            Expectations::build(&model("classifier"), b"nope", &BuildOptions::default()),
            "not a zip archive",
        ),
    ];
    for (what, result, want) in cases {
        let err = result.expect_err(what);
        let text = wavecast_os::error::chain(&err);
        assert!(text.contains(want), "{what}: {text}");
    }
    // A golden set that fits builds, and the expectations record what was asked.
    let e = build("classifier", "classifier", options(|o| o.memory_budget = Some("64MiB".parse().unwrap()))).unwrap();
    assert_eq!(e.memory_budget.map(|b| b.bytes()), Some(64 << 20));
    assert_eq!(e.tolerance, Tolerance::DEFAULT);
}

#[test]
fn bundles_are_reproducible_and_refuse_tampering() {
    let npz = fixture("classifier", "golden.npz");
    let expectations = Expectations::build(&model("classifier"), &npz, &BuildOptions::default()).unwrap();
    let packed = bundle::pack(&expectations, &npz);
    assert_eq!(bundle::pack(&expectations, &npz), packed, "same inputs, same bytes, same signed hash");
    let b = bundle::unpack(&packed).unwrap();
    assert_eq!(b.expectations, expectations);
    assert_eq!(b.golden, GoldenSet::from_npz(&npz).unwrap());
    // The publisher's .npz is kept byte for byte, and so is readable by numpy.
    assert!(packed.windows(npz.len()).any(|w| w == npz));

    let text = |r: Result<Bundle, bundle::BundleError>| wavecast_os::error::chain(&r.expect_err("refused"));
    let mut flipped = packed.clone();
    let at = packed.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 200;
    flipped[at] ^= 1;
    assert!(text(bundle::unpack(&flipped)).contains("CRC-32"));
    assert!(text(bundle::unpack(&npz)).contains("must hold exactly expectations.json and golden.npz"));
    let mut json = serde_json::to_value(&expectations).unwrap();
    json["format"] = 2.into();
    let newer = serde_json::from_value::<Expectations>(json).unwrap();
    assert!(text(bundle::unpack(&bundle::pack(&newer, &npz))).contains("expectations format 2 is not 1"));
}

#[test]
fn the_binary_prints_json_and_exits_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let npz = fixture("classifier", "golden.npz");
    let strict = Expectations::build(&model("classifier"), &npz, &BuildOptions::default()).unwrap();
    let golden = write("classifier.golden", &bundle::pack(&strict, &npz));
    let classifier = fixture_path("classifier", "model.onnx");
    let perturbed = fixture_path("perturbed", "model.onnx");

    struct Run {
        code: i32,
        json: Value,
        stderr: String,
    }
    let exe = |args: &[&Path], env: &[(&str, &Path)], extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wavecast-model-check"));
        cmd.env_remove("WAVECAST_ARTIFACT_PATH")
            .env_remove("WAVECAST_GOLDEN_PATH")
            .env_remove("WAVECAST_PREVIOUS_PATH");
        cmd.args(extra).args(args).envs(env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
        Run {
            code: out.status.code().unwrap(),
            json: serde_json::from_str(&stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };

    // The agent's way: the artifact as the last argument and the golden set in the environment.
    let healthy = exe(&[&classifier], &[("WAVECAST_GOLDEN_PATH", &golden)], &[]);
    assert_eq!((healthy.code, healthy.json["outcome"].as_str()), (0, Some("healthy")), "{}", healthy.stderr);
    assert!(healthy.stderr.is_empty());
    assert!(healthy.json["memory"]["peak_bytes"].as_u64().unwrap() > 0);

    // Both from the environment.
    let unhealthy = exe(&[], &[("WAVECAST_ARTIFACT_PATH", &perturbed), ("WAVECAST_GOLDEN_PATH", &golden)], &[]);
    assert_eq!((unhealthy.code, unhealthy.json["outcome"].as_str()), (1, Some("unhealthy")));
    assert_eq!(unhealthy.json["failures"][0]["reason"], "out_of_tolerance");
    assert!(unhealthy.stderr.starts_with("wavecast-model-check: unhealthy: output \"probs\""), "{}", unhealthy.stderr);

    // Drift through the command line and the previous version's path in the environment.
    let drift = exe(
        &[&perturbed],
        &[("WAVECAST_GOLDEN_PATH", &golden), ("WAVECAST_PREVIOUS_PATH", &classifier)],
        &["--max-drift", "abs=0.001"],
    );
    assert_eq!(drift.code, 1);
    assert_eq!(drift.json["failures"][1]["reason"], "drift_over_limit");

    let missing = dir.path().join("missing.onnx");
    let could_not_run: Vec<(&str, Run, &str)> = vec![
        ("no golden set", exe(&[&classifier], &[], &[]), "golden_missing"),
        (
            "a golden file that is not there",
            exe(&[&classifier], &[("WAVECAST_GOLDEN_PATH", &missing)], &[]),
            "golden_missing",
        ),
        (
            "a golden file that is not a bundle",
            exe(&[&classifier], &[("WAVECAST_GOLDEN_PATH", &classifier)], &[]),
            "golden_unreadable",
        ),
        ("no model file", exe(&[&missing], &[("WAVECAST_GOLDEN_PATH", &golden)], &[]), "artifact_missing"),
        ("no model named", exe(&[], &[("WAVECAST_GOLDEN_PATH", &golden)], &[]), "bad_arguments"),
        (
            "a drift limit that does not parse",
            exe(&[&classifier], &[("WAVECAST_GOLDEN_PATH", &golden)], &["--max-drift", "lots"]),
            "bad_arguments",
        ),
    ];
    for (what, run, reason) in could_not_run {
        assert_eq!((run.code, run.json["outcome"].as_str()), (2, Some("could_not_run")), "{what}: {}", run.stderr);
        assert_eq!(run.json["failures"][0]["reason"], reason, "{what}");
        assert!(run.stderr.starts_with("wavecast-model-check: could not run: "), "{what}: {}", run.stderr);
    }
}
