//! Where requests may come from. A `Host` must name this appliance (its
//! name, `<name>.local`, `localhost`) or be an IP literal, so a web page
//! whose name an attacker re-points at the appliance (DNS rebinding) is
//! refused. A state-changing request from a browser must say, in `Origin`
//! (or `Referer`), that it comes from a page of the same origin; one that
//! carries a session cookie and says nothing is refused too. Scripts with
//! the bearer token are not asked.

use axum::http::{HeaderMap, Method, header};

use super::server::Transport;

/// The names this appliance answers to, lower case.
#[derive(Debug, Clone)]
pub(super) struct Names(Vec<String>);

impl Names {
    /// The names of the appliance called `name`.
    pub(super) fn of(name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        Self(vec![format!("{name}.local"), name, "localhost".into()])
    }

    /// Whether a `Host` value (`name[:port]`, `IP[:port]`, `[IPv6][:port]`)
    /// names this appliance.
    pub(super) fn admit(&self, host: &str) -> bool {
        let Some(bare) = without_port(host) else {
            return false;
        };
        if let Some(v6) = bare
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        if bare.parse::<std::net::Ipv4Addr>().is_ok() {
            return true;
        }
        let bare = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
        self.0.contains(&bare)
    }
}

/// The host of an authority, without its port; `None` when the port part
/// is not a number or a bare IPv6 address has no brackets.
fn without_port(authority: &str) -> Option<&str> {
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            (&authority[..colon], Some(&authority[colon + 1..]))
        }
        _ => (authority, None),
    };
    let port_ok = port.is_none_or(|port| !port.is_empty() && port.parse::<u16>().is_ok());
    (port_ok && !host.is_empty() && (host.starts_with('[') || !host.contains(':'))).then_some(host)
}

/// Whether `method` changes something.
pub(super) fn changes_state(method: &Method) -> bool {
    ![Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// Why a state-changing request is refused as cross-origin, if it is:
/// its `Origin` (else `Referer`) must be this scheme and `Host`; without
/// either, only a request without a session cookie passes.
pub(super) fn cross_origin(
    headers: &HeaderMap,
    transport: Transport,
    with_session: bool,
) -> Option<&'static str> {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let scheme = match transport {
        Transport::Plain => "http",
        Transport::Tls => "https",
    };
    let expected = format!("{scheme}://{}", text(header::HOST)?).to_ascii_lowercase();
    let said = match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) => Some(origin.to_ascii_lowercase()),
        (None, Some(referer)) => Some(
            url::Url::parse(referer)
                .map(|url| url.origin().ascii_serialization())
                .unwrap_or_default(),
        ),
        (None, None) => None,
    };
    match said {
        Some(origin) if origin == expected => None,
        Some(_) => Some("the request comes from another site (Origin or Referer)"),
        None if with_session => {
            Some("a change made with a session cookie needs an Origin or Referer header")
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn hosts_are_the_appliance_names_or_ip_literals() {
        let names = Names::of("Kitchen");
        for host in [
            "kitchen",
            "KITCHEN.local",
            "kitchen.local.",
            "kitchen:8443",
            "localhost:8053",
            "192.0.2.4",
            "192.0.2.4:443",
            "[::1]",
            "[fe80::1]:443",
        ] {
            assert!(names.admit(host), "{host}");
        }
        for host in [
            "evil.example",
            "kitchen.evil.example",
            "kitchen:",
            "kitchen:http",
            "kitchen:99999",
            "::1",
            "[not-v6]",
            "",
            "192.0.2.4.nip.io",
        ] {
            assert!(!names.admit(host), "{host}");
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn changes_need_an_origin_of_the_same_scheme_and_host() {
        let host = (header::HOST, "kitchen.local");
        let same = headers(&[host.clone(), (header::ORIGIN, "https://kitchen.local")]);
        assert_eq!(cross_origin(&same, Transport::Tls, true), None);
        assert!(
            cross_origin(&same, Transport::Plain, true).is_some(),
            "scheme"
        );
        let other = headers(&[host.clone(), (header::ORIGIN, "https://evil.example")]);
        assert!(cross_origin(&other, Transport::Tls, false).is_some());
        let null = headers(&[host.clone(), (header::ORIGIN, "null")]);
        assert!(cross_origin(&null, Transport::Tls, false).is_some());
        let referer = headers(&[
            host.clone(),
            (header::REFERER, "https://kitchen.local/#fleet"),
        ]);
        assert_eq!(cross_origin(&referer, Transport::Tls, true), None);
        let bad_referer = headers(&[host.clone(), (header::REFERER, "https://evil.example/")]);
        assert!(cross_origin(&bad_referer, Transport::Tls, true).is_some());
        let silent = headers(&[host]);
        assert!(cross_origin(&silent, Transport::Tls, true).is_some());
        assert_eq!(
            cross_origin(&silent, Transport::Tls, false),
            None,
            "no cookie, nothing to ride on"
        );
        assert!(changes_state(&Method::POST) && changes_state(&Method::DELETE));
        assert!(!changes_state(&Method::GET));
    }
}
