//! Cross-core message benchmark: this crate's rings against `std::sync::mpsc`
//! and `crossbeam-channel`, in one run.
//!
//! ```text
//! cargo bench -p reactor --bench ring [-- --messages N --samples N --runs N]
//! ```
//!
//! For each contender, two threads pinned to cores 0 and 1 (unpinned if this
//! process may not use both):
//!
//! * one-way throughput: core 0 sends `--messages` closures that core 1 runs
//!   (each bumps a counter); messages/s from the first send to the last run;
//! * ping-pong: core 0 sends a closure to core 1, which sends one back;
//!   `--samples` sequential round trips, p50 and p99 of their latency;
//! * event chains shaped like SPDK's `reactor_perf` and `event_perf`
//!   (reactors only): messages that each send the next, 1 or 128 chains at
//!   once, on one core or bouncing between two.
//!
//! The reactors poll (`IdleStrategy::Spin`). The channels carry the same
//! work as boxed closures (`Box<dyn FnOnce() + Send>`, what a user of a
//! channel would send to run code on another thread) with bounded channels
//! of the same capacity as the ring; both their blocking `recv` and a
//! polling `try_recv` loop are measured, and a `u64` payload shows the
//! channels' raw speed without the closure. Each figure is the median of
//! `--runs` runs.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use reactor::{CpuSet, IdleStrategy, PollStatus, Runtime};

const CAPACITY: usize = 16384;

struct Args {
    messages: u64,
    samples: usize,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        messages: 5_000_000,
        samples: 200_000,
        runs: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |i: usize| -> u64 {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    eprintln!("{} needs a number", argv[i]);
                    std::process::exit(2)
                })
        };
        match argv[i].as_str() {
            "--messages" => {
                a.messages = val(i).max(1);
                i += 1;
            }
            "--samples" => {
                a.samples = val(i).max(1) as usize;
                i += 1;
            }
            "--runs" => {
                a.runs = val(i).max(1) as usize;
                i += 1;
            }
            // `cargo bench` adds `--bench`; ignore what is not ours.
            _ => {}
        }
        i += 1;
    }
    a
}

/// Pins the calling thread to `core` when `pin` (the baselines' threads).
fn pin_to(pin: bool, core: usize) {
    if pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
}

fn can_pin() -> bool {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    ids.contains(&0) && ids.contains(&1)
}

struct Latency {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut ns: Vec<u64>) -> Latency {
    ns.sort_unstable();
    let at = |q: f64| Duration::from_nanos(ns[((ns.len() - 1) as f64 * q) as usize]);
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ---------------------------------------------------------------- reactor

fn reactor_runtime(pin: bool) -> Runtime {
    Runtime::builder(CpuSet::parse("0x3").unwrap())
        .pin(pin)
        .ring_capacity(CAPACITY)
        .idle(IdleStrategy::Spin)
        .start()
        .expect("start reactors")
}

fn reactor_one_way(rt: &Runtime, n: u64) -> f64 {
    struct State {
        received: AtomicU64,
        start: std::sync::Mutex<Option<Instant>>,
        end: std::sync::Mutex<Option<Instant>>,
    }
    let st: &'static State = Box::leak(Box::new(State {
        received: AtomicU64::new(0),
        start: Default::default(),
        end: Default::default(),
    }));
    rt.run_on(0, move || {
        let mut sent = 0u64;
        reactor::register_poller("producer", move || {
            if sent == 0 {
                *st.start.lock().unwrap() = Some(Instant::now());
            }
            while sent < n {
                let last = sent + 1 == n;
                let r = reactor::try_send(1, move || {
                    // Single writer: a plain load + store, no locked add.
                    let v = st.received.load(Ordering::Relaxed) + 1;
                    st.received.store(v, Ordering::Relaxed);
                    if last {
                        *st.end.lock().unwrap() = Some(Instant::now());
                    }
                });
                if r.is_err() {
                    return PollStatus::Busy;
                }
                sent += 1;
            }
            reactor::current_poller().unwrap().unregister();
            PollStatus::Busy
        });
    })
    .unwrap();
    while st.end.lock().unwrap().is_none() {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(st.received.load(Ordering::Relaxed), n);
    let start = st.start.lock().unwrap().unwrap();
    let end = st.end.lock().unwrap().unwrap();
    n as f64 / (end - start).as_secs_f64()
}

