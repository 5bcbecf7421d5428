//! The per-core message ring.
//!
//! Every reactor owns one bounded ring that any thread pushes into and only
//! the owner pops from (multi-producer, single-consumer use of crossbeam's
//! `ArrayQueue`). Its head (consumer) and tail (producer) indices live on
//! separate cache lines inside `ArrayQueue`, each slot is one 64-byte line
//! (a 56-byte [`Message`] plus the slot's stamp), and the ring itself is
//! aligned so that two cores' rings never share a line.
//!
//! Per-sender FIFO: a producer's pushes take increasing tail positions and
//! the single consumer pops in position order, so messages from one sender
//! run in the order sent.

use crossbeam_queue::ArrayQueue;

use crate::message::Message;

/// One core's incoming ring.
#[repr(align(128))]
pub(crate) struct Ring {
    queue: ArrayQueue<Message>,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Ring {
        Ring {
            queue: ArrayQueue::new(capacity.max(1)),
        }
    }

    /// Pushes, or gives the message back when the ring is full.
    #[inline]
    pub(crate) fn push(&self, msg: Message) -> Result<(), Message> {
        self.queue.push(msg)
    }

    /// Pops the oldest message, if any (owner only).
    #[inline]
    pub(crate) fn pop(&self) -> Option<Message> {
        self.queue.pop()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}
