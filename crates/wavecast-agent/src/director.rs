//! The director's signed assignment doc as it arrives, before anything in it is trusted, and
//! the rules that decide whether a signed doc may be acted on.
//!
//! Pure: bytes in, out the exact message the director's signature must cover and the fields the
//! agent checks; [`signer`] says whose director key signed it, among the keys the trusted roots
//! name (only the newest root's counts); [`check`] then decides on those fields with the time
//! and the last accepted counter passed in. [`crate::agent`] calls them and does the writes (the
//! counter, the reports). Kept apart from the IO so the
//! parsing can be fuzzed and the rules table-tested on their own.

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
        // A doc with a float has no canonical form, so nothing the director signed can match
        // it: the empty message fails the signature check like any other altered doc.
        message: wavecast_core::canonical::to_vec(signed).unwrap_or_default(),
        signature: value["signature"].as_str().and_then(|s| hex::decode(s).ok()).unwrap_or_default(),
        device_id: signed["device_id"].as_str().unwrap_or_default().to_owned(),
        expires: signed["expires"].as_i64().unwrap_or(0),
        counter: signed["counter"].as_u64().unwrap_or(0),
        items: signed["assignments"].as_array().cloned().unwrap_or_default(),
    })
}

/// Why a doc whose signature verified is still not acted on. Its text is the reason reported
/// for each of the doc's items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The doc names another device (the server or a proxy mixed devices up).
    #[error("assignment refused: it is for device {doc_device}, not this device ({me})")]
    OtherDevice {
        /// The device the doc names.
        doc_device: String,
        /// This device.
        me: String,
    },
    /// The doc's expiry has passed (a doc held back and replayed later).
    #[error("assignment refused: it expired at {}", expiry_text(*expires))]
    Expired {
        /// `signed.expires`, Unix seconds.
        expires: i64,
    },
    /// The doc's counter is older than one already accepted (a replay of an older doc).
    #[error("assignment refused as a replay: counter {counter} is older than {accepted} already accepted")]
    Replay {
        /// The doc's counter.
        counter: u64,
        /// The highest counter accepted before.
        accepted: u64,
    },
}

fn expiry_text(expires: i64) -> String {
    jiff::Timestamp::from_second(expires).map(|t| t.to_string()).unwrap_or_default()
}

/// What the caller must record for a doc that passed [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The doc's counter when it is newer than the one accepted before; the caller records it
    /// before acting on the doc, so older docs are refused as replays from then on.
    pub new_counter: Option<u64>,
}

/// Decides whether a signed doc may be acted on by device `me` at `now`, given the highest
/// counter `accepted_counter` accepted before. A doc expires at its `expires` second (a doc
/// exactly at expiry is refused); a doc with the same counter as the last accepted one is the
/// same assignment sent again and is accepted.
pub fn check(doc: &DirectorDoc, me: &str, now: jiff::Timestamp, accepted_counter: u64) -> Result<Accepted, Refusal> {
    if doc.device_id != me {
        return Err(Refusal::OtherDevice { doc_device: doc.device_id.clone(), me: me.to_owned() });
    }
    if doc.expires <= now.as_second() {
        return Err(Refusal::Expired { expires: doc.expires });
    }
    if doc.counter < accepted_counter {
        return Err(Refusal::Replay { counter: doc.counter, accepted: accepted_counter });
    }
    Ok(Accepted { new_counter: (doc.counter > accepted_counter).then_some(doc.counter) })
}

/// Whose director key signed a doc, among the keys the trusted roots name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The newest root's director key: the doc may be acted on.
    Current,
    /// The director key of root `version`, which the newest root `newest` no longer names.
    Retired {
        /// The root that named the key.
        version: u64,
        /// The newest root.
        newest: u64,
    },
    /// No director key of any trusted root; `newest` is the newest root's version.
    Unknown {
        /// The newest root.
        newest: u64,
    },
}

impl Signer {
    /// Why a doc not signed by the current key is refused.
    pub fn refusal(self) -> Option<String> {
        match self {
            Signer::Current => None,
            Signer::Retired { version, newest } => Some(format!(
                "assignment refused: it is signed by the director key of trust root version {version}, which root version \
                 {newest} retired"
            )),
            Signer::Unknown { newest } => Some(format!(
                "assignment refused: its signature does not verify against the director key of trust root version \
                 {newest}, the newest this device has verified (is trust_root in agent.toml this server's root.json?)"
            )),
        }
    }
}