thread_local! {
    static SAMPLES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn reactor_ping_pong(rt: &Runtime, samples: usize) -> Latency {
    let done: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    fn ping(left: usize, done: &'static AtomicBool) {
        let t0 = Instant::now();
        reactor::send(1, move || {
            reactor::send(0, move || {
                let dt = t0.elapsed().as_nanos() as u64;
                SAMPLES.with(|s| s.borrow_mut().push(dt));
                if left > 1 {
                    ping(left - 1, done);
                } else {
                    done.store(true, Ordering::Release);
                }
            })
            .unwrap();
        })
        .unwrap();
    }
    rt.run_on(0, move || {
        SAMPLES.with(|s| s.borrow_mut().clear());
        SAMPLES.with(|s| s.borrow_mut().reserve(samples));
        ping(samples, done);
    })
    .unwrap();
    while !done.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    let ns = rt
        .run_on(0, || SAMPLES.with(|s| std::mem::take(&mut *s.borrow_mut())))
        .unwrap();
    percentiles(ns)
}

/// Event chains in the shape of SPDK's `reactor_perf` / `event_perf`:
/// `outstanding` chains of messages, each message sending the next, on one
/// core (`cross == false`) or bouncing between cores 0 and 1. Returns
/// events/s over all cores.
fn reactor_chains(rt: &Runtime, cross: bool, outstanding: u64, events: u64) -> f64 {
    fn hop(left: u64, core: u32, cross: bool, done: &'static AtomicU64) {
        if left == 0 {
            done.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let next = if cross { 1 - core } else { core };
        reactor::send(next, move || hop(left - 1, next, cross, done)).unwrap();
    }
    let done: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let per_chain = (events / outstanding).max(1);
    let start = Instant::now();
    rt.run_on(0, move || {
        for _ in 0..outstanding {
            hop(per_chain, 0, cross, done);
        }
    })
    .unwrap();
    while done.load(Ordering::Relaxed) < outstanding {
        thread::sleep(Duration::from_micros(100));
    }
    (per_chain * outstanding) as f64 / start.elapsed().as_secs_f64()
}

// --------------------------------------------------------------- channels

type Job = Box<dyn FnOnce() + Send>;

/// The channel operations the baselines need.
trait Chan<T: Send + 'static>: Send + 'static {
    type Tx: Send + 'static;
    type Rx: Send + 'static;
    fn new(cap: usize) -> (Self::Tx, Self::Rx);
    fn send(tx: &Self::Tx, v: T);
    fn recv(rx: &Self::Rx) -> T;
    fn try_recv(rx: &Self::Rx) -> Option<T>;
}

struct Std;
impl<T: Send + 'static> Chan<T> for Std {
    type Tx = mpsc::SyncSender<T>;
    type Rx = mpsc::Receiver<T>;
    fn new(cap: usize) -> (Self::Tx, Self::Rx) {
        mpsc::sync_channel(cap)
    }
    fn send(tx: &Self::Tx, v: T) {
        tx.send(v).unwrap()
    }
    fn recv(rx: &Self::Rx) -> T {
        rx.recv().unwrap()
    }
    fn try_recv(rx: &Self::Rx) -> Option<T> {
        rx.try_recv().ok()
    }
}

struct Crossbeam;
impl<T: Send + 'static> Chan<T> for Crossbeam {
    type Tx = crossbeam_channel::Sender<T>;
    type Rx = crossbeam_channel::Receiver<T>;
    fn new(cap: usize) -> (Self::Tx, Self::Rx) {
        crossbeam_channel::bounded(cap)
    }
    fn send(tx: &Self::Tx, v: T) {
        tx.send(v).unwrap()
    }
    fn recv(rx: &Self::Rx) -> T {
        rx.recv().unwrap()
    }
    fn try_recv(rx: &Self::Rx) -> Option<T> {
        rx.try_recv().ok()
    }
}

