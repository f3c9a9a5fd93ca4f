//! The client address behind a reverse proxy (`--trusted-proxy`).
//!
//! A request's client address is the TCP peer, unless the peer is one of
//! the [`TrustedProxies`]: then it is read from the header the proxy
//! wrote, `X-Forwarded-For` (or, when that is absent, RFC 7239
//! `Forwarded: for=`). Both headers are lists a request may already carry
//! when it reaches the proxy, so anyone can write their left end; only the
//! entries appended by trusted proxies can be believed. The list is walked
//! from the right, trusted addresses are skipped, and the first untrusted
//! one is the client. An entry that is not an address, met before that, is
//! a proxy's mistake: the header is ignored and the proxy's own address is
//! used, so such requests share one bucket rather than choose their own.
//! From a peer that is not a trusted proxy both headers are ignored
//! entirely, so nothing but a trusted proxy can put an address in them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;

/// The networks whose connections are reverse proxies, trusted to say who
/// their client is. Empty by default: no header is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A `--trusted-proxy` value that is neither a CIDR nor an address.
#[derive(Debug, thiserror::Error)]
#[error("not an IP network (CIDR such as 10.0.0.0/8 or fd00::/8) or address: {0:?}")]
pub struct BadCidr(String);

/// One trusted network: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single
/// address (`10.0.0.5`, as `/32` or `/128`). Host bits are dropped
/// (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyNet(IpNet);

impl FromStr for ProxyNet {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self(canonical_net(net).trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip.to_canonical())))
            .map_err(|_| BadCidr(s.to_owned()))
    }
}

impl fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `::ffff:10.0.0.0/104` as `10.0.0.0/8`, so that it matches the
/// canonical addresses it is compared with.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(nets: impl IntoIterator<Item = ProxyNet>) -> Self {
        Self {
            nets: nets.into_iter().map(|n| n.0).collect(),
        }
    }

    /// Parses each string as a [`ProxyNet`].
    pub fn parse<S: AsRef<str>>(nets: impl IntoIterator<Item = S>) -> Result<Self, BadCidr> {
        nets.into_iter()
            .map(|s| s.as_ref().parse::<ProxyNet>())
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that came from `peer` with
    /// `headers` (see the module docs).
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !self.contains(peer_ip) {
            return peer_ip;
        }
        let forwarded_for = joined(headers, "x-forwarded-for");
        let chain = match &forwarded_for {
            Some(list) => parse_x_forwarded_for(list),
            None => match joined(headers, "forwarded") {
                Some(list) => parse_forwarded(&list),
                None => return peer_ip,
            },
        };
        let Some(chain) = chain else {
            tracing::debug!(%peer, "malformed forwarding header from a trusted proxy: ignored");
            return peer_ip;
        };
        self.walk(peer_ip, &chain)
    }

    /// From the right: the first address that is not a trusted proxy. A
    /// `None` (not an address) before it makes the chain unusable.
    fn walk(&self, peer_ip: IpAddr, chain: &[Option<IpAddr>]) -> IpAddr {
        let mut leftmost = peer_ip;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) if self.contains(*ip) => leftmost = *ip,
                Some(ip) => return *ip,
                None => {
                    tracing::debug!(
                        peer = %peer_ip,
                        "a forwarding header names no address where a proxy wrote: ignored"
                    );
                    return peer_ip;
                }
            }
        }
        // Every hop is a trusted proxy: the request began at the leftmost.
        leftmost
    }
}

/// All values of header `name` as one comma-separated list (a header may
/// be sent several times; RFC 9110 5.3), or `None` when absent. Bytes
/// that are not text become U+FFFD: they spoil only the entry they are in,
/// which a client may have written to the left of what the proxy appended.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        match &mut out {
            Some(list) => {
                list.push(',');
                list.push_str(&text);
            }
            None => out = Some(text.into_owned()),
        }
    }
    out
}

/// `X-Forwarded-For: client, proxy1, proxy2`: one entry per hop, `None`
/// for an entry that is not an address; `None` in all when empty.
fn parse_x_forwarded_for(list: &str) -> Option<Vec<Option<IpAddr>>> {
    let hops: Vec<Option<IpAddr>> = list.split(',').map(|e| parse_node(e.trim())).collect();
    (!list.trim().is_empty()).then_some(hops)
}

