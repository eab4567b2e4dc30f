//! The one check of header names and values a message carries to its
//! backend: the bridge refuses bad ones at submit (422 `invalid_header`, like every other submit validation error),
//! and the worker applies the same rule before it builds a request, so a
//! submission is never accepted only to be dead-lettered later.

/// `Ok` when `name: value` can be sent as an HTTP/1.1 header; otherwise a
/// sentence naming the header and what is wrong with it.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!(
            "header name `{}` is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~ only)",
            name.escape_debug()
        ));
    }
    if let Some(b) = value
        .bytes()
        .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        let what = match b {
            b'\r' => "a carriage return (CR)".to_string(),
            b'\n' => "a line feed (LF)".to_string(),
            0 => "a NUL byte".to_string(),
            other => format!("the control character 0x{other:02x}"),
        };
        return Err(format!(
            "the value of header `{name}` contains {what}; header values cannot contain CR, LF, NUL or other control characters"
        ));
    }
    Ok(())
}

/// [`check_header`] over many headers: the first bad one.
pub fn check_headers<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    headers
        .into_iter()
        .try_for_each(|(name, value)| check_header(name, value))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_lf_nul_and_bad_names_are_refused_naming_the_header() {
        assert!(check_header("X-Tenant", "acme corp\tünïcode").is_ok());
        for (value, what) in [
            ("a\r\nX-Injected: 1", "carriage return"),
            ("a\nb", "line feed"),
            ("a\0b", "NUL"),
            ("a\x07", "0x07"),
        ] {
            let e = check_header("X-Tenant", value).unwrap_err();
            assert!(e.contains("`X-Tenant`") && e.contains(what), "{e}");
        }
        assert!(check_header("X Bad", "v").unwrap_err().contains("`X Bad`"));
        assert!(check_header("", "v").is_err());
        // The worker builds headers with the http crate: whatever passes
        // here must pass there too.
        for (n, v) in [("x-a", "b c"), ("x-b", "\t"), ("x-c", "é")] {
            assert!(check_header(n, v).is_ok());
            assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok());
            assert!(http::HeaderValue::from_str(v).is_ok());
        }
    }
}
