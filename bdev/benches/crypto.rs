//! The crypto vbdev's cost, in one run on one core:
//!
//! 1. the cipher: our AES-XTS-128 and -256 on 4 KiB data units (encrypt and
//!    decrypt, 64 KiB in place per call) on the process's engine (the best
//!    this CPU runs, or `CRYPTO_ENGINE`), with every other engine it runs
//!    in the last column, against `openssl speed -evp
//!    aes-<bits>-xts` (encrypt and `-decrypt`, 4096- and 16384-byte
//!    buffers, user CPU time) run pinned to the same core, the `xts-mode`
//!    crate (one block at a time) for scale, and ours out of place over a
//!    4 MiB working set (the bdev runs' buffers) to show what the memory
//!    hierarchy costs;
//! 2. the bdev: 128 KiB sequential writes and reads at queue depth 32
//!    through crypto over a null bdev (4096-byte blocks, buffers untouched)
//!    and a 256 MiB malloc bdev, with both key sizes, next to the bare null
//!    and malloc bdevs; each bdev sample paired with a raw cipher sample
//!    taken just before it on the same thread.
//!
//! Buffers and disks are in 2 MiB hugepages when some are reserved (as
//! the appliance and bdevperf run), else in anonymous memory; the first
//! line says which. The machine is shared, so every figure is the median
//! of `--reps` samples (default 5), ours and OpenSSL's taken in turn so
//! that a change of load hits both.
//!
//! `cargo bench -p bdev --bench crypto` (`-- --seconds N`: CPU-seconds per
//! sample, default 1; `--reps R`; `--cipher-only` stops after part 1;
//! `--profile-write null|malloc` or `--profile-read null|malloc` runs only
//! AES-128 writes or reads, for `perf`).

use std::cell::Cell;
use std::process::Command;
use std::time::{Duration, Instant};

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use bdev::modules::{crypto, malloc, null};
use bdev::{BdevChannel, BdevEvent, BdevIo, IoStatus};
use xts_mode::{Xts128, get_tweak_default};

const UNIT: usize = 4096;
const CALL: usize = 64 * 1024;
const IO: usize = 128 * 1024;
const QD: usize = 32;

