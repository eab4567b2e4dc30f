//! The worker's routing table: which backend endpoint a queue message goes
//! to, and how its body, headers and query string are built. The file format
//! is the original OpenHQM's `routing.yaml`; everything in it is compiled and
//! checked when it loads, so a bad route stops the worker at startup rather
//! than failing messages one by one.
//!
//! Header and query parameter sources are a dotted path into the message
//! (`metadata.tenant`, `payload.items.0.id`), a string template with
//! `{{dotted.path}}` placeholders, or a jq program (text starting with `.`,
//! as the original's docs write them; compiled at load, run in-process).

mod transform;

pub use transform::Transform;

use regex_lite::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// The routes of a `routing.yaml`, enabled ones only, highest priority first.
pub struct RoutingTable {
    routes: Vec<Route>,
    /// `default_endpoint`, when `enable_fallback` lets it be used.
    fallback: Option<String>,
}

/// Where a message goes and what is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The matched route; None when the fallback endpoint was used.
    pub route: Option<String>,
    pub endpoint: String,
    /// Upper-cased method override; None keeps the endpoint's.
    pub method: Option<String>,
    pub body: Value,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub timeout: Option<u64>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteError {
    /// No route matched and there is no fallback endpoint.
    NoRoute,
    /// The matched route could not build the request from this message.
    Transform { route: String, detail: String },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::NoRoute => {
                f.write_str("no route matches the message and there is no default endpoint")
            }
            RouteError::Transform { route, detail } => write!(f, "route {route}: {detail}"),
        }
    }
}

impl std::error::Error for RouteError {}

impl RoutingTable {
    /// Parse a `routing.yaml` (or JSON) text.
    pub fn from_text(text: &str) -> Result<RoutingTable, String> {
        let value: Value = yaml_serde::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        Self::from_value(value)
    }

    pub fn load(path: &Path) -> Result<RoutingTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_text(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The table `routing.*` configures, loaded at start-up whether or not
    /// proxy mode is on (as the original): a missing or broken file stops
    /// the worker with the key named.
    pub fn from_config(
        config: &openhqm_core::config::Config,
    ) -> Result<Option<RoutingTable>, String> {
        let r = &config.routing;
        if !r.enabled {
            return Ok(None);
        }
        match (&r.config_path, &r.config) {
            (Some(path), _) => RoutingTable::load(path)
                .map(Some)
                .map_err(|e| format!("routing.config_path: {e}")),
            (None, Some(inline)) => serde_json::to_value(inline)
                .map_err(|e| e.to_string())
                .and_then(RoutingTable::from_value)
                .map(Some)
                .map_err(|e| format!("routing.config: {e}")),
            (None, None) => {
                Err("routing.config_path: routing is enabled but no table is given".into())
            }
        }
    }

    /// (route name, endpoint) of every enabled route, then ("fallback",
    /// endpoint) for the fallback, for the start-up check.
    pub fn route_endpoints(&self) -> Vec<(String, String)> {
        self.routes
            .iter()
            .map(|r| (format!("route `{}`", r.name), r.endpoint.clone()))
            .chain(
                self.fallback
                    .iter()
                    .map(|e| ("the table's default_endpoint".to_string(), e.clone())),
            )
            .collect()
    }

    pub fn from_value(value: Value) -> Result<RoutingTable, String> {
        let file: File =
            serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
                p if p == "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            })?;
        let mut routes = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, raw) in file.routes.into_iter().enumerate() {
            let name = raw
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let at = |key: &str| match (name.is_empty(), key.is_empty()) {
                (true, true) => format!("routes[{i}]"),
                (true, false) => format!("routes[{i}].{key}"),
                (false, true) => format!("routes[{i}] ({name})"),
                (false, false) => format!("routes[{i}] ({name}).{key}"),
            };
            let raw: RawRoute = serde_path_to_error::deserialize(raw).map_err(|e| {
                let key = e.path().to_string();
                format!("{}: {}", at(key.trim_start_matches('.')), e.inner())
            })?;
            if let Some(first) = seen.insert(raw.name.clone(), i) {
                return Err(format!(
                    "{}: duplicate route name (also routes[{first}])",
                    at("name")
                ));
            }
            let route = Route::compile(raw).map_err(|(key, e)| format!("{}: {e}", at(key)))?;
            if route.enabled {
                routes.push(route);
            }
        }
        // Stable: equal priorities keep their order in the file.
        routes.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let fallback = file.default_endpoint.filter(|_| file.enable_fallback);
        Ok(RoutingTable { routes, fallback })
    }

