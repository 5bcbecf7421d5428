//! PCI addresses (`domain:bus:device.function`).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A PCI address. Parsed from `0000:00:04.0` or `00:04.0` (domain 0);
/// printed in sysfs's long form, `0000:00:04.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment (domain); sysfs prints at least four hex digits.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

fn hex_field(text: &str, max_digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

impl FromStr for Bdf {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidBdf {
            text: text.to_owned(),
        };
        let (rest, function) = text.rsplit_once('.').ok_or_else(invalid)?;
        let mut parts = rest.rsplitn(3, ':');
        let device = parts.next().ok_or_else(invalid)?;
        let bus = parts.next().ok_or_else(invalid)?;
        let domain = parts.next().unwrap_or("0");
        let function = hex_field(function, 1)
            .filter(|f| *f < 8)
            .ok_or_else(invalid)?;
        let device = hex_field(device, 2)
            .filter(|d| *d < 32)
            .ok_or_else(invalid)?;
        let bus = hex_field(bus, 2).ok_or_else(invalid)?;
        let domain = hex_field(domain, 8).ok_or_else(invalid)?;
        Ok(Bdf {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_long_and_short_forms() {
        let long: Bdf = "0000:00:04.0".parse().unwrap();
        let short: Bdf = "00:04.0".parse().unwrap();
        assert_eq!(long, short);
        assert_eq!(long.to_string(), "0000:00:04.0");
        let wide: Bdf = "10000:e1:1f.7".parse().unwrap();
        assert_eq!(wide.to_string(), "10000:e1:1f.7");
        assert_eq!("0000:AB:01.1".parse::<Bdf>().unwrap().bus, 0xab);
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "04.0",
            "0000:00:04",
            "0000:00:04.8",
            "0000:00:20.0",
            "0000:100:04.0",
            "x000:00:04.0",
            "0000:00:04.0.1",
            "1:2:3:4.0",
            "0000:00:+4.0",
            "000000000:00:04.0",
        ] {
            let err = bad.parse::<Bdf>().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidBdf { text } if text == bad),
                "{bad}: {err}"
            );
        }
    }
}
