//! Seeded randomized runs of the simulated runtime: random senders, random
//! message counts, random polling order and tiny rings, checking that every
//! message runs exactly once and in order per sender. A failure prints its
//! seed; `REACTOR_SEED=<n>` replays one.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use reactor::Builder;

/// xorshift64*: small, deterministic, good enough to pick interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Per destination core: (sender, sequence number) in execution order.
type Log = Arc<Mutex<Vec<Vec<(u32, u64)>>>>;

fn run(seed: u64) {
    let mut rng = Rng(seed | 1);
    let cores = 2 + rng.below(3) as u32;
    let ring = 2usize << rng.below(4);
    let sim = Builder::new(reactor::CpuSet::from_cores(0..cores).unwrap())
        .ring_capacity(ring)
        .message_batch(1 + rng.below(8) as usize)
        .simulate();
    let log: Log = Arc::new(Mutex::new(vec![Vec::new(); cores as usize]));
    let sent = Rc::new(RefCell::new(vec![
        vec![0u64; cores as usize];
        cores as usize
    ]));
    for _ in 0..200 {
        match rng.below(4) {
            0 | 1 => {
                // A burst from a random core to a random core (itself too).
                let (src, dst) = (
                    rng.below(cores as u64) as u32,
                    rng.below(cores as u64) as u32,
                );
                let n = 1 + rng.below(3 * ring as u64);
                sim.enter(src, || {
                    for _ in 0..n {
                        let seq = sent.borrow()[src as usize][dst as usize];
                        sent.borrow_mut()[src as usize][dst as usize] += 1;
                        let log = log.clone();
                        reactor::send(dst, move || {
                            assert_eq!(reactor::current_core(), Some(dst));
                            log.lock().unwrap()[dst as usize].push((src, seq));
                        })
                        .unwrap();
                    }
                });
            }
            2 => {
                sim.poll(rng.below(cores as u64) as u32);
            }
            _ => {
                sim.poll_all();
            }
        }
    }
    sim.run_until_idle();
    let log = log.lock().unwrap();
    let sent = sent.borrow();
    for dst in 0..cores as usize {
        for src in 0..cores as usize {
            let got: Vec<u64> = log[dst]
                .iter()
                .filter(|(s, _)| *s as usize == src)
                .map(|(_, q)| *q)
                .collect();
            let want: Vec<u64> = (0..sent[src][dst]).collect();
            assert_eq!(got, want, "seed {seed}: {src} -> {dst}");
        }
    }
    sim.shutdown().unwrap();
}

#[test]
fn random_interleavings_deliver_exactly_once_in_order() {
    if let Some(seed) = std::env::var("REACTOR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
        return;
    }
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    for i in 0..40u64 {
        let seed = base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = std::panic::catch_unwind(|| run(seed));
        if r.is_err() {
            panic!("failed with seed {seed}: replay with REACTOR_SEED={seed}");
        }
    }
}
