//! Cluster keys and admission certificates. A cluster is named by the
//! public half of an ed25519 key; whoever holds the secret half admits a
//! node by signing a certificate that names the node's PeerId, the labels
//! it may claim, and when the admission runs out. A node checks its own
//! certificate before it starts.

use libp2p_identity::{ed25519, Keypair, PeerId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::labels::{parse_label, MAX_LABELS};
use crate::Millis;

const CLUSTER_PREFIX: &str = "peerbot-cluster-v1:";
const ADMISSION_PREFIX: &str = "peerbot-admission-v1:";
const REVOCATION_PREFIX: &str = "peerbot-revocation-v1:";
/// Signatures cover this and the body, so no other signed message of the
/// project can pass for a certificate.
const DOMAIN: &[u8] = b"peerbot.admission.v1\0";
const REVOCATION_DOMAIN: &[u8] = b"peerbot.revocation.v1\0";
/// Label keys every node may claim without a grant: they describe its
/// platform, which `requires` matches but no certificate needs to vouch for.
pub const PLATFORM_KEYS: &[&str] = &["os", "arch"];
/// Label keys that name what the node's own config gives it: `notifier`
/// says which notifiers it has, which lets it take those notice jobs and
/// nothing else, so no certificate needs to grant it.
pub const SELF_DECLARED_KEYS: &[&str] = &["notifier"];
/// The label a certificate grants to let a node cancel any job of the cluster.
pub const ADMIN_LABEL: &str = "role=admin";
/// A node admitted with this label (or `role=admin`) may sign try changes,
/// whose patches builders run: a power like a repository author's.
pub const TRY_LABEL: &str = "role=try";
/// A certificate's text is at most this long.
pub const MAX_ADMISSION_TEXT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AdmissionError {
    #[error("not a cluster key: {0}")]
    BadClusterKey(String),
    #[error("not an admission certificate: {0}")]
    Malformed(String),
    #[error("the certificate is for cluster {cert}, not {expected}")]
    OtherCluster { cert: String, expected: String },
    #[error("the certificate admits {cert}, not this node ({node})")]
    OtherPeer { cert: String, node: String },
    #[error("the certificate expired at {expired_ms} ms since the epoch")]
    Expired { expired_ms: Millis },
    #[error("the certificate's signature does not verify with the cluster key")]
    BadSignature,
    #[error("the certificate does not grant the label {0:?}")]
    LabelNotGranted(String),
    #[error("not a revocation: {0}")]
    BadRevocation(String),
}

/// The public key that names a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterId(ed25519::PublicKey);

impl ClusterId {
    pub fn to_text(&self) -> String {
        format!("{CLUSTER_PREFIX}{}", hex::encode(self.0.to_bytes()))
    }

    pub fn from_text(s: &str) -> Result<ClusterId, AdmissionError> {
        let bad =
            |why: &str| AdmissionError::BadClusterKey(format!("{why} (expected {CLUSTER_PREFIX}<64 hex digits>)"));
        let hex_part = s.trim().strip_prefix(CLUSTER_PREFIX).ok_or_else(|| bad("no prefix"))?;
        let bytes = hex::decode(hex_part).map_err(|_| bad("not hex"))?;
        ed25519::PublicKey::try_from_bytes(&bytes).map(ClusterId).map_err(|_| bad("not an ed25519 public key"))
    }
}

/// The secret that admits nodes to a cluster.
pub struct ClusterKey(ed25519::Keypair);

impl ClusterKey {
    /// A key from 32 random bytes the caller drew (this crate draws none).
    pub fn from_seed(mut seed: [u8; 32]) -> ClusterKey {
        let secret = ed25519::SecretKey::try_from_bytes(&mut seed).expect("any 32 bytes are an ed25519 secret");
        ClusterKey(ed25519::Keypair::from(secret))
    }

    pub fn id(&self) -> ClusterId {
        ClusterId(self.0.public())
    }

    /// The key in libp2p's protobuf encoding, as a node key is kept.
    pub fn to_protobuf(&self) -> Vec<u8> {
        Keypair::from(self.0.clone()).to_protobuf_encoding().unwrap_or_default()
    }

    pub fn from_protobuf(bytes: &[u8]) -> Result<ClusterKey, AdmissionError> {
        let k = Keypair::from_protobuf_encoding(bytes)
            .map_err(|e| AdmissionError::BadClusterKey(format!("cannot decode it: {e}")))?;
        k.try_into_ed25519().map(ClusterKey).map_err(|_| AdmissionError::BadClusterKey("not an ed25519 key".into()))
    }

    /// Admits `peer` with `labels` until `expires_ms` (for ever if `None`).
    pub fn admit(
        &self,
        peer: &PeerId,
        labels: Vec<String>,
        issued_ms: Millis,
        expires_ms: Option<Millis>,
    ) -> Result<Admission, AdmissionError> {
        let labels = check_labels(labels)?;
        let body = Body {
            cluster: ByteBuf::from(self.0.public().to_bytes().to_vec()),
            peer: ByteBuf::from(peer.to_bytes()),
            labels,
            issued_ms,
            expires_ms,
        };
        let sig = self.0.sign(&signed_bytes(&body));
        Ok(Admission { body, sig: ByteBuf::from(sig) })
    }

    /// Revokes `peer`'s admission from `revoked_ms` on.
    pub fn revoke(&self, peer: &PeerId, revoked_ms: Millis) -> Revocation {
        let body = RevocationBody {
            cluster: ByteBuf::from(self.0.public().to_bytes().to_vec()),
            peer: ByteBuf::from(peer.to_bytes()),
            revoked_ms,
        };
        let sig = self.0.sign(&revocation_bytes(&body));
        Revocation { body, sig: ByteBuf::from(sig) }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RevocationBody {
    cluster: ByteBuf,
    peer: ByteBuf,
    revoked_ms: Millis,
}

/// The end of a node's admission, signed by the cluster key: records the
/// node signs dated from `revoked_ms` on, and anything it says live, are
/// refused everywhere once the revocation has reached them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    body: RevocationBody,
    sig: ByteBuf,
}

fn revocation_bytes(body: &RevocationBody) -> Vec<u8> {
    domain_signed(REVOCATION_DOMAIN, body)
}

impl Revocation {
    pub fn to_text(&self) -> String {
        format!("{REVOCATION_PREFIX}{}", hex::encode(crate::codec::encode(self)))
    }

    pub fn from_text(s: &str) -> Result<Revocation, AdmissionError> {
        let s = s.trim();
        let bad = |why: &str| AdmissionError::BadRevocation(why.to_string());
        if s.len() > MAX_ADMISSION_TEXT {
            return Err(bad(&format!("longer than {MAX_ADMISSION_TEXT} bytes")));
        }
        let hex_part = s
            .strip_prefix(REVOCATION_PREFIX)
            .ok_or_else(|| bad(&format!("it does not start with {REVOCATION_PREFIX}")))?;
        let bytes = hex::decode(hex_part).map_err(|_| bad("not hex"))?;
        crate::codec::decode(&bytes, MAX_ADMISSION_TEXT).map_err(|e| bad(&e.to_string()))
    }

    /// The node it revokes, if it was signed by `cluster`'s key.
    pub fn check(&self, cluster: &ClusterId) -> Result<PeerId, AdmissionError> {
        if self.body.cluster.as_slice() != cluster.0.to_bytes().as_slice() {
            return Err(AdmissionError::BadRevocation("it is for another cluster".into()));
        }
        if !cluster.0.verify(&revocation_bytes(&self.body), &self.sig) {
            return Err(AdmissionError::BadSignature);
        }
        PeerId::from_bytes(&self.body.peer)
            .map_err(|_| AdmissionError::BadRevocation("its PeerId does not decode".into()))
    }

    pub fn revoked_ms(&self) -> Millis {
        self.body.revoked_ms
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Body {
    cluster: ByteBuf,
    peer: ByteBuf,
    labels: Vec<String>,
    issued_ms: Millis,
    expires_ms: Option<Millis>,
}

/// A node's admission to a cluster, signed by the cluster key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    body: Body,
    sig: ByteBuf,
}

fn signed_bytes(body: &Body) -> Vec<u8> {
    domain_signed(DOMAIN, body)
}

/// What the cluster key signs: a domain string, then the encoded body.
fn domain_signed<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    let mut b = domain.to_vec();
    b.extend_from_slice(&crate::codec::encode(body));
    b
}

fn check_labels(labels: Vec<String>) -> Result<Vec<String>, AdmissionError> {
    if labels.len() > MAX_LABELS {
        return Err(AdmissionError::Malformed(format!("more than {MAX_LABELS} labels")));
    }
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        let l = parse_label(&l).map_err(|e| AdmissionError::Malformed(e.to_string()))?;
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

impl Admission {
    pub fn to_text(&self) -> String {
        format!("{ADMISSION_PREFIX}{}", hex::encode(crate::codec::encode(self)))
    }

    /// Reads a certificate's text; its contents are checked by `check`.
    pub fn from_text(s: &str) -> Result<Admission, AdmissionError> {
        let s = s.trim();
        if s.len() > MAX_ADMISSION_TEXT {
            return Err(AdmissionError::Malformed(format!("longer than {MAX_ADMISSION_TEXT} bytes")));
        }
        let hex_part = s
            .strip_prefix(ADMISSION_PREFIX)
            .ok_or_else(|| AdmissionError::Malformed(format!("it does not start with {ADMISSION_PREFIX}")))?;
        let bytes = hex::decode(hex_part).map_err(|_| AdmissionError::Malformed("not hex".into()))?;
        let a: Admission =
            crate::codec::decode(&bytes, MAX_ADMISSION_TEXT).map_err(|e| AdmissionError::Malformed(e.to_string()))?;
        if crate::codec::encode(&a) != bytes {
            return Err(AdmissionError::Malformed("not in canonical form".into()));
        }
        Ok(a)
    }

    /// Whether this certificate admits `peer` to `cluster` at `now`.
    pub fn check(&self, cluster: &ClusterId, peer: &PeerId, now: Millis) -> Result<(), AdmissionError> {
        let cert_cluster = ed25519::PublicKey::try_from_bytes(&self.body.cluster)
            .map_err(|_| AdmissionError::Malformed("its cluster key is not an ed25519 key".into()))?;
        if cert_cluster != cluster.0 {
            return Err(AdmissionError::OtherCluster {
                cert: ClusterId(cert_cluster).to_text(),
                expected: cluster.to_text(),
            });
        }
        if !cluster.0.verify(&signed_bytes(&self.body), &self.sig) {
            return Err(AdmissionError::BadSignature);
        }
        let cert_peer = PeerId::from_bytes(&self.body.peer)
            .map_err(|_| AdmissionError::Malformed("its PeerId does not decode".into()))?;
        if cert_peer != *peer {
            return Err(AdmissionError::OtherPeer { cert: cert_peer.to_string(), node: peer.to_string() });
        }
        if let Some(expired_ms) = self.body.expires_ms.filter(|e| now >= *e) {
            return Err(AdmissionError::Expired { expired_ms });
        }
        check_labels(self.body.labels.clone()).map(|_| ())
    }

    /// Every label in `labels` is granted.
    pub fn grants_all(&self, labels: &[String]) -> Result<(), AdmissionError> {
        match labels.iter().find(|l| !self.body.labels.contains(l)) {
            Some(l) => Err(AdmissionError::LabelNotGranted(l.clone())),
            None => Ok(()),
        }
    }

    pub fn labels(&self) -> &[String] {
        &self.body.labels
    }

    /// A node admitted by this certificate may say it has `label`: a
    /// platform label, or one the certificate grants.
    pub fn permits(&self, label: &str) -> bool {
        let key = label.split_once('=').map_or(label, |(k, _)| k);
        PLATFORM_KEYS.contains(&key) || SELF_DECLARED_KEYS.contains(&key) || self.body.labels.iter().any(|l| l == label)
    }

    /// The node the certificate names, if its bytes are a PeerId.
    pub fn peer(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.body.peer).ok()
    }

    pub fn issued_ms(&self) -> Millis {
        self.body.issued_ms
    }

    pub fn expires_ms(&self) -> Option<Millis> {
        self.body.expires_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;

    fn peer(n: u64) -> PeerId {
        deterministic_key(n).public().to_peer_id()
    }

    fn key(n: u8) -> ClusterKey {
        ClusterKey::from_seed([n; 32])
    }

    #[test]
    fn an_admission_checks_for_its_cluster_peer_and_time_only() {
        let key = key(1);
        let cluster = key.id();
        let a = key.admit(&peer(1), vec!["gpu=yes".into()], 1_000, Some(10_000)).unwrap();
        let a = Admission::from_text(&a.to_text()).unwrap();
        assert_eq!(a.check(&cluster, &peer(1), 5_000), Ok(()));
        assert_eq!(a.check(&cluster, &peer(1), 10_000), Err(AdmissionError::Expired { expired_ms: 10_000 }));
        assert!(matches!(a.check(&cluster, &peer(2), 5_000), Err(AdmissionError::OtherPeer { .. })));
        let other = super::tests::key(2).id();
        assert!(matches!(a.check(&other, &peer(1), 5_000), Err(AdmissionError::OtherCluster { .. })));
        assert_eq!(a.grants_all(&["gpu=yes".into()]), Ok(()));
        assert_eq!(a.grants_all(&["os=macos".into()]), Err(AdmissionError::LabelNotGranted("os=macos".into())));
        assert_eq!(ClusterId::from_text(&cluster.to_text()), Ok(cluster));
    }

    #[test]
    fn a_revocation_names_its_peer_only_under_its_own_cluster() {
        let k = key(6);
        let r = k.revoke(&peer(3), 42);
        let r = Revocation::from_text(&r.to_text()).unwrap();
        assert_eq!(r.check(&k.id()), Ok(peer(3)));
        assert_eq!(r.revoked_ms(), 42);
        assert!(r.check(&key(7).id()).is_err());
        let mut forged = r.clone();
        forged.body.revoked_ms = 99;
        assert_eq!(forged.check(&k.id()), Err(AdmissionError::BadSignature));
        assert!(Revocation::from_text("peerbot-revocation-v1:zz").is_err());
        // A certificate's signature cannot pass for a revocation's.
        let a = k.admit(&peer(3), vec![], 1, None).unwrap();
        let posing = Revocation {
            body: RevocationBody { cluster: a.body.cluster.clone(), peer: a.body.peer.clone(), revoked_ms: 1 },
            sig: a.sig.clone(),
        };
        assert!(posing.check(&k.id()).is_err());
    }

    #[test]
    fn platform_labels_need_no_grant() {
        let a = key(8).admit(&peer(1), vec!["gpu=yes".into()], 1, None).unwrap();
        assert!(a.permits("os=linux") && a.permits("arch=x86_64") && a.permits("gpu=yes"));
        assert!(!a.permits("gpu=no") && !a.permits("role=admin"));
    }

    #[test]
    fn a_changed_certificate_does_not_verify() {
        let key = key(3);
        let a = key.admit(&peer(1), vec!["gpu=no".into()], 1_000, None).unwrap();
        let mut forged = a.clone();
        forged.body.labels = vec!["gpu=yes".into()];
        assert_eq!(forged.check(&key.id(), &peer(1), 2_000), Err(AdmissionError::BadSignature));
        let mut later = a.clone();
        later.body.expires_ms = Some(u64::MAX);
        assert_eq!(later.check(&key.id(), &peer(1), 2_000), Err(AdmissionError::BadSignature));
        // Signed by another key but naming this cluster.
        let mut stolen = super::tests::key(4).admit(&peer(1), vec![], 1_000, None).unwrap();
        stolen.body.cluster = a.body.cluster.clone();
        assert_eq!(stolen.check(&key.id(), &peer(1), 2_000), Err(AdmissionError::BadSignature));
    }

    #[test]
    fn garbage_is_an_error_that_says_what_is_wrong() {
        for bad in ["", "peerbot-admission-v1:", "peerbot-admission-v1:zz", "peerbot-admission-v1:a0", "hello"] {
            assert!(matches!(Admission::from_text(bad), Err(AdmissionError::Malformed(_))), "{bad:?}");
        }
        assert!(Admission::from_text(&"a".repeat(MAX_ADMISSION_TEXT + 1)).is_err());
        assert!(ClusterId::from_text("peerbot-cluster-v1:00").is_err());
        let key = key(5);
        assert!(key.admit(&peer(1), vec!["no label".into()], 0, None).is_err());
        let back = ClusterKey::from_protobuf(&key.to_protobuf()).unwrap();
        assert_eq!(back.id(), key.id());
    }
}
