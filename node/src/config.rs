//! The node's config file: TOML whose keys are the node's long flags.

use anyhow::Context;

/// Settings a config file may hold: the node flags, by their long names
/// with `_` for `-`.
const CONFIG_KEYS: &[&str] = &[
    "data_dir",
    "http",
    "http_host",
    "listen",
    "bootstrap",
    "watch",
    "allow_repo",
    "poll_secs",
    "label",
    "executors",
    "name",
    "db_cache_mb",
    "read_cache_mb",
    "heartbeat_ms",
    "claim_stagger_ms",
    "lease_secs",
    "sync_secs",
    "log_replicas",
    "log_horizon",
    "api_token",
    "api_token_file",
    "work_dir",
    "sandbox",
    "cluster",
    "admission",
    "hook_secret_file",
    "public_url",
];

/// Keys of a config file that are tables, not flags.
const TABLE_KEYS: &[&str] = &["notify"];

/// The config file's `[[notify]]` tables, and the secret files they name.
pub fn notifiers(args: &[String]) -> anyhow::Result<(Vec<crate::notify::config::Notifier>, Vec<std::path::PathBuf>)> {
    let Some(path) = config_path(args) else { return Ok((vec![], vec![])) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("config file {path} is not valid TOML"))?;
    let Some(value) = table.get("notify") else { return Ok((vec![], vec![])) };
    let secrets = crate::notify::config::secret_files(value);
    let list = crate::notify::config::parse(value).with_context(|| format!("config file {path}"))?;
    Ok((list, secrets))
}

/// The config file named by `--config` or `PEERBOT_CONFIG`.
pub fn config_path(args: &[String]) -> Option<String> {
    let mut path = std::env::var("PEERBOT_CONFIG").ok();
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            path = args.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    path
}

/// Reads the node's config file into `PEERBOT_*` variables that are not
/// already set, so that flags beat the environment, which beats the file.
pub fn apply_config_file(args: &[String]) -> anyhow::Result<()> {
    let Some(path) = config_path(args) else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("config file {path} is not valid TOML"))?;
    for (key, value) in table {
        if TABLE_KEYS.contains(&key.as_str()) {
            continue;
        }
        if !CONFIG_KEYS.contains(&key.as_str()) {
            anyhow::bail!(
                "config file {path}: unknown setting {key:?}; known: {}, {}",
                CONFIG_KEYS.join(", "),
                TABLE_KEYS.join(", ")
            );
        }
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(anyhow::anyhow!("config file {path}: {key} must list strings, found {other}")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => anyhow::bail!("config file {path}: {key} cannot be {other}"),
        };
        let var = format!("PEERBOT_{}", key.to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, text);
        }
    }
    Ok(())
}
