//! IP addresses and CIDR networks, for `[server] forwarded_allow_ips`.

use std::net::IpAddr;

/// A network: an address and a prefix length (a single address has the full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1` or `::1`; host bits must be zero.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
        };
        if prefix > max {
            return None;
        }
        let net = IpNet { addr, prefix };
        // `10.0.0.1/8` is almost certainly a typo for `10.0.0.0/8` or `10.0.0.1`.
        (net.masked(addr) == bits(addr)).then_some(net)
    }

    /// The address with its host bits cleared.
    fn masked(&self, addr: IpAddr) -> u128 {
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.prefix);
        bits(addr).checked_shr(host).map_or(0, |net| net << host)
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An entry of a trusted list that is neither `*`, an address nor a network
/// (`address/prefix` with the host bits zero).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address, a network (address/prefix, host bits zero) or *")]
pub struct BadNetwork(pub String);

/// A list of trusted networks, or everyone (`*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted {
    all: bool,
    nets: Vec<IpNet>,
}

impl Trusted {
    /// Parses a `forwarded_allow_ips` list; `Err` names the first invalid entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadNetwork> {
        let mut trusted = Trusted::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry == "*" {
                trusted.all = true;
            } else {
                trusted
                    .nets
                    .push(IpNet::parse(entry).ok_or_else(|| BadNetwork(entry.to_owned()))?);
            }
        }
        Ok(trusted)
    }

    /// Whether a peer at `ip` is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.all || self.nets.iter().any(|net| net.contains(ip))
    }

    /// Everyone is trusted (`*`).
    pub fn all(&self) -> bool {
        self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_addresses() {
        let t = Trusted::parse(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]).unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("2001:db8:1::5")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("127.0.0.1")));
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(Trusted::parse(&["0.0.0.0/0"])
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!(!Trusted::parse(&["0.0.0.0/0"]).unwrap().contains(ip("::1")));
        assert!(Trusted::parse(&["*"]).unwrap().contains(ip("::1")));
        assert!(!Trusted::parse::<&str>(&[])
            .unwrap()
            .contains(ip("127.0.0.1")));
    }

    #[test]
    fn invalid_entries_are_named() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "localhost",
            "10.0.0.0/",
            "1.2.3.4/x",
            "unix:",
        ] {
            assert_eq!(
                Trusted::parse(&[bad]),
                Err(BadNetwork(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
