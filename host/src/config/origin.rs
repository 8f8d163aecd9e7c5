//! `[plugin.<name>] http = [...]`: one granted origin (`https://api.example.com`,
//! `https://*.example.com`, `http://127.0.0.1:8080`), as Spin's `allowed_outbound_hosts` spells
//! them: the scheme and the port are checked (the default port by scheme when none is
//! written), `*.` stands for any subdomain (never the domain itself, never IP addresses).
//! Only the syntax lives here; whether a request goes to an origin is the Wasm wing's rule.

/// One origin a plugin may call: a scheme, a host (or every subdomain of a domain) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lowercase; for `*.example.com`, `.example.com`.
    pub host: String,
    /// Whether `host` is a `*.` suffix.
    pub wildcard: bool,
    /// The port, written or the scheme's default.
    pub port: u16,
}

impl Origin {
    /// Parses an origin as written in `http = [...]`; the error says what is wrong in one
    /// line, with the fix.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("'{text}' is not an origin: write it like \"https://api.example.com\""));
        };
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("'{text}': the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "'{text}': an origin has no path or query; grant \"{scheme}://{}\"",
                authority.split(['/', '?', '#']).next().unwrap_or_default()
            ));
        }
        if authority.contains('@') {
            return Err(format!("'{text}': an origin carries no user or password"));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("'{text}': the port must be 1 to 65535"))?;
        let port = port.unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("'{text}' names no host"));
        }
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(domain) => (format!(".{domain}"), true),
            None => (host, false),
        };
        let name = host.trim_start_matches('.');
        if host.contains('*') || name.is_empty() {
            return Err(format!(
                "'{text}': '*' may only open the host, as \"{scheme}://*.example.com\" (every subdomain); grant origins one by one"
            ));
        }
        let ip_literal = name.starts_with('[') && name.ends_with(']');
        if !ip_literal
            && !name
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!("'{text}': '{name}' is not a host name or an IP address"));
        }
        if wildcard && ip_literal {
            return Err(format!("'{text}': '*.' applies to domain names, not IP addresses"));
        }
        if wildcard && name.rsplit('.').next().is_some_and(|last| last.chars().all(|c| c.is_ascii_digit())) {
            return Err(format!(
                "'{text}': '*.' over numeric labels would match IP addresses; grant each address literally, as \"{scheme}://127.0.0.1:8080\""
            ));
        }
        Ok(Origin { scheme, host, wildcard, port })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*" } else { "" };
        write!(f, "{}://{star}{}:{}", self.scheme, self.host, self.port)
    }
}

/// `host[:port]` (IPv6 literals in brackets) → the host and the port, if one is written;
/// `None` for a port that is not 1..=65535.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    match port {
        None => Some((host, None)),
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).map(|p| (host, Some(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::Origin;

    #[test]
    fn bad_origins_say_what_is_wrong() {
        let error = |text: &str| Origin::parse(text).unwrap_err();
        assert!(error("api.example.com").contains("write it like \"https://api.example.com\""));
        assert!(error("ftp://example.com").contains("scheme must be http or https"));
        assert!(error("https://example.com/v1").contains("grant \"https://example.com\""));
        assert!(error("https://example.com:0").contains("port must be 1 to 65535"));
        assert!(error("https://example.com:99999").contains("port must be 1 to 65535"));
        assert!(error("https://*").contains("grant origins one by one"));
        assert!(error("https://api.*.com").contains("'*' may only open the host"));
        assert!(error("https://user:pw@example.com").contains("no user or password"));
        assert!(error("https://exa mple.com").contains("not a host name"));
        assert!(error("https://").contains("names no host"));
        assert!(error("https://*.[::1]").contains("not IP addresses"));
    }
}
