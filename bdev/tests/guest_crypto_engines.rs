//! Guest tier: the AES-XTS engines on QEMU's TCG CPU (`-cpu max`). It
//! offers AES-NI, AVX2 and VAES on 256-bit registers, but neither AVX-512
//! nor VPCLMULQDQ: so the `vaes256` kernel, with its tweak carries folded
//! by shifts, runs for real even where the host lacks VAES. Every engine
//! the guest CPU runs is checked (IEEE 1619 vectors, random cases against
//! the `xts-mode` crate); the others are named as skipped, with the reason.

mod xts_engines;

use bdev::modules::crypto::Engine;

/// The CPU flags that decide the engines, as the guest kernel reports them.
fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    ["aes", "avx2", "vaes", "vpclmulqdq", "avx512f", "avx512bw"]
        .into_iter()
        .map(|f| format!("{f}:{}", if flags.contains(&f) { "yes" } else { "no" }))
        .collect()
}

#[test]
#[ignore = "guest tier: QEMU's TCG CPU offers VAES without AVX-512 (ci/guest-tier)"]
fn every_engine_the_guest_cpu_runs() {
    println!("guest CPU flags: {}", cpu_flags().join(" "));
    let mut ran = Vec::new();
    for (i, e) in Engine::ALL.into_iter().enumerate() {
        if e.available() {
            xts_engines::check_engine(e, 0x6e57_0000 + i as u64);
            ran.push(e.name());
        } else {
            println!("skipped: {e} needs {}, which this CPU lacks", e.needs());
        }
    }
    println!("engines checked in the guest: {}", ran.join(", "));
    assert!(
        Engine::Vaes256.available(),
        "the guest CPU was expected to offer VAES and AVX2 (QEMU TCG -cpu max); \
         without them the vaes256 kernel goes untested on hosts that lack VAES"
    );
}
