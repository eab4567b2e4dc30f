//! Reading the sources: environment values typed as a person means them,
//! dotted paths into the tree, `${VAR}` expansion, and deserializing with
//! the failing key named.

use super::*;

/// An environment value, typed the way a person writing it means it: JSON
/// objects/arrays (`OPENHQM_PROXY__ENDPOINTS`), booleans, numbers, else text.
pub(super) fn typed_env_value(raw: &str) -> Value {
    let t = raw.trim();
    if t.starts_with('{') || t.starts_with('[') {
        if let Ok(v) = yaml_serde::from_str::<Value>(t) {
            return v;
        }
    }
    match t.to_ascii_lowercase().as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return Value::Number(f.into());
        }
    }
    Value::String(raw.to_string())
}

pub(super) fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("empty key".into());
    };
    let Value::Mapping(map) = tree else {
        return Err("cannot set a key inside a value that is not a mapping".into());
    };
    let key = Value::String(first.clone());
    if rest.is_empty() {
        map.insert(key, value);
        return Ok(());
    }
    let child = map
        .entry(key)
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !child.is_mapping() {
        *child = Value::Mapping(Mapping::new());
    }
    set_path(child, rest, value)
}

pub(super) fn get_path_mut<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = tree;
    for seg in path {
        cur = cur.as_mapping_mut()?.get_mut(Value::String(seg.clone()))?;
    }
    Some(cur)
}

/// Deserialize into [`Config`]. A value set from the environment that was
/// typed as a number or boolean but lands in a text field (a numeric password,
/// say) is retried as the text the operator wrote.
pub(super) fn deserialize_lenient(
    mut tree: Value,
    env: &[(String, String)],
    env_keys: &BTreeSet<Vec<String>>,
) -> Result<Config, ConfigError> {
    // The first error seen at each key: if reading a value as text does not
    // help either, the original complaint is the clearer one.
    let mut first_errors: Vec<(String, String)> = Vec::new();
    for _ in 0..=env_keys.len() {
        let attempt: Result<Config, _> = serde_path_to_error::deserialize(tree.clone());
        match attempt {
            Ok(c) => return Ok(c),
            Err(err) => {
                let path = err.path().to_string();
                if let Some((_, msg)) = first_errors.iter().find(|(p, _)| *p == path) {
                    return Err(ConfigError::new(path.clone(), msg.clone()));
                }
                first_errors.push((path.clone(), err.inner().to_string()));
                let segs: Vec<String> = path.split('.').map(str::to_string).collect();
                let is_env_scalar = env_keys.contains(&segs)
                    && get_path_mut(&mut tree, &segs)
                        .map(|v| matches!(v, Value::Number(_) | Value::Bool(_)))
                        .unwrap_or(false);
                if is_env_scalar {
                    let var = format!("{ENV_PREFIX}{}", segs.join("__").to_ascii_uppercase());
                    let raw = env
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&var))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    if let Some(slot) = get_path_mut(&mut tree, &segs) {
                        *slot = Value::String(raw);
                        continue;
                    }
                }
                return Err(ConfigError::new(
                    if path == "." { String::new() } else { path },
                    err.inner().to_string(),
                ));
            }
        }
    }
    Err(ConfigError::new(
        "",
        "could not interpret the configuration",
    ))
}

/// Expand `${VAR}` / `${VAR:-default}` in every string below `tree`.
pub(super) fn expand_vars(
    tree: &mut Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match tree {
        Value::String(s) if s.contains("${") => {
            *s = expand_str(s, lookup).map_err(|m| ConfigError::new(key, m))?;
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => yaml_serde::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if key.is_empty() {
                    name
                } else {
                    format!("{key}.{name}")
                };
                expand_vars(v, &child, lookup)?;
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_vars(v, &format!("{key}.{i}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn expand_str(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{expr}}}` is not a valid variable reference"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "refers to ${{{name}}}, which is not set (set it, or write ${{{name}:-default}})"
            ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
