//! The outbound address guard of durable HTTP (and of the Entra ID token client):
//! orchestration input decides where the sidecar connects, so by default the sidecar
//! refuses every destination that is not the public internet — loopback (where Duro's own
//! management API listens), private ranges (10/8, 172.16/12, 192.168/16, fc00::/7),
//! link-local (169.254/16, fe80::/10: every cloud's instance-metadata service), CGNAT
//! (100.64/10), `0.0.0.0/8` and `::`, the Azure WireServer (168.63.129.16), NAT64
//! local-use (64:ff9b:1::/48) and the well-known metadata host names — whatever route leads
//! there: an IP literal in the URL, a host name resolving to one (every resolved address
//! is checked, and the connection uses exactly the checked addresses, so DNS rebinding
//! cannot slip past), an IPv4 address embedded in IPv6 (mapped, compatible, NAT64, 6to4),
//! or a redirect hop (redirects are followed by `mod.rs` itself, hop by hop).
//!
//! The operator opens what the deployment needs with `--http-allow` ([`Allow`]): CIDRs or
//! IPs (an address inside one is allowed, also when embedded in IPv6) and host names (an
//! allowed name is connected to whatever it resolves to). The managed identity endpoints
//! (IMDS, App Service) are the operator's own configuration and are not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use thiserror::Error;
use url::{Host, Url};

/// Host names of instance-metadata services (compared lower-case, without a trailing dot).
const METADATA_HOSTS: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
];

/// A refused destination.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "refusing to connect to {target}: {reason} (durable HTTP refuses loopback, private, link-local and metadata \
     addresses unless the operator allows them with --http-allow)"
)]
pub struct Blocked {
    pub target: String,
    pub reason: &'static str,
}

/// Destinations the operator allows despite the guard (`--http-allow`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    nets: Vec<IpNet>,
    /// Lower-case, without a trailing dot.
    hosts: Vec<String>,
}

impl Allow {
    /// Parses `--http-allow` entries: CIDRs (`10.0.0.0/8`), IPs (`127.0.0.1`, `::1`) or
    /// host names (`localhost`, `api.internal`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allow, String> {
        let mut allow = Allow::default();
        for e in entries {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            let e = e.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(e);
            if let Ok(net) = e.parse::<IpNet>() {
                allow.nets.push(net.trunc());
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                allow.nets.push(IpNet::from(ip));
            } else if e.contains('/') || e.contains(':') || !is_host_name(e) {
                return Err(format!("'{e}' is neither a CIDR (10.0.0.0/8), an IP address nor a host name"));
            } else {
                allow.hosts.push(e.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        Ok(allow)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(&v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.nets.iter().any(|n| n.contains(&ip) || embedded.is_some_and(|e| n.contains(&e)))
    }

    fn allows_host(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&h)
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.hosts.is_empty()
    }
}

/// A DNS name as `--http-allow` accepts it: labels of letters, digits, `-` and `_`.
fn is_host_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Why `ip` is refused by default, if it is.
pub fn classify_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return Some("loopback address (Duro's own management API listens there)");
            }
            if v6.is_unspecified() {
                return Some("unspecified address (reaches this host)");
            }
            let s = v6.segments();
            // NAT64 local-use prefix: translates to whatever the local translator picks.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return Some("NAT64 local-use address (64:ff9b:1::/48)");
            }
            if let Some(v4) = embedded_ipv4(&v6) {
                return classify_v4(v4);
            }
            if (s[0] & 0xffc0) == 0xfe80 {
                return Some("link-local IPv6 address (fe80::/10)");
            }
            if (s[0] & 0xffc0) == 0xfec0 {
                return Some("site-local IPv6 address (fec0::/10)");
            }
            if (s[0] & 0xfe00) == 0xfc00 {
                return Some("private (unique local) IPv6 address (fc00::/7)");
            }
            if (s[0] & 0xff00) == 0xff00 {
                return Some("multicast address");
            }
            None
        }
    }
}