const KEY128: (&str, &str) = (
    "000102030405060708090a0b0c0d0e0f",
    "f0e0d0c0b0a090807060504030201000",
);
const KEY256: (&str, &str) = (
    "2718281828459045235360287471352662497757247093699959574966967627",
    "3141592653589793238462643383279502884197169399375105820974944592",
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pin_to_core0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// This thread's CPU time in seconds: the machine is shared, so every
/// figure is bytes per CPU-second of the thread doing the work (as
/// `openssl speed` without `-elapsed` counts user CPU time).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Bytes per CPU-second of `f` run over `bytes` at a time for `secs` of
/// CPU time.
fn rate(secs: f64, bytes: usize, mut f: impl FnMut(u64)) -> f64 {
    let warm = cpu_now();
    let mut i = 0;
    while cpu_now() - warm < 0.2 {
        f(i);
        i += 1;
    }
    let t = cpu_now();
    let mut n = 0u64;
    while cpu_now() - t < secs {
        for _ in 0..16 {
            f(n);
            n += 1;
        }
    }
    (n as usize * bytes) as f64 / (cpu_now() - t)
}

/// Our cipher on the process's engine (`None`) or on `engine`.
fn ours_on(
    engine: Option<crypto::Engine>,
    key: (&str, &str),
    dir: crypto::Direction,
    secs: f64,
) -> f64 {
    let (k1, k2) = (unhex(key.0), unhex(key.1));
    let x = match engine {
        Some(e) => crypto::XtsCipher::with_engine(&k1, &k2, e).unwrap(),
        None => crypto::XtsCipher::new(&k1, &k2).unwrap(),
    };
    let mut buf = vec![0x5au8; CALL];
    rate(secs, CALL, |i| {
        let lba = i as u128 * (CALL / UNIT) as u128;
        match dir {
            crypto::Direction::Encrypt => x.encrypt_units(&mut buf, UNIT, lba),
            crypto::Direction::Decrypt => x.decrypt_units(&mut buf, UNIT, lba),
        }
    })
}

fn ours(key: (&str, &str), dir: crypto::Direction, secs: f64) -> f64 {
    ours_on(None, key, dir, secs)
}

/// Ours as the write path over null uses it: 128 KiB from one of 32
/// buffers (4 MiB, as the bdev runs' QD32) into one destination, in
/// layer DMA memory.
fn ours_streaming(key: (&str, &str), dir: crypto::Direction, secs: f64) -> f64 {
    let x = crypto::XtsCipher::new(&unhex(key.0), &unhex(key.1)).unwrap();
    let mem = bdev::memory();
    let srcs: Vec<dma::DmaBuf> = (0..QD)
        .map(|i| {
            let mut b = mem.alloc(IO, 4096).unwrap();
            b.fill(i as u8);
            b
        })
        .collect();
    let mut dst = mem.alloc(IO, 4096).unwrap();
    dst.fill(0);
    rate(secs, IO, |i| {
        let s = &srcs[i as usize % QD];
        // SAFETY: distinct live buffers of `IO` bytes each; the source is
        // only read.
        let (src, d) = unsafe {
            (
                std::slice::from_raw_parts(s.as_ptr(), IO),
                std::slice::from_raw_parts_mut(dst.as_ptr(), IO),
            )
        };
        x.crypt_units_to(dir, src, d, UNIT, i as u128 * (IO / UNIT) as u128);
    })
}

fn reference(key: (&str, &str), secs: f64) -> f64 {
    let (k1, k2) = (unhex(key.0), unhex(key.1));
    let mut buf = vec![0x5au8; CALL];
    let mut go = |f: &mut dyn FnMut(&mut [u8], u128)| {
        rate(secs, CALL, |i| {
            f(&mut buf, i as u128 * (CALL / UNIT) as u128)
        })
    };
    if k1.len() == 16 {
        let x = Xts128::new(
            Aes128::new(k1.as_slice().try_into().unwrap()),
            Aes128::new(k2.as_slice().try_into().unwrap()),
        );
        go(&mut |b, t| x.encrypt_area(b, UNIT, t, get_tweak_default))
    } else {
        let x = Xts128::new(
            Aes256::new(k1.as_slice().try_into().unwrap()),
            Aes256::new(k2.as_slice().try_into().unwrap()),
        );
        go(&mut |b, t| x.encrypt_area(b, UNIT, t, get_tweak_default))
    }
}

/// The `aes` crate alone: ECB over the same 64 KiB, its parallel-block
/// API (the ceiling for XTS built on it).
fn ecb(bits: u32, secs: f64) -> f64 {
    use aes::cipher::{Array, BlockCipherEncrypt};
    let mut blocks = vec![Array([0x5au8; 16]); CALL / 16];
    if bits == 128 {
        let c = Aes128::new(&Array([7; 16]));
        rate(secs, CALL, |_| c.encrypt_blocks(&mut blocks))
    } else {
        let c = Aes256::new(&Array([7; 32]));
        rate(secs, CALL, |_| c.encrypt_blocks(&mut blocks))
    }
}

/// `openssl speed -mr -evp aes-<bits>-xts -bytes <size>` on core 0: bytes
/// per second of user CPU time, from its `+F:` line.
fn openssl(bits: u32, decrypt: bool, size: usize, secs: f64) -> Option<f64> {
    let cipher = format!("aes-{bits}-xts");
    let secs = (secs.round() as u64).max(1).to_string();
    let size = size.to_string();
    let mut args = vec![
        "speed", "-mr", "-seconds", &secs, "-bytes", &size, "-evp", &cipher,
    ];
    if decrypt {
        args.push("-decrypt");
    }
    let pinned = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg("openssl")
        .args(&args)
        .output();
    let out = match pinned {
        Ok(o) if o.status.success() => o,
        _ => Command::new("openssl").args(&args).output().ok()?,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("+F:"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

thread_local! {
    static CH: Cell<Option<*const BdevChannel>> = const { Cell::new(None) };
    static DONE: Cell<u64> = const { Cell::new(0) };
    static NEXT: Cell<u64> = const { Cell::new(0) };
    static SPAN: Cell<u64> = const { Cell::new(0) };
    static PER_IO: Cell<u64> = const { Cell::new(1) };
    static WRITE: Cell<bool> = const { Cell::new(false) };
    static STOP: Cell<bool> = const { Cell::new(false) };
}

fn next_lba() -> u64 {
    let per = PER_IO.with(|p| p.get());
    NEXT.with(|n| {
        let l = n.get();
        n.set((l + per) % SPAN.with(|s| s.get()));
        l
    })
}

fn submit(ch: &BdevChannel, buf: dma::DmaBuf) {
    let per = PER_IO.with(|p| p.get());
    let r = if WRITE.with(|w| w.get()) {
        ch.write(buf, next_lba(), per, false, done, 0)
    } else {
        ch.read(buf, next_lba(), per, done, 0)
    };
    r.map_err(|(e, _)| e).expect("submit");
}

fn done(io: &mut BdevIo, st: IoStatus) {
    assert_eq!(st, IoStatus::Success);
    DONE.with(|d| d.set(d.get() + 1));
    let buf = io.take_buf().expect("buffer");
    if STOP.with(|s| s.get()) {
        return;
    }
    // SAFETY: the channel outlives the run (set before, cleared after).
    let ch = unsafe { &*CH.with(|c| c.get()).expect("channel") };
    submit(ch, buf);
}

/// 128 KiB sequential I/O at QD 32 on bdev `name` for `secs` of the
/// reactor's CPU time: bytes per CPU-second (the reactor spins, so this is
/// wall time less the time other processes took the core).
async fn seq(name: &str, write: bool, secs: f64) -> f64 {
    let desc = bdev::open(name, true, |_: &str, _: BdevEvent| {}).unwrap();
    let ch = desc.get_io_channel().unwrap();
    let bs = desc.bdev().block_size() as u64;
    PER_IO.with(|p| p.set(IO as u64 / bs));
    SPAN.with(|s| s.set(desc.bdev().num_blocks() / (IO as u64 / bs) * (IO as u64 / bs)));
    NEXT.with(|n| n.set(0));
    WRITE.with(|w| w.set(write));
    STOP.with(|s| s.set(false));
    CH.with(|c| c.set(Some(&ch as *const BdevChannel)));
    let mem = bdev::memory();
    for i in 0..QD {
        let mut b = mem.alloc(IO, 4096).unwrap();
        b.fill(i as u8);
        submit(&ch, b);
    }
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        reactor::yield_now().await;
    }
    let start = DONE.with(|d| d.get());
    let t = cpu_now();
    while cpu_now() - t < secs {
        reactor::yield_now().await;
    }
    let n = DONE.with(|d| d.get()) - start;
    let el = cpu_now() - t;
    STOP.with(|s| s.set(true));
    while ch.outstanding() > 0 {
        reactor::yield_now().await;
    }
    CH.with(|c| c.set(None));
    drop(ch);
    drop(desc);
    (n as usize * IO) as f64 / el
}

/// The layer's memory as a storage appliance or bdevperf has it: 2 MiB
/// hugepages (512 MiB at most) when they can be had, else anonymous memory.
/// Says which.
fn use_hugepages() -> &'static str {
    let mem = dma::DmaMemory::new(dma::DmaConfig {
        grow_step: 8 << 20,
        ..dma::DmaConfig::hugepages(512 << 20)
    });
    match mem {
        Ok(m) if m.alloc(4096, 4096).is_ok() => {
            bdev::set_memory(m);
            "2 MiB hugepages"
        }
        _ => "anonymous memory (no hugepages reserved)",
    }
}

/// One spinning reactor on core 0, the bdev layer's, with I/O for QD32.
fn bdev_reactor() -> reactor::Runtime {
    let rt = reactor::Runtime::builder("0x1".parse().unwrap())
        .idle(reactor::IdleStrategy::Spin)
        .start()
        .expect("one reactor on core 0");
    bdev::set_runtime(rt.handle());
    bdev::set_io_pool_size(QD * 4);
    rt
}

/// `--profile-write null|malloc` (or `--profile-read`): only 128 KiB writes
/// (reads) through an AES-128 crypto bdev over that base, for `secs` (to
/// run under `perf`).
fn profile(base: &str, write: bool, secs: f64) {
    let rt = bdev_reactor();
    if base == "null" {
        null::create("pb", 1 << 20, 4096, None, null::ReadFill::Untouched).unwrap();
    } else {
        malloc::create("pb", (256 << 20) / 4096, 4096, None).unwrap();
    }
    crypto::key_create("pk", "AES_XTS", KEY128.0, KEY128.1, None).unwrap();
    crypto::create("pb", "pc", "pk", None).unwrap();
    let w = rt
        .block_on(0, move || async move { seq("pc", write, secs).await })
        .unwrap();
    let what = if write { "write" } else { "read" };
    println!("{what} through crypto AES-128 over {base}: {}", gb(w));
    rt.shutdown().unwrap();
}

fn gb(x: f64) -> String {
    format!("{:.2} GB/s", x / 1e9)
}

/// The median of the samples (the mean of the middle two for an even
/// count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `--name value` from the command line.
fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|s| s.parse().ok())
}

