//! The standard `OTEL_*` variables, read once: where traces go, and how they are sampled.
//!
//! Read through a lookup function (like [`crate::config::Config::from_lookup`]) so tests can
//! point an in-process marketplace at their own receiver without touching the process env.

use std::time::Duration;

use opentelemetry_sdk::trace::Sampler;

use crate::config::ConfigError;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, port 4317 by convention.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, port 4318 by convention, path `/v1/traces`.
    HttpProtobuf,
}

/// Where and how to export. Absent (see [`Settings::from_lookup`]) means tracing is off.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The full traces endpoint: for HTTP it already ends in `/v1/traces`.
    pub endpoint: String,
    pub protocol: Protocol,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (e.g. SigNoz Cloud's ingestion key), URL-decoded.
    pub headers: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`: see [`Settings::service_name`].
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, except `service.name` (each service reports its own).
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
    /// Bound on one export request; a slow collector costs at most this, in the background.
    pub timeout: Duration,
    /// A CA trusted beside the system's roots by an `https://` endpoint:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, else `TLS_CA_FILE`.
    pub ca: Option<crate::tls::CaFile>,
}

/// The export timeout when `OTEL_EXPORTER_OTLP_TIMEOUT` is unset (the specification's).
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Settings {
    pub fn from_env() -> Result<Option<Settings>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `Ok(None)` when no endpoint is set or `OTEL_SDK_DISABLED=true`: nothing is exported
    /// and nothing complains. An invalid value is an error naming its variable.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, ConfigError> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if sdk_disabled(&var)? {
            return Ok(None);
        }
        let protocol = protocol(&var)?;
        let Some(endpoint) = traces_endpoint(&var, protocol)? else {
            return Ok(None);
        };
        let headers = headers(&var)?;
        let resource_attributes = resource_attributes(&var)?;
        let timeout = export_timeout(&var)?;
        let ca = ca_file(&var)?;
        refuse_client_certificates(&var)?;
        Ok(Some(Settings {
            endpoint,
            protocol,
            headers,
            service_name: var("OTEL_SERVICE_NAME"),
            resource_attributes,
            sampler: sampler(
                var("OTEL_TRACES_SAMPLER").as_deref(),
                var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            )?,
            timeout,
            ca,
        }))
    }

    /// The `service.name` a service of this process reports. Each service names itself
    /// (`backend`, `payment`, …), also when several share one process; `OTEL_SERVICE_NAME`,
    /// when set to something else than the service's own name, becomes a prefix
    /// (`OTEL_SERVICE_NAME=shop` → `shop-payment`), so that two deployments stay apart.
    pub fn service_name(&self, service: &str) -> String {
        match self.service_name.as_deref() {
            None => service.to_string(),
            Some(n) if n == service => service.to_string(),
            Some(prefix) => format!("{prefix}-{service}"),
        }
    }
}

/// An error naming `variable`, its value and what is wrong with it.
fn invalid(variable: &'static str, value: String, problem: &str) -> ConfigError {
    ConfigError {
        variable,
        value,
        problem: problem.to_string(),
    }
}

/// `OTEL_SDK_DISABLED`: true turns tracing off, false or unset leaves it on.
fn sdk_disabled(var: &impl Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
    match var("OTEL_SDK_DISABLED") {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid("OTEL_SDK_DISABLED", v, "expected true or false")),
        },
    }
}

/// The export protocol, from the per-signal variable if set, by default HTTP/protobuf.
fn protocol(var: &impl Fn(&str) -> Option<String>) -> Result<Protocol, ConfigError> {
    let protocol_var = if var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    } else {
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    };
    match var(protocol_var).as_deref() {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(invalid(
            protocol_var,
            other.into(),
            "expected grpc or http/protobuf (http/json is not supported)",
        )),
    }
}

/// The full traces endpoint; None when neither endpoint variable is set.
fn traces_endpoint(
    var: &impl Fn(&str) -> Option<String>,
    protocol: Protocol,
) -> Result<Option<String>, ConfigError> {
    let endpoint = match (
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        // The per-signal variable is used as is, as the specification says.
        (Some(e), _) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e)?,
        (None, Some(base)) => {
            let base = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            }
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(endpoint))
}

/// The headers sent with every export, from the per-signal variable if set.
fn headers(var: &impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, ConfigError> {
    match var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS")) {
        Some(h) => key_values(&h).ok_or_else(|| {
            invalid(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "(redacted)".into(),
                "expected key=value,key=value",
            )
        }),
        None => Ok(Vec::new()),
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` without `service.name`.
fn resource_attributes(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(a) = var("OTEL_RESOURCE_ATTRIBUTES") else {
        return Ok(Vec::new());
    };
    let pairs = key_values(&a).ok_or_else(|| {
        invalid(
            "OTEL_RESOURCE_ATTRIBUTES",
            a.clone(),
            "expected key=value,key=value",
        )
    })?;
    Ok(pairs
        .into_iter()
        .filter(|(k, _)| k != "service.name")
        .collect())
}

/// The export timeout in milliseconds, from the per-signal variable if set.
fn export_timeout(var: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT")) {
        Some(t) => match t.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(invalid(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                t,
                "expected milliseconds above 0",
            )),
        },
        None => Ok(DEFAULT_TIMEOUT),
    }
}

/// The CA file of [`Settings::ca`], read and checked: the first of its variables that is set.
fn ca_file(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<Option<crate::tls::CaFile>, ConfigError> {
    let ca_var = [
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "TLS_CA_FILE",
    ]
    .into_iter()
    .find_map(|name| var(name).map(|path| (name, path)));
    let Some((name, path)) = ca_var else {
        return Ok(None);
    };
    let ca = crate::tls::CaFile::read(&path).map_err(|p| invalid(name, path, &p))?;
    Ok(Some(ca))
}

/// An error if a client certificate or key is set. Refused rather than ignored: a collector
/// that asks for a client certificate would refuse every export.
fn refuse_client_certificates(var: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    for name in [
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    ] {
        if let Some(v) = var(name) {
            return Err(invalid(
                name,
                v,
                "client certificates (mutual TLS) are not supported: authenticate with \
                 OTEL_EXPORTER_OTLP_HEADERS (e.g. an ingestion key) instead",
            ));
        }
    }
    Ok(())
}

/// An endpoint URL: `http://`, or `https://` (TLS, trusting the system's roots and the CA
/// file of [`Settings::ca`]).
fn checked_url(variable: &'static str, value: String) -> Result<String, ConfigError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(value);
    }
    Err(ConfigError {
        variable,
        value,
        problem: "expected an http:// or https:// URL".into(),
    })
}

/// `k=v,k2=v2` (W3C baggage-like, values percent-decoded); None if malformed.
fn key_values(text: &str) -> Option<Vec<(String, String)>> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match &arg {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(ConfigError {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    value: a.to_string(),
                    problem: "expected a ratio between 0 and 1".into(),
                }),
            },
        }
    };
    Ok(match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(ConfigError {
                variable: "OTEL_TRACES_SAMPLER",
                value: other.into(),
                problem: "expected always_on, always_off, traceidratio, parentbased_always_on, \
                          parentbased_always_off or parentbased_traceidratio"
                    .into(),
            });
        }
    })
}

#[cfg(test)]
mod tests;
