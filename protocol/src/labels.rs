//! Platform labels (`key=value`) and requirement matching.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LabelError {
    #[error("label {0:?} is not of the form key=value")]
    Form(String),
    #[error("label {0:?} has characters outside [A-Za-z0-9._-] in its key")]
    Key(String),
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} bytes")]
    Long(String),
}

pub const MAX_LABEL_LEN: usize = 128;
pub const MAX_LABELS: usize = 64;

/// Checks one `key=value` label and returns it trimmed.
pub fn parse_label(s: &str) -> Result<String, LabelError> {
    let s = s.trim();
    if s.len() > MAX_LABEL_LEN {
        return Err(LabelError::Long(s.to_string()));
    }
    let (k, v) = s.split_once('=').ok_or_else(|| LabelError::Form(s.to_string()))?;
    if k.is_empty() || v.is_empty() {
        return Err(LabelError::Form(s.to_string()));
    }
    if !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(LabelError::Key(s.to_string()));
    }
    Ok(format!("{}={}", k.trim(), v.trim()))
}

/// The labels every node has from its platform.
pub fn platform_labels(os: &str, arch: &str) -> Vec<String> {
    vec![format!("os={os}"), format!("arch={arch}")]
}

/// A node satisfies a job when it has every required label.
pub fn satisfies(have: &[String], requires: &[String]) -> bool {
    requires.iter().all(|r| have.iter().any(|h| h == r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert_eq!(parse_label(" gpu=yes ").unwrap(), "gpu=yes");
        assert!(parse_label("gpu").is_err());
        assert!(parse_label("=yes").is_err());
        assert!(parse_label("g pu=yes").is_err());
        let have = vec!["os=linux".to_string(), "gpu=yes".to_string()];
        assert!(satisfies(&have, &["os=linux".into()]));
        assert!(satisfies(&have, &[]));
        assert!(!satisfies(&have, &["os=macos".into()]));
    }
}