/// RFC 7239 `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`:
/// one entry per element, its `for=` node; `None` for an element without
/// one, or whose node is `unknown`, obfuscated (`_hidden`) or broken.
fn parse_forwarded(list: &str) -> Option<Vec<Option<IpAddr>>> {
    if list.trim().is_empty() {
        return None;
    }
    let mut hops = Vec::new();
    for element in split_unquoted(list, ',') {
        let mut node = None;
        for pair in split_unquoted(element, ';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("for") {
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                node = parse_node(value);
            }
        }
        hops.push(node);
    }
    Some(hops)
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// One hop's address: `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711` (the port is dropped).
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok
            .then(|| inside.parse::<Ipv6Addr>().ok())
            .flatten()
            .map(|v6| IpAddr::V6(v6).to_canonical());
    }
    let (host, port) = s.split_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(nets).expect("nets")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn client(t: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        t.client_addr(peer.parse().expect("peer"), &map)
    }

    #[test]
    fn parses_cidrs_and_addresses() {
        let t = trusted(&[
            "10.0.0.0/8",
            "192.168.1.7",
            "fd00::/8",
            "::1",
            "10.9.9.9/16",
        ]);
        assert!(t.contains(ip("10.200.0.1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::5")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "mapped IPv4 matches");
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(trusted(&["::ffff:10.0.0.0/104"]).contains(ip("10.3.3.3")));
        assert!("10.0.0.0/33".parse::<ProxyNet>().is_err());
        assert!("example.com".parse::<ProxyNet>().is_err());
        assert!(TrustedProxies::parse([""]).is_err());
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let t = trusted(&["10.0.0.1"]);
        let h = [("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")];
        assert_eq!(client(&t, "192.0.2.9:5000", &h), ip("192.0.2.9"));
        assert_eq!(
            client(&TrustedProxies::default(), "10.0.0.1:1", &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = "10.0.0.1:4000";
        let xff = |v: &str| client(&t, peer, &[("x-forwarded-for", v)]);
        assert_eq!(xff("203.0.113.5"), ip("203.0.113.5"));
        // The client wrote the left part; the proxies appended the rest.
        assert_eq!(xff("6.6.6.6, 203.0.113.5, 10.0.0.7"), ip("203.0.113.5"));
        // Garbage left of the client is the client's own doing: ignored.
        assert_eq!(xff("nonsense, 203.0.113.5"), ip("203.0.113.5"));
        // Every hop trusted: the leftmost.
        assert_eq!(xff("10.1.1.1, 10.0.0.7"), ip("10.1.1.1"));
        // Ports and brackets.
        assert_eq!(xff("203.0.113.5:1234"), ip("203.0.113.5"));
        assert_eq!(xff("[2001:db8::7]:99"), ip("2001:db8::7"));
        assert_eq!(xff("2001:db8::7"), ip("2001:db8::7"));
        // Malformed where a proxy wrote: the proxy's address.
        for bad in [
            "",
            " ",
            "unknown",
            "203.0.113.5, garbage",
            "1.2.3.4:99999",
            "[::1",
            ",",
        ] {
            assert_eq!(xff(bad), ip("10.0.0.1"), "{bad:?}");
        }
        // Several header lines are one list.
        assert_eq!(
            client(
                &t,
                peer,
                &[
                    ("x-forwarded-for", "203.0.113.5"),
                    ("x-forwarded-for", "10.0.0.3")
                ]
            ),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = "10.0.0.1:4000";
        let fwd = |v: &str| client(&t, peer, &[("forwarded", v)]);
        assert_eq!(
            fwd("for=192.0.2.60;proto=http;by=10.0.0.1"),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd(r#"for="[2001:db8:cafe::17]:4711", for=10.0.0.2"#),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(fwd(r#"For="192.0.2.43:47011""#), ip("192.0.2.43"));
        // A quoted comma stays inside its element.
        assert_eq!(fwd(r#"for=192.0.2.1;x="a,b""#), ip("192.0.2.1"));
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=\"[::1\"",
            "for=1.2.3.4, by=x",
        ] {
            assert_eq!(fwd(bad), ip("10.0.0.1"), "{bad:?}");
        }
        // X-Forwarded-For wins when both are there.
        assert_eq!(
            client(
                &t,
                peer,
                &[
                    ("forwarded", "for=192.0.2.60"),
                    ("x-forwarded-for", "198.51.100.1")
                ]
            ),
            ip("198.51.100.1")
        );
    }
}
