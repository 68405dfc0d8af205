//! Canonical JSON: the one byte form of a JSON value that wavecast signs and hashes.
//!
//! Used wherever bytes are hashed or signed (audit leaves, director assignments), so the same
//! value always yields the same bytes regardless of how it was built. The agent canonicalizes
//! the doc it received and the verifier the event it parsed, so the form must never change:
//! `testdata/canonical/` pins the bytes of every signed type, and a change there is a
//! protocol change that breaks every deployed agent and every exported audit log.
//!
//! # Which canonical form
//!
//! Neither OLPC canonical JSON (which TUF metadata uses, through tough) nor RFC 8785 (JCS).
//! It is serde_json's compact output with object keys sorted, exactly:
//!
//! - **Objects**: members sorted by key, comparing the keys' UTF-8 bytes (so by code point;
//!   RFC 8785 compares UTF-16 code units, which orders keys above U+FFFF differently). A key
//!   appears once: `serde_json::Value` cannot hold two.
//! - **Arrays**: in their order.
//! - **Whitespace**: none, anywhere: `{"a":1,"b":[true,null]}`.
//! - **Strings** (keys too): serde_json's escaping: `"` and `\` escaped with a backslash;
//!   U+0008, U+0009, U+000A, U+000C, U+000D as `\b \t \n \f \r`; the other code points below
//!   U+0020 as `\u00XX` with lowercase hex; everything else, `/`, U+007F and all non-ASCII
//!   included, as its raw UTF-8 bytes. (OLPC escapes only `"` and `\`; RFC 8785 is the same
//!   as this for strings.)
//! - **Numbers**: integers only, in decimal with a `-` for negatives and no leading zeros, no
//!   exponent, no fraction, the whole `i64` and `u64` range. Floats are refused with
//!   [`CanonicalError::Float`]: their text form differs between encoders (RFC 8785 needs the
//!   ECMAScript algorithm) and nothing wavecast signs needs one; times are integers or RFC
//!   3339 strings.
//! - `true`, `false`, `null` as themselves.
//!
//! Why our own and not one of the standards: the form predates this note, devices in the
//! field verify signatures over it, and for what wavecast signs (integers, ASCII names, hex
//! digests, the odd free-text reason) it is the same bytes as RFC 8785 except for integers
//! beyond 2^53 (RFC 8785 writes the nearest double) and the order of keys outside the Basic
//! Multilingual Plane, neither of which a signed type uses in practice. Switching to a
//! standard would buy interoperability nobody asks for at the price of a flag day for every
//! agent; pinning what we have makes any change deliberate.

/// A value that has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number that is not an integer.
    #[error("canonical JSON has no floats, but {path} is {number}")]
    Float {
        /// Where it is, as a JSON pointer (`/detail/ratio`; empty for the value itself).
        path: String,
        /// The number as serde_json prints it.
        number: String,
    },
}

/// The canonical bytes of `value`; refused when it holds a float anywhere.
pub fn to_vec(value: &serde_json::Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    let mut path = String::new();
    write_canonical(value, &mut path, &mut out)?;
    Ok(out)
}

// serde_json's map order depends on a crate feature any dependency may switch on, so sorting is
// done here rather than trusted to the map type. `path` is the JSON pointer of `value`, kept
// only for the error.
fn write_canonical(value: &serde_json::Value, path: &mut String, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // `str`'s order is its UTF-8 bytes' order, which is code point order.
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                write_canonical(v, path, out)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                write_canonical(v, path, out)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            return Err(CanonicalError::Float { path: path.clone(), number: n.to_string() });
        }
        scalar => write_scalar(scalar, out),
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Serializing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_refused_wherever_they_are() {
        let cases = [
            (serde_json::json!(1.5), ""),
            (serde_json::json!({ "a": { "b/c": [1, 2, 0.25] } }), "/a/b~1c/2"),
            // An integral float is still a float: serde_json keeps `1.0` apart from `1`.
            (serde_json::json!({ "detail": { "ratio": 1.0 } }), "/detail/ratio"),
        ];
        for (value, at) in cases {
            match to_vec(&value) {
                Err(CanonicalError::Float { path, .. }) => assert_eq!(path, at, "{value}"),
                Ok(bytes) => panic!("{value} encoded as {}", String::from_utf8_lossy(&bytes)),
            }
        }
        // Text that reads as an integer but parses as a float is refused too: an exponent, and
        // `-0` (serde_json reads it as the float -0.0).
        for text in [r#"{"n": 1e3}"#, "-0"] {
            let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(to_vec(&parsed).is_err(), "{text}");
        }
    }

    #[test]
    fn integers_of_the_whole_range_are_kept() {
        let value = serde_json::json!([i64::MIN, -1, 0, u64::MAX]);
        assert_eq!(to_vec(&value).unwrap(), b"[-9223372036854775808,-1,0,18446744073709551615]");
    }
}
