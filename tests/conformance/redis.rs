//! The conformance suite on Redis (being written).
