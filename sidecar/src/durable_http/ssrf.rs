//! SSRF guard for durable HTTP: orchestration input decides where the sidecar connects, so
//! the sidecar refuses the addresses that hand out credentials — link-local (169.254.0.0/16,
//! fe80::/10, where every cloud's instance-metadata service lives) and the well-known
//! metadata host names — whatever route leads there: an IP literal in the URL, a host name
//! resolving to one (every resolved address is checked, and the connection uses exactly the
//! checked addresses, so DNS rebinding cannot slip past), or a redirect hop.
//!
//! Loopback and private ranges stay allowed: sidecars talk to their neighbours. The token
//! client (`tokens.rs`) does not go through this guard; it only ever talks to the identity
//! endpoint the operator configured.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
#[error("refusing to connect to {target}: {reason} (Duro blocks link-local and cloud metadata addresses for durable HTTP)")]
pub struct Blocked {
    pub target: String,
    pub reason: &'static str,
}

/// Why `ip` is refused, if it is.
pub fn blocked_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64
            // (64:ff9b::a.b.c.d) addresses reach the embedded IPv4 address.
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                return blocked_v4(embedded_v4(&v6));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return blocked_v4(embedded_v4(&v6));
            }
            if (s[0] & 0xffc0) == 0xfe80 {
                return Some("link-local IPv6 address (fe80::/10)");
            }
            // AWS's IPv6 instance-metadata endpoint.
            if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
                return Some("cloud metadata address");
            }
            None
        }
    }
}

fn embedded_v4(v6: &Ipv6Addr) -> Ipv4Addr {
    let o = v6.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_link_local() {
        return Some("link-local address (169.254.0.0/16, instance metadata)");
    }
    // Alibaba Cloud's metadata service sits outside the link-local range.
    if ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some("cloud metadata address");
    }
    None
}

/// Why host name `host` is refused, if it is.
pub fn blocked_host_name(host: &str) -> Option<&'static str> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    METADATA_HOSTS
        .contains(&h.as_str())
        .then_some("cloud metadata host name")
}

/// Checks what can be checked without DNS: scheme, IP-literal hosts and metadata names.
pub fn check_url(url: &Url) -> Result<(), Blocked> {
    let target = || display_url(url);
    match url.host() {
        None => Err(Blocked {
            target: target(),
            reason: "URL has no host",
        }),
        Some(Host::Ipv4(ip)) => match blocked_ip(IpAddr::V4(ip)) {
            Some(reason) => Err(Blocked {
                target: target(),
                reason,
            }),
            None => Ok(()),
        },
        Some(Host::Ipv6(ip)) => match blocked_ip(IpAddr::V6(ip)) {
            Some(reason) => Err(Blocked {
                target: target(),
                reason,
            }),
            None => Ok(()),
        },
        Some(Host::Domain(name)) => match blocked_host_name(name) {
            Some(reason) => Err(Blocked {
                target: target(),
                reason,
            }),
            None => Ok(()),
        },
    }
}

/// Checks every address a host name resolved to: one bad address refuses the host.
pub fn check_resolved(host: &str, addrs: &[SocketAddr]) -> Result<(), Blocked> {
    for a in addrs {
        if let Some(reason) = blocked_ip(a.ip()) {
            return Err(Blocked {
                target: format!("{host} (resolves to {})", a.ip()),
                reason,
            });
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

/// The DNS resolver of the durable HTTP client: the system resolver, then the guard.
#[derive(Debug, Default, Clone)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            if let Some(reason) = blocked_host_name(&host) {
                return Err(Box::new(Blocked {
                    target: host,
                    reason,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check_resolved(&host, &addrs).map_err(Box::new)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The redirect policy: at most `max_hops`, never from HTTPS to HTTP, every hop checked.
/// (Host names of later hops are checked again by [`GuardedResolver`] when connecting.)
pub fn redirect_policy(max_hops: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_hops {
            return attempt.error(format!("more than {max_hops} redirects"));
        }
        let next = attempt.url();
        if !matches!(next.scheme(), "http" | "https") {
            let msg = format!("redirect to unsupported scheme '{}'", next.scheme());
            return attempt.error(msg);
        }
        if attempt
            .previous()
            .last()
            .is_some_and(|p| p.scheme() == "https")
            && next.scheme() == "http"
        {
            return attempt.error("redirect from https to http refused");
        }
        match check_url(next) {
            Ok(()) => attempt.follow(),
            Err(b) => attempt.error(b),
        }
    })
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

    #[test]
    fn classifies_addresses() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "169.254.255.255",
            "100.100.100.200",
            "fe80::1",
            "febf::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "fd00:ec2::254",
        ] {
            assert!(blocked_ip(ip(bad)).is_some(), "{bad} should be blocked");
        }
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "8.8.8.8",
            "169.253.255.255",
            "169.255.0.0",
            "::1",
            "::",
            "fec0::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(blocked_ip(ip(ok)).is_none(), "{ok} should be allowed");
        }
    }

    #[test]
    fn checks_urls_before_dns() {
        let check = |u: &str| check_url(&Url::parse(u).expect("url"));
        assert!(check("http://169.254.169.254/metadata/identity/oauth2/token").is_err());
        // WHATWG host parsing normalizes decimal/octal/hex IPv4 spellings.
        assert!(check("http://2852039166/").is_err());
        assert!(check("http://0251.0376.0251.0376/").is_err());
        assert!(check("http://0xa9fea9fe/").is_err());
        assert!(check("http://[fe80::1]:8080/").is_err());
        assert!(check("http://[::ffff:a9fe:a9fe]/").is_err());
        assert!(check("http://metadata.google.internal/computeMetadata/v1/").is_err());
        assert!(check("http://METADATA.google.internal./").is_err());
        assert!(check("http://127.0.0.1:8080/x").is_ok());
        assert!(check("http://localhost/").is_ok());
        assert!(check("https://management.azure.com/x").is_ok());
        let e = check("http://169.254.169.254/").expect_err("blocked");
        assert!(e.to_string().contains("169.254.169.254"), "{e}");
    }

    #[test]
    fn checks_every_resolved_address() {
        let a: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let b: SocketAddr = "169.254.169.254:0".parse().expect("addr");
        assert!(check_resolved("ok.example", &[a]).is_ok());
        let e = check_resolved("rebind.example", &[a, b])
            .expect_err("one bad address refuses the host");
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
        let b = Blocked {
            target: "x".into(),
            reason: "r",
        };
        assert_eq!(find_blocked(&Outer(b.clone())), Some(b));
        assert_eq!(find_blocked(&std::io::Error::other("no")), None);
    }
}
