//! The JSON these types make is the operator API's wire format, which the OpenAPI document,
//! scripts reading `wavecast … --json`, and older CLIs depend on: these cases pin it byte for
//! byte (field names, order, and `null` for absent options) and check that it reads back.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Serialize;
use serde::de::DeserializeOwned;
use wavecast_api::*;
use wavecast_core::assignment::DeviceState;
use wavecast_core::probe::{ProbeKind, ProbeSpec};
use wavecast_core::rollout::{Gate, RolloutState};
use wavecast_core::{ArtifactName, ArtifactVersion, DeviceName, GroupName, Role, Sha256Digest, TargetName};

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Serializes `value`, compares with `wire`, and reads `wire` back into an equal value.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, wire: &str) {
    let wire: String = wire.split_whitespace().collect();
    assert_eq!(serde_json::to_string(value).unwrap(), wire);
    assert_eq!(&serde_json::from_str::<T>(&wire).unwrap(), value, "{wire}");
}

/// The time `ms` after the epoch; on the wire, RFC 3339 with milliseconds.
fn t(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

fn name(s: &str) -> ArtifactName {
    ArtifactName::new(s).unwrap()
}

fn version(s: &str) -> ArtifactVersion {
    ArtifactVersion::new(s).unwrap()
}

fn group(s: &str) -> GroupName {
    GroupName::new(s).unwrap()
}

#[test]
fn artifacts_groups_and_tokens() {
    let sha: Sha256Digest = SHA.parse().unwrap();
    check(
        &Artifact {
            name: name("yolo-v8n"),
            version: version("2.1.0"),
            length: 52_428_800,
            sha256: sha,
            hardware: None,
            golden: None,
            published_at: t(1_700_000_000_000),
            published_by: "admin".into(),
        },
        &format!(
            r#"{{"name":"yolo-v8n","version":"2.1.0","length":52428800,"sha256":"{SHA}","hardware":null,"golden":null,
                 "published_at":"2023-11-14T22:13:20.000Z","published_by":"admin"}}"#
        ),
    );
    check(
        &Artifact {
            name: name("clf"),
            version: version("1.0.0"),
            length: 3,
            sha256: sha,
            hardware: Some("jetson".into()),
            golden: Some(ArtifactGolden { sha256: sha, length: 7, local_check: "passed".into() }),
            published_at: t(5),
            published_by: "ci".into(),
        },
        &format!(
            r#"{{"name":"clf","version":"1.0.0","length":3,"sha256":"{SHA}","hardware":"jetson",
                 "golden":{{"sha256":"{SHA}","length":7,"local_check":"passed"}},
                 "published_at":"1970-01-01T00:00:00.005Z","published_by":"ci"}}"#
        ),
    );
    check(
        &Group { name: group("plant-7"), created_at: t(5), created_by: "admin".into(), devices: 20 },
        r#"{"name":"plant-7","created_at":"1970-01-01T00:00:00.005Z","created_by":"admin","devices":20}"#,
    );
    check(&GroupCreated { name: group("plant-7") }, r#"{"name":"plant-7"}"#);
    check(
        &EnrollmentTokenCreated {
            id: "0a1b".into(),
            group: group("plant-7"),
            token: "wce_00".into(),
            expires_at: t(1_704_067_200_000),
            max_uses: Some(3),
        },
        r#"{"id":"0a1b","group":"plant-7","token":"wce_00","expires_at":"2024-01-01T00:00:00.000Z","max_uses":3}"#,
    );
    check(
        &EnrollmentToken {
            id: "0a1b".into(),
            group: group("plant-7"),
            created_at: t(1),
            created_by: "admin".into(),
            expires_at: t(2),
            max_uses: None,
            uses: 4,
            revoked_at: Some(t(3)),
        },
        r#"{"id":"0a1b","group":"plant-7","created_at":"1970-01-01T00:00:00.001Z","created_by":"admin","expires_at":"1970-01-01T00:00:00.002Z","max_uses":null,"uses":4,
            "revoked_at":"1970-01-01T00:00:00.003Z"}"#,
    );

    check(
        &Whoami { id: "1".into(), name: "ci".into(), role: Role::Viewer },
        r#"{"id":"1","name":"ci","role":"viewer"}"#,
    );
    check(
        &TokenCreated { id: "1".into(), name: "ci".into(), role: Role::Publisher, token: "wct_00".into() },
        r#"{"id":"1","name":"ci","role":"publisher","token":"wct_00"}"#,
    );
    check(
        &Token {
            id: "1".into(),
            name: "ci".into(),
            role: Role::Admin,
            created_at: t(1),
            created_by: "wavecast".into(),
            revoked_at: Some(t(2)),
        },
        r#"{"id":"1","name":"ci","role":"admin","created_at":"1970-01-01T00:00:00.001Z","created_by":"wavecast","revoked_at":"1970-01-01T00:00:00.002Z"}"#,
    );
}

