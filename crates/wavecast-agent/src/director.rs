//! The director's signed assignment doc as it arrives, before anything in it is trusted.
//!
//! Pure: bytes in, out the exact message the director's signature must cover and the fields the
//! agent checks. [`crate::agent`] verifies the signature over [`DirectorDoc::message`] before it
//! acts on anything here. Kept apart from the IO so the parsing can be fuzzed on its own.

use wavecast_core::assignment::Assignment;

/// A received doc, parsed leniently: nothing here is verified yet.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectorDoc {
    /// The canonical JSON bytes of the `signed` object: what the signature covers.
    pub message: Vec<u8>,
    /// The signature, decoded from hex; empty when missing or not hex (it then never verifies).
    pub signature: Vec<u8>,
    /// `signed.device_id`, empty when missing or not a string.
    pub device_id: String,
    /// `signed.expires` (Unix seconds), 0 when missing or not an integer.
    pub expires: i64,
    /// `signed.counter`, 0 when missing or not an unsigned integer.
    pub counter: u64,
    /// `signed.assignments`, unparsed, so an item that does not parse can still be reported.
    pub items: Vec<serde_json::Value>,
}

/// Parses a doc; only bytes that are not JSON at all are an error.
pub fn parse_doc(body: &[u8]) -> Result<DirectorDoc, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let signed = &value["signed"];
    Ok(DirectorDoc {
        message: wavecast_core::canonical::to_vec(signed),
        signature: value["signature"].as_str().and_then(|s| hex::decode(s).ok()).unwrap_or_default(),
        device_id: signed["device_id"].as_str().unwrap_or_default().to_owned(),
        expires: signed["expires"].as_i64().unwrap_or(0),
        counter: signed["counter"].as_u64().unwrap_or(0),
        items: signed["assignments"].as_array().cloned().unwrap_or_default(),
    })
}

/// Reads one item of `assignments` as a typed assignment.
pub fn parse_item(item: &serde_json::Value) -> Result<Assignment, serde_json::Error> {
    serde_json::from_value(item.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wavecast_core::assignment::{Action, AssignmentDoc, SignedAssignments};
    use wavecast_core::probe::{ProbeKind, ProbeSpec};
    use wavecast_core::{ArtifactName, ArtifactVersion, Sha256Digest};

    #[test]
    fn the_message_is_what_the_director_signs() {
        let assignment = Assignment {
            rollout_id: "r-1".into(),
            action: Action::Install,
            artifact: ArtifactName::new("yolo").unwrap(),
            version: ArtifactVersion::new("2.1.0").unwrap(),
            length: 3,
            sha256: Sha256Digest::of(b"abc"),
            probe: ProbeSpec::new(ProbeKind::Exec { name: "check".into(), args: vec![] }),
        };
        let doc =
            AssignmentDoc { device_id: "d1".into(), counter: 7, expires: 1_800_000_000, assignments: vec![assignment] };
        let body = serde_json::to_vec(&SignedAssignments { signed: doc.clone(), signature: "abcd".into() }).unwrap();
        let parsed = parse_doc(&body).unwrap();
        assert_eq!(parsed.message, doc.signing_bytes());
        assert_eq!(parsed.signature, [0xab, 0xcd]);
        assert_eq!((parsed.device_id.as_str(), parsed.counter, parsed.expires), ("d1", 7, 1_800_000_000));
        assert_eq!(parsed.items.iter().map(|i| parse_item(i).unwrap()).collect::<Vec<_>>(), doc.assignments);
    }

    #[test]
    fn only_non_json_is_an_error() {
        assert!(parse_doc(b"{").is_err());
        let odd = parse_doc(b"[1]").unwrap();
        assert_eq!(odd.message, b"null");
        assert!(odd.signature.is_empty() && odd.device_id.is_empty() && odd.items.is_empty());
        let bad_sig = parse_doc(br#"{"signed":{"counter":-1},"signature":"zz"}"#).unwrap();
        assert!(bad_sig.signature.is_empty());
        assert_eq!(bad_sig.counter, 0);
    }
}
