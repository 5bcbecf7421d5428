//! The command-line skeleton `nvme-perf` and `bdevperf` share: an option
//! table ([`Spec`]), the lexer that finds each option and its value in the
//! forms SPDK's tools take (`-q 32`, `-q32`, `--io-depth 32`,
//! `--io-depth=32`), the [`UsageError`] that names the option and value at
//! fault, and the value parsers both use.

/// A bad command line: which option (as typed), its value, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{option}{}: {message}", value.as_ref().map(|v| format!(" '{v}'")).unwrap_or_default())]
pub struct UsageError {
    /// The option as typed (`-q`, `--io-depth`), or the argument.
    pub option: String,
    /// Its value, if it had one.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl UsageError {
    /// An error about `option` with `value`.
    pub fn new(option: &str, value: Option<&str>, message: impl Into<String>) -> Self {
        UsageError {
            option: option.to_owned(),
            value: value.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// One option of a tool: its short and long names (either may be absent),
/// what it means to the tool, and whether it takes a value.
#[derive(Clone, Copy, Debug)]
pub struct Spec<O> {
    /// `-q`.
    pub short: Option<char>,
    /// `--io-depth`.
    pub long: Option<&'static str>,
    /// The tool's name for it.
    pub opt: O,
    /// Whether a value follows.
    pub takes_value: bool,
}

impl<O> Spec<O> {
    /// An option with a value.
    pub const fn value(short: Option<char>, long: Option<&'static str>, opt: O) -> Spec<O> {
        Spec {
            short,
            long,
            opt,
            takes_value: true,
        }
    }

    /// A flag.
    pub const fn flag(short: Option<char>, long: Option<&'static str>, opt: O) -> Spec<O> {
        Spec {
            short,
            long,
            opt,
            takes_value: false,
        }
    }
}

/// One option found on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg<O> {
    /// As typed, without its value (`-q`, `--io-depth`).
    pub name: String,
    /// What it means.
    pub opt: O,
    /// Its value ("" for a flag).
    pub value: String,
}

/// Walks the arguments against a table.
pub struct Lexer<I> {
    args: I,
}

impl<I: Iterator<Item = String>> Lexer<I> {
    /// Over `args` (without the program name).
    pub fn new(args: impl IntoIterator<IntoIter = I, Item = String>) -> Lexer<I> {
        Lexer {
            args: args.into_iter(),
        }
    }

    /// The next option and its value, or None at the end.
    ///
    /// # Errors
    /// An unknown option, a stray argument, a missing value, a value given
    /// to a flag.
    pub fn next_arg<O: Copy>(&mut self, table: &[Spec<O>]) -> Option<Result<Arg<O>, UsageError>> {
        let arg = self.args.next()?;
        Some(self.lex(arg, table))
    }

    fn lex<O: Copy>(&mut self, arg: String, table: &[Spec<O>]) -> Result<Arg<O>, UsageError> {
        let (name, spec, inline) = if let Some(long) = arg.strip_prefix("--") {
            let (l, inline) = match long.split_once('=') {
                Some((l, v)) => (l, Some(v.to_owned())),
                None => (long, None),
            };
            let Some(spec) = table.iter().find(|s| s.long == Some(l)) else {
                return Err(UsageError::new(&arg, None, "unknown option"));
            };
            (format!("--{l}"), spec, inline)
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let ch = chars.next().unwrap_or('-');
            let Some(spec) = table.iter().find(|s| s.short == Some(ch)) else {
                return Err(UsageError::new(&format!("-{ch}"), None, "unknown option"));
            };
            let rest = chars.as_str();
            (
                format!("-{ch}"),
                spec,
                (!rest.is_empty()).then(|| rest.to_owned()),
            )
        } else {
            return Err(UsageError::new(&arg, None, "unexpected argument"));
        };
        let value = if spec.takes_value {
            match inline.or_else(|| self.args.next()) {
                Some(v) => v,
                None => return Err(UsageError::new(&name, None, "needs a value")),
            }
        } else {
            if inline.is_some() {
                return Err(UsageError::new(&name, inline.as_deref(), "takes no value"));
            }
            String::new()
        };
        Ok(Arg {
            name,
            opt: spec.opt,
            value,
        })
    }
}

/// A decimal integer in `lo..=hi`; `what` names it in the error.
///
/// # Errors
/// [`UsageError`] naming `opt` and `v`.
pub fn int(opt: &str, v: &str, lo: u64, hi: u64, what: &str) -> Result<u64, UsageError> {
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(UsageError::new(
            opt,
            Some(v),
            format!("{what} must be an integer from {lo} to {hi}"),
        )),
    }
}

/// A positive size in bytes with an optional k/K or m/M suffix (powers of
/// 1024).
///
/// # Errors
/// [`UsageError`] naming `opt` and `v`.
pub fn size(opt: &str, v: &str) -> Result<usize, UsageError> {
    let bad = || {
        UsageError::new(
            opt,
            Some(v),
            "not a positive size in bytes (4096, 4k, 128K, 1M)",
        )
    };
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1024),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        _ => (v, 1),
    };
    let n: usize = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|&n| n > 0).ok_or_else(bad)
}

