//! The node's ed25519 key, kept in its data dir; its PeerId is that key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use libp2p::identity::Keypair;

pub const KEY_FILE: &str = "node.key";

pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Keypair> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        return load(data_dir);
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().context("encoding the new key")?;
    write_secret(&path, &bytes)?;
    Ok(key)
}

/// Writes a secret file readable by its owner only (mode 0600), whole or
/// not at all (written beside it, then renamed).
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut name = path.file_name().context("a file name")?.to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads a secret file, refusing one that others may read.
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("no key at {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others (mode {:o}); chmod 600 it", path.display(), meta.permissions().mode() & 0o777);
    }
    Ok(fs::read(path)?)
}

pub fn load(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join(KEY_FILE);
    let bytes = read_secret(&path)?;
    let key =
        Keypair::from_protobuf_encoding(&bytes).with_context(|| format!("{} is not a node key", path.display()))?;
    if key.key_type() != libp2p::identity::KeyType::Ed25519 {
        bail!("{} holds a {:?} key; peerbot needs ed25519", path.display(), key.key_type());
    }
    Ok(key)
}

pub const TOKEN_FILE: &str = "api.token";

/// The token HTTP writes must present, made at first start (mode 0600).
/// A token kept in a file of the operator's (`--api-token-file`).
pub fn token_file(path: &Path, flag: &str) -> anyhow::Result<String> {
    let bytes = read_secret(path).with_context(|| flag.to_string())?;
    let t = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not text", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("{} holds no usable token (at least 16 characters, one line, no spaces)", path.display());
    }
    Ok(t)
}

pub fn api_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    if path.exists() {
        let t = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let t = t.trim().to_string();
        if t.len() < 16 {
            bail!("{} holds no usable token (at least 16 characters)", path.display());
        }
        return Ok(t);
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// The node's name: `--name`, or the machine's host name.
pub fn node_name(given: Option<&str>) -> anyhow::Result<String> {
    let name = match given {
        Some(n) => n.trim().to_string(),
        None => fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default(),
    };
    if !peerbot_protocol::wire::valid_name(&name) {
        bail!(
            "--name {name:?}: a node name is at most {} bytes, without control characters",
            peerbot_protocol::wire::MAX_NAME_LEN
        );
    }
    Ok(name)
}

/// What a user needs once the node is up: where to point a browser, where
/// the token is, what is watched.
/// The address of the pages served on `http` (a wildcard shown as loopback).
pub fn page_url(http: &str) -> String {
    let host = match http.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => http.to_string(),
    };
    format!("http://{host}")
}

pub fn banner(name: &str, http: &str, token_at: &str, watched: &[String]) -> String {
    let host = page_url(http);
    let host = host.trim_start_matches("http://");
    let watching =
        if watched.is_empty() { "nothing (announce with `peerbot announce`)".into() } else { watched.join(", ") };
    format!("peerbot node {name:?} is up: http://{host}/\n  API token (for writes): {token_at}\n  watching: {watching}")
}
