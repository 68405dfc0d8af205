//! Reading rows: every column goes through [`Row`], which names the operation when the
//! database fails and turns a stored value that does not parse into [`StoreError::Corrupt`].

use std::str::FromStr;

use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{Any, Decode, Row as _, Type};

use super::{StoreError, corrupt, q};

/// One row, read for `op` ("reading a rollout").
pub(super) struct Row<'r> {
    row: &'r AnyRow,
    op: &'static str,
}

impl<'r> Row<'r> {
    pub(super) fn new(row: &'r AnyRow, op: &'static str) -> Self {
        Self { row, op }
    }

    /// Column `i` as stored.
    pub(super) fn get<T: Decode<'r, Any> + Type<Any>>(&self, i: usize) -> Result<T, StoreError> {
        self.row.try_get(i).map_err(q(self.op))
    }

    /// Text column `i` parsed into a domain type; text that does not parse is a corrupt `what`.
    pub(super) fn parse<T>(&self, i: usize, what: &'static str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.get::<String>(i)?.parse().map_err(corrupt(what))
    }

    /// Like [`Row::parse`], for a column that may be NULL.
    pub(super) fn parse_opt<T>(&self, i: usize, what: &'static str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.get::<Option<String>>(i)?.map(|s| s.parse().map_err(corrupt(what))).transpose()
    }

    /// JSON text column `i`.
    pub(super) fn json<T: DeserializeOwned>(&self, i: usize, what: &'static str) -> Result<T, StoreError> {
        serde_json::from_str(&self.get::<String>(i)?).map_err(corrupt(what))
    }
}

/// Reads every row with `read`.
pub(super) fn read_all<T>(
    rows: &[AnyRow],
    op: &'static str,
    read: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|r| read(&Row::new(r, op))).collect()
}
