//! Device reports as the server reads them: `POST /api/v1/device/reports`.
//!
//! The body is read as axum's `Json` does (serde_path_to_error over serde_json), then put
//! through the handler's own checks (`api/device.rs` `reports`) and what the store does with
//! each field before any SQL.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wavecast_core::assignment::{DeviceState, MAX_REPORTS_PER_BATCH, ReportBatch};

fuzz_target!(|data: &[u8]| {
    let mut de = serde_json::Deserializer::from_slice(data);
    let via_axum = serde_path_to_error::deserialize::<_, ReportBatch>(&mut de).map_err(|e| e.to_string());
    let via_axum = via_axum.and_then(|b| de.end().map(|()| b).map_err(|e| e.to_string()));
    let plain = serde_json::from_slice::<ReportBatch>(data);
    assert_eq!(via_axum.is_ok(), plain.is_ok(), "axum and serde_json disagree: {via_axum:?} / {plain:?}");
    let Ok(batch) = via_axum else { return };

    // The handler's checks.
    if batch.reports.len() > MAX_REPORTS_PER_BATCH {
        return;
    }
    for report in &batch.reports {
        if report.id.is_empty()
            || report.id.len() > 64
            || !report.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return;
        }
        // What the store and its log line read.
        let _ = (report.state.as_str(), report.state.to_string(), report.reason.as_deref().unwrap_or(""));
        for from in DeviceState::ALL {
            let _ = from.may_become(report.state);
        }
        let _ = (report.state.is_final(), report.state.is_failure(), report.state.started());
    }
    for a in &batch.active {
        let _ = (a.name.as_str(), a.version.to_string(), a.sha256.to_hex());
    }

    // What the server accepted reads back as the same batch.
    let bytes = serde_json::to_vec(&batch).expect("a parsed batch serializes");
    let again: ReportBatch = serde_json::from_slice(&bytes).expect("a serialized batch parses");
    assert_eq!(again, batch);
});
