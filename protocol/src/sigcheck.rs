//! Ed25519 signature checks for records, one at a time or many at once.
//!
//! Both use the cofactored equation `[8](R - [s]B + [k]A) = 0`, with `s`
//! canonical and `R` in its canonical encoding. The single and the batch
//! check then accept exactly the same signatures: a batch equation cannot
//! see the small-order part of a point (it cancels with probability 1/8
//! or more), so with the cofactorless single check a crafted signature
//! would be valid on some nodes and invalid on others. Honest signatures
//! (`R = [r]B`) pass either way; the cofactored check is as hard to forge.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// A signer's key, decoded once.
#[derive(Clone, Debug)]
pub struct SignerKey {
    pub bytes: [u8; 32],
    pub point: EdwardsPoint,
}

impl SignerKey {
    pub fn from_bytes(raw: &[u8]) -> Option<SignerKey> {
        let bytes: [u8; 32] = raw.try_into().ok()?;
        let point = CompressedEdwardsY(bytes).decompress()?;
        Some(SignerKey { bytes, point })
    }
}

/// One signature, decoded, with its challenge `k = H(R || A || M)`.
#[derive(Clone, Debug)]
pub struct Prepared {
    r: EdwardsPoint,
    r_bytes: [u8; 32],
    s: Scalar,
    k: Scalar,
    a: EdwardsPoint,
    a_bytes: [u8; 32],
}

/// Decodes a signature over `parts` (the message, concatenated) by `key`;
/// `None` when it cannot be valid (wrong length, `s` not reduced, `R` not
/// a point or not in its canonical encoding).
pub fn prepare(key: &SignerKey, parts: &[&[u8]], sig: &[u8]) -> Option<Prepared> {
    let sig: &[u8; 64] = sig.try_into().ok()?;
    let r_bytes: [u8; 32] = sig[..32].try_into().expect("32 bytes");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(sig[32..].try_into().expect("32 bytes")))?;
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    // One encoding per signature: a second one of `R` would be a second id.
    if r.compress().0 != r_bytes {
        return None;
    }
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(key.bytes);
    for p in parts {
        h.update(p);
    }
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Prepared { r, r_bytes, s, k, a: key.point, a_bytes: key.bytes })
}

/// The cofactored check of one signature.
pub fn check_one(p: &Prepared) -> bool {
    // [k](-A) + [s]B should be R, up to a small-order point.
    let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &-p.a, &p.s);
    (p.r - expected).mul_by_cofactor().is_identity()
}

