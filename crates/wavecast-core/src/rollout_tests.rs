//! Table-driven tests of the rollout engine (being written).
