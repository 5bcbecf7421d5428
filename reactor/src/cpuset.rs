//! Core sets: SPDK-style core masks (`0x3`) and core lists (`[0,2-3]`).

use std::fmt;
use std::str::FromStr;

use crate::{CoreId, Error};

/// The largest core number a [`CpuSet`] accepts (exclusive).
pub const MAX_CORES: u32 = 1024;

/// A sorted set of cores, parsed like SPDK's `-m`: a hexadecimal mask with or
/// without `0x` (`0x3`, `f`), or a bracketed list with ranges (`[0,2-3]`).
///
/// ```
/// use reactor::CpuSet;
/// let set: CpuSet = "0x5".parse().unwrap();
/// assert_eq!(set.cores(), &[0, 2]);
/// assert_eq!("[1-3,7]".parse::<CpuSet>().unwrap().cores(), &[1, 2, 3, 7]);
/// assert!("0xg".parse::<CpuSet>().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    cores: Vec<CoreId>,
}

impl CpuSet {
    /// Parses a core mask or list; see the type's documentation.
    ///
    /// # Errors
    /// [`Error::InvalidCoreMask`] naming the text when it is malformed, empty,
    /// or names a core at or above [`MAX_CORES`].
    pub fn parse(text: &str) -> Result<CpuSet, Error> {
        let bad = |reason: &str| Error::InvalidCoreMask {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        let mut cores = Vec::new();
        if let Some(inner) = t.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("a core list must end with ']'"))?;
            for part in inner.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    return Err(bad("empty element in core list"));
                }
                let (lo, hi) = match part.split_once('-') {
                    Some((a, b)) => (parse_core(a, &bad)?, parse_core(b, &bad)?),
                    None => {
                        let c = parse_core(part, &bad)?;
                        (c, c)
                    }
                };
                if lo > hi {
                    return Err(bad("range runs backwards"));
                }
                cores.extend(lo..=hi);
            }
        } else {
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            if hex.is_empty() {
                return Err(bad("empty mask"));
            }
            for (pos, ch) in hex.chars().rev().enumerate() {
                let nibble = ch
                    .to_digit(16)
                    .ok_or_else(|| bad("not a hexadecimal digit in mask"))?;
                for bit in 0..4u32 {
                    if nibble & (1 << bit) != 0 {
                        let core = u32::try_from(pos)
                            .ok()
                            .and_then(|p| p.checked_mul(4))
                            .and_then(|p| p.checked_add(bit))
                            .filter(|c| *c < MAX_CORES)
                            .ok_or_else(|| bad("mask names a core above the limit"))?;
                        cores.push(core);
                    }
                }
            }
        }
        cores.sort_unstable();
        cores.dedup();
        if cores.is_empty() {
            return Err(bad("no core selected"));
        }
        Ok(CpuSet { cores })
    }

    /// A set of the given cores (duplicates removed, sorted).
    ///
    /// # Errors
    /// [`Error::InvalidCoreMask`] if the list is empty or names a core at or
    /// above [`MAX_CORES`].
    pub fn from_cores(cores: impl IntoIterator<Item = CoreId>) -> Result<CpuSet, Error> {
        let mut cores: Vec<CoreId> = cores.into_iter().collect();
        cores.sort_unstable();
        cores.dedup();
        let text = format!("{cores:?}");
        if cores.is_empty() {
            return Err(Error::InvalidCoreMask {
                text,
                reason: "no core selected".into(),
            });
        }
        if cores.iter().any(|c| *c >= MAX_CORES) {
            return Err(Error::InvalidCoreMask {
                text,
                reason: "names a core above the limit".into(),
            });
        }
        Ok(CpuSet { cores })
    }

    /// The cores, in increasing order.
    pub fn cores(&self) -> &[CoreId] {
        &self.cores
    }

    /// How many cores.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Whether the set is empty (a parsed set never is).
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Whether `core` is in the set.
    pub fn contains(&self, core: CoreId) -> bool {
        self.cores.binary_search(&core).is_ok()
    }
}

fn parse_core(s: &str, bad: &dyn Fn(&str) -> Error) -> Result<CoreId, Error> {
    let c: CoreId = s
        .trim()
        .parse()
        .map_err(|_| bad("not a decimal core number in list"))?;
    if c >= MAX_CORES {
        return Err(bad("list names a core above the limit"));
    }
    Ok(c)
}

impl FromStr for CpuSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        CpuSet::parse(s)
    }
}

/// Formats as a hexadecimal mask, like SPDK's `cpumask` fields (`0x3`).
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.cores.last().copied().unwrap_or(0);
        let nibbles = top / 4 + 1;
        f.write_str("0x")?;
        for n in (0..nibbles).rev() {
            let mut v = 0u32;
            for bit in 0..4 {
                if self.contains(n * 4 + bit) {
                    v |= 1 << bit;
                }
            }
            write!(f, "{v:x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(CpuSet::parse("0x3").unwrap().cores(), &[0, 1]);
        assert_eq!(CpuSet::parse("3").unwrap().cores(), &[0, 1]);
        assert_eq!(CpuSet::parse("0XF0").unwrap().cores(), &[4, 5, 6, 7]);
        assert_eq!(CpuSet::parse("0x100000000").unwrap().cores(), &[32]);
        assert_eq!(CpuSet::parse("0x3").unwrap().to_string(), "0x3");
        assert_eq!(CpuSet::parse("[4,9]").unwrap().to_string(), "0x210");
    }

    #[test]
    fn lists() {
        assert_eq!(CpuSet::parse("[0]").unwrap().cores(), &[0]);
        assert_eq!(CpuSet::parse("[3, 0-1,1]").unwrap().cores(), &[0, 1, 3]);
        assert_eq!(CpuSet::from_cores([2, 1, 2]).unwrap().cores(), &[1, 2]);
    }

    #[test]
    fn errors_name_the_text() {
        for bad in [
            "", "0x", "0x0", "zz", "[", "[1,]", "[3-1]", "[a]", "[99999]", "[1", "0x-1",
        ] {
            match CpuSet::parse(bad) {
                Err(Error::InvalidCoreMask { text, .. }) => assert_eq!(text, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let long = format!("0x1{}", "0".repeat(300));
        assert!(CpuSet::parse(&long).is_err());
        assert!(CpuSet::from_cores([]).is_err());
        assert!(CpuSet::from_cores([MAX_CORES]).is_err());
    }
}
