//! `Idempotency-Key` (IETF httpapi draft): a repeated key with the same
//! request returns the first request's correlation ID without enqueueing it
//! again; the same key with a different request is refused with 422.

use crate::error::ApiError;
use sha2::{Digest, Sha256};

pub const HEADER: &str = "idempotency-key";

/// A request's key and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

impl Idempotency {
    /// From the header value (a structured-field string: quotes allowed) and
    /// the parts that make two requests "the same".
    pub fn new(
        value: &str,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Idempotency, ApiError> {
        let key = value.trim().trim_matches('"');
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
        let mut h = Sha256::new();
        for part in [
            method.as_bytes(),
            path.as_bytes(),
            query.unwrap_or("").as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(body);
        let fingerprint = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Idempotency {
            key: key.to_string(),
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_same_fingerprint_different_request_not() {
        let a = Idempotency::new("\"k-1\"", "POST", "/orders", None, b"{}").unwrap();
        assert_eq!(a.key, "k-1");
        assert_eq!(
            a,
            Idempotency::new("k-1", "POST", "/orders", None, b"{}").unwrap()
        );
        assert_ne!(
            a.fingerprint,
            Idempotency::new("k-1", "POST", "/orders", None, b"{ }")
                .unwrap()
                .fingerprint
        );
        assert_ne!(
            a.fingerprint,
            Idempotency::new("k-1", "PUT", "/orders", None, b"{}")
                .unwrap()
                .fingerprint
        );
        assert_ne!(
            a.fingerprint,
            Idempotency::new("k-1", "POST", "/orders", Some("x=1"), b"{}")
                .unwrap()
                .fingerprint
        );
        // Length prefixes keep parts from running into each other.
        assert_ne!(
            Idempotency::new("k", "POST", "/a", Some("b"), b"")
                .unwrap()
                .fingerprint,
            Idempotency::new("k", "POST", "/ab", None, b"")
                .unwrap()
                .fingerprint
        );
    }

    #[test]
    fn bad_keys_are_400() {
        for bad in ["", "\"\"", "has space", &"x".repeat(256)] {
            assert!(
                Idempotency::new(bad, "POST", "/", None, b"").is_err(),
                "{bad:?}"
            );
        }
    }
}
