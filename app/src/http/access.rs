//! Extractors that state in a handler's signature what its caller needs:
//! [`ReadAccess`], [`WriteAccess`] or [`AdminAccess`] (a credential with
//! that scope), or [`Peer`] (the caller's address). They only read the
//! request; `crate::auth::Authenticator` decides, and its refusals become
//! answers in `error.rs`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;

/// The caller's address (its IP), or `unknown` when the server was not
/// started with connect info. Failed attempts are counted under it and IP
/// allow-lists check it. It is the socket's peer, except when that peer is
/// one of `KARVON_TRUSTED_PROXIES`: then the client the proxy names in
/// `X-Forwarded-For` (else `Forwarded: for=`) — the nearest address in
/// the chain that is not itself a trusted proxy.
pub struct Peer(pub String);

impl FromRequestParts<AppState> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_address(parts, &state.trusted_proxies)))
    }
}

fn peer_address(parts: &Parts, trusted: &[IpNet]) -> String {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => {
            client_address(address.ip(), &parts.headers, trusted).to_string()
        }
        None => "unknown".to_string(),
    }
}

/// The client behind `socket`: `socket` itself unless it is a trusted
/// proxy; then the last address of the forwarding chain that is not a
/// trusted proxy (the proxy appends what it saw, so addresses further
/// left are the client's own claims). An unreadable chain answers the
/// socket's address.
pub fn client_address(socket: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|range| range.contains(address));
    if !is_trusted(&socket) {
        return socket;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    let forwarded_for: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if !forwarded_for.is_empty() {
        for item in forwarded_for.iter().flat_map(|value| value.split(',')) {
            match parse_forwarded_address(item) {
                Some(address) => chain.push(address),
                None => return socket,
            }
        }
    } else {
        for value in headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|value| value.to_str().ok())
        {
            for element in value.split(',') {
                for pair in element.split(';') {
                    let Some((name, value)) = pair.trim().split_once('=') else {
                        continue;
                    };
                    if name.trim().eq_ignore_ascii_case("for") {
                        match parse_forwarded_address(value) {
                            Some(address) => chain.push(address),
                            None => return socket,
                        }
                    }
                }
            }
        }
    }
    let mut client = socket;
    for address in chain.into_iter().rev() {
        client = address;
        if !is_trusted(&address) {
            break;
        }
    }
    client
}

/// `203.0.113.7`, `"[2001:db8::1]:4711"`, `203.0.113.7:80` → the address.
fn parse_forwarded_address(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let inner = text.strip_prefix('[')?;
    inner.split(']').next()?.parse().ok()
}

/// The credential of `Authorization: Bearer <credential>`, if any.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
}

macro_rules! access {
    ($name:ident, $scope:literal) => {
        #[doc = concat!("A caller holding the `", $scope, "` scope.")]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let principal = state
                    .auth
                    .authorize(
                        bearer(parts),
                        &peer_address(parts, &state.trusted_proxies),
                        $scope,
                    )
                    .await?;
                Ok(Self(principal))
            }
        }
    };
}

access!(ReadAccess, "read");
access!(WriteAccess, "write");
access!(AdminAccess, "admin");
access!(OperatorAccess, "operator");

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header"));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let forwarded = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7")]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("192.0.2.1"), &forwarded, &proxies),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(ip("10.1.2.3"), &forwarded, &[]),
            ip("10.1.2.3")
        );
        // Behind a trusted proxy: the address it appended, not the
        // client's own claim further left.
        assert_eq!(
            client_address(ip("10.1.2.3"), &forwarded, &proxies),
            ip("203.0.113.7")
        );
        // Chained trusted proxies are skipped.
        let chained = headers(&[("x-forwarded-for", "203.0.113.7, 10.9.9.9")]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &chained, &proxies),
            ip("203.0.113.7")
        );
        // RFC 7239 `Forwarded`, with a port and IPv6.
        let rfc = headers(&[("forwarded", r#"for="[2001:db8::1]:4711";proto=https"#)]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &rfc, &proxies),
            ip("2001:db8::1")
        );
        let rfc4 = headers(&[("forwarded", "for=203.0.113.8:80, for=10.2.2.2")]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &rfc4, &proxies),
            ip("203.0.113.8")
        );
        // Garbage in the chain: the socket's address.
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &garbage, &proxies),
            ip("10.1.2.3")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.1.2.3"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
    }
}