/// Whether every signature holds, by one random linear combination of
/// their equations. True only if each would pass `check_one` (but for a
/// chance of 2^-128); false when any fails, and then the caller checks
/// them one by one to know which.
pub fn check_batch(items: &[Prepared]) -> bool {
    match items {
        [] => return true,
        [one] => return check_one(one),
        _ => {}
    }
    // The weights come from a hash of the whole batch: a sender cannot
    // choose signatures that cancel for weights it cannot know, and the
    // core draws no randomness.
    let mut seed = blake3::Hasher::new_derive_key("peerbot 2026 ed25519 batch weights");
    for p in items {
        seed.update(&p.r_bytes);
        seed.update(p.s.as_bytes());
        seed.update(&p.a_bytes);
        seed.update(p.k.as_bytes());
    }
    let mut weights = seed.finalize_xof();
    let mut s_sum = Scalar::ZERO;
    let mut scalars: Vec<Scalar> = Vec::with_capacity(items.len() + 4);
    let mut points: Vec<EdwardsPoint> = Vec::with_capacity(items.len() + 4);
    // A cluster has few signers: each key appears once in the sum, with
    // the weighted challenges of all its signatures added up.
    let mut keys: Vec<(EdwardsPoint, Scalar)> = Vec::new();
    let mut key_at: std::collections::HashMap<[u8; 32], usize> = std::collections::HashMap::new();
    for p in items {
        let mut z = [0u8; 16];
        weights.fill(&mut z);
        let z = Scalar::from(u128::from_le_bytes(z));
        s_sum += z * p.s;
        scalars.push(z);
        points.push(p.r);
        let zk = z * p.k;
        match key_at.get(&p.a_bytes) {
            Some(&i) => keys[i].1 += zk,
            None => {
                key_at.insert(p.a_bytes, keys.len());
                keys.push((p.a, zk));
            }
        }
    }
    for (a, acc) in keys {
        scalars.push(acc);
        points.push(a);
    }
    scalars.push(-s_sum);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(&scalars, &points).mul_by_cofactor().is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    /// A key's secret scalar and public key, as ed25519 derives them from a seed.
    fn expand(seed: [u8; 32]) -> (Scalar, SignerKey) {
        let h = Sha512::digest(seed);
        let mut a: [u8; 32] = h[..32].try_into().unwrap();
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a);
        let point = EdwardsPoint::mul_base(&a);
        (a, SignerKey { bytes: point.compress().0, point })
    }

    /// Signs with nonce point `[r]B + extra`: `extra` a small-order point
    /// makes a signature only the cofactored equation accepts.
    fn sign_with(seed: [u8; 32], msg: &[u8], r: u64, extra: EdwardsPoint) -> (SignerKey, Vec<u8>) {
        let (a, key) = expand(seed);
        let r = Scalar::from(r + 1_000_003);
        let big_r = (EdwardsPoint::mul_base(&r) + extra).compress().0;
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new().chain_update(big_r).chain_update(key.bytes).chain_update(msg).finalize().into(),
        );
        let s = r + k * a;
        (key, [big_r, s.to_bytes()].concat())
    }

    #[test]
    fn agrees_with_the_ed25519_implementation_nodes_sign_with() {
        let kp = crate::deterministic_key(4).try_into_ed25519().unwrap();
        let key = SignerKey::from_bytes(&kp.public().to_bytes()).unwrap();
        let sig = kp.sign(b"hello");
        assert!(check_one(&prepare(&key, &[b"hel", b"lo"], &sig).unwrap()));
        assert!(!check_one(&prepare(&key, &[b"hello!"], &sig).unwrap()));
        let (_, theirs) = expand([9; 32]);
        assert!(prepare(&key, &[b"hello"], &sig).is_some_and(|p| check_one(&p)));
        assert!(!prepare(&theirs, &[b"hello"], &sig).is_some_and(|p| check_one(&p)));
    }

    #[test]
    fn a_batch_fails_when_any_signature_does_and_passes_when_all_hold() {
        let mut items: Vec<Prepared> = (0..40u64)
            .map(|i| {
                let msg = i.to_le_bytes();
                let (key, sig) = sign_with([(i % 3) as u8; 32], &msg, i, EdwardsPoint::default());
                prepare(&key, &[&msg], &sig).unwrap()
            })
            .collect();
        assert!(check_batch(&items));
        for bad in [0, 17, 39] {
            let mut forged = items.clone();
            forged[bad].s += Scalar::ONE;
            assert!(!check_batch(&forged), "a wrong s at {bad} passed");
            assert!(!check_one(&forged[bad]));
        }
        // Another signer's signature over the same message.
        let (_, other) = expand([77; 32]);
        let swapped = Prepared { a: other.point, a_bytes: other.bytes, ..items[5].clone() };
        items[5] = swapped;
        assert!(!check_batch(&items));
    }

    #[test]
    fn single_and_batch_checks_agree_on_a_signature_with_a_small_order_part() {
        // The nonce point has a part of order 8: a cofactorless check
        // refuses it, and a batch equation would pass it 1 time in 8.
        for (i, t) in EIGHT_TORSION.iter().enumerate() {
            let msg = [i as u8; 5];
            let (key, sig) = sign_with([1; 32], &msg, i as u64, *t);
            let p = prepare(&key, &[&msg], &sig).unwrap();
            assert!(check_one(&p), "torsion {i}");
            let others: Vec<Prepared> = (0..8u64)
                .map(|j| {
                    let m = (100 + j).to_le_bytes();
                    let (key, sig) = sign_with([1; 32], &m, 50 + j, EdwardsPoint::default());
                    prepare(&key, &[&m], &sig).unwrap()
                })
                .collect();
            let mut batch = others.clone();
            batch.insert(3, p);
            assert!(check_batch(&batch), "torsion {i} in a batch");
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let msg = b"m";
        let (key, sig) = sign_with([2; 32], msg, 1, EdwardsPoint::default());
        let mut high_s = sig.clone();
        let s = Scalar::from_bytes_mod_order(sig[32..].try_into().unwrap());
        // s + l as 32 bytes: the same scalar, not reduced.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for (j, out) in sum.iter_mut().enumerate() {
            let v = s.as_bytes()[j] as u16 + l[j] as u16 + carry;
            *out = v as u8;
            carry = v >> 8;
        }
        high_s[32..].copy_from_slice(&sum);
        assert!(prepare(&key, &[msg], &high_s).is_none());
        assert!(prepare(&key, &[msg], &sig[..63]).is_none());
        assert!(prepare(&key, &[msg], &sig).is_some());
    }
}
