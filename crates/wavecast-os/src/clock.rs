//! The wall clock: the only place wavecast reads the time of day.
//!
//! Everything that decides by time takes the time as an argument (the rollout engine, the
//! director checks, expiry checks), so tests pass any instant they like and the code that reads
//! the clock stays one line long. A tidy test keeps it that way.

/// Now, as a timestamp.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Now, in milliseconds since the Unix epoch (the unit the database stores).
pub fn now_ms() -> i64 {
    now().as_millisecond()
}
