//! Times on the wire: RFC 3339 in UTC with milliseconds, like `2026-12-01T02:16:30.123Z`.
//!
//! The server keeps times as Unix milliseconds; a body carries them as a [`Timestamp`], which
//! serializes as RFC 3339 with a fixed precision so scripts and log tools read every time the
//! same way, and which reads back any RFC 3339 time (another offset, another precision).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The time `ms` milliseconds after the Unix epoch.
    pub fn from_unix_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// As RFC 3339 in UTC to the second (`2026-12-01T02:16:30Z`), for tables.
    pub fn to_seconds_string(self) -> String {
        format!("{:.0}", self.jiff(self.0.div_euclid(1000) * 1000))
    }

    fn jiff(self, ms: i64) -> jiff::Timestamp {
        // Beyond jiff's range (years -9999 to 9999) only by damage; show the nearest end.
        jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        })
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, UTC, milliseconds: `2026-12-01T02:16:30.123Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.jiff(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t: jiff::Timestamp =
            text.parse().map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))?;
        Ok(Self(t.as_millisecond()))
    }
}

/// On the wire a time is a string in RFC 3339 (`format: date-time`), never a number.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC, milliseconds (2026-12-01T02:16:30.123Z)."))
            .examples(["2026-12-01T02:16:30.123Z"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds_and_read_back() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_796_091_390_123, "2026-12-01T02:16:30.123Z"),
            (1_796_091_390_000, "2026-12-01T02:16:30.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ];
        for (ms, text) in table {
            let t = Timestamp::from_unix_ms(ms);
            assert_eq!(t.to_string(), text);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Timestamp>(&format!("\"{text}\"")).unwrap(), t);
        }
        assert_eq!(Timestamp::from_unix_ms(1_796_091_390_999).to_seconds_string(), "2026-12-01T02:16:30Z");
        // Another offset, another precision: the same instant.
        let other: Timestamp = serde_json::from_str("\"2026-12-01T03:16:30.1234+01:00\"").unwrap();
        assert_eq!(other.unix_ms(), 1_796_091_390_123);
        assert!(serde_json::from_str::<Timestamp>("1796098590123").is_err());
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
