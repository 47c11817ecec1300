//! MLflow records → Ferry's protobuf messages.

use ferry_mlflow::{ModelVersion, RegisteredModel, tags};
use ferry_proto::registry::v1 as pb;

use crate::error::{RegistryError, Result};

pub(crate) fn stage_from_mlflow(s: &str) -> pb::Stage {
    match s.to_ascii_lowercase().as_str() {
        "staging" => pb::Stage::Staging,
        "production" => pb::Stage::Production,
        "archived" => pb::Stage::Archived,
        _ => pb::Stage::None,
    }
}

pub(crate) fn stage_to_mlflow(s: pb::Stage) -> Result<&'static str> {
    match s {
        pb::Stage::None => Ok("None"),
        pb::Stage::Staging => Ok("Staging"),
        pb::Stage::Production => Ok("Production"),
        pb::Stage::Archived => Ok("Archived"),
        pb::Stage::Unspecified => Err(RegistryError::InvalidArgument(
            "stage is required: STAGE_NONE, STAGE_STAGING, STAGE_PRODUCTION or STAGE_ARCHIVED".into(),
        )),
    }
}

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// `aliases` overrides the version's own list (absent from MLflow search results).
pub(crate) fn version(v: &ModelVersion, aliases: Option<Vec<String>>) -> pb::ModelVersion {
    pb::ModelVersion {
        name: v.name.clone(),
        version: v.version.clone(),
        stage: stage_from_mlflow(&v.current_stage).into(),
        aliases: aliases.unwrap_or_else(|| v.aliases.clone()),
        run_id: v.run_id.clone(),
        source: v.source.clone(),
        sha256: v.tag(tags::SHA256).unwrap_or_default().to_owned(),
        size_bytes: v.tag(tags::SIZE).and_then(|s| s.parse().ok()).unwrap_or(0),
        artifact_path: v.tag(tags::ARTIFACT_PATH).unwrap_or_default().to_owned(),
        description: v.description.clone().unwrap_or_default(),
        tags: v.tag_map().into_iter().collect(),
        created_at: ts(v.creation_timestamp),
        updated_at: ts(v.last_updated_timestamp),
    }
}

pub(crate) fn registered_model(m: &RegisteredModel) -> pb::RegisteredModel {
    pb::RegisteredModel {
        name: m.name.clone(),
        description: m.description.clone().unwrap_or_default(),
        tags: m.tag_map().into_iter().collect(),
        aliases: m.alias_map().into_iter().collect(),
        latest_versions: m.latest_versions.iter().map(|v| version(v, None)).collect(),
    }
}

pub(crate) fn move_to_pb(m: crate::history::Move) -> pb::Move {
    pb::Move {
        target: m.target,
        from_version: m.from,
        to_version: m.to,
        by: m.by,
        at: ts(m.at_ms),
        reason: m.reason,
        rollback: m.rollback,
    }
}
