//! MLflow REST payloads. Every field defaults, because MLflow omits empty ones
//! (for example `aliases` never appears in `model-versions/search`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

pub(crate) fn tags_to_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AliasEntry {
    pub alias: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RegisteredModel {
    pub name: String,
    pub description: Option<String>,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    pub tags: Vec<Tag>,
    pub aliases: Vec<AliasEntry>,
    pub latest_versions: Vec<ModelVersion>,
}

impl RegisteredModel {
    pub fn tag_map(&self) -> BTreeMap<String, String> {
        tags_to_map(&self.tags)
    }

    /// alias -> version
    pub fn alias_map(&self) -> BTreeMap<String, String> {
        self.aliases.iter().map(|a| (a.alias.clone(), a.version.clone())).collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ModelVersion {
    pub name: String,
    /// MLflow versions are decimal strings.
    pub version: String,
    pub creation_timestamp: i64,
    pub last_updated_timestamp: i64,
    pub current_stage: String,
    pub description: Option<String>,
    pub source: String,
    pub run_id: String,
    pub status: String,
    pub tags: Vec<Tag>,
    pub aliases: Vec<String>,
}

impl ModelVersion {
    pub fn tag_map(&self) -> BTreeMap<String, String> {
        tags_to_map(&self.tags)
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }

    /// The version as a number, for ordering ("10" sorts after "9").
    pub fn number(&self) -> u64 {
        self.version.parse().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    pub status: String,
    pub artifact_uri: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileInfo {
    pub path: String,
    pub is_dir: bool,
    pub file_size: Option<i64>,
}

/// A page of results and the token for the next one (absent on the last page).
#[derive(Debug, Clone, Default)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct WebhookEvent {
    pub entity: String,
    pub action: String,
}

/// A registry webhook. MLflow never returns the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Webhook {
    pub webhook_id: String,
    pub name: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    pub status: String,
}