    /// Endpoint names the table can produce (enabled routes, then the
    /// fallback endpoint), each once, for a startup check against the
    /// proxy's endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self
            .routes
            .iter()
            .map(|r| &r.endpoint)
            .chain(&self.fallback)
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// Pick the first matching route and build the request from `message`
    /// (`{"correlation_id", "payload", "metadata", "headers"}`).
    pub fn route(&self, message: &Value) -> Result<Routed, RouteError> {
        if let Some(route) = self.routes.iter().find(|r| r.matches(message)) {
            return route.apply(message);
        }
        match &self.fallback {
            Some(endpoint) => Ok(Routed {
                route: None,
                endpoint: endpoint.clone(),
                method: None,
                body: transform::passthrough(message),
                headers: Vec::new(),
                query: Vec::new(),
                timeout: None,
                max_retries: None,
            }),
            None => Err(RouteError::NoRoute),
        }
    }
}

/// The file's top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "version")]
    _version: Option<serde::de::IgnoredAny>,
    /// Kept raw so that errors can name the route they come from.
    #[serde(default)]
    routes: Vec<Value>,
    #[serde(default)]
    default_endpoint: Option<String>,
    #[serde(default = "yes")]
    enable_fallback: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default, rename = "description")]
    _description: Option<String>,
    #[serde(default)]
    match_field: Option<String>,
    /// A string; numbers and booleans are taken as their JSON text.
    #[serde(default)]
    match_value: Option<Value>,
    #[serde(default)]
    match_pattern: Option<String>,
    #[serde(default)]
    is_default: bool,
    #[serde(default)]
    priority: i64,
    endpoint: String,
    #[serde(default = "passthrough")]
    transform_type: String,
    #[serde(default)]
    transform: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    header_mappings: BTreeMap<String, String>,
    #[serde(default)]
    query_params: BTreeMap<String, String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    max_retries: Option<u32>,
}

fn passthrough() -> String {
    "passthrough".into()
}

struct Route {
    name: String,
    enabled: bool,
    priority: i64,
    matcher: Matcher,
    endpoint: String,
    transform: Transform,
    method: Option<String>,
    headers: Vec<(String, Source)>,
    query: Vec<(String, Source)>,
    timeout: Option<u64>,
    max_retries: Option<u32>,
}

enum Matcher {
    Always,
    /// A field with neither value nor pattern never matches (as in the original).
    Never,
    Value(String, String),
    Pattern(String, Regex),
}

impl Route {
    /// Compile a route; errors carry the offending key.
    fn compile(raw: RawRoute) -> Result<Route, (&'static str, String)> {
        if raw.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        if raw.endpoint.trim().is_empty() {
            return Err(("endpoint", "must not be empty".into()));
        }
        let value = match raw.match_value {
            None => None,
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Some(as_text(&v)),
            Some(_) => return Err(("match_value", "must be a string, number or boolean".into())),
        };
        let matcher = match (raw.is_default, raw.match_field, value, raw.match_pattern) {
            (_, _, Some(_), Some(_)) => {
                return Err((
                    "match_pattern",
                    "give match_value or match_pattern, not both".into(),
                ))
            }
            (true, ..) | (false, None, ..) => Matcher::Always,
            (false, Some(field), Some(value), None) => Matcher::Value(field, value),
            (false, Some(field), None, Some(pattern)) => {
                // Compiled alone first, so the anchoring group cannot mend a
                // broken pattern such as `a)(b`.
                let anchored = Regex::new(&pattern)
                    .and_then(|_| Regex::new(&format!("^(?:{pattern})")))
                    .map_err(|e| ("match_pattern", format!("not a regex: {e}")))?;
                Matcher::Pattern(field, anchored)
            }
            (false, Some(_), None, None) => Matcher::Never,
        };
        if !transform::KINDS.contains(&raw.transform_type.as_str()) {
            return Err((
                "transform_type",
                transform::unknown_kind(&raw.transform_type),
            ));
        }
        let transform = Transform::compile(&raw.transform_type, raw.transform.as_deref())
            .map_err(|e| ("transform", e))?;
        let method = match raw.method {
            None => None,
            Some(m) => {
                let m = m.to_ascii_uppercase();
                reqwest::Method::from_bytes(m.as_bytes())
                    .map_err(|_| ("method", format!("{m:?} is not an HTTP method")))?;
                Some(m)
            }
        };
        let mut headers = Vec::new();
        for (name, source) in raw.header_mappings {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ("header_mappings", format!("{name:?} is not a header name")))?;
            let source =
                Source::parse(&source).map_err(|e| ("header_mappings", format!("{name}: {e}")))?;
            headers.push((name, source));
        }
        let mut query = Vec::new();
        for (name, source) in raw.query_params {
            let source =
                Source::parse(&source).map_err(|e| ("query_params", format!("{name}: {e}")))?;
            query.push((name, source));
        }
        Ok(Route {
            name: raw.name,
            enabled: raw.enabled,
            priority: raw.priority,
            matcher,
            endpoint: raw.endpoint,
            transform,
            method,
            headers,
            query,
            timeout: raw.timeout,
            max_retries: raw.max_retries,
        })
    }

    fn matches(&self, message: &Value) -> bool {
        match &self.matcher {
            Matcher::Always => true,
            Matcher::Never => false,
            Matcher::Value(field, value) => {
                lookup(message, field).is_some_and(|v| as_text(v) == *value)
            }
            Matcher::Pattern(field, re) => {
                lookup(message, field).is_some_and(|v| re.is_match(&as_text(v)))
            }
        }
    }

    fn apply(&self, message: &Value) -> Result<Routed, RouteError> {
        let fail = |detail: String| RouteError::Transform {
            route: self.name.clone(),
            detail,
        };
        let body = self.transform.apply(message).map_err(fail)?;
        let mut headers = Vec::new();
        for (name, source) in &self.headers {
            if let Some(value) = source.render(message) {
                // Checked here, where the route is known, not when sending.
                if reqwest::header::HeaderValue::from_str(&value).is_err() {
                    return Err(fail(format!(
                        "header {name}: the value is not a valid header value"
                    )));
                }
                headers.push((name.clone(), value));
            }
        }
        let query = self
            .query
            .iter()
            .filter_map(|(name, source)| Some((name.clone(), source.render(message)?)))
            .collect();
        Ok(Routed {
            route: Some(self.name.clone()),
            endpoint: self.endpoint.clone(),
            method: self.method.clone(),
            body,
            headers,
            query,
            timeout: self.timeout,
            max_retries: self.max_retries,
        })
    }
}