/// Device `cam-001`, last seen and revoked as given.
fn device(last_seen_at: Option<i64>, revoked_at: Option<i64>) -> Device {
    let state = DeviceStatus::of(revoked_at);
    let (last_seen_at, revoked_at) = (last_seen_at.map(t), revoked_at.map(t));
    Device {
        id: "d1".into(),
        name: DeviceName::new("cam-001").unwrap(),
        group: group("plant-7"),
        hardware: "jetson".into(),
        enrolled_at: t(3),
        last_seen_at,
        state,
        revoked_at,
    }
}

#[test]
fn a_device_shows_its_own_fields_inline() {
    let sha: Sha256Digest = SHA.parse().unwrap();
    check(
        &DeviceDetail {
            device: device(None, None),
            artifacts: vec![DeviceArtifact { name: name("yolo"), version: version("1.0.0"), sha256: sha }],
            rollouts: vec![DeviceRollout {
                rollout_id: "r-1".into(),
                artifact: name("yolo"),
                version: version("1.0.0"),
                wave: 1,
                state: DeviceState::TimedOut,
                reason: None,
                updated_at: t(4),
                progress: None,
                probe_result: None,
            }],
        },
        &format!(
            r#"{{"id":"d1","name":"cam-001","group":"plant-7","hardware":"jetson","enrolled_at":"1970-01-01T00:00:00.003Z","last_seen_at":null,
                 "state":"active","revoked_at":null,"artifacts":[{{"name":"yolo","version":"1.0.0","sha256":"{SHA}"}}],
                 "rollouts":[{{"rollout_id":"r-1","artifact":"yolo","version":"1.0.0","wave":1,"state":"timed_out",
                               "reason":null,"updated_at":"1970-01-01T00:00:00.004Z","progress":null,"probe_result":null}}]}}"#
        ),
    );
}

#[test]
fn a_revoked_or_removed_device_says_which_rollouts_it_left() {
    check(
        &DeviceRemoval { device: device(Some(4), Some(5)), decommissioned: true, left_rollouts: vec!["r-1".into()] },
        r#"{"id":"d1","name":"cam-001","group":"plant-7","hardware":"jetson","enrolled_at":"1970-01-01T00:00:00.003Z","last_seen_at":"1970-01-01T00:00:00.004Z",
            "state":"revoked","revoked_at":"1970-01-01T00:00:00.005Z","decommissioned":true,"left_rollouts":["r-1"]}"#,
    );
}