/// Which of `directors` (each trusted root's version and director key, oldest first; the last
/// is current) signed `doc`. A key still named by the newest root is current, whichever
/// version named it first.
pub fn signer(doc: &DirectorDoc, directors: &[(u64, Option<[u8; 32]>)]) -> Signer {
    let verifies = |key: &[u8; 32]| {
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, key)
            .verify(&doc.message, &doc.signature)
            .is_ok()
    };
    let newest = directors.last().map_or(0, |(v, _)| *v);
    if directors.last().and_then(|(_, k)| k.as_ref()).is_some_and(verifies) {
        return Signer::Current;
    }
    match directors.iter().rev().find(|(_, k)| k.as_ref().is_some_and(verifies)) {
        Some((version, _)) => Signer::Retired { version: *version, newest },
        None => Signer::Unknown { newest },
    }
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
        assert_eq!(parsed.message, doc.signing_bytes().unwrap());
        assert_eq!(parsed.signature, [0xab, 0xcd]);
        assert_eq!((parsed.device_id.as_str(), parsed.counter, parsed.expires), ("d1", 7, 1_800_000_000));
        assert_eq!(parsed.items.iter().map(|i| parse_item(i).unwrap()).collect::<Vec<_>>(), doc.assignments);
    }

    #[test]
    fn check_refuses_other_devices_expired_docs_and_replays() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let doc = |device: &str, expires: i64, counter: u64| DirectorDoc {
            message: Vec::new(),
            signature: Vec::new(),
            device_id: device.to_owned(),
            expires,
            counter,
            items: Vec::new(),
        };
        let at = now.as_second();
        let other = |d: &str| Err(Refusal::OtherDevice { doc_device: d.to_owned(), me: "d1".into() });
        let expired = |expires| Err(Refusal::Expired { expires });
        // (case, doc, counter accepted before, verdict)
        let cases = [
            ("another device's doc", doc("d2", at + 60, 5), 4, other("d2")),
            ("an empty device id", doc("", at + 60, 5), 4, other("")),
            ("expired a second ago", doc("d1", at - 1, 5), 4, expired(at - 1)),
            ("exactly at expiry", doc("d1", at, 5), 4, expired(at)),
            ("expiry missing (read as 0)", doc("d1", 0, 5), 4, expired(0)),
            ("a replayed older counter", doc("d1", at + 1, 3), 4, Err(Refusal::Replay { counter: 3, accepted: 4 })),
            ("the same counter again", doc("d1", at + 1, 4), 4, Ok(Accepted { new_counter: None })),
            ("a newer counter", doc("d1", at + 1, 5), 4, Ok(Accepted { new_counter: Some(5) })),
            ("the first doc ever", doc("d1", at + 1, 0), 0, Ok(Accepted { new_counter: None })),
            // The device is checked first, then expiry, then the counter: the reason names the
            // most basic problem.
            ("everything wrong", doc("d2", at, 3), 4, other("d2")),
            ("an expired replay", doc("d1", at, 3), 4, expired(at)),
        ];
        for (case, doc, accepted, want) in cases {
            assert_eq!(check(&doc, "d1", now, accepted), want, "{case}");
        }
    }

    #[test]
    fn refusals_say_why_in_the_reported_words() {
        let texts = [
            (
                Refusal::OtherDevice { doc_device: "d2".into(), me: "d1".into() },
                "assignment refused: it is for device d2, not this device (d1)",
            ),
            (Refusal::Expired { expires: 1_800_000_000 }, "assignment refused: it expired at 2027-01-15T08:00:00Z"),
            (
                Refusal::Replay { counter: 3, accepted: 4 },
                "assignment refused as a replay: counter 3 is older than 4 already accepted",
            ),
        ];
        for (refusal, text) in texts {
            assert_eq!(refusal.to_string(), text);
        }
    }

    #[test]
    fn a_doc_is_acted_on_only_when_the_newest_roots_director_signed_it() {
        let keys: Vec<wavecast_tuf::keys::SigningKey> =
            (0..3).map(|_| wavecast_tuf::keys::SigningKey::generate().unwrap()).collect();
        let public = |i: usize| <[u8; 32]>::try_from(keys[i].public_bytes()).ok();
        let signed_by = |i: usize| {
            let message = b"{\"counter\":1}".to_vec();
            DirectorDoc {
                signature: keys[i].sign_bytes(&message),
                message,
                device_id: String::new(),
                expires: 0,
                counter: 1,
                items: Vec::new(),
            }
        };
        // Roots 1 and 2 name key 0; root 3 names key 1; key 2 was never named.
        let rotated = [(1, public(0)), (2, public(0)), (3, public(1))];
        // (case, signed by, the roots' director keys, verdict)
        let cases = [
            ("the only root's key", 0, &rotated[..1], Signer::Current),
            ("a key the newest root still names", 0, &rotated[..2], Signer::Current),
            ("the key the newest root names", 1, &rotated[..], Signer::Current),
            ("a key a rotation retired", 0, &rotated[..], Signer::Retired { version: 2, newest: 3 }),
            ("a key no root names", 2, &rotated[..], Signer::Unknown { newest: 3 }),
            ("a newer key than this device knows", 1, &rotated[..2], Signer::Unknown { newest: 2 }),
            (
                "a root without a director key",
                0,
                &[(1, public(0)), (2, None)][..],
                Signer::Retired { version: 1, newest: 2 },
            ),
        ];
        for (case, by, directors, want) in cases {
            assert_eq!(signer(&signed_by(by), directors), want, "{case}");
        }
        let mut tampered = signed_by(1);
        tampered.message.push(b' ');
        assert_eq!(signer(&tampered, &rotated), Signer::Unknown { newest: 3 }, "a changed message");
        let retired = Signer::Retired { version: 2, newest: 3 }.refusal().unwrap();
        assert!(retired.contains("director key of trust root version 2") && retired.contains("version 3 retired"));
        assert!(Signer::Unknown { newest: 3 }.refusal().unwrap().contains("trust_root"));
        assert_eq!(Signer::Current.refusal(), None);
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
