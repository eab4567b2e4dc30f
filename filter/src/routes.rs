//! Which requests the filter captures, and how.
//!
//! A [`RouteTable`] is an ordered list of [`Route`]s; the first route that
//! matches a request wins. A route matches on the path (exact, prefix or
//! regex), the method and request headers, and says what to do with what it
//! captures: the mode (answer 202 at once, or wait for the backend's real
//! answer), the endpoint and priority passed to the worker, the header that
//! carries the partition key, and what to do when the bridge fails.

use std::time::Duration;

/// What the route matching looks at. Built once per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The `:method` pseudo-header, as sent (HTTP methods are case-sensitive).
    pub method: &'a str,
    /// The `:path` pseudo-header without its query string.
    pub path: &'a str,
    /// All request headers (names lower-case, raw values).
    pub headers: &'a [(String, Vec<u8>)],
}

impl RequestInfo<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// How a route matches the request path (without query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Matched against the whole path (anchor it with `^...$` to be strict).
    Regex(regex_lite::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b))
            | (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for PathMatch {}

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    /// The header is present (any value).
    Present(String),
    /// The header's value is exactly this.
    Exact(String, Vec<u8>),
    /// The header's value starts with this.
    Prefix(String, Vec<u8>),
}

impl HeaderMatch {
    fn matches(&self, request: &RequestInfo<'_>) -> bool {
        match self {
            HeaderMatch::Present(name) => request.header(name).is_some(),
            HeaderMatch::Exact(name, value) => request.header(name) == Some(value.as_slice()),
            HeaderMatch::Prefix(name, value) => {
                request.header(name).is_some_and(|v| v.starts_with(value))
            }
        }
    }
}

/// What the client gets for a captured request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `202 Accepted` + `Location` at once.
    Async,
    /// The backend's own status, headers and body, as if the client had
    /// called the app directly; `202` + `Location` if the answer takes longer
    /// than the route's wait limit.
    Wait,
}

/// What happens to a captured request when the bridge cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// `503` + `Retry-After`: the client retries later.
    Reject,
    /// Serve it synchronously from the app, as if the filter were not there.
    Passthrough,
}

/// One capture route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// For logs and metrics.
    pub name: String,
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    pub mode: Mode,
    /// The longest a client waits for the backend's answer on this route, in
    /// wait mode or with `Prefer: wait=N` (which it also caps).
    pub wait_limit: Duration,
    /// Named endpoint (`proxy.endpoints`) the worker sends to.
    pub endpoint: Option<String>,
    pub priority: Option<String>,
    /// Request header whose value is the message's partition (ordering) key.
    pub partition_key_header: Option<String>,
    pub on_bridge_failure: FailurePolicy,
}

impl Route {
    /// An async prefix route with defaults; `methods` must already be
    /// normalised (upper-case).
    pub fn prefix(prefix: impl Into<String>, methods: Vec<String>) -> Self {
        let prefix = prefix.into();
        Route {
            name: prefix.clone(),
            path: PathMatch::Prefix(prefix),
            methods,
            headers: Vec::new(),
            mode: Mode::Async,
            wait_limit: Duration::from_secs(30),
            endpoint: None,
            priority: None,
            partition_key_header: None,
            on_bridge_failure: FailurePolicy::Reject,
        }
    }

    /// Whether this route matches the request.
    pub fn matches(&self, request: &RequestInfo<'_>) -> bool {
        self.path.matches(request.path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && self.headers.iter().all(|h| h.matches(request))
    }
}

/// The ordered capture routes: first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table with the routes in priority order.
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    /// The first matching route and its position in the table.
    pub fn find(&self, request: &RequestInfo<'_>) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, route)| route.matches(request))
    }

    /// Whether some route could match on path and method alone (header
    /// conditions not looked at): false means the request is surely not
    /// captured, without reading its headers.
    pub fn may_match(&self, method: &str, path: &str) -> bool {
        self.routes.iter().any(|r| {
            r.path.matches(path) && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
        })
    }

