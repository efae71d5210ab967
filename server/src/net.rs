//! Address ranges (CIDR) and the client address behind trusted proxies.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn contains(&self, addr: IpAddr) -> bool {
        // An IPv4 peer seen through an IPv6 socket is still that IPv4 address.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        self.0.contains(&addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parsed in two steps (address, then prefix) to say which part is wrong, and so that
    /// a bare address is accepted as a single-host network.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0 to {max}"))?,
        };
        IpNet::new(network, prefix)
            .map(Cidr)
            .map_err(|_| format!("{s:?}: prefix must be 0 to {max}"))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The address as given (host bits kept), as it was stored.
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

/// The address a request came from. Forwarding headers count only when the peer is a
/// trusted proxy, and then only the hop after the last trusted proxy: everything before it
/// was written by the client and proves nothing.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[Cidr]) -> IpAddr {
    let trusted = |a: IpAddr| trusted_proxies.iter().any(|c| c.contains(a));
    if !trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        if let Ok(text) = value.to_str() {
            hops.extend(
                text.split(',')
                    .filter_map(|h| h.trim().parse::<IpAddr>().ok()),
            );
        }
    }
    if hops.is_empty() {
        for value in headers.get_all("forwarded") {
            let Ok(text) = value.to_str() else { continue };
            for element in text.split(',') {
                for pair in element.split(';') {
                    if let Some(v) = pair
                        .trim()
                        .strip_prefix("for=")
                        .or_else(|| pair.trim().strip_prefix("For="))
                    {
                        let v = v.trim_matches('"');
                        let v = v
                            .strip_prefix('[')
                            .and_then(|v| v.split(']').next())
                            .unwrap_or(v);
                        let v = if v.matches(':').count() == 1 {
                            v.split(':').next().unwrap_or(v)
                        } else {
                            v
                        };
                        if let Ok(a) = v.parse() {
                            hops.push(a);
                        }
                    }
                }
            }
        }
    }
    // Walk back from the proxy: the first address that is not a trusted proxy is the client.
    hops.into_iter()
        .rev()
        .find(|a| !trusted(*a))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_edges_both_families() {
        let table = [
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("192.168.1.0/24", "192.168.1.0", true),
            ("192.168.1.0/24", "192.168.2.0", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "::1", true),
            ("::1", "::1", true),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
        ];
        for (net, addr, expected) in table {
            assert_eq!(
                c(net).contains(addr.parse().unwrap()),
                expected,
                "{net} ∋ {addr}"
            );
        }
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "10.0.0/8", "1.2.3.4/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_address(stranger, &headers, &[c("127.0.0.1")]),
            stranger
        );
        assert_eq!(client_address(proxy, &headers, &[]), proxy);
        assert_eq!(
            client_address(proxy, &headers, &[c("127.0.0.1")]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Two trusted proxies in a row: the hop before them counts.
        assert_eq!(
            client_address(proxy, &headers, &[c("127.0.0.1"), c("203.0.113.0/24")]),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "forwarded",
            "for=\"[2001:db8::5]:4711\";proto=https".parse().unwrap(),
        );
        assert_eq!(
            client_address(proxy, &forwarded, &[c("127.0.0.1")]),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }
}
