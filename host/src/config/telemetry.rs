//! `[telemetry]`: where the host's OpenTelemetry traces go (an OTLP/HTTP collector). Without
//! it (and without the standard `OTEL_EXPORTER_OTLP_*` variables) nothing is exported.

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<Spanned<String>>,
}

/// `[telemetry]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`, or `https://`); spans go to
    /// `/v1/traces`.
    pub otlp_endpoint: Option<String>,
}

/// `[telemetry]`: the endpoint must be an `http://` or `https://` URL with a host.
pub(super) fn resolve_telemetry(at: &Locator, raw: &RawTelemetry) -> Result<TelemetrySettings, ConfigError> {
    let Some(endpoint) = &raw.otlp_endpoint else { return Ok(TelemetrySettings::default()) };
    let url = endpoint.get_ref().trim();
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|rest| rest.split(['/', ':']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() => Ok(TelemetrySettings { otlp_endpoint: Some(url.to_string()) }),
        _ => Err(at.at(
            endpoint,
            "telemetry.otlp_endpoint",
            format!(
                "'{url}' is not an http:// or https:// URL with a host: give the collector's OTLP/HTTP address, like \"http://127.0.0.1:4318\""
            ),
        )),
    }
}
