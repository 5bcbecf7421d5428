//! Which AES-XTS engine runs a cipher.
//!
//! | engine | needs (CPUID) | blocks per instruction |
//! |---|---|---|
//! | `vaes512` | VAES, AVX-512F/BW, VPCLMULQDQ | 4 (zmm) |
//! | `vaes256` | VAES, AVX2 (VPCLMULQDQ used when present) | 2 (ymm) |
//! | `aesni` | AES-NI | 1 (xmm), eight in flight |
//! | `soft` | nothing | the `aes` crate's parallel blocks |
//!
//! The default is the first one the CPU runs, in that order, detected at
//! run time (nothing assumes build-time CPU features) and checked by a
//! known-answer self-test before first use ([`Engine::unavailable_reason`]). `CRYPTO_ENGINE=
//! aesni|vaes256|vaes512|soft` overrides it for the whole process (tests,
//! benchmarks, a CPU where one engine misbehaves); naming an engine this
//! CPU lacks, or an unknown one, is an error at key creation that names
//! the variable, never a silent fall-back. Every engine gives the same
//! bytes (tested against each other and against IEEE 1619's vectors).

use std::sync::OnceLock;

use crate::BdevError;

/// The environment variable that overrides the engine.
pub const ENGINE_ENV: &str = "CRYPTO_ENGINE";

/// An AES-XTS implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// Vector AES on 512-bit registers (four blocks per instruction).
    Vaes512,
    /// Vector AES on 256-bit registers (two blocks per instruction).
    Vaes256,
    /// AES-NI on 128-bit registers, eight blocks in flight.
    Aesni,
    /// The `aes` crate (its own run-time choice of backend).
    Soft,
}

impl Engine {
    /// Every engine, fastest first (the order the default is picked in;
    /// `self as usize` indexes it).
    pub const ALL: [Engine; 4] = [
        Engine::Vaes512,
        Engine::Vaes256,
        Engine::Aesni,
        Engine::Soft,
    ];

