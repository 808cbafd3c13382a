//! Which addresses a report upload may connect to.
//!
//! An `https:` destination comes from a stranger's DNS record (`rua=`), so
//! without a check a reporter can be made to POST to any internal service
//! whose certificate it trusts. By default an upload connects only to
//! global unicast addresses: the host name is resolved once, the addresses
//! that are loopback, private, link-local, unique-local, shared (CGNAT),
//! multicast, reserved or unspecified are dropped, and the connection goes
//! to an address that was checked (no second lookup).

use std::net::{IpAddr, Ipv4Addr};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Whether `ip` is a global unicast address (RFC 6890 special-purpose
/// registries, for both families; IPv4 inside IPv6 judged as IPv4).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_global_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ...)
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
        }
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || ip.is_multicast()
        || a >= 240) // reserved, broadcast
}

/// A resolver (by default the system's) keeping only the addresses an
/// upload or a policy fetch may reach.
#[derive(Debug, Default)]
pub struct GlobalOnly<R = DefaultResolver> {
    inner: R,
}

impl<R: Resolver> GlobalOnly<R> {
    pub fn new(inner: R) -> Self {
        GlobalOnly { inner }
    }
}

impl<R: Resolver> Resolver for GlobalOnly<R> {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for address in all.iter().filter(|a| is_global(a.ip())) {
            kept.push(*address);
        }
        if kept.is_empty() {
            let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} resolves only to addresses that are not global ({}): only public addresses are connected to \
                     (http_allow_private_addresses = 1 for reportd, allow_private_addresses = 1 for policyd, \
                     allows others, for labs and tests)",
                    uri.host().unwrap_or("the host"),
                    shown.join(", ")
                ),
            )));
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_unicast_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_global(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_global(public.parse().unwrap()), "{public}");
        }
    }
}