/// The IPv4 address an IPv6 address reaches: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 well-known prefix (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`).
fn embedded_ipv4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        return Some("loopback address (Duro's own management API listens there)");
    }
    if o[0] == 0 {
        return Some("this-network address (0.0.0.0/8 reaches this host)");
    }
    if ip.is_link_local() {
        return Some("link-local address (169.254.0.0/16, instance metadata)");
    }
    if ip == Ipv4Addr::new(168, 63, 129, 16) {
        return Some("Azure WireServer address (168.63.129.16)");
    }
    if ip.is_private() {
        return Some("private address (10/8, 172.16/12, 192.168/16)");
    }
    // 100.64.0.0/10; Alibaba Cloud's metadata service (100.100.100.200) is inside it.
    if o[0] == 100 && (o[1] & 0xc0) == 64 {
        return Some("shared (CGNAT) address (100.64.0.0/10)");
    }
    if ip.is_broadcast() || ip.is_multicast() {
        return Some("broadcast or multicast address");
    }
    None
}

/// Why `ip` is refused under `allow`, if it is.
pub fn blocked_ip(ip: IpAddr, allow: &Allow) -> Option<&'static str> {
    if allow.allows_ip(ip) {
        return None;
    }
    classify_ip(ip)
}

/// Why host name `host` is refused under `allow` before resolution, if it is.
pub fn blocked_host_name(host: &str, allow: &Allow) -> Option<&'static str> {
    if allow.allows_host(host) {
        return None;
    }
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    // `localhost` follows loopback: allowed when the operator allows 127.0.0.1 or ::1.
    let loopback_allowed =
        allow.allows_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)) || allow.allows_ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    if (h == "localhost" || h.ends_with(".localhost")) && !loopback_allowed {
        return Some("loopback host name");
    }
    METADATA_HOSTS.contains(&h.as_str()).then_some("cloud metadata host name")
}

/// Checks what can be checked without DNS: IP-literal hosts and special names.
pub fn check_url(url: &Url, allow: &Allow) -> Result<(), Blocked> {
    let target = || display_url(url);
    let reason = match url.host() {
        None => Some("URL has no host"),
        Some(Host::Ipv4(ip)) => blocked_ip(IpAddr::V4(ip), allow),
        Some(Host::Ipv6(ip)) => blocked_ip(IpAddr::V6(ip), allow),
        Some(Host::Domain(name)) => blocked_host_name(name, allow),
    };
    match reason {
        Some(reason) => Err(Blocked { target: target(), reason }),
        None => Ok(()),
    }
}

/// Whether `url`'s host is a loopback address or `localhost` (secrets may travel there in
/// clear text).
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// Checks every address a host name resolved to: one bad address refuses the host.
pub fn check_resolved(host: &str, addrs: &[SocketAddr], allow: &Allow) -> Result<(), Blocked> {
    if allow.allows_host(host) {
        return Ok(());
    }
    for a in addrs {
        if let Some(reason) = blocked_ip(a.ip(), allow) {
            return Err(Blocked { target: format!("{host} (resolves to {})", a.ip()), reason });
        }
    }
    Ok(())
}

/// A URL for messages and logs: no user info, no query (both may carry secrets, such as a
/// Functions `code=` key).
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let had_query = u.query().is_some_and(|q| !q.is_empty());
    u.set_query(None);
    u.set_fragment(None);
    let mut s = u.to_string();
    if had_query {
        s.push_str("?…");
    }
    s
}