    /// The engine's name, as `CRYPTO_ENGINE` and `bdev_get_bdevs` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Vaes512 => "vaes512",
            Engine::Vaes256 => "vaes256",
            Engine::Aesni => "aesni",
            Engine::Soft => "soft",
        }
    }

    /// The engine named `s` (case-insensitive).
    pub fn parse(s: &str) -> Option<Engine> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s.trim()))
    }

    /// What the CPU must have, in words (for errors and skipped tests).
    pub fn needs(self) -> &'static str {
        match self {
            Engine::Vaes512 => "VAES, AVX-512F, AVX-512BW and VPCLMULQDQ",
            Engine::Vaes256 => "VAES and AVX2",
            Engine::Aesni => "AES-NI",
            Engine::Soft => "nothing",
        }
    }

    /// Whether the CPU reports the features the engine needs (CPUID),
    /// before any self-test.
    pub fn cpu_has(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Engine::Vaes512 => {
                    has!("vaes")
                        && has!("avx512f")
                        && has!("avx512bw")
                        && has!("vpclmulqdq")
                        && has!("aes")
                }
                Engine::Vaes256 => has!("vaes") && has!("avx2") && has!("aes"),
                Engine::Aesni => has!("aes"),
                Engine::Soft => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Engine::Soft
        }
    }

    /// Why this CPU cannot run the engine, or `None` when it can: the CPU
    /// lacks a feature, or the engine failed its known-answer self-test.
    ///
    /// The self-test runs once per engine and process, before the engine
    /// ciphers anything: AES-128 and AES-256, both directions, 512-byte
    /// units and a unit of 19 blocks (every path of the kernels: whole loop
    /// groups, whole registers, single blocks), against the `soft` engine.
    /// A CPU that claims a feature and computes it wrong never gets the
    /// engine: QEMU 7.2's TCG CPU (`-cpu max`) offers VAES but computes the
    /// upper 128-bit lane of a 256-bit VAESENC/VAESDEC from the lower
    /// lane's state, so `vaes256` fails there and `aesni` is chosen.
    pub fn unavailable_reason(self) -> Option<String> {
        static TESTED: [OnceLock<Result<(), String>>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        if !self.cpu_has() {
            return Some(format!(
                "{self} needs {}, which this CPU lacks",
                self.needs()
            ));
        }
        if self == Engine::Soft {
            return None;
        }
        let slot = &TESTED[self as usize];
        match slot.get_or_init(|| {
            let r = super::xts::self_test(self);
            if let Err(why) = &r {
                log::warn!("crypto: AES-XTS engine {self} refused: {why}");
            }
            r
        }) {
            Ok(()) => None,
            Err(why) => Some(format!(
                "{self}: this CPU reports {} but the engine fails its self-test ({why})",
                self.needs()
            )),
        }
    }

    /// Whether this CPU runs the engine (it has the features and the
    /// engine passed its self-test: [`Engine::unavailable_reason`]).
    pub fn available(self) -> bool {
        self.unavailable_reason().is_none()
    }

    /// The fastest engine this CPU runs.
    pub fn best() -> Engine {
        Engine::ALL
            .into_iter()
            .find(|e| e.available())
            .unwrap_or(Engine::Soft)
    }

    /// The engine `value` of `CRYPTO_ENGINE` asks for.
    ///
    /// # Errors
    /// [`BdevError::Invalid`] naming `CRYPTO_ENGINE` for an unknown name or
    /// an engine this CPU lacks.
    pub fn from_override(value: &str) -> Result<Engine, BdevError> {
        Engine::check_override(value).map_err(|why| BdevError::invalid(ENGINE_ENV, why))
    }

    /// [`Engine::from_override`]'s choice, or why it cannot be had.
    fn check_override(value: &str) -> Result<Engine, String> {
        let e = Engine::parse(value).ok_or_else(|| {
            format!("unknown AES-XTS engine {value:?}; one of vaes512, vaes256, aesni, soft")
        })?;
        match e.unavailable_reason() {
            Some(why) => Err(format!("{why} (the best it runs is {})", Engine::best())),
            None => Ok(e),
        }
    }

    /// The process's engine: `CRYPTO_ENGINE` when set, else [`Engine::best`].
    /// Decided once; the first call logs the choice.
    ///
    /// # Errors
    /// As [`Engine::from_override`], on every call while the variable is bad.
    pub fn process_default() -> Result<Engine, BdevError> {
        static CHOICE: OnceLock<Result<Engine, String>> = OnceLock::new();
        let choice = CHOICE.get_or_init(|| {
            let (chosen, how) = match std::env::var(ENGINE_ENV) {
                Ok(v) => (Engine::check_override(&v), "set by CRYPTO_ENGINE"),
                Err(_) => (Ok(Engine::best()), "the best this CPU runs"),
            };
            match &chosen {
                Ok(e) => log::info!("crypto: AES-XTS engine {e} ({how})"),
                Err(why) => log::error!("crypto: {ENGINE_ENV}: {why}"),
            }
            chosen
        });
        choice
            .clone()
            .map_err(|why| BdevError::invalid(ENGINE_ENV, why))
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for e in Engine::ALL {
            assert_eq!(Engine::parse(e.name()), Some(e));
            assert_eq!(Engine::parse(&e.name().to_uppercase()), Some(e));
        }
        assert_eq!(Engine::parse("aes-ni"), None);
        assert!(Engine::Soft.available());
        assert!(Engine::best().available());
    }

    #[test]
    fn a_bad_override_names_the_variable() {
        let e = Engine::from_override("turbo").unwrap_err().to_string();
        assert!(e.contains(ENGINE_ENV) && e.contains("turbo"), "{e}");
        for eng in Engine::ALL {
            match Engine::from_override(eng.name()) {
                Ok(got) => assert!(got == eng && eng.available()),
                Err(err) => {
                    let s = err.to_string();
                    assert!(!eng.available() && s.contains(eng.name()), "{s}");
                }
            }
        }
    }
}
