//! `server.cors` as a tower-http layer. Values were checked at start-up
//! (`CorsConfig::validate`), so a value that still does not parse is
//! skipped rather than fatal.

use axum::http::{HeaderName, HeaderValue, Method};
use openhqm_core::cors::CorsConfig;
use std::time::Duration;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// The layer, or None when CORS is off (the default).
pub fn layer(cfg: &CorsConfig) -> Option<CorsLayer> {
    if !cfg.enabled() {
        return None;
    }
    let star = |l: &[String]| l.iter().any(|v| v == "*");
    let origin = if star(&cfg.allowed_origins) {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    // "*" mirrors what the preflight asks for, as the original's Starlette
    // did: a literal `*` would not cover `Authorization`.
    let methods = if star(&cfg.allowed_methods) {
        AllowMethods::mirror_request()
    } else {
        AllowMethods::list(
            cfg.allowed_methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok()),
        )
    };
    let headers = if star(&cfg.allowed_headers) {
        AllowHeaders::mirror_request()
    } else {
        AllowHeaders::list(names(&cfg.allowed_headers))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(methods)
            .allow_headers(headers)
            .expose_headers(names(&cfg.expose_headers))
            .max_age(Duration::from_secs(cfg.max_age_seconds)),
    )
}

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter()
        .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
        .collect()
}