#[test]
fn a_rollout_with_its_waves_and_counts() {
    let counts = StateCounts::from_fn(|s| DeviceState::ALL.iter().position(|x| *x == s).unwrap() as u64);
    let wave =
        Wave { number: 1, percent: 10, gate: Gate::Manual, state: WaveState::WaitingApproval, devices: 2, counts };
    let rollout = Rollout {
        id: "r-7f3a09c2".into(),
        state: RolloutState::WaitingApproval,
        artifact: TargetName::parse("yolo@2.0.0").unwrap(),
        artifact_name: name("yolo"),
        version: version("2.0.0"),
        group: group("plant-7"),
        halt_after: 1,
        failures_counted: 0,
        device_timeout_ms: u64::MAX,
        probe: "exec:sim-check".into(),
        probe_spec: ProbeSpec::new(ProbeKind::Exec { name: "sim-check".into(), args: vec![] }),
        device_count: 20,
        abort_mode: Some(AbortMode::Revert),
        created_at: t(1),
        created_by: "admin".into(),
        updated_at: t(2),
        counts,
        waves: vec![wave],
        in_progress: None,
        failures: None,
        warnings: vec![],
    };
    // Counts are in alphabetical order, as the server's sorted map always sent them.
    let counts = r#"{"assigned":1,"downloading":2,"failed":7,"installing":4,"pending":0,"probing":5,"removed":12,
                     "revert_skipped":11,"reverted":10,"succeeded":6,"timed_out":8,"unreachable":9,"verifying":3}"#;
    check(
        &rollout,
        &format!(
            r#"{{"id":"r-7f3a09c2","state":"waiting_approval","artifact":"yolo@2.0.0","artifact_name":"yolo",
                 "version":"2.0.0","group":"plant-7","halt_after":1,"failures_counted":0,
                 "device_timeout_ms":18446744073709551615,"probe":"exec:sim-check",
                 "probe_spec":{{"kind":"exec","name":"sim-check","args":[],"timeout_ms":30000,"attempts":3,
                                "interval_ms":5000,"initial_delay_ms":0}},
                 "device_count":20,"abort_mode":"revert","created_at":"1970-01-01T00:00:00.001Z","created_by":"admin","updated_at":"1970-01-01T00:00:00.002Z",
                 "counts":{counts},
                 "waves":[{{"number":1,"percent":10,"gate":"manual","state":"waiting_approval","devices":2,
                            "counts":{counts}}}]}}"#
        ),
    );
    let running = Rollout { abort_mode: None, ..rollout };
    assert_eq!(serde_json::to_value(&running).unwrap()["abort_mode"], serde_json::Value::Null);
}

#[test]
fn a_shown_rollout_lists_its_devices_at_work_with_their_progress() {
    let at_work = InProgress {
        total: 3,
        devices: vec![
            DeviceAtWork {
                device: DeviceName::new("cam-001").unwrap(),
                wave: 1,
                state: DeviceState::Downloading,
                last_heard_at: t(9),
                progress: Some(DeviceProgress {
                    at: t(9),
                    state: DeviceState::Downloading,
                    bytes_done: 100,
                    bytes_total: 400,
                    bytes_per_sec: 50,
                    waiting: None,
                }),
            },
            DeviceAtWork {
                device: DeviceName::new("cam-002").unwrap(),
                wave: 2,
                state: DeviceState::Assigned,
                last_heard_at: t(7),
                progress: Some(DeviceProgress {
                    at: t(8),
                    state: DeviceState::Downloading,
                    bytes_done: 0,
                    bytes_total: 400,
                    bytes_per_sec: 0,
                    waiting: Some(Waiting { class: WaitClass::Disk, reason: "needs_400_B,_10_B_free".into() }),
                }),
            },
            DeviceAtWork {
                device: DeviceName::new("cam-003").unwrap(),
                wave: 2,
                state: DeviceState::Assigned,
                last_heard_at: t(7),
                progress: None,
            },
        ],
    };
    check(
        &at_work,
        r#"{"total":3,"devices":[
             {"device":"cam-001","wave":1,"state":"downloading","last_heard_at":"1970-01-01T00:00:00.009Z",
              "progress":{"at":"1970-01-01T00:00:00.009Z","state":"downloading","bytes_done":100,"bytes_total":400,"bytes_per_sec":50,"waiting":null}},
             {"device":"cam-002","wave":2,"state":"assigned","last_heard_at":"1970-01-01T00:00:00.007Z",
              "progress":{"at":"1970-01-01T00:00:00.008Z","state":"downloading","bytes_done":0,"bytes_total":400,"bytes_per_sec":0,
                          "waiting":{"class":"disk","reason":"needs_400_B,_10_B_free"}}},
             {"device":"cam-003","wave":2,"state":"assigned","last_heard_at":"1970-01-01T00:00:00.007Z","progress":null}]}"#,
    );
}

