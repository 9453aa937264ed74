//! Protocols and port ranges, as security-group rules name them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// IP protocol number of ICMP.
pub const ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;
/// IP protocol number of ESP (IPsec).
pub const ESP: u8 = 50;
/// IP protocol number of AH (IPsec).
pub const AH: u8 = 51;
/// IP protocol number of ICMPv6.
pub const ICMPV6: u8 = 58;
/// UDP port of IKE.
pub const IKE_PORT: u16 = 500;
/// UDP port of IKE with NAT traversal.
pub const IKE_NAT_T_PORT: u16 = 4500;

/// An IP protocol as a rule names it. Numbers with a name (6, 17, 1, 58) and AWS's `-1` are
/// normalised to the named variant, so one protocol has one spelling everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (6), with a port range.
    Tcp,
    /// UDP (17), with a port range.
    Udp,
    /// ICMP (1), optionally with type and code.
    Icmp,
    /// ICMPv6 (58), optionally with type and code.
    Icmpv6,
    /// Any protocol (AWS `-1`).
    All,
    /// Another protocol by number (ESP 50, GRE 47, ...): any port.
    Number(u8),
}

impl Proto {
    /// Whether rules of this protocol carry a port range.
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    /// Whether rules of this protocol carry ICMP type/code.
    pub fn is_icmp(self) -> bool {
        matches!(self, Proto::Icmp | Proto::Icmpv6)
    }

    /// The IP protocol number, if the protocol is a single one.
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Tcp => Some(TCP),
            Proto::Udp => Some(UDP),
            Proto::Icmp => Some(ICMP),
            Proto::Icmpv6 => Some(ICMPV6),
            Proto::All => None,
            Proto::Number(n) => Some(n),
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Proto {
        match n {
            TCP => Proto::Tcp,
            UDP => Proto::Udp,
            ICMP => Proto::Icmp,
            ICMPV6 => Proto::Icmpv6,
            n => Proto::Number(n),
        }
    }
}

/// Text that is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected tcp, udp, icmp, icmpv6, all, or a number 0-255")]
pub struct ProtoError(pub String);

/// A port or port range that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Not `N` or `N-M`.
    #[error("bad port {0:?}: expected N or \"N-M\" with 0 <= N <= M <= 65535")]
    Invalid(String),
    /// `first > last`.
    #[error("port range {first}-{last} is backwards")]
    Backwards {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
}

impl FromStr for Proto {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Proto, ProtoError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            "icmpv6" | "ipv6-icmp" => Ok(Proto::Icmpv6),
            "all" | "-1" | "any" => Ok(Proto::All),
            other => other
                .parse::<u8>()
                .map(Proto::from_number)
                .map_err(|_| ProtoError(s.to_string())),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Icmpv6 => f.write_str("icmpv6"),
            Proto::All => f.write_str("all"),
            Proto::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Proto, D::Error> {
        let v = StrOrInt::deserialize(d)?;
        v.0.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: 65535,
    };

    /// A range, refusing `first > last`.
    pub fn new(first: u16, last: u16) -> Result<PortRange, PortError> {
        if first > last {
            return Err(PortError::Backwards { first, last });
        }
        Ok(PortRange { first, last })
    }

    /// Whether `port` is inside.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl FromStr for PortRange {
    type Err = PortError;
    fn from_str(s: &str) -> Result<PortRange, PortError> {
        let s = s.trim();
        let bad = || PortError::Invalid(s.to_string());
        match s.split_once('-') {
            Some((a, b)) => {
                let a = a.trim().parse::<u16>().map_err(|_| bad())?;
                let b = b.trim().parse::<u16>().map_err(|_| bad())?;
                PortRange::new(a, b)
            }
            None => {
                let p = s.parse::<u16>().map_err(|_| bad())?;
                Ok(PortRange { first: p, last: p })
            }
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        let v = StrOrInt::deserialize(d)?;
        v.0.parse().map_err(serde::de::Error::custom)
    }
}

/// A scalar that may be written as a string or an integer (`port: 443` or `port: "443"`).
pub(crate) struct StrOrInt(pub String);

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrInt, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                Ok(StrOrInt(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_spellings_normalise() {
        assert_eq!("-1".parse::<Proto>().unwrap(), Proto::All);
        assert_eq!("6".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("58".parse::<Proto>().unwrap(), Proto::Icmpv6);
        assert_eq!("50".parse::<Proto>().unwrap(), Proto::Number(50));
        assert!("256".parse::<Proto>().is_err());
        assert!("tcpp".parse::<Proto>().is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "443".parse::<PortRange>().unwrap(),
            PortRange {
                first: 443,
                last: 443
            }
        );
        assert_eq!(
            "1000-2000".parse::<PortRange>().unwrap().to_string(),
            "1000-2000"
        );
        assert!("2000-1000".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }
}