    /// The routes, in priority order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes (the filter then only relays).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Splits a `:path` into the path and the query (the part after the first
/// `?`, `None` when there is no `?`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(vec![
            Route::prefix("/orders/bulk", vec!["PUT".into()]),
            Route::prefix("/orders", vec!["POST".into(), "PUT".into()]),
            Route::prefix("/jobs", vec![]),
        ])
    }

    fn find(method: &str, full_path: &str) -> Option<usize> {
        let (path, _) = split_path(full_path);
        table()
            .find(&RequestInfo {
                method,
                path,
                headers: &[],
            })
            .map(|(i, _)| i)
    }

    #[test]
    fn prefix_and_methods() {
        assert_eq!(find("POST", "/orders"), Some(1));
        assert_eq!(find("POST", "/orders/42"), Some(1));
        assert_eq!(find("PUT", "/orders"), Some(1));
        assert_eq!(find("GET", "/orders"), None);
        assert_eq!(find("POST", "/order"), None);
        assert_eq!(find("POST", "/api/orders"), None);
    }

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(find("post", "/orders"), None);
    }

    #[test]
    fn empty_method_list_matches_any_method() {
        assert_eq!(find("GET", "/jobs/1"), Some(2));
        assert_eq!(find("DELETE", "/jobs"), Some(2));
        assert_eq!(find("PATCH", "/jobsx"), Some(2));
    }

    #[test]
    fn first_match_wins() {
        assert_eq!(find("PUT", "/orders/bulk/7"), Some(0));
        // The first route does not allow POST, so the second one matches.
        assert_eq!(find("POST", "/orders/bulk/7"), Some(1));
    }

    #[test]
    fn query_is_ignored() {
        assert_eq!(find("POST", "/orders?x=/jobs"), Some(1));
        assert_eq!(find("GET", "/other?/jobs"), None);
        assert_eq!(find("GET", "/jobs?"), Some(2));
    }

    #[test]
    fn split_path_cases() {
        assert_eq!(split_path("/a"), ("/a", None));
        assert_eq!(split_path("/a?"), ("/a", Some("")));
        assert_eq!(split_path("/a?b=1&c=2"), ("/a", Some("b=1&c=2")));
        assert_eq!(split_path("/a?b=?c"), ("/a", Some("b=?c")));
        assert_eq!(split_path(""), ("", None));
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t = RouteTable::default();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert!(t
            .find(&RequestInfo {
                method: "POST",
                path: "/orders",
                headers: &[],
            })
            .is_none());
    }

    fn request<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a [(String, Vec<u8>)],
    ) -> RequestInfo<'a> {
        RequestInfo {
            method,
            path,
            headers,
        }
    }

    #[test]
    fn exact_and_regex_paths() {
        let exact = Route {
            path: PathMatch::Exact("/orders".into()),
            ..Route::prefix("/", vec![])
        };
        assert!(exact.matches(&request("GET", "/orders", &[])));
        assert!(!exact.matches(&request("GET", "/orders/1", &[])));
        let regex = Route {
            path: PathMatch::Regex(regex_lite::Regex::new(r"^/orders/[0-9]+$").unwrap()),
            ..Route::prefix("/", vec![])
        };
        assert!(regex.matches(&request("GET", "/orders/42", &[])));
        assert!(!regex.matches(&request("GET", "/orders/abc", &[])));
        assert!(!regex.matches(&request("GET", "/orders/42/items", &[])));
    }

    #[test]
    fn header_conditions_all_must_hold() {
        let route = Route {
            headers: vec![
                HeaderMatch::Present("x-async".into()),
                HeaderMatch::Exact("x-tenant".into(), b"acme".to_vec()),
                HeaderMatch::Prefix("content-type".into(), b"application/json".to_vec()),
            ],
            ..Route::prefix("/", vec![])
        };
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let all = h(&[
            ("x-async", ""),
            ("X-Tenant", "acme"),
            ("content-type", "application/json; charset=utf-8"),
        ]);
        assert!(
            route.matches(&request("POST", "/x", &all)),
            "header names are case-insensitive"
        );
        let wrong_tenant = h(&[
            ("x-async", "1"),
            ("x-tenant", "acme2"),
            ("content-type", "application/json"),
        ]);
        assert!(!route.matches(&request("POST", "/x", &wrong_tenant)));
        let missing = h(&[("x-tenant", "acme"), ("content-type", "application/json")]);
        assert!(!route.matches(&request("POST", "/x", &missing)));
    }
}
