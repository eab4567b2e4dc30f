//! Payload transforms, compiled once when the routing table loads and then
//! applied to every message the route matches.

use super::{lookup, Template};
use jaq_core::{data::JustLut, load, Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// The `transform_type` names.
pub const KINDS: [&str; 4] = ["jq", "jsonpath", "template", "passthrough"];

/// How a route turns the queue message into the backend request body.
pub enum Transform {
    /// `message.payload`, or the whole message when it has none.
    Passthrough,
    /// A jq program run in-process (jaq); its first output is the body.
    Jq(Box<jaq_core::Filter<JustLut<Val>>>),
    /// An RFC 9535 query on the message.
    JsonPath(JsonPath),
    /// JSON text with `{{dotted.path}}` placeholders.
    Template(Template),
}

impl Transform {
    /// Compile `kind` (`jq`, `jsonpath`, `template`, `passthrough`) with its
    /// expression; no expression means passthrough, as in the original.
    pub fn compile(kind: &str, text: Option<&str>) -> Result<Transform, String> {
        let Some(text) = text.filter(|_| kind != "passthrough") else {
            return if KINDS.contains(&kind) {
                Ok(Transform::Passthrough)
            } else {
                Err(unknown_kind(kind))
            };
        };
        match kind {
            "jq" => compile_jq(text).map(|f| Transform::Jq(Box::new(f))),
            "jsonpath" => JsonPath::parse(text)
                .map(Transform::JsonPath)
                .map_err(|e| format!("not a JSONPath (RFC 9535): {e}")),
            "template" => {
                let template = Template::parse(text);
                // Fill every slot with a number: what still fails to parse is
                // broken whatever the message holds.
                match serde_json::from_str::<Value>(&template.render(|_| "0".into())) {
                    Ok(_) => Ok(Transform::Template(template)),
                    Err(e) => Err(format!("template is not JSON: {e}")),
                }
            }
            _ => Err(unknown_kind(kind)),
        }
    }

    /// A jq program's first output (None for `empty`); other kinds: `apply`.
    pub fn first(&self, message: &Value) -> Result<Option<Value>, String> {
        match self {
            Transform::Jq(filter) => run_jq_first(filter, message),
            other => other.apply(message).map(Some),
        }
    }

    pub fn apply(&self, message: &Value) -> Result<Value, String> {
        match self {
            Transform::Passthrough => Ok(passthrough(message)),
            Transform::Jq(filter) => run_jq(filter, message),
            Transform::JsonPath(path) => {
                let mut found: Vec<Value> =
                    path.query(message).all().into_iter().cloned().collect();
                let result = match found.len() {
                    1 => found.swap_remove(0),
                    _ => Value::Array(found),
                };
                // The original always sent an object: anything else is wrapped.
                Ok(match result {
                    Value::Object(_) => result,
                    other => Value::Object(Map::from_iter([("result".to_string(), other)])),
                })
            }
            Transform::Template(template) => {
                // Strings are JSON-escaped but not quoted: the template
                // supplies the quotes, and a value cannot break out of them.
                let text = template.render(|path| match lookup(message, path) {
                    None => "null".into(),
                    Some(Value::String(s)) => {
                        let quoted = Value::String(s.clone()).to_string();
                        quoted[1..quoted.len() - 1].to_string()
                    }
                    Some(v) => v.to_string(),
                });
                serde_json::from_str(&text).map_err(|e| format!("template result is not JSON: {e}"))
            }
        }
    }
}

pub(super) fn passthrough(message: &Value) -> Value {
    message.get("payload").unwrap_or(message).clone()
}

pub(super) fn unknown_kind(kind: &str) -> String {
    format!("unknown transform_type {kind:?} (expected jq, jsonpath, template or passthrough)")
}

fn compile_jq(code: &str) -> Result<jaq_core::Filter<JustLut<Val>>, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = load::Arena::default();
    let program = load::File { code, path: () };
    let modules = load::Loader::new(defs)
        .load(&arena, program)
        .map_err(|errs| {
            let msgs: Vec<String> = errs.into_iter().map(|(_, e)| load_error(e)).collect();
            format!("jq does not compile: {}", msgs.join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, es)| es)
                .map(|(name, undef)| format!("undefined {} {name}", undef.as_str()))
                .collect();
            format!("jq does not compile: {}", msgs.join("; "))
        })
}

fn load_error(e: load::Error<&str>) -> String {
    let near = |s: &str| match s.chars().take(20).collect::<String>() {
        s if s.is_empty() => "at the end".to_string(),
        s => format!("near {s:?}"),
    };
    let all: Vec<String> = match e {
        load::Error::Io(es) => es.into_iter().map(|(p, e)| format!("{p}: {e}")).collect(),
        load::Error::Lex(es) => es
            .into_iter()
            .map(|(expect, at)| {
                // `as_str` panics on a delimiter it does not know; name it ourselves.
                let what = match expect {
                    load::lex::Expect::Delim(d) => format!("a match for {d}"),
                    other => other.as_str().to_string(),
                };
                format!("expected {what} {}", near(at))
            })
            .collect(),
        load::Error::Parse(es) => es
            .into_iter()
            .map(|(expect, at)| format!("expected {} {}", expect.as_str(), near(at)))
            .collect(),
    };
    all.join("; ")
}

fn run_jq(filter: &jaq_core::Filter<JustLut<Val>>, message: &Value) -> Result<Value, String> {
    Ok(run_jq_first(filter, message)?.unwrap_or_else(|| Value::Object(Map::new())))
}

/// The program's first output; None when it has none (`empty`).
fn run_jq_first(
    filter: &jaq_core::Filter<JustLut<Val>>,
    message: &Value,
) -> Result<Option<Value>, String> {
    let ctx = Ctx::<JustLut<Val>>::new(&filter.lut, Vars::new([]));
    // Not `jaq_core::unwrap_valr`: it exits the process on `halt`.
    match filter.id.run((ctx, to_val(message))).next() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(from_val(&v))),
        Some(Err(exn)) => Err(match exn.get_err() {
            Ok(e) => format!("jq: {e}"),
            Err(exn) => match exn.get_halt() {
                Ok(code) => format!("jq: halted with code {code}"),
                Err(_) => "jq: unexpected control flow".to_string(),
            },
        }),
    }
}

fn to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Num::from_integral(i),
            (_, Some(u)) => Num::from_integral(u),
            _ => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), to_val(v)))
                .collect(),
        ),
    }
}

fn from_val(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        // Big integers, floats, decimals as written: through their JSON
        // text; NaN and infinities are not JSON and become null, as in jq.
        Val::Num(n) => serde_json::from_str(&n.to_string()).unwrap_or(Value::Null),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => a.iter().map(from_val).collect(),
        Val::Obj(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                        other => other.to_string(),
                    };
                    (key, from_val(v))
                })
                .collect(),
        ),
    }
}
