//! `peerbot cluster ...`: cluster keys and admission certificates, and the
//! admission a node checks before it starts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use peerbot_protocol::admission::{Admission, ClusterId, ClusterKey, ADMIN_LABEL};
use peerbot_protocol::labels::parse_label;

use crate::identity::{read_secret, write_secret};

/// A node's own cluster, made at its first start when it is given none.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// The certificate a node of its own cluster issues itself.
pub const ADMISSION_FILE: &str = "admission";

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Make a cluster key: the secret goes to FILE (mode 0600), the cluster's public key to stdout.
    Init {
        /// Where to write the secret key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the admission certificate of a node, for its --admission file.
    Admit {
        #[command(flatten)]
        key: KeyArgs,
        /// The node's PeerId (`peerbot id --data-dir DIR` prints it, making the key if needed).
        peer_id: String,
        /// A label the node may be started with (--label key=value); repeatable. Its os= and arch= labels need none.
        #[arg(long)]
        label: Vec<String>,
        /// How long the admission lasts (e.g. 90d); for ever if not given.
        #[arg(long, value_parser = crate::parse_duration_ms)]
        expires: Option<u64>,
    },
    /// Print the cluster's public key, for the nodes' --cluster.
    Id {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print a revocation of a node's admission, for `peerbot cluster publish`.
    Revoke {
        #[command(flatten)]
        key: KeyArgs,
        /// The node's PeerId.
        peer_id: String,
    },
    /// Give a revocation to a node, which publishes it to the whole cluster.
    Publish {
        /// Base URL of any node's HTTP API.
        #[arg(long = "node", env = "PEERBOT_NODE", default_value = "http://127.0.0.1:7401")]
        node: String,
        /// The node's API token (see DATA_DIR/api.token).
        #[arg(long, env = "PEERBOT_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The file `peerbot cluster revoke` wrote (or - for standard input).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct KeyArgs {
    /// The cluster's secret key file (from `peerbot cluster init`).
    #[arg(long, conflicts_with = "data_dir")]
    key: Option<PathBuf>,
    /// Or the data dir of a node that made its own cluster at first start.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> anyhow::Result<ClusterKey> {
        let path = match (&self.key, &self.data_dir) {
            (Some(k), _) => k.clone(),
            (None, Some(d)) => d.join(CLUSTER_KEY_FILE),
            (None, None) => bail!("say which cluster key: --key FILE or --data-dir DIR"),
        };
        let bytes = read_secret(&path)?;
        ClusterKey::from_protobuf(&bytes).with_context(|| format!("{}", path.display()))
    }
}

pub fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Init { out } => {
            if out.exists() {
                bail!("{} exists; a cluster key is never overwritten", out.display());
            }
            let key = ClusterKey::from_seed(rand::random());
            write_secret(&out, &key.to_protobuf())?;
            println!("{}", key.id().to_text());
        }
        ClusterCmd::Admit { key, peer_id, label, expires } => {
            let key = key.load()?;
            let peer: PeerId =
                peer_id.trim().parse().map_err(|e| anyhow::anyhow!("{peer_id:?} is not a PeerId: {e}"))?;
            let labels = label
                .iter()
                .map(|l| parse_label(l).map_err(|e| anyhow::anyhow!("--label: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let now = crate::now_ms();
            let cert = key.admit(&peer, labels, now, expires.map(|e| now.saturating_add(e)))?;
            println!("{}", cert.to_text());
        }
        ClusterCmd::Id { key } => println!("{}", key.load()?.id().to_text()),
        ClusterCmd::Revoke { key, peer_id } => {
            let key = key.load()?;
            let peer: PeerId =
                peer_id.trim().parse().map_err(|e| anyhow::anyhow!("{peer_id:?} is not a PeerId: {e}"))?;
            println!("{}", key.revoke(&peer, crate::now_ms()).to_text());
        }
        ClusterCmd::Publish { node, token, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?
            };
            peerbot_protocol::admission::Revocation::from_text(&text).with_context(|| format!("{}", file.display()))?;
            let v = crate::client::post_json(
                &node,
                token.as_deref(),
                "/api/v1/revocations",
                &serde_json::json!({ "revocation": text.trim() }),
            )?;
            println!("published as record {}", v["revocation_record"].as_str().unwrap_or("?"));
        }
    }
    Ok(())
}

/// The cluster a node belongs to and the certificate that admits it.
pub struct Membership {
    pub cluster: ClusterId,
    pub admission: Admission,
    /// This node holds the cluster key (a cluster of its own).
    pub keeper: bool,
}

/// Checks the admission a node is started with: `--cluster` and
/// `--admission` together, or neither, and then the node makes (once) and
/// keeps a cluster of its own in its data dir. `extra_labels` are the
/// labels given with `--label`, each of which the certificate must grant.
pub fn admit_self(
    data_dir: &Path,
    node_key: &Keypair,
    cluster: Option<&str>,
    admission: Option<&Path>,
    labels: &[String],
    extra_labels: &[String],
) -> anyhow::Result<Membership> {
    let me = node_key.public().to_peer_id();
    let now = crate::now_ms();
    match (cluster, admission) {
        (Some(c), Some(file)) => {
            let cluster = ClusterId::from_text(c).context("--cluster")?;
            let text = std::fs::read_to_string(file).with_context(|| format!("--admission {}", file.display()))?;
            let admission = Admission::from_text(&text).with_context(|| format!("--admission {}", file.display()))?;
            admission.check(&cluster, &me, now).with_context(|| format!("--admission {}", file.display()))?;
            admission.grants_all(extra_labels).with_context(|| {
                format!("--admission {}: ask for it with --label, or start without it", file.display())
            })?;
            Ok(Membership { cluster, admission, keeper: false })
        }
        (Some(_), None) => bail!(
            "--cluster needs --admission FILE: the cluster's keeper runs `peerbot cluster admit --key KEY {me}` and sends you its output"
        ),
        (None, Some(_)) => bail!("--admission needs --cluster PUBKEY: the key of the cluster that signed it"),
        (None, None) => {
            let path = data_dir.join(CLUSTER_KEY_FILE);
            let key = if path.exists() {
                ClusterKey::from_protobuf(&read_secret(&path)?).with_context(|| format!("{}", path.display()))?
            } else {
                let key = ClusterKey::from_seed(rand::random());
                write_secret(&path, &key.to_protobuf())?;
                key
            };
            // The keeper may cancel any job of its cluster.
            let mut granted = labels.to_vec();
            granted.push(ADMIN_LABEL.to_string());
            // The same certificate from one start to the next while it
            // grants the labels: each new one would be one more record.
            let kept = std::fs::read_to_string(data_dir.join(ADMISSION_FILE))
                .ok()
                .and_then(|t| Admission::from_text(&t).ok())
                .filter(|a| a.check(&key.id(), &me, now).is_ok() && a.grants_all(&granted).is_ok());
            let admission = match kept {
                Some(a) => a,
                None => {
                    let a = key.admit(&me, granted, now, None)?;
                    std::fs::write(data_dir.join(ADMISSION_FILE), a.to_text() + "\n")?;
                    a
                }
            };
            Ok(Membership { cluster: key.id(), admission, keeper: true })
        }
    }
}
