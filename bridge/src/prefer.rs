//! RFC 7240 `Prefer` for the bridge: `wait=N` (hold the answer up to N
//! seconds for a final result) and `respond-async`.

use axum::http::HeaderMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    pub wait_seconds: Option<u64>,
    pub respond_async: bool,
}

impl Prefer {
    /// All `Prefer` headers of a request; unknown preferences are ignored,
    /// as the RFC asks.
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for item in value.split(',') {
                let item = item.split(';').next().unwrap_or("").trim();
                let (name, val) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item, None),
                };
                if name.eq_ignore_ascii_case("respond-async") {
                    prefer.respond_async = true;
                } else if name.eq_ignore_ascii_case("wait") {
                    if let Some(n) = val.and_then(|v| v.parse().ok()) {
                        prefer.wait_seconds = Some(n);
                    }
                }
            }
        }
        prefer
    }

    /// The wait to honour, capped; none when the client asked for async.
    pub fn wait(&self, cap: u64) -> Option<u64> {
        if self.respond_async {
            return None;
        }
        self.wait_seconds.map(|w| w.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Prefer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", v.parse().unwrap());
        }
        Prefer::from_headers(&h)
    }

    #[test]
    fn parses_wait_and_async() {
        assert_eq!(parse(&["wait=10"]).wait(30), Some(10));
        assert_eq!(parse(&["wait=100"]).wait(30), Some(30));
        assert_eq!(parse(&["handling=lenient, Wait=\"5\""]).wait(30), Some(5));
        assert_eq!(parse(&["respond-async", "wait=5"]).wait(30), None);
        assert!(parse(&["respond-async"]).respond_async);
        assert_eq!(parse(&["wait=soon"]).wait(30), None);
        assert_eq!(parse(&[]), Prefer::default());
    }
}