#[test]
fn a_shown_rollout_lists_its_failed_devices_with_why() {
    let failures = Failures {
        total: 7,
        devices: vec![
            DeviceFailure {
                device: DeviceName::new("cam-004").unwrap(),
                wave: 1,
                state: DeviceState::Failed,
                reason: Some("exec:check-model_exited_with_1:_accuracy_0.41_<_0.90".into()),
                at: t(9),
                probe_result: Some(serde_json::json!({"outcome": "unhealthy", "cases": 8})),
            },
            DeviceFailure {
                device: DeviceName::new("cam-009").unwrap(),
                wave: 2,
                state: DeviceState::TimedOut,
                reason: None,
                at: t(11),
                probe_result: None,
            },
        ],
    };
    check(
        &failures,
        r#"{"total":7,"devices":[
             {"device":"cam-004","wave":1,"state":"failed","reason":"exec:check-model_exited_with_1:_accuracy_0.41_<_0.90","at":"1970-01-01T00:00:00.009Z",
              "probe_result":{"cases":8,"outcome":"unhealthy"}},
             {"device":"cam-009","wave":2,"state":"timed_out","reason":null,"at":"1970-01-01T00:00:00.011Z","probe_result":null}]}"#,
    );
}

#[test]
fn state_counts_name_every_state() {
    let counts = StateCounts::from_fn(|s| 1 << DeviceState::ALL.iter().position(|x| *x == s).unwrap());
    let json = serde_json::to_value(counts).unwrap();
    for s in DeviceState::ALL {
        let bit = 1u64 << DeviceState::ALL.iter().position(|x| *x == s).unwrap();
        assert_eq!(counts.get(s), bit, "{s}");
        assert_eq!(json[s.as_str()], bit, "{s} is on the wire under its own name");
    }
    assert_eq!(json.as_object().unwrap().len(), DeviceState::ALL.len());
    let settled: u64 = DeviceState::ALL.iter().filter(|s| s.is_final()).map(|s| counts.get(*s)).sum();
    let total: u64 = DeviceState::ALL.iter().map(|s| counts.get(*s)).sum();
    assert_eq!(counts.settled(), settled);
    assert_eq!(counts.settled() + counts.in_progress() + counts.pending, total);
}

