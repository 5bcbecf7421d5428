//! PCI addresses in the `domain:bus:device.function` form sysfs uses.

use std::fmt;
use std::str::FromStr;

/// A PCI address (`0000:00:04.0`). The domain may be omitted when parsing
/// (`00:04.0` means domain 0), as `lspci` and SPDK accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI segment (domain), 16 bits.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid PCI address {input:?}: {reason} (expected dddd:bb:dd.f, e.g. 0000:00:04.0)")]
pub struct BdfError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| BdfError {
            input: s.to_owned(),
            reason,
        };
        let (head, function) = s.rsplit_once('.').ok_or_else(|| err("no '.function'"))?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, dev] => (*d, *b, *dev),
            [b, dev] => ("0", *b, *dev),
            _ => return Err(err("expected domain:bus:device or bus:device")),
        };
        let hex = |t: &str, max_digits: usize, what| {
            if t.is_empty() || t.len() > max_digits {
                return Err(err(what));
            }
            u32::from_str_radix(t, 16).map_err(|_| err(what))
        };
        let domain = hex(domain, 4, "domain is not 1-4 hex digits")?;
        let bus = hex(bus, 2, "bus is not 1-2 hex digits")?;
        let device = hex(device, 2, "device is not 1-2 hex digits")?;
        let function = hex(function, 1, "function is not one hex digit")?;
        if device > 31 {
            return Err(err("device number above 0x1f"));
        }
        if function > 7 {
            return Err(err("function number above 7"));
        }
        // The width checks above bound every value to its field.
        Ok(Bdf {
            domain: domain as u16,
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
    fn parses_full_and_short_forms() {
        let b: Bdf = "0000:00:04.0".parse().unwrap();
        assert_eq!(
            b,
            Bdf {
                domain: 0,
                bus: 0,
                device: 4,
                function: 0
            }
        );
        assert_eq!(b.to_string(), "0000:00:04.0");
        let b: Bdf = "1f:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:1f:1f.7");
        let b: Bdf = "abcd:ff:00.3".parse().unwrap();
        assert_eq!(b.domain, 0xabcd);
        assert_eq!(b.bus, 0xff);
    }

    #[test]
    fn rejects_malformed_addresses_with_the_reason() {
        for (input, reason) in [
            ("", "no '.function'"),
            ("0000:00:04", "no '.function'"),
            ("0000:00:20.0", "device number above 0x1f"),
            ("0000:00:04.8", "function number above 7"),
            ("00000:00:04.0", "domain is not 1-4 hex digits"),
            ("0000:100:04.0", "bus is not 1-2 hex digits"),
            ("0000:0g:04.0", "bus is not 1-2 hex digits"),
            ("1:2:3:4.0", "expected domain:bus:device or bus:device"),
            ("0000:00:04.", "function is not one hex digit"),
        ] {
            let e = input.parse::<Bdf>().unwrap_err();
            assert_eq!(e.reason, reason, "input {input:?}");
            assert!(e.to_string().contains(input), "{e}");
        }
    }
}
