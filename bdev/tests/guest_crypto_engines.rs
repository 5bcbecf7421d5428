//! Guest tier: the AES-XTS engines on QEMU's TCG CPU (`-cpu max`), which
//! offers AES-NI, AVX2 and VAES on 256-bit registers, but neither AVX-512
//! nor VPCLMULQDQ. Every engine the guest CPU runs is checked (IEEE 1619
//! vectors, random cases against the `xts-mode` crate); the others are
//! named, with the reason.
//!
//! What the guest shows depends on the emulator (`GUEST_QEMU_VERSION`, set
//! by `ci/guest`):
//! * QEMU 7.x (Debian bookworm's) computes the upper lane of a 256-bit
//!   VAESENC/VAESDEC from the lower lane's state: `vaes256` must fail its
//!   self-test there and never be chosen (the default is then `aesni`).
//! * QEMU 10 and later (bookworm-backports', `ci/qemu-backports`) compute
//!   VAES right: `vaes256`, with its tweak carries folded by shifts (no
//!   VPCLMULQDQ), must pass every check, so hosts without VAES still test
//!   the VAES kernel.

mod common;
mod xts_engines;

use bdev::modules::crypto::{Engine, XtsCipher};

/// The CPU flags that decide the engines, as the guest kernel reports them.
fn cpu_flags() -> Vec<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<String> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    ["aes", "avx2", "vaes", "vpclmulqdq", "avx512f", "avx512bw"]
        .into_iter()
        .filter(|f| flags.iter().any(|g| g == f))
        .collect()
}

/// The major version of the QEMU running this guest, when `ci/guest` said.
fn qemu_major() -> Option<u32> {
    let v = std::env::var("GUEST_QEMU_VERSION").ok()?;
    v.split('.').next()?.parse().ok()
}

#[test]
#[ignore = "guest tier: QEMU's TCG CPU offers VAES without AVX-512 (ci/guest-tier)"]
fn every_engine_the_guest_cpu_runs() {
    let flags = cpu_flags();
    let qemu = std::env::var("GUEST_QEMU_VERSION").unwrap_or_else(|_| "unknown".into());
    println!("QEMU {qemu}; guest CPU has: {}", flags.join(" "));
    let mut ran = Vec::new();
    for (i, e) in Engine::ALL.into_iter().enumerate() {
        match e.unavailable_reason() {
            None => {
                xts_engines::check_engine(e, 0x6e57_0000 + i as u64);
                ran.push(e.name());
            }
            Some(why) if e.cpu_has() => println!("refused: {why}"),
            Some(why) => println!("skipped: {why}"),
        }
    }
    println!("engines checked in the guest: {}", ran.join(", "));
    let default = XtsCipher::new(&[1; 16], &[2; 16]).unwrap().engine();
    assert_eq!(
        default,
        Engine::best(),
        "the default engine is the best one that passed"
    );
    assert!(ran.contains(&default.name()));
    let vaes = flags.contains(&"vaes") && flags.contains(&"avx2");
    match qemu_major() {
        Some(m) if m < 8 && vaes => {
            let why = Engine::Vaes256.unavailable_reason();
            assert!(
                why.as_deref().is_some_and(|w| w.contains("self-test")),
                "QEMU {qemu} emulates 256-bit VAESENC/VAESDEC wrong; vaes256 must fail its \
                 self-test here, got {why:?}"
            );
            assert_eq!(default, Engine::Aesni);
        }
        Some(m) if m >= 10 => {
            assert!(
                vaes,
                "QEMU {qemu} -cpu max was expected to offer VAES and AVX2"
            );
            assert!(
                ran.contains(&"vaes256"),
                "QEMU {qemu} computes VAES right: vaes256 must pass every check here"
            );
        }
        _ => println!("QEMU {qemu}: no expectation about vaes256 for this version"),
    }
}