#[test]
fn requests_refuse_unknown_fields_and_keep_the_servers_defaults() {
    let create: CreateRollout =
        serde_json::from_str(r#"{"artifact":"m@1.0.0","group":"g","waves":[100],"probe":"exec:c"}"#).unwrap();
    assert_eq!((create.gates.clone(), create.halt_after, create.device_timeout_ms), (vec![], None, None));
    let extra = r#"{"artifact":"m@1.0.0","group":"g","waves":[100],"probe":"exec:c","extra":1}"#;
    assert!(serde_json::from_str::<CreateRollout>(extra).is_err());
    assert!(serde_json::from_str::<CreateGroup>(r#"{"name":"plant-7","x":1}"#).is_err());
    assert!(serde_json::from_str::<AbortRequest>(r#"{"mode":"sideways"}"#).is_err());
    check(&CreateToken { role: Role::Viewer, name: None }, r#"{"role":"viewer","name":null}"#);
    check(&ResumeRequest { ack: true }, r#"{"ack":true}"#);
    // A request without a use limit is what it always was, so older servers accept it.
    check(
        &CreateEnrollmentToken { group: "plant-7".into(), expires_in_secs: Some(60), max_uses: None },
        r#"{"group":"plant-7","expires_in_secs":60}"#,
    );
    check(
        &CreateEnrollmentToken { group: "plant-7".into(), expires_in_secs: None, max_uses: Some(1) },
        r#"{"group":"plant-7","expires_in_secs":null,"max_uses":1}"#,
    );
}

#[test]
fn error_codes_and_abort_modes_by_name() {
    for (code, wire) in [
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::Conflict, "conflict"),
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::Refused, "refused"),
        (ErrorCode::TooLarge, "too_large"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::Unavailable, "unavailable"),
    ] {
        check(
            &ErrorBody { error: ErrorDetail { code, message: "m".into() } },
            &format!(r#"{{"error":{{"code":"{wire}","message":"m"}}}}"#),
        );
    }
    for mode in [AbortMode::Keep, AbortMode::Revert] {
        assert_eq!(mode.to_string().parse::<AbortMode>(), Ok(mode));
        check(&AbortRequest { mode }, &format!(r#"{{"mode":"{mode}"}}"#));
    }
    assert!("sideways".parse::<AbortMode>().is_err());
}

#[test]
fn status_resign_and_rotation_bodies() {
    let counts = StateCounts { pending: 2, succeeded: 5, ..StateCounts::default() };
    check(
        &Status {
            version: "0.1.0".into(),
            database: "sqlite".into(),
            blob_store: "s3://models/fleet".into(),
            server_time: t(1000),
            metadata: vec![RoleStatus {
                role: MetadataRole::Targets,
                version: 3,
                expires_at: t(5000),
                expires_in_secs: 4,
                signed_offline: true,
            }],
            warnings: vec!["w".into()],
            audit: AuditStatus {
                events: 9,
                checkpoint: Some(CheckpointStatus { size: 8, root: SHA.parse().unwrap() }),
            },
            devices: DeviceCounts { enrolled: 7, in_running_rollouts: counts },
            rollouts_running: 1,
        },
        &format!(
            r#"{{"version":"0.1.0","database":"sqlite","blob_store":"s3://models/fleet","server_time":"1970-01-01T00:00:01.000Z",
            "metadata":[{{"role":"targets","version":3,"expires_at":"1970-01-01T00:00:05.000Z","expires_in_secs":4,"signed_offline":true}}],
            "warnings":["w"],"audit":{{"events":9,"checkpoint":{{"size":8,"root":"{SHA}"}}}},
            "devices":{{"enrolled":7,"in_running_rollouts":{counts}}},"rollouts_running":1}}"#,
            // StateCounts' own wire form is pinned by `state_counts_name_every_state`.
            counts = serde_json::to_string(&counts).unwrap()
        ),
    );
    check(&ResignTargets { targets: "{}".into() }, r#"{"targets":"{}"}"#);
    check(
        &TargetsResigned { version: 4, expires_at: t(9) },
        r#"{"version":4,"expires_at":"1970-01-01T00:00:00.009Z"}"#,
    );
    check(&RotateRoot { root: "r".into(), targets: None }, r#"{"root":"r","targets":null}"#);
    assert_eq!(
        serde_json::from_str::<RotateRoot>(r#"{"root":"r"}"#).unwrap(),
        RotateRoot { root: "r".into(), targets: None },
        "targets may be left out"
    );
    assert!(serde_json::from_str::<RotateRoot>(r#"{"root":"r","keys":[]}"#).is_err());
    check(
        &RootRotated {
            version: 2,
            expires_at: t(7),
            changed: vec![KeyRole::Root, KeyRole::Targets, KeyRole::Director],
            targets_version: Some(5),
        },
        r#"{"version":2,"expires_at":"1970-01-01T00:00:00.007Z","changed":["root","targets","director"],"targets_version":5}"#,
    );
}
