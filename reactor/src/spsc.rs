//! A bounded single-producer single-consumer ring with a sequence stamp in
//! every slot (the FastForward / Vyukov layout, without compare-and-swap).
//!
//! Each slot is one 64-byte cache line: an 8-byte stamp and a 56-byte
//! [`Message`]. The producer writes the message and then releases the
//! stamp; the consumer acquires the stamp, takes the message and stamps the
//! slot free for the producer's next lap. Producer and consumer keep their
//! positions privately (each on its own cache line) and never read each
//! other's: a hand-off moves exactly one cache line (the slot) from one core
//! to the other, and no read-modify-write instruction is used.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::message::Message;

/// A position, alone on its cache lines.
#[repr(align(128))]
struct Position(AtomicUsize);

#[repr(align(64))]
struct Slot {
    /// `pos + 1` once the message for position `pos` is written (so a
    /// stamp left from an earlier lap never matches).
    stamp: AtomicUsize,
    msg: UnsafeCell<MaybeUninit<Message>>,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

pub(crate) struct Spsc {
    /// Next position to write (producer-owned; others only observe it).
    tail: Position,
    /// Next position to read (consumer-owned): the producer reads it only
    /// when its cached copy says the ring is full.
    head: Position,
    /// The producer's last view of `head` (producer-private).
    head_cache: Position,
    slots: Box<[Slot]>,
    mask: usize,
}

// SAFETY: a slot's message is handed from the one producer to the one
// consumer by the release/acquire pair on its stamp, and back (free) by the
// consumer's release of the next lap's stamp; a slot is only accessed by the
// side its stamp designates (see `push`/`pop`, whose callers guarantee one
// producer and one consumer), and `Message` is `Send`.
unsafe impl Sync for Spsc {}
// SAFETY: owns `Message`s, which are `Send`.
unsafe impl Send for Spsc {}

impl Spsc {
    /// A ring of at least `capacity` slots (rounded up to a power of two).
    pub(crate) fn new(capacity: usize) -> Spsc {
        let cap = capacity.max(2).next_power_of_two();
        Spsc {
            tail: Position(AtomicUsize::new(0)),
            head: Position(AtomicUsize::new(0)),
            head_cache: Position(AtomicUsize::new(0)),
            slots: (0..cap)
                .map(|_| Slot {
                    stamp: AtomicUsize::new(0),
                    msg: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            mask: cap - 1,
        }
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Pushes, or gives the message back when full.
    ///
    /// # Safety
    /// Only one thread may push into a given ring at a time (its producer).
    #[inline]
    pub(crate) unsafe fn push(&self, msg: Message) -> Result<(), Message> {
        let pos = self.tail.0.load(Ordering::Relaxed);
        let free_until = self
            .head_cache
            .0
            .load(Ordering::Relaxed)
            .wrapping_add(self.mask + 1);
        if pos == free_until {
            // Looks full: refresh our view of the consumer's position.
            let head = self.head.0.load(Ordering::Acquire);
            self.head_cache.0.store(head, Ordering::Relaxed);
            if pos == head.wrapping_add(self.mask + 1) {
                return Err(msg);
            }
        }
        let slot = &self.slots[pos & self.mask];
        // SAFETY: `pos` is less than a lap ahead of the consumer's position
        // (acquired now or earlier), so the consumer is done with this slot;
        // we are the only producer.
        unsafe { (*slot.msg.get()).write(msg) };
        slot.stamp.store(pos.wrapping_add(1), Ordering::Release);
        self.tail.0.store(pos.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Pops the oldest message, if any.
    ///
    /// # Safety
    /// Only one thread may pop from a given ring at a time (its consumer).
    #[inline]
    pub(crate) unsafe fn pop(&self) -> Option<Message> {
        let pos = self.head.0.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        if slot.stamp.load(Ordering::Acquire) != pos.wrapping_add(1) {
            return None;
        }
        // SAFETY: the stamp says the producer wrote this slot's message for
        // `pos` (released, acquired just above); we are the only consumer
        // and take it out once. The slot is handed back by our release of
        // `head` below: the consumer never writes a slot, so the line can
        // stay shared until the producer's next lap.
        let msg = unsafe { (*slot.msg.get()).assume_init_read() };
        self.head.0.store(pos.wrapping_add(1), Ordering::Release);
        Some(msg)
    }

    /// Whether a message is waiting, seen from the consumer (one load of
    /// the next slot's stamp).
    ///
    /// # Safety
    /// Only the ring's consumer may call this.
    #[inline]
    pub(crate) unsafe fn has_pending(&self) -> bool {
        let pos = self.head.0.load(Ordering::Relaxed);
        self.slots[pos & self.mask].stamp.load(Ordering::Acquire) == pos.wrapping_add(1)
    }

    /// Whether the ring looks empty, seen from any thread (exact when
    /// neither side is active).
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.head.0.load(Ordering::Acquire);
        let tail = self.tail.0.load(Ordering::Acquire);
        head == tail
    }
}

impl Drop for Spsc {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no producer or consumer is active.
        while let Some(m) = unsafe { self.pop() } {
            drop(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn fifo_full_and_wrap() {
        let r = Spsc::new(4);
        assert_eq!(r.capacity(), 4);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        for round in 0..3u32 {
            for i in 0..4u32 {
                let s = seen.clone();
                let m = Message::new(move || s.lock().unwrap().push(round * 4 + i));
                // SAFETY: this test is the only producer and consumer.
                let pushed = unsafe { r.push(m) };
                assert!(pushed.is_ok());
            }
            // SAFETY: as above.
            assert!(unsafe { r.push(Message::new(|| ())) }.is_err());
            // SAFETY: as above.
            while let Some(m) = unsafe { r.pop() } {
                m.run();
            }
            assert!(r.is_empty());
        }
        assert_eq!(*seen.lock().unwrap(), (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn two_threads_in_order() {
        const N: u64 = 200_000;
        let r = Arc::new(Spsc::new(64));
        let next = Arc::new(AtomicU64::new(0));
        let producer = {
            let r = r.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    let next = next.clone();
                    let mut m = Message::new(move || {
                        assert_eq!(next.load(Ordering::Relaxed), i);
                        next.store(i + 1, Ordering::Relaxed);
                    });
                    // SAFETY: this thread is the only producer.
                    while let Err(back) = unsafe { r.push(m) } {
                        m = back;
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut got = 0;
        while got < N {
            // SAFETY: this thread is the only consumer.
            match unsafe { r.pop() } {
                Some(m) => {
                    m.run();
                    got += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(next.load(Ordering::Relaxed), N);
    }

    #[test]
    fn leftovers_are_dropped() {
        let token = Arc::new(());
        let r = Spsc::new(8);
        for _ in 0..5 {
            let t = token.clone();
            // SAFETY: single-threaded test.
            unsafe { r.push(Message::new(move || drop(t))) }
                .ok()
                .unwrap();
        }
        drop(r);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