/// A seed: decimal or `0x` hex.
///
/// # Errors
/// [`UsageError`] naming `opt` and `v`.
pub fn seed(opt: &str, v: &str) -> Result<u64, UsageError> {
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    };
    parsed
        .ok_or_else(|| UsageError::new(opt, Some(v), "seed must be an integer (decimal or 0x hex)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum O {
        Q,
        J,
        Long,
    }

    const T: [Spec<O>; 3] = [
        Spec::value(Some('q'), Some("io-depth"), O::Q),
        Spec::flag(None, Some("json"), O::J),
        Spec::value(None, Some("malloc"), O::Long),
    ];

    fn all(args: &[&str]) -> Result<Vec<(String, O, String)>, UsageError> {
        let mut l = Lexer::new(args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        while let Some(a) = l.next_arg(&T) {
            let a = a?;
            out.push((a.name, a.opt, a.value));
        }
        Ok(out)
    }

    #[test]
    fn every_form() {
        let got = all(&[
            "-q",
            "1",
            "-q2",
            "--io-depth",
            "3",
            "--io-depth=4",
            "--json",
            "--malloc=8",
        ])
        .unwrap();
        let vals: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
        assert_eq!(vals, ["1", "2", "3", "4", "", "8"]);
        assert_eq!(got[2].0, "--io-depth");
        assert_eq!(got[4].1, O::J);
    }

    #[test]
    fn errors_name_the_option() {
        let e = all(&["-x"]).unwrap_err();
        assert_eq!(
            (e.option.as_str(), e.message.as_str()),
            ("-x", "unknown option")
        );
        let e = all(&["--bogus=1"]).unwrap_err();
        assert_eq!(e.option, "--bogus=1");
        let e = all(&["-q"]).unwrap_err();
        assert_eq!(e.to_string(), "-q: needs a value");
        let e = all(&["--json=1"]).unwrap_err();
        assert_eq!(e.to_string(), "--json '1': takes no value");
        let e = all(&["stray"]).unwrap_err();
        assert_eq!(e.message, "unexpected argument");
        assert_eq!(
            int("-q", "0", 1, 9, "depth").unwrap_err().to_string(),
            "-q '0': depth must be an integer from 1 to 9"
        );
        assert_eq!(size("-o", "4k").unwrap(), 4096);
        assert_eq!(size("-o", "2M").unwrap(), 2 << 20);
        assert!(size("-o", "0").is_err() && size("-o", "k").is_err() && size("-o", "x").is_err());
        assert_eq!(seed("--seed", "0x10").unwrap(), 16);
        assert!(seed("--seed", "z").is_err());
    }
}
