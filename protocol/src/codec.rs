//! CBOR encoding with size limits enforced before anything is decoded.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Writing into a Vec cannot fail, and our types have no fallible Serialize impls.
    ciborium::ser::into_writer(value, &mut out).expect("CBOR encoding into memory");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit });
    }
    // The recursion limit bounds nesting; lengths are bounded by the input size.
    ciborium::de::from_reader_with_recursion_limit(bytes, 64).map_err(|e| CodecError::Malformed(e.to_string()))
}
