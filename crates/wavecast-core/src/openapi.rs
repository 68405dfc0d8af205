//! OpenAPI schemas for the types whose JSON is a checked string (names, versions, digests), so
//! the server's document says what the checks accept; the `openapi` feature, off for the agent.
//!
//! Every other type on the wire derives its schema from its serde form next to its definition.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::name::MAX_NAME_LEN;
use crate::{ArtifactName, ArtifactVersion, DeviceName, GroupName, Sha256Digest, TargetName};

/// What `name::validate` accepts (its length is checked apart).
const NAME: &str = "[A-Za-z0-9][A-Za-z0-9._-]*";

/// Semantic versioning 2.0.0, as the `semver` crate parses it.
const SEMVER: &str = r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?";

fn string(description: &str, pattern: String) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).description(Some(description)).pattern(Some(pattern))
}

fn name(kind: &str, example: &str) -> RefOr<Schema> {
    string(
        &format!("{kind} name: 1-{MAX_NAME_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit."),
        format!("^{NAME}$"),
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME_LEN))
    .examples([example])
    .into()
}

macro_rules! schema {
    ($ty:ty, $body:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $body
            }
        }
        impl ToSchema for $ty {}
    };
}

schema!(ArtifactName, name("Artifact", "yolo-v8n"));
schema!(GroupName, name("Group", "plant-7"));
schema!(DeviceName, name("Device", "cam-001"));
schema!(ArtifactVersion, string("Semantic version.", format!("^{SEMVER}$")).examples(["2.1.0"]).into());
schema!(
    TargetName,
    string("NAME@VERSION of an artifact.", format!("^[A-Za-z0-9][A-Za-z0-9._-]{{0,{}}}@{SEMVER}$", MAX_NAME_LEN - 1))
        .examples(["yolo-v8n@2.1.0"])
        .into()
);
schema!(
    Sha256Digest,
    string("A SHA-256 digest: 64 lowercase hex digits.", "^[0-9a-f]{64}$".into())
        .min_length(Some(64))
        .max_length(Some(64))
        .into()
);
