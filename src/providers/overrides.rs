//! `CREDGATE_PROVIDER_{ID}_{FIELD}`: environment variables that override one
//! top-level field of one provider file.

use std::collections::BTreeMap;

/// Applies `CREDGATE_PROVIDER_{ID}_{FIELD}` entries to one file's table. The
/// longest matching id wins, so `OPENAI_COMPATIBLE_…` never lands on `openai`.
/// Returns the fields set, each with its variable.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    id: &str,
    all_ids: &[String],
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut applied = BTreeMap::new();
    let prefix = format!("CREDGATE_PROVIDER_{}_", id.to_uppercase());
    for (key, value) in env {
        let Some(field) = key.strip_prefix(&prefix) else {
            continue;
        };
        let claimed_by_longer = all_ids.iter().any(|other| {
            other.len() > id.len() && key.starts_with(&format!("CREDGATE_PROVIDER_{}_", other.to_uppercase()))
        });
        if claimed_by_longer {
            continue;
        }
        let field = field.to_lowercase();
        let value = if field == "scopes" {
            toml::Value::Array(
                value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        } else {
            toml::Value::String(value.clone())
        };
        applied.insert(field.clone(), key.clone());
        table.insert(field, value);
    }
    applied
}
