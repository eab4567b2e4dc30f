//! The trace exporter's settings, from `monitoring.*` and the standard
//! OpenTelemetry variables, checked before anything starts: an invalid value
//! stops start-up with the variable named. The OpenTelemetry SDK itself
//! ignores most bad values silently, so every variable it would read is
//! resolved here and handed to it explicitly.
//!
//! Header values (`OTEL_EXPORTER_OTLP_HEADERS` carries credentials) never
//! appear in an error message or a log line.

use crate::config::{parse_otlp_endpoint, MonitoringConfig};
use std::time::Duration;

/// How new traces are sampled (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    /// Follow the inbound `traceparent`'s sampled flag; decide new traces
    /// with the inner sampler.
    ParentBased(Box<SamplerSetting>),
}

/// Everything the exporter needs; `Debug` leaves the header values out.
#[derive(Clone, PartialEq)]
pub struct ExportSettings {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// PEM bundle of CAs to trust beside the built-in roots.
    pub certificate: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_identity: Option<Vec<u8>>,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub sampler: SamplerSetting,
}

impl std::fmt::Debug for ExportSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExportSettings")
            .field("endpoint", &self.endpoint)
            .field("header_names", &header_names)
            .field("timeout", &self.timeout)
            .field("certificate", &self.certificate.is_some())
            .field("client_identity", &self.client_identity.is_some())
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("sampler", &self.sampler)
            .finish()
    }
}

/// The spec's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolve the settings: `Ok(None)` when no endpoint is configured (or
/// `OTEL_SDK_DISABLED=true`), an error naming the key or variable when a
/// value is invalid. `env` looks a variable up (empty counts as unset, as the
/// specification says).
pub fn resolve(
    m: &MonitoringConfig,
    program: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, String> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    // The signal-specific variable wins over the general one.
    let pick = |specific: &'static str, general: &'static str| {
        var(specific)
            .map(|v| (specific, v))
            .or_else(|| var(general).map(|v| (general, v)))
    };
    let disabled = match var("OTEL_SDK_DISABLED") {
        None => false,
        Some(v) => parse_bool(&v)
            .ok_or_else(|| format!("OTEL_SDK_DISABLED: `{v}` is not true or false"))?,
    };
    if let Some((name, v)) = pick(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        if v.trim() != "http/protobuf" {
            return Err(format!(
                "{name}: `{v}` is not supported; OpenHQM exports OTLP over HTTP as protobuf (`http/protobuf`)"
            ));
        }
    }
    let headers = match pick(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ) {
        None => Vec::new(),
        Some((name, v)) => parse_headers(&v).map_err(|e| format!("{name}: {e}"))?,
    };
    let timeout = match pick(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ) {
        None => DEFAULT_TIMEOUT,
        Some((name, v)) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(format!(
                    "{name}: `{v}` is not a positive number of milliseconds"
                ))
            }
        },
    };
    let certificate = match pick(
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ) {
        None => None,
        Some((name, path)) => Some(read_pem(name, &path)?),
    };
    let client_cert = pick(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let client_key = pick(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    let client_identity = match (client_cert, client_key) {
        (None, None) => None,
        (Some((cn, cp)), Some((kn, kp))) => {
            let mut pem = read_pem(cn, &cp)?;
            pem.push(b'\n');
            pem.extend(read_pem(kn, &kp)?);
            Some(pem)
        }
        (Some((name, _)), None) | (None, Some((name, _))) => {
            return Err(format!(
                "{name}: mutual TLS needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
            ))
        }
    };
    let mut resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
        None => Vec::new(),
        Some(v) => parse_pairs(&v).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?,
    };
    let sampler = match var("OTEL_TRACES_SAMPLER") {
        None => SamplerSetting::ParentBased(Box::new(SamplerSetting::Ratio(m.trace_sample_ratio))),
        Some(v) => parse_sampler(&v, var("OTEL_TRACES_SAMPLER_ARG").as_deref())?,
    };
    // monitoring.otlp_endpoint, else the traces variable (a full URL, used
    // as given), else the general one (a base URL: /v1/traces is added).
    let endpoint = if let Some(url) = &m.otlp_endpoint {
        Some(parse_otlp_endpoint(url, true).map_err(|e| format!("monitoring.otlp_endpoint: {e}"))?)
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(
            parse_otlp_endpoint(&url, false)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?,
        )
    } else if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(
            parse_otlp_endpoint(&url, true)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?,
        )
    } else {
        None
    };
    let Some(endpoint) = endpoint.filter(|_| !disabled) else {
        return Ok(None);
    };
    // monitoring.service_name, OTEL_SERVICE_NAME, service.name among the
    // resource attributes, the program's name: the first one set.
    let from_resource = resource
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource.remove(i).1);
    let service_name = m
        .service_name
        .clone()
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .or(from_resource)
        .unwrap_or_else(|| program.to_string());
    Ok(Some(ExportSettings {
        endpoint,
        headers,
        timeout,
        certificate,
        client_identity,
        service_name,
        resource,
        sampler,
    }))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn read_pem(name: &str, path: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path.trim()).map_err(|e| format!("{name}: cannot read `{path}`: {e}"))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{name}: `{path}` is not a PEM file"));
    }
    Ok(bytes)
}

