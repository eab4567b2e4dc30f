//! Which requests the filter captures.
//!
//! A [`RouteTable`] is an ordered list of [`Route`]s; the first route that
//! matches a request wins. A route is a path matcher plus an optional method
//! list. The types are deliberately open: exact/regex path matches, header
//! matches and per-route modes are added as new [`PathMatch`] variants or new
//! `Route` fields without touching the callers, which only use
//! [`RouteTable::find`] with a [`RequestInfo`].

/// What the route matching looks at. Built once per request from the
/// pseudo-headers; grows with the matchers (headers, authority, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// The `:method` pseudo-header, as sent (HTTP methods are case-sensitive).
    pub method: &'a str,
    /// The `:path` pseudo-header without its query string.
    pub path: &'a str,
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path (without query) starts with this string.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// One capture route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path matcher.
    pub path: PathMatch,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
}

impl Route {
    /// A prefix route; `methods` must already be normalised (upper-case).
    pub fn prefix(prefix: impl Into<String>, methods: Vec<String>) -> Self {
        Route {
            path: PathMatch::Prefix(prefix.into()),
            methods,
        }
    }

    /// Whether this route matches the request.
    pub fn matches(&self, request: &RequestInfo<'_>) -> bool {
        self.path.matches(request.path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
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
        table().find(&RequestInfo { method, path }).map(|(i, _)| i)
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
                path: "/orders"
            })
            .is_none());
    }
}
