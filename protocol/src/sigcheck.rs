//! Ed25519 signature checks for records, one at a time or many at once,
//! with `ed25519-zebra`: its single and batch checks use the same
//! (cofactored, ZIP-215) rule, so they accept exactly the same signatures.
//! A cofactorless single check next to a batch equation would not: a batch
//! cannot see the small-order part of a point, so a crafted signature
//! would be valid on some nodes and invalid on others. Honest signatures
//! (`R = [r]B`) pass either way.
//!
//! On top of that rule, a record's signature must encode `s` reduced and
//! `R` canonically: one signature has one encoding, so a record has one id.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_zebra::{batch, Signature, VerificationKey, VerificationKeyBytes};
use rand_chacha::rand_core::SeedableRng;

/// A signer's key, decoded once.
#[derive(Clone, Debug)]
pub struct SignerKey {
    pub bytes: [u8; 32],
    key: VerificationKey,
}

impl SignerKey {
    pub fn from_bytes(raw: &[u8]) -> Option<SignerKey> {
        let bytes: [u8; 32] = raw.try_into().ok()?;
        // Under the cofactored rule a small-order key "signs" anything.
        if CompressedEdwardsY(bytes).decompress()?.is_small_order() {
            return None;
        }
        let key = VerificationKey::try_from(bytes).ok()?;
        Some(SignerKey { bytes, key })
    }
}

/// One signature ready to check: its key, its bytes and the signed message.
#[derive(Clone, Debug)]
pub struct Prepared {
    key: VerificationKey,
    sig: Signature,
    msg: Vec<u8>,
}

/// A signature over `parts` (the message, concatenated) by `key`; `None`
/// when it cannot be valid (wrong length, `s` not reduced, `R` not a point
/// or not in its canonical encoding).
pub fn prepare(key: &SignerKey, parts: &[&[u8]], sig: &[u8]) -> Option<Prepared> {
    let sig: [u8; 64] = sig.try_into().ok()?;
    let s: [u8; 32] = sig[32..].try_into().expect("32 bytes");
    Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
    let r_bytes: [u8; 32] = sig[..32].try_into().expect("32 bytes");
    if !canonical_point_encoding(&r_bytes) {
        return None;
    }
    Some(Prepared { key: key.key, sig: Signature::from_bytes(&sig), msg: parts.concat() })
}

/// Whether `b`, if it encodes a point, is that point's one encoding: `y`
/// reduced (below p = 2^255 - 19), and no sign bit on the two points whose
/// `x` is zero (y = 1 and y = p - 1), which have no negative. Whether it
/// is a point at all the check itself finds. This is what decompressing
/// and compressing again would tell, without the square root that
/// decompression costs, which the check computes anyway.
fn canonical_point_encoding(b: &[u8; 32]) -> bool {
    let sign = b[31] & 0x80 != 0;
    let mut y = *b;
    y[31] &= 0x7f;
    let high_all_ones = y[1..31].iter().all(|&x| x == 0xff) && y[31] == 0x7f;
    if high_all_ones && y[0] >= 0xed {
        return false; // y >= p
    }
    let one = y[0] == 1 && y[1..].iter().all(|&x| x == 0);
    let minus_one = high_all_ones && y[0] == 0xec;
    !(sign && (one || minus_one))
}

pub fn check_one(p: &Prepared) -> bool {
    p.key.verify(&p.sig, &p.msg).is_ok()
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
    // core draws no randomness of its own.
    let mut seed = blake3::Hasher::new_derive_key("peerbot 2026 ed25519 batch weights");
    let mut v = batch::Verifier::new();
    for p in items {
        let key = VerificationKeyBytes::from(p.key);
        seed.update(key.as_ref());
        seed.update(&p.sig.to_bytes());
        seed.update(blake3::hash(&p.msg).as_bytes());
        v.queue((key, p.sig, &p.msg));
    }
    let rng = rand_chacha::ChaCha20Rng::from_seed(*seed.finalize().as_bytes());
    v.verify(rng).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_canonical_check_agrees_with_decompressing_and_compressing() {
        let mut cases: Vec<[u8; 32]> = Vec::new();
        // Every y near 0, near 1 and near p, with and without the sign bit.
        for low in 0u8..=255 {
            for high in [0x00u8, 0x80, 0x7f, 0xff] {
                let mut b = [if high & 0x7f == 0 { 0 } else { 0xff }; 32];
                b[0] = low;
                b[31] = high;
                cases.push(b);
            }
        }
        for seed in 0u32..2000 {
            let mut b = *blake3::hash(&seed.to_le_bytes()).as_bytes();
            cases.push(b);
            b[31] ^= 0x80;
            cases.push(b);
        }
        for b in cases {
            if let Some(p) = CompressedEdwardsY(b).decompress() {
                assert_eq!(canonical_point_encoding(&b), p.compress().0 == b, "{b:02x?}");
            }
        }
    }
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::EdwardsPoint;
    use sha2::{Digest, Sha512};

    /// `p` with its signature bytes changed by `f`.
    fn altered(p: &Prepared, f: impl FnOnce(&mut [u8; 64])) -> Prepared {
        let mut b = p.sig.to_bytes();
        f(&mut b);
        Prepared { sig: Signature::from_bytes(&b), ..p.clone() }
    }

    /// A key's secret scalar and public key, as ed25519 derives them from a seed.
    fn expand(seed: [u8; 32]) -> (Scalar, SignerKey) {
        let h = Sha512::digest(seed);
        let mut a: [u8; 32] = h[..32].try_into().unwrap();
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a);
        let point = EdwardsPoint::mul_base(&a);
        (a, SignerKey::from_bytes(&point.compress().0).unwrap())
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
            forged[bad] = altered(&forged[bad], |b| {
                let s = Scalar::from_bytes_mod_order(b[32..].try_into().unwrap()) + Scalar::ONE;
                b[32..].copy_from_slice(s.as_bytes());
            });
            assert!(!check_batch(&forged), "a wrong s at {bad} passed");
            assert!(!check_one(&forged[bad]));
        }
        // Another signer's signature over the same message.
        let (_, other) = expand([77; 32]);
        let swapped = Prepared { key: other.key, ..items[5].clone() };
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
    fn small_order_keys_are_refused() {
        for t in EIGHT_TORSION.iter() {
            assert!(SignerKey::from_bytes(&t.compress().0).is_none());
        }
        assert!(SignerKey::from_bytes(&expand([3; 32]).1.bytes).is_some());
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
