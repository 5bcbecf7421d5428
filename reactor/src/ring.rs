//! A core's inbox: the rings other senders push messages into.
//!
//! ```text
//!              reactor 0 --SPSC--\
//!              reactor 1 --SPSC---+--> inbox of core k --> reactor k drains
//!                 ...             |    (each ring up to a batch per iteration)
//!   other threads --MPSC ArrayQueue/
//! ```
//!
//! Reactor-to-reactor traffic, the hot path, goes through one
//! single-producer single-consumer ring per (sender, receiver) pair,
//! allocated on the pair's first message ([`Spsc`]: no locked instruction
//! per message, producer and consumer state on separate cache lines).
//! Threads that are not reactors share one bounded multi-producer ring per
//! core: crossbeam's `ArrayQueue`, whose head and tail are also on separate
//! cache lines.
//!
//! Per-sender FIFO: each reactor has its own ring to each core, and an
//! `ArrayQueue` hands out increasing positions to one thread's pushes,
//! which the single consumer pops in order; so messages from one sender run
//! in the order sent.

use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;

use crate::message::Message;
use crate::spsc::Spsc;

/// One core's incoming rings.
pub(crate) struct Inbox {
    /// From reactor `i` of the same runtime.
    from: Box<[OnceLock<Spsc>]>,
    /// From any other thread.
    external: ArrayQueue<Message>,
    capacity: usize,
}

impl Inbox {
    pub(crate) fn new(reactors: usize, capacity: usize) -> Inbox {
        Inbox {
            from: (0..reactors).map(|_| OnceLock::new()).collect(),
            external: ArrayQueue::new(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Capacity of each ring.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pushes from reactor `src`, or gives the message back when full.
    ///
    /// # Safety
    /// Only reactor `src`'s thread may push with this `src`.
    #[inline]
    pub(crate) unsafe fn push_from(&self, src: usize, msg: Message) -> Result<(), Message> {
        let ring = self.from[src].get_or_init(|| Spsc::new(self.capacity));
        // SAFETY: the caller guarantees that it is `src`'s only producer.
        unsafe { ring.push(msg) }
    }

    /// Pushes from a thread that is not a reactor of this runtime.
    #[inline]
    pub(crate) fn push_external(&self, msg: Message) -> Result<(), Message> {
        self.external.push(msg)
    }

    /// Runs up to `batch` messages from each ring; returns how many ran.
    /// `on_message` is called before each one runs.
    ///
    /// # Safety
    /// Only the owning reactor's thread (the one consumer) may drain.
    #[inline]
    pub(crate) unsafe fn drain(&self, batch: usize, mut on_message: impl FnMut()) -> usize {
        let mut n = 0;
        for ring in self.from.iter() {
            let Some(ring) = ring.get() else { continue };
            let mut k = 0;
            while k < batch {
                // SAFETY: the caller is the only consumer.
                let Some(m) = (unsafe { ring.pop() }) else {
                    break;
                };
                k += 1;
                on_message();
                m.run();
            }
            n += k;
        }
        let mut k = 0;
        while k < batch {
            let Some(m) = self.external.pop() else { break };
            k += 1;
            on_message();
            m.run();
        }
        n + k
    }

    /// Pops one message from any ring (shutdown paths).
    ///
    /// # Safety
    /// As for [`drain`](Self::drain): one consumer at a time.
    pub(crate) unsafe fn pop_any(&self) -> Option<Message> {
        for ring in self.from.iter().filter_map(|r| r.get()) {
            // SAFETY: the caller is the only consumer.
            if let Some(m) = unsafe { ring.pop() } {
                return Some(m);
            }
        }
        self.external.pop()
    }

    /// Whether any ring has a message waiting.
    ///
    /// # Safety
    /// As for [`drain`](Self::drain): only the consumer.
    #[inline]
    pub(crate) unsafe fn has_pending(&self) -> bool {
        self.from
            .iter()
            .filter_map(|r| r.get())
            // SAFETY: the caller is the only consumer.
            .any(|r| unsafe { r.has_pending() })
            || !self.external.is_empty()
    }

    /// Whether every ring looks empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.external.is_empty()
            && self
                .from
                .iter()
                .filter_map(|r| r.get())
                .all(|r| r.is_empty())
    }
}