/// One-way: closures run by the receiver.
fn chan_one_way_closure<C: Chan<Job>>(pin: bool, n: u64) -> f64 {
    let (tx, rx) = C::new(CAPACITY);
    let consumer = thread::spawn(move || {
        pin_to(pin, 1);
        let before = BUMPS.with(|b| b.get());
        for _ in 0..n {
            C::recv(&rx)();
        }
        assert_eq!(BUMPS.with(|b| b.get()) - before, n);
        Instant::now()
    });
    let producer = thread::spawn(move || {
        pin_to(pin, 0);
        thread::sleep(Duration::from_millis(10));
        let start = Instant::now();
        for _ in 0..n {
            C::send(&tx, Box::new(bump));
        }
        start
    });
    let start = producer.join().unwrap();
    let end = consumer.join().unwrap();
    n as f64 / (end - start).as_secs_f64()
}

thread_local! {
    static BUMPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The closures' work on the receiver, as cheap as ours (a counter).
fn bump() {
    BUMPS.with(|b| b.set(b.get() + 1));
}

/// One-way: plain `u64`s summed by the receiver.
fn chan_one_way_u64<C: Chan<u64>>(pin: bool, n: u64) -> f64 {
    let (tx, rx) = C::new(CAPACITY);
    let consumer = thread::spawn(move || {
        pin_to(pin, 1);
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(C::recv(&rx));
        }
        std::hint::black_box(sum);
        Instant::now()
    });
    let producer = thread::spawn(move || {
        pin_to(pin, 0);
        thread::sleep(Duration::from_millis(10));
        let start = Instant::now();
        for i in 0..n {
            C::send(&tx, i);
        }
        start
    });
    let start = producer.join().unwrap();
    let end = consumer.join().unwrap();
    n as f64 / (end - start).as_secs_f64()
}

/// Ping-pong with closures: core 1 runs the closure it receives and sends
/// one back, which core 0 runs.
fn chan_ping_pong<C: Chan<Job>>(pin: bool, samples: usize, poll: bool) -> Latency {
    let (to1, rx1) = C::new(CAPACITY);
    let (to0, rx0) = C::new(CAPACITY);
    let echo = thread::spawn(move || {
        pin_to(pin, 1);
        for _ in 0..samples {
            let job = if poll {
                loop {
                    if let Some(j) = C::try_recv(&rx1) {
                        break j;
                    }
                    std::hint::spin_loop();
                }
            } else {
                C::recv(&rx1)
            };
            job();
            C::send(&to0, Box::new(bump));
        }
    });
    let ping = thread::spawn(move || {
        pin_to(pin, 0);
        let mut ns = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t0 = Instant::now();
            C::send(&to1, Box::new(bump));
            let answer = if poll {
                loop {
                    if let Some(j) = C::try_recv(&rx0) {
                        break j;
                    }
                    std::hint::spin_loop();
                }
            } else {
                C::recv(&rx0)
            };
            answer();
            ns.push(t0.elapsed().as_nanos() as u64);
        }
        ns
    });
    echo.join().unwrap();
    percentiles(ping.join().unwrap())
}

// ------------------------------------------------------------------ main

fn fmt_rate(r: f64) -> String {
    format!("{:.2} M/s", r / 1e6)
}