/// The DNS resolver of the guarded clients: the system resolver, then the guard.
#[derive(Debug, Default, Clone)]
pub struct GuardedResolver {
    pub allow: Arc<Allow>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow = self.allow.clone();
        Box::pin(async move {
            if let Some(reason) = blocked_host_name(&host, &allow) {
                return Err(Box::new(Blocked { target: host, reason }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check_resolved(&host, &addrs, &allow).map_err(Box::new)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`Blocked`] error somewhere in `err`'s source chain (a refused redirect or resolution).
pub fn find_blocked(err: &(dyn std::error::Error + 'static)) -> Option<Blocked> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn none() -> Allow {
        Allow::default()
    }

    #[test]
    fn classifies_addresses() {
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "168.63.129.16",
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fd00::1",
            "fc00::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::8.8.8.8",
            "2002:7f00:1::",
            "fd00:ec2::254",
        ] {
            assert!(blocked_ip(ip(bad), &none()).is_some(), "{bad} should be blocked");
        }
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "169.253.255.255",
            "169.255.0.0",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "2001:db8::1",
            "2606:4700::1111",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(blocked_ip(ip(ok), &none()).is_none(), "{ok} should be allowed");
        }
    }

    #[test]
    fn the_operator_allow_list_opens_addresses_and_names() {
        let a = Allow::parse(&["127.0.0.0/8", "10.1.0.0/16", "::1", "[fd00::5]", "api.internal."]).expect("parse");
        assert!(blocked_ip(ip("127.0.0.2"), &a).is_none());
        assert!(blocked_ip(ip("::ffff:127.0.0.1"), &a).is_none(), "embedded v4 matches");
        assert!(blocked_ip(ip("10.1.9.9"), &a).is_none());
        assert!(blocked_ip(ip("10.2.0.1"), &a).is_some());
        assert!(blocked_ip(ip("::1"), &a).is_none());
        assert!(blocked_ip(ip("fd00::5"), &a).is_none());
        assert!(blocked_ip(ip("fd00::6"), &a).is_some());
        assert!(blocked_ip(ip("169.254.169.254"), &a).is_some());
        assert!(blocked_host_name("API.internal", &a).is_none());
        assert!(blocked_host_name("localhost", &a).is_none());
        let r: SocketAddr = "10.9.9.9:0".parse().expect("addr");
        assert!(check_resolved("api.internal", &[r], &a).is_ok(), "an allowed name may resolve anywhere");
        assert!(check_resolved("other.example", &[r], &a).is_err());
        assert!(Allow::parse(&["10.0.0.0/33"]).is_err());
        assert!(Allow::parse(&["http://x/"]).is_err());
        assert!(Allow::parse(&[" "]).expect("empty").is_empty());
    }

    #[test]
    fn checks_urls_before_dns() {
        let check = |u: &str| check_url(&Url::parse(u).expect("url"), &none());
        assert!(check("http://169.254.169.254/metadata/identity/oauth2/token").is_err());
        // WHATWG host parsing normalizes decimal/octal/hex IPv4 spellings.
        assert!(check("http://2852039166/").is_err());
        assert!(check("http://0251.0376.0251.0376/").is_err());
        assert!(check("http://0xa9fea9fe/").is_err());
        assert!(check("http://2130706433/").is_err(), "127.0.0.1 in decimal");
        assert!(check("http://[fe80::1]:8080/").is_err());
        assert!(check("http://[::ffff:a9fe:a9fe]/").is_err());
        assert!(check("http://metadata.google.internal/computeMetadata/v1/").is_err());
        assert!(check("http://METADATA.google.internal./").is_err());
        assert!(check("http://127.0.0.1:8080/x").is_err());
        assert!(check("http://localhost/").is_err());
        assert!(check("http://a.localhost/").is_err());
        assert!(check("https://management.azure.com/x").is_ok());
        let e = check("http://169.254.169.254/").expect_err("blocked");
        assert!(e.to_string().contains("169.254.169.254") && e.to_string().contains("--http-allow"), "{e}");
    }

    #[test]
    fn checks_every_resolved_address() {
        let a: SocketAddr = "8.8.8.8:0".parse().expect("addr");
        let b: SocketAddr = "169.254.169.254:0".parse().expect("addr");
        assert!(check_resolved("ok.example", &[a], &none()).is_ok());
        let e = check_resolved("rebind.example", &[a, b], &none()).expect_err("one bad address refuses the host");
        assert!(e.target.contains("rebind.example") && e.target.contains("169.254.169.254"));
    }

    #[test]
    fn display_url_hides_secrets() {
        let u = Url::parse("https://user:pw@host.example:8443/a/b?code=SECRET#frag").expect("url");
        assert_eq!(display_url(&u), "https://host.example:8443/a/b?…");
        let u = Url::parse("http://host.example/a").expect("url");
        assert_eq!(display_url(&u), "http://host.example/a");
    }

    #[test]
    fn finds_blocked_in_error_chain() {
        #[derive(Debug, Error)]
        #[error("outer")]
        struct Outer(#[source] Blocked);
        let b = Blocked { target: "x".into(), reason: "r" };
        assert_eq!(find_blocked(&Outer(b.clone())), Some(b));
        assert_eq!(find_blocked(&std::io::Error::other("no")), None);
    }
}