fn main() {
    let secs: f64 = arg("--seconds").unwrap_or(1.0);
    let memory = use_hugepages();
    if let Some(only) = arg::<String>("--profile-write") {
        return profile(&only, true, secs);
    }
    if let Some(only) = arg::<String>("--profile-read") {
        return profile(&only, false, secs);
    }
    let reps: usize = arg("--reps").unwrap_or(5).max(1);
    let engine = crypto::XtsCipher::new(&[1; 16], &[2; 16]).unwrap().engine();
    // The other engines this CPU runs, for the cipher table (`soft` is the
    // `aes` crate: the ECB line below shows its scale).
    let others: Vec<crypto::Engine> = crypto::Engine::ALL
        .into_iter()
        .filter(|e| *e != engine && *e != crypto::Engine::Soft && e.available())
        .collect();
    println!(
        "AES-XTS on core 0, medians of {reps} samples of {secs} CPU-seconds, bytes per CPU-second; engine {engine} (CRYPTO_ENGINE={}); aes crate hardware acceleration: {}; buffers and disks in {memory}",
        std::env::var(crypto::ENGINE_ENV).unwrap_or_else(|_| "unset".into()),
        aes::hardware_accelerated()
    );
    // 1. The cipher, with the bench thread on core 0 and openssl pinned
    //    there too (while this thread waits).
    pin_to_core0();
    let mut raw = [[0f64; 2]; 2];
    println!(
        "\n| cipher | ours ({engine}) 4 KiB units | openssl 4096 B | openssl 16384 B | ours / openssl (4096, 16384) | other engines, 4 KiB units |"
    );
    println!("|---|---|---|---|---|---|");
    for (ki, (bits, key)) in [(128u32, KEY128), (256, KEY256)].into_iter().enumerate() {
        for (di, dir) in [crypto::Direction::Encrypt, crypto::Direction::Decrypt]
            .into_iter()
            .enumerate()
        {
            let dec = dir == crypto::Direction::Decrypt;
            let (mut os, mut s4s, mut s16s) = (vec![], vec![], vec![]);
            let mut xs: Vec<Vec<f64>> = vec![vec![]; others.len()];
            for _ in 0..reps {
                os.push(ours(key, dir, secs));
                s4s.extend(openssl(bits, dec, 4096, secs));
                s16s.extend(openssl(bits, dec, 16384, secs));
                for (e, x) in others.iter().zip(&mut xs) {
                    x.push(ours_on(Some(*e), key, dir, secs));
                }
            }
            let other = others
                .iter()
                .zip(xs)
                .map(|(e, x)| format!("{e} {}", gb(median(x))))
                .collect::<Vec<_>>()
                .join(", ");
            let o = median(os);
            raw[ki][di] = o;
            let s4 = (!s4s.is_empty()).then(|| median(s4s));
            let s16 = (!s16s.is_empty()).then(|| median(s16s));
            let ratio = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.2}", o / s));
            println!(
                "| AES-{bits}-XTS {} | {} | {} | {} | {} , {} | {other} |",
                if dec { "decrypt" } else { "encrypt" },
                gb(o),
                s4.map_or("openssl missing".into(), gb),
                s16.map_or("openssl missing".into(), gb),
                ratio(s4),
                ratio(s16)
            );
        }
    }
    println!(
        "\naes crate ECB, parallel blocks (no XTS): AES-128 {}, AES-256 {}",
        gb(ecb(128, secs.min(1.0))),
        gb(ecb(256, secs.min(1.0)))
    );
    let r128 = reference(KEY128, secs.min(1.0));
    let r256 = reference(KEY256, secs.min(1.0));
    println!(
        "\nxts-mode 0.6 (one block at a time), encrypt 4 KiB units: AES-128 {}, AES-256 {} \
         (ours: {:.1}x, {:.1}x)",
        gb(r128),
        gb(r256),
        raw[0][0] / r128,
        raw[1][0] / r256
    );

    println!(
        "\nours, 128 KiB out of place from 32 rotating buffers (4 MiB) into one, encrypt / decrypt: \
         AES-128 {} / {}, AES-256 {} / {}",
        gb(ours_streaming(KEY128, crypto::Direction::Encrypt, secs)),
        gb(ours_streaming(KEY128, crypto::Direction::Decrypt, secs)),
        gb(ours_streaming(KEY256, crypto::Direction::Encrypt, secs)),
        gb(ours_streaming(KEY256, crypto::Direction::Decrypt, secs)),
    );

    if std::env::args().any(|a| a == "--cipher-only") {
        return;
    }

    // 2. The bdev on one reactor (core 0).
    let rt = bdev_reactor();
    null::create("bn_null", 1 << 20, 4096, None, null::ReadFill::Untouched).unwrap();
    malloc::create("bn_malloc", (256 << 20) / 4096, 4096, None).unwrap();
    crypto::key_create("bk128", "AES_XTS", KEY128.0, KEY128.1, None).unwrap();
    crypto::key_create("bk256", "AES_XTS", KEY256.0, KEY256.1, None).unwrap();
    println!(
        "\n| bdev, 128 KiB sequential, QD{QD} | write | read | write / raw encrypt | read / raw decrypt |"
    );
    println!("|---|---|---|---|---|");
    // Each bdev sample is paired with a raw cipher sample taken just
    // before it on the reactor thread (the same thread and core): the ratio
    // columns are the medians of the per-pair ratios, so a change of the
    // host's load between the cipher table and this one does not show up
    // as a ratio.
    let sample = |name: &str, write: bool, key: Option<(&str, &str)>| -> (f64, Option<f64>) {
        let raw = key.map(|k| {
            let k = (k.0.to_owned(), k.1.to_owned());
            let dir = if write {
                crypto::Direction::Encrypt
            } else {
                crypto::Direction::Decrypt
            };
            rt.block_on(0, move || async move { ours((&k.0, &k.1), dir, secs) })
                .unwrap()
        });
        let n = name.to_owned();
        let b = rt
            .block_on(0, move || async move { seq(&n, write, secs).await })
            .unwrap();
        (b, raw)
    };
    let run = |name: &str, key: Option<(&str, &str)>| {
        let (mut ws, mut rs, mut wq, mut rq) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            let (w, rw) = sample(name, true, key);
            let (r, rr) = sample(name, false, key);
            ws.push(w);
            rs.push(r);
            wq.extend(rw.map(|x| w / x));
            rq.extend(rr.map(|x| r / x));
        }
        let ratio = |q: Vec<f64>| {
            if q.is_empty() {
                String::new()
            } else {
                format!("{:.2}", median(q))
            }
        };
        (median(ws), median(rs), ratio(wq), ratio(rq))
    };
    for base in ["bn_null", "bn_malloc"] {
        let (w, r, _, _) = run(base, None);
        println!("| {base} (no crypto) | {} | {} | | |", gb(w), gb(r));
        for (bits, key) in [(128u32, KEY128), (256, KEY256)] {
            let name = format!("bc{bits}_{base}");
            crypto::create(base, &name, &format!("bk{bits}"), None).unwrap();
            let (w, r, wq, rq) = run(&name, Some(key));
            println!(
                "| crypto AES-{bits} over {base} | {} | {} | {wq} | {rq} |",
                gb(w),
                gb(r),
            );
            let n2 = name.clone();
            rt.block_on(0, move || async move { crypto::delete(&n2).await.unwrap() })
                .unwrap();
        }
    }
    rt.shutdown().unwrap();
}