/// `key=value,key2=value2` with percent-encoded values (the W3C baggage
/// format both variables use). Errors name the entry by position, never
/// its value.
fn parse_pairs(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, item) in v.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("entry {} is not key=value", i + 1))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("entry {} has no key", i + 1));
        }
        let value = percent_decode(value.trim()).ok_or_else(|| {
            format!(
                "entry {} (`{key}`): the value is not valid percent-encoded UTF-8",
                i + 1
            )
        })?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn parse_headers(v: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_pairs(v)?;
    for (key, value) in &pairs {
        if reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(format!("`{key}` is not a valid header name"));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(format!("the value of `{key}` is not a valid header value"));
        }
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_sampler(v: &str, arg: Option<&str>) -> Result<SamplerSetting, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(a) => match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG: `{a}` is not a ratio between 0 and 1"
                )),
            },
        }
    };
    use SamplerSetting::*;
    Ok(match v.trim() {
        "always_on" => AlwaysOn,
        "always_off" => AlwaysOff,
        "traceidratio" => Ratio(ratio()?),
        "parentbased_always_on" => ParentBased(Box::new(AlwaysOn)),
        "parentbased_always_off" => ParentBased(Box::new(AlwaysOff)),
        "parentbased_traceidratio" => ParentBased(Box::new(Ratio(ratio()?))),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: `{other}` is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)], m: &MonitoringConfig) -> Result<Option<ExportSettings>, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(m, "openhqm-worker", &|k| map.get(k).cloned())
    }

    fn ok(vars: &[(&str, &str)]) -> ExportSettings {
        run(vars, &MonitoringConfig::default()).unwrap().unwrap()
    }

    fn err(vars: &[(&str, &str)]) -> String {
        run(vars, &MonitoringConfig::default()).unwrap_err()
    }

    const EP: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");

    #[test]
    fn no_endpoint_no_export_but_values_are_still_checked() {
        assert_eq!(run(&[], &MonitoringConfig::default()), Ok(None));
        assert!(err(&[("OTEL_TRACES_SAMPLER", "sometimes")]).starts_with("OTEL_TRACES_SAMPLER:"));
        assert_eq!(
            run(
                &[EP, ("OTEL_SDK_DISABLED", "true")],
                &MonitoringConfig::default()
            ),
            Ok(None)
        );
        assert!(err(&[("OTEL_SDK_DISABLED", "yes")]).starts_with("OTEL_SDK_DISABLED:"));
    }

    #[test]
    fn endpoints_base_and_full_and_the_config_key_first() {
        assert_eq!(ok(&[EP]).endpoint, "https://collector:4318/v1/traces");
        assert_eq!(
            ok(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/otlp/")]).endpoint,
            "http://c:4318/otlp/v1/traces"
        );
        let s = ok(&[
            EP,
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"),
        ]);
        assert_eq!(
            s.endpoint, "http://t:1/custom",
            "the traces URL is used as given"
        );
        let m = MonitoringConfig {
            otlp_endpoint: Some("http://cfg:4318".into()),
            ..Default::default()
        };
        assert_eq!(
            run(&[EP], &m).unwrap().unwrap().endpoint,
            "http://cfg:4318/v1/traces"
        );
        for bad in [
            "collector:4318",
            "ftp://c",
            "http://:4318",
            "http://c:port",
            "http://u:p@c",
        ] {
            let e = err(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]);
            assert!(e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{bad}: {e}");
        }
        assert!(err(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "c")])
            .starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "));
        assert_eq!(
            parse_otlp_endpoint("http://[::1]:4318", true).unwrap(),
            "http://[::1]:4318/v1/traces"
        );
    }

    #[test]
    fn headers_are_decoded_and_errors_never_show_a_value() {
        let s = ok(&[
            EP,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20tok3n, x-tenant = a",
            ),
        ]);
        assert_eq!(
            s.headers,
            vec![
                ("authorization".to_string(), "Bearer tok3n".to_string()),
                ("x-tenant".to_string(), "a".to_string())
            ]
        );
        assert!(
            !format!("{s:?}").contains("tok3n"),
            "Debug leaves values out"
        );
        let e = err(&[
            EP,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%0Asecr3t",
            ),
        ]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_HEADERS: "), "{e}");
        assert!(!e.contains("secr3t"), "{e}");
        let e = err(&[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "secr3t-without-equals")]);
        assert!(!e.contains("secr3t") && e.contains("entry 1"), "{e}");
        assert!(err(&[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=x")]).contains("header name"));
        assert!(err(&[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz")]).contains("percent"));
        let s = ok(&[
            EP,
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]);
        assert_eq!(s.headers, vec![("b".to_string(), "2".to_string())]);
    }

    #[test]
    fn timeout_protocol_and_certificates() {
        assert_eq!(ok(&[EP]).timeout, Duration::from_secs(10));
        assert_eq!(
            ok(&[EP, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).timeout,
            Duration::from_millis(2500)
        );
        for bad in ["0", "-1", "2s", "1.5"] {
            assert!(err(&[EP, ("OTEL_EXPORTER_OTLP_TIMEOUT", bad)])
                .starts_with("OTEL_EXPORTER_OTLP_TIMEOUT:"));
        }
        assert!(err(&[EP, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "x")])
            .starts_with("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT:"));
        ok(&[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        assert!(err(&[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"));
        let e = err(&[EP, ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem")]);
        assert!(
            e.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(err(&[
            EP,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", not_pem.to_str().unwrap())
        ])
        .contains("not a PEM file"));
        assert!(err(&[
            EP,
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", not_pem.to_str().unwrap())
        ])
        .contains("needs both"));
    }

    #[test]
    fn samplers_and_service_name() {
        use SamplerSetting::*;
        assert_eq!(ok(&[EP]).sampler, ParentBased(Box::new(Ratio(1.0))));
        assert_eq!(
            ok(&[EP, ("OTEL_TRACES_SAMPLER", "always_off")]).sampler,
            AlwaysOff
        );
        assert_eq!(
            ok(&[
                EP,
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ])
            .sampler,
            ParentBased(Box::new(Ratio(0.25)))
        );
        for bad in ["2", "-0.1", "half"] {
            let e = err(&[
                EP,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ]);
            assert!(e.starts_with("OTEL_TRACES_SAMPLER_ARG:"), "{e}");
        }
        assert!(err(&[EP, ("OTEL_TRACES_SAMPLER", "jaeger_remote")]).contains("not supported"));
        assert_eq!(ok(&[EP]).service_name, "openhqm-worker");
        let s = ok(&[
            EP,
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-res,deployment.environment.name=prod%20eu",
            ),
        ]);
        assert_eq!(s.service_name, "from-res");
        assert_eq!(
            s.resource,
            vec![(
                "deployment.environment.name".to_string(),
                "prod eu".to_string()
            )]
        );
        let s = ok(&[
            EP,
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x"),
        ]);
        assert_eq!(s.service_name, "svc");
        assert!(err(&[EP, ("OTEL_RESOURCE_ATTRIBUTES", "novalue")])
            .starts_with("OTEL_RESOURCE_ATTRIBUTES:"));
    }
}
