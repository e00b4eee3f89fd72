//! The loopback-only guard: which URLs `ongi-loadtest` may send load to.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::Result;
use url::{Host, Url};

/// A checked loopback target: the addresses to connect to (and no others)
/// and the base URL that routes are appended to.
#[derive(Debug, Clone)]
pub struct Target {
    pub addrs: Vec<SocketAddr>,
    /// `http://host:port/prefix`, without a trailing slash.
    pub base: String,
}

/// Accepts only `http://` URLs whose host is a loopback address or
/// `localhost` resolving to loopback addresses only. The URL is parsed as a
/// browser would (so `http://2130706433` is `127.0.0.1`); IP hosts are
/// checked without any lookup, and no other host name is looked up at all.
pub fn loopback_target(text: &str) -> Result<Target> {
    let refuse = |why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "refusing to load-test {text:?}: {why}; ongi-loadtest only targets loopback servers on this machine \
             (127.0.0.0/8, ::1 or localhost)"
        )
    };
    let url = Url::parse(text).map_err(|e| refuse(format!("not a URL ({e})")))?;
    if url.scheme() != "http" {
        return Err(refuse("only http:// URLs are supported".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("user information in the URL is not allowed".into()));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs = match url.host() {
        Some(Host::Ipv4(ip)) => vec![checked(IpAddr::V4(ip), port).map_err(refuse)?],
        Some(Host::Ipv6(ip)) => vec![checked(IpAddr::V6(ip), port).map_err(refuse)?],
        Some(Host::Domain(host)) if host.eq_ignore_ascii_case("localhost") => {
            let addrs: Vec<SocketAddr> = (host, port)
                .to_socket_addrs()
                .map_err(|e| refuse(format!("cannot resolve localhost: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(refuse("localhost resolves to no address".into()));
            }
            if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
                return Err(refuse(format!(
                    "localhost resolves to {}, which is not a loopback address",
                    bad.ip()
                )));
            }
            addrs
        }
        Some(Host::Domain(host)) => {
            return Err(refuse(format!("host {host:?} is not a loopback address")))
        }
        None => return Err(refuse("no host".into())),
    };
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    Ok(Target {
        addrs,
        base: format!("http://{authority}{}", url.path().trim_end_matches('/')),
    })
}

fn checked(ip: IpAddr, port: u16) -> Result<SocketAddr, String> {
    if is_loopback(ip) {
        Ok(SocketAddr::new(ip, port))
    } else {
        Err(format!("{ip} is not a loopback address"))
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_loopback() {
        for ok in [
            "http://127.0.0.1:8000",
            "http://127.1.2.3:9/base/",
            "http://[::1]:8000",
            "http://[::ffff:127.0.0.1]:8000",
            "http://localhost:8000",
            "http://LOCALHOST",
            // A browser's reading of a bare number: 127.0.0.1.
            "http://2130706433",
        ] {
            loopback_target(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://10.1.2.3:8000",
            "http://example.com",
            "http://0.0.0.0:8000",
            "http://[::]:8000",
            "http://127.0.0.1@example.com:80",
            "http://user:pw@127.0.0.1:80",
            "https://127.0.0.1:8000",
            "127.0.0.1:8000",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://167772161",
            "http://",
        ] {
            let err = loopback_target(bad).expect_err(bad).to_string();
            assert!(err.contains("refusing to load-test"), "{bad}: {err}");
        }
        let t = loopback_target("http://127.0.0.1:8123/prefix/").unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:8123".parse().unwrap()]);
        assert_eq!(t.base, "http://127.0.0.1:8123/prefix");
        let t = loopback_target("http://2130706433/").unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:80".parse().unwrap()]);
        assert_eq!(t.base, "http://127.0.0.1");
        let t = loopback_target("http://[::1]:9").unwrap();
        assert_eq!(t.base, "http://[::1]:9");
    }
}
