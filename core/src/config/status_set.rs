//! A typed leaf value of the configuration: a set of HTTP statuses
//! (`worker.retry_on_status`, an endpoint's `retry.retry_on_status`).

/// A set of HTTP statuses written as numbers ("429"), classes ("5xx") or
/// ranges ("500-504").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    pub fn parse(items: &[String]) -> Result<StatusSet, String> {
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let s = item.trim().to_ascii_lowercase();
            let range = if let Some(class) = s.strip_suffix("xx") {
                match class.parse::<u16>() {
                    Ok(c @ 1..=5) => (c * 100, c * 100 + 99),
                    _ => return Err(format!("`{item}` is not a status class like 5xx")),
                }
            } else if let Some((a, b)) = s.split_once('-') {
                let a = parse_status(a, item)?;
                let b = parse_status(b, item)?;
                if a > b {
                    return Err(format!("`{item}`: range is backwards"));
                }
                (a, b)
            } else {
                let n = parse_status(&s, item)?;
                (n, n)
            };
            ranges.push(range);
        }
        Ok(StatusSet { ranges })
    }

    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&status))
    }
}

fn parse_status(s: &str, item: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(n @ 100..=599) => Ok(n),
        _ => Err(format!(
            "`{item}` is not an HTTP status (100-599), class (5xx) or range (500-504)"
        )),
    }
}
