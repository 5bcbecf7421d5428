//! Tells the tests which AES-XTS engines the CPU that builds them runs
//! (`crypto_cpu_vaes512`, `crypto_cpu_vaes256`, `crypto_cpu_aesni`), so
//! that the test of an engine this CPU lacks shows as ignored, by name and
//! with the reason, instead of passing without running. The library itself
//! never uses these: it picks its engine from CPUID at run time.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for e in ["vaes512", "vaes256", "aesni"] {
        println!("cargo::rustc-check-cfg=cfg(crypto_cpu_{e})");
    }
    // Only when the tests run where they are built (no cross build).
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    #[cfg(target_arch = "x86_64")]
    if native {
        use std::arch::is_x86_feature_detected as has;
        let aes = has!("aes");
        if aes {
            println!("cargo::rustc-cfg=crypto_cpu_aesni");
        }
        if aes && has!("vaes") && has!("avx2") {
            println!("cargo::rustc-cfg=crypto_cpu_vaes256");
        }
        if aes && has!("vaes") && has!("avx512f") && has!("avx512bw") && has!("vpclmulqdq") {
            println!("cargo::rustc-cfg=crypto_cpu_vaes512");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = native;
}
