//! The built-in example processor (proxy mode off), as in the original:
//! `{"operation": "echo" | "uppercase" | "reverse" | "error", "data": ...}`.

use openhqm_core::time::now_rfc3339;
use serde_json::{json, Value};

/// Output on success; on failure a message for the client. Failures of the
/// example processor are deterministic, so they are not retried.
pub fn run(payload: &Value) -> Result<Value, String> {
    let operation = payload
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let data = payload
        .get("data")
        .cloned()
        .unwrap_or(Value::String(String::new()));
    let text = || match &data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let output = match operation {
        "echo" => data.clone(),
        "uppercase" => Value::String(text().to_uppercase()),
        "reverse" => Value::String(text().chars().rev().collect()),
        "error" => return Err("Test error".into()),
        other => Value::String(format!("Unknown operation: {other}")),
    };
    Ok(json!({"output": output, "processed_at": now_rfc3339()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations() {
        assert_eq!(
            run(&json!({"operation": "echo", "data": {"a": 1}})).unwrap()["output"],
            json!({"a": 1})
        );
        assert_eq!(
            run(&json!({"operation": "uppercase", "data": "abc"})).unwrap()["output"],
            "ABC"
        );
        assert_eq!(
            run(&json!({"operation": "reverse", "data": "héllo"})).unwrap()["output"],
            "olléh"
        );
        assert_eq!(
            run(&json!({"operation": "error"})).unwrap_err(),
            "Test error"
        );
        assert_eq!(
            run(&json!({"operation": "x"})).unwrap()["output"],
            "Unknown operation: x"
        );
        assert_eq!(
            run(&json!({})).unwrap()["output"],
            "Unknown operation: unknown"
        );
    }
}
