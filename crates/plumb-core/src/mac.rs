//! MAC addresses: six bytes, parsed once (strictly: six pairs of hex digits joined by colons)
//! and written once (`02:ab:cd:ef:01:23`, lower case), in stack records as that text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// Text that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six pairs of hex digits joined by ':')")]
pub struct BadMac(pub String);

impl Mac {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// A link-layer address as the kernel reports it; `None` unless it has six bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        Some(Mac(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<Mac, BadMac> {
        let bad = || BadMac(text.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            Some(_) => Err(bad()),
            None => Ok(Mac(bytes)),
        }
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_in_lower_case() {
        let mac: Mac = "02:AB:cd:00:7f:10".parse().unwrap();
        assert_eq!(mac.octets(), [0x02, 0xab, 0xcd, 0x00, 0x7f, 0x10]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:7f:10");
        assert_eq!(serde_json::to_string(&mac).unwrap(), "\"02:ab:cd:00:7f:10\"");
        assert_eq!(serde_json::from_str::<Mac>("\"02:ab:cd:00:7f:10\"").unwrap(), mac);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:zz",
            "2:00:00:00:00:00",
            "002:00:00:00:00:0",
            "02-00-00-00-00-00",
            "+2:00:00:00:00:00",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(BadMac(bad.to_string())), "{bad}");
        }
        assert!(serde_json::from_str::<Mac>("\"02:00:00:00:00:zz\"").is_err());
    }

    #[test]
    fn only_six_kernel_bytes_make_one() {
        assert_eq!(Mac::from_bytes(&[2, 0, 0, 0, 0, 1]), Some(Mac([2, 0, 0, 0, 0, 1])));
        assert_eq!(Mac::from_bytes(&[2, 0, 0, 0]), None);
    }
}