/// A header or query parameter's value source.
enum Source {
    Field(String),
    Template(Template),
    /// jq; its first output (null or none: the header is left out).
    Jq(Transform),
}

impl Source {
    fn parse(text: &str) -> Result<Source, String> {
        let template = Template::parse(text);
        if template.slots().next().is_some() {
            Ok(Source::Template(template))
        } else if text.trim().is_empty() {
            Err("empty source; give a dotted path or a {{template}}".into())
        } else if text.trim_start().starts_with('.') {
            Transform::compile("jq", Some(text))
                .map(Source::Jq)
                .map_err(|e| format!("{text:?}: {e}"))
        } else {
            Ok(Source::Field(text.to_string()))
        }
    }

    /// The value as text; None (header or parameter omitted) when a field is
    /// missing or null.
    fn render(&self, message: &Value) -> Option<String> {
        match self {
            Source::Field(path) => lookup(message, path).map(as_text),
            Source::Template(t) => {
                if t.slots().any(|p| lookup(message, p).is_none()) {
                    return None;
                }
                Some(t.render(|p| lookup(message, p).map(as_text).unwrap_or_default()))
            }
            // A jq error leaves the header out, as a missing field does.
            Source::Jq(program) => match program.first(message) {
                Ok(None | Some(Value::Null)) | Err(_) => None,
                Ok(Some(v)) => Some(as_text(&v)),
            },
        }
    }
}

/// Text with `{{dotted.path}}` placeholders (the original's `\{\{([^}]+)\}\}`;
/// the path is trimmed).
pub struct Template {
    parts: Vec<Part>,
}

enum Part {
    Text(String),
    Slot(String),
}

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let inner_len = after.find('}').unwrap_or(after.len());
            if inner_len > 0 && after[inner_len..].starts_with("}}") {
                literal.push_str(&rest[..start]);
                parts.push(Part::Text(std::mem::take(&mut literal)));
                parts.push(Part::Slot(after[..inner_len].trim().to_string()));
                rest = &after[inner_len + 2..];
            } else {
                // Not a placeholder here: keep one `{` and look again after it.
                literal.push_str(&rest[..start + 1]);
                rest = &rest[start + 1..];
            }
        }
        literal.push_str(rest);
        parts.push(Part::Text(literal));
        Template { parts }
    }

    fn slots(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Slot(path) => Some(path.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with each placeholder replaced by `fill(path)`.
    pub fn render(&self, mut fill: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot(path) => out.push_str(&fill(path)),
            }
        }
        out
    }
}

/// The value at a dotted path (`metadata.type`, `payload.items.0.id`: a
/// number indexes an array); None when missing or null, as the original's
/// `get_nested_value` returns None for both.
pub fn lookup<'a>(message: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(message, |v, key| match v {
            Value::Object(map) => map.get(key),
            Value::Array(items) => items.get(key.parse::<usize>().ok()?),
            _ => None,
        })
        .filter(|v| !v.is_null())
}

/// A value as header, parameter or match text: strings as they are, anything
/// else as its JSON text.
pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
