//! IPv4/IPv6 CIDR blocks for `--exclude-outbound-cidrs`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 (/128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("`{0}` is not an IP address or CIDR block (expected e.g. 10.0.0.0/8)")]
    Address(String),
    /// The prefix length is not a number within the address family's width.
    #[error("`{0}`: the prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    Prefix(String),
}

impl Cidr {
    /// Whether this is an IPv4 block.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| CidrError::Prefix(text.to_owned()))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_bare_addresses() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "172.17.0.2".parse::<Cidr>().unwrap().to_string(),
            "172.17.0.2/32"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert!(!"fd00::/8".parse::<Cidr>().unwrap().is_ipv4());
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        assert!(matches!(
            "consul".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
    }
}