fn main() {
    let args = parse_args();
    let pin = can_pin();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    println!(
        "ring benchmark: {} messages one-way, {} round trips, median of {} runs, \
         capacity {CAPACITY}, threads {}",
        args.messages,
        args.samples,
        args.runs,
        if pin {
            "pinned to cores 0 and 1"
        } else {
            "unpinned"
        }
    );
    let runs = args.runs;
    let (m, n) = (args.messages, args.samples);

    // The contenders take turns in every run, so that a noisy neighbour
    // hurts them alike; each figure is the median over the runs.
    let rt = reactor_runtime(pin);
    let mut rate = vec![Vec::new(); 5];
    let mut chains = vec![Vec::new(); 3];
    let mut lat: Vec<Vec<Latency>> = (0..5).map(|_| Vec::new()).collect();
    for _ in 0..runs {
        rate[0].push(reactor_one_way(&rt, m));
        rate[1].push(chan_one_way_closure::<Std>(pin, m));
        rate[2].push(chan_one_way_closure::<Crossbeam>(pin, m));
        rate[3].push(chan_one_way_u64::<Std>(pin, m));
        rate[4].push(chan_one_way_u64::<Crossbeam>(pin, m));
        chains[0].push(reactor_chains(&rt, false, 1, m));
        chains[1].push(reactor_chains(&rt, false, 128, m));
        chains[2].push(reactor_chains(&rt, true, 128, m));
        lat[0].push(reactor_ping_pong(&rt, n));
        lat[1].push(chan_ping_pong::<Std>(pin, n, false));
        lat[2].push(chan_ping_pong::<Std>(pin, n, true));
        lat[3].push(chan_ping_pong::<Crossbeam>(pin, n, false));
        lat[4].push(chan_ping_pong::<Crossbeam>(pin, n, true));
    }
    rt.shutdown().expect("shutdown");
    let r: Vec<f64> = rate.into_iter().map(median).collect();
    let c: Vec<f64> = chains.into_iter().map(median).collect();
    let (ours_rate, std_rate, cb_rate, std_u64, cb_u64) = (r[0], r[1], r[2], r[3], r[4]);
    let l: Vec<Latency> = lat
        .into_iter()
        .map(|v| Latency {
            p50: median(v.iter().map(|l| l.p50).collect()),
            p99: median(v.iter().map(|l| l.p99).collect()),
        })
        .collect();
    let [ours, std_block, std_poll, cb_block, cb_poll]: [Latency; 5] =
        l.try_into().ok().expect("five contenders");

    println!();
    println!("| contender | one-way closures | ratio ours/it | one-way u64 |");
    println!("|---|---|---|---|");
    println!("| reactor rings | {} | 1.00 | — |", fmt_rate(ours_rate));
    println!(
        "| std::sync::mpsc (sync_channel) | {} | {:.2} | {} |",
        fmt_rate(std_rate),
        ours_rate / std_rate,
        fmt_rate(std_u64)
    );
    println!(
        "| crossbeam-channel (bounded) | {} | {:.2} | {} |",
        fmt_rate(cb_rate),
        ours_rate / cb_rate,
        fmt_rate(cb_u64)
    );
    println!();
    println!("| contender, ping-pong round trip | p50 | p99 | ratio it/ours (p50) |");
    println!("|---|---|---|---|");
    let row = |name: &str, l: &Latency| {
        println!(
            "| {name} | {} ns | {} ns | {:.2} |",
            l.p50.as_nanos(),
            l.p99.as_nanos(),
            l.p50.as_secs_f64() / ours.p50.as_secs_f64()
        );
    };
    row("reactor rings (polling)", &ours);
    row("std::sync::mpsc, blocking recv", &std_block);
    row("std::sync::mpsc, polling try_recv", &std_poll);
    row("crossbeam-channel, blocking recv", &cb_block);
    row("crossbeam-channel, polling try_recv", &cb_poll);

    println!();
    println!("| event chains (SPDK reactor_perf / event_perf shape) | events/s |");
    println!("|---|---|");
    println!("| same core, 1 outstanding | {} |", fmt_rate(c[0]));
    println!("| same core, 128 outstanding | {} |", fmt_rate(c[1]));
    println!(
        "| cores 0 <-> 1, 128 outstanding | {} ({} per core) |",
        fmt_rate(c[2]),
        fmt_rate(c[2] / 2.0)
    );
}
