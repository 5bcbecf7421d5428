//! QoS rate limits of a bdev, as SPDK's `bdev_set_qos_limit`: I/O per
//! second (reads and writes together) and MiB per second (reads and writes
//! together, reads only, writes only), 0 = no limit, enforced over every
//! core's channel of the bdev together.
//!
//! Time is cut into slices of 1 ms; each limit gets its per-second value
//! / 1000 per slice (at least one I/O or 512 bytes). An I/O is admitted
//! while every limit that applies to it has credit, and charged to all of
//! them (so a large I/O may drive a credit negative: the debt is paid from
//! the next slices); otherwise it waits, in its channel's queue and in
//! order, until a slice brings credit — it is never failed. Credit left
//! unused at the end of a slice is dropped (no bursts after idle time).
//! Only reads and writes count (and zero-copy starts); UNMAP,
//! WRITE_ZEROES, FLUSH, RESET and the rest pass, ahead of what waits.
//!
//! Fair between cores: a slice's quota goes to a balance shared by the
//! channels with nothing waiting (their I/O passes at once while it lasts);
//! once channels have I/O waiting, the quota is dealt out among those
//! channels instead, evenly, the remainder by turns, so every core's I/O
//! gets its share (SPDK gets the same by sending every I/O of a limited
//! bdev through one thread).
//!
//! The credits are atomics: with a limit set, each counted I/O of that
//! bdev pays an atomic update per limit. With no limit, the I/O path reads
//! one flag.
//!
//! The refill runs as a task on the core that set the limits, every
//! millisecond, for as long as a limit is set.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::types::IoType;

/// The length of a slice.
pub(crate) const SLICE: Duration = Duration::from_millis(1);
/// I/O per second limits are multiples of this (SPDK rounds up).
pub const MIN_IOS_PER_SEC: u64 = 1000;

/// A bdev's rate limits (0 = none), in SPDK's units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// Reads and writes per second.
    pub rw_ios_per_sec: u64,
    /// MiB per second, reads and writes.
    pub rw_mbytes_per_sec: u64,
    /// MiB per second, reads only.
    pub r_mbytes_per_sec: u64,
    /// MiB per second, writes only.
    pub w_mbytes_per_sec: u64,
}

impl QosLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.named().iter().any(|(_, v)| *v > 0)
    }

    /// Each limit under SPDK's parameter name (`bdev_set_qos_limit`,
    /// `assigned_rate_limits`).
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("rw_ios_per_sec", self.rw_ios_per_sec),
            ("rw_mbytes_per_sec", self.rw_mbytes_per_sec),
            ("r_mbytes_per_sec", self.r_mbytes_per_sec),
            ("w_mbytes_per_sec", self.w_mbytes_per_sec),
        ]
    }

    /// The quota of one slice of each limit (0 = none): I/O, then bytes.
    fn per_slice(&self) -> [i64; 4] {
        let slices_per_sec = (Duration::from_secs(1).as_nanos() / SLICE.as_nanos()) as u64;
        let per = |v: u64, min: u64| -> i64 {
            if v == 0 {
                0
            } else {
                i64::try_from((v / slices_per_sec).max(min)).unwrap_or(i64::MAX)
            }
        };
        let mib = |v: u64| v.saturating_mul(1 << 20);
        [
            per(self.rw_ios_per_sec, 1),
            per(mib(self.rw_mbytes_per_sec), 512),
            per(mib(self.r_mbytes_per_sec), 512),
            per(mib(self.w_mbytes_per_sec), 512),
        ]
    }
}

/// A change of limits: `None` keeps a limit as it is, `Some(0)` removes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosUpdate {
    /// Reads and writes per second (rounded up to a multiple of 1000).
    pub rw_ios_per_sec: Option<u64>,
    /// MiB per second, reads and writes.
    pub rw_mbytes_per_sec: Option<u64>,
    /// MiB per second, reads only.
    pub r_mbytes_per_sec: Option<u64>,
    /// MiB per second, writes only.
    pub w_mbytes_per_sec: Option<u64>,
}

impl QosUpdate {
    /// Whether it names any limit.
    pub fn is_empty(&self) -> bool {
        self.rw_ios_per_sec.is_none()
            && self.rw_mbytes_per_sec.is_none()
            && self.r_mbytes_per_sec.is_none()
            && self.w_mbytes_per_sec.is_none()
    }

    /// `old` with this change applied (I/O limits rounded up to a
    /// multiple of [`MIN_IOS_PER_SEC`], as SPDK does).
    pub fn apply(&self, old: QosLimits) -> QosLimits {
        let ios = self
            .rw_ios_per_sec
            .map(|v| v.div_ceil(MIN_IOS_PER_SEC).saturating_mul(MIN_IOS_PER_SEC));
        QosLimits {
            rw_ios_per_sec: ios.unwrap_or(old.rw_ios_per_sec),
            rw_mbytes_per_sec: self.rw_mbytes_per_sec.unwrap_or(old.rw_mbytes_per_sec),
            r_mbytes_per_sec: self.r_mbytes_per_sec.unwrap_or(old.r_mbytes_per_sec),
            w_mbytes_per_sec: self.w_mbytes_per_sec.unwrap_or(old.w_mbytes_per_sec),
        }
    }
}

/// One channel's side of QoS: how much waits in it, and the credit dealt
/// to it.
#[derive(Debug, Default)]
pub(crate) struct ChannelQos {
    /// I/O waiting in the channel's queue (written by its core alone).
    waiting: AtomicUsize,
    /// Credit dealt to this channel per limit.
    credit: [AtomicI64; 4],
}

impl ChannelQos {
    /// Publishes how much waits in the channel (its core only).
    #[inline]
    pub fn set_waiting(&self, n: usize) {
        self.waiting.store(n, Ordering::Relaxed);
    }
}

/// The QoS state of one bdev.
#[derive(Debug, Default)]
pub(crate) struct Qos {
    limits: Mutex<QosLimits>,
    /// A limit is set: channels check [`Qos::admit`].
    active: AtomicBool,
    /// The quota of a slice per limit (0: not limited).
    per_slice: [AtomicI64; 4],
    /// The credit shared by channels with nothing waiting, per limit.
    balance: [AtomicI64; 4],
    /// Every channel's side (for the deal).
    channels: Mutex<Vec<Weak<ChannelQos>>>,
    /// Whose turn the remainder of a deal starts with.
    rotor: AtomicUsize,
    /// Which refill task is the current one (a new one each time QoS is
    /// switched on; an older one sees the change and ends).
    generation: AtomicU64,
}

/// Which limits an I/O counts against: Some(is it a read) or None.
fn counted(ty: IoType) -> Option<bool> {
    match ty {
        IoType::Read => Some(true),
        IoType::Write | IoType::Zcopy => Some(false),
        _ => None,
    }
}

/// (applies, charge) per limit for an I/O: I/O count, bytes, read bytes,
/// write bytes.
fn charges(read: bool, bytes: u64) -> [(bool, i64); 4] {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    [(true, 1), (true, bytes), (read, bytes), (!read, bytes)]
}

impl Qos {
    /// The limits now.
    pub fn limits(&self) -> QosLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether I/O of type `ty` counts against the limits (others pass,
    /// ahead of what waits).
    #[inline]
    pub fn counts(ty: IoType) -> bool {
        counted(ty).is_some()
    }

    /// Whether a limit is set (one relaxed load: the I/O path's check).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// A new channel's side.
    pub fn register(&self) -> Arc<ChannelQos> {
        let c = Arc::new(ChannelQos::default());
        let mut list = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&c));
        c
    }

    /// Sets the limits. Returns the generation of a refill task to start
    /// (when QoS was switched on), None otherwise.
    pub fn set(&self, new: QosLimits) -> Option<u64> {
        let mut l = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let was = l.any();
        *l = new;
        let quota = new.per_slice();
        for (i, q) in quota.iter().enumerate() {
            self.per_slice[i].store(*q, Ordering::Relaxed);
            let b = self.balance[i].load(Ordering::Relaxed);
            // A new limit starts with one slice; a changed one keeps its
            // debt but no more than one slice of credit.
            self.balance[i].store(b.min(0).max(-*q) + *q, Ordering::Relaxed);
        }
        self.active.store(new.any(), Ordering::Release);
        if new.any() && !was {
            Some(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
        } else if !new.any() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            None
        } else {
            None
        }
    }

    /// Whether the refill task of `generation` should go on.
    pub fn current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation && self.active()
    }

    /// Admits an I/O of `ty` moving `bytes` from a channel with nothing
    /// waiting, against the shared credit, or refuses it (it waits).
    /// Types that do not count always pass.
    #[inline]
    pub fn admit(&self, ty: IoType, bytes: u64) -> bool {
        self.admit_from(&self.balance, ty, bytes)
    }

    /// Admits the first I/O waiting in a channel against the credit dealt
    /// to that channel.
    #[inline]
    pub fn admit_waiting(&self, ch: &ChannelQos, ty: IoType, bytes: u64) -> bool {
        self.admit_from(&ch.credit, ty, bytes)
    }

    fn admit_from(&self, credit: &[AtomicI64; 4], ty: IoType, bytes: u64) -> bool {
        let Some(read) = counted(ty) else {
            return true;
        };
        let limits = charges(read, bytes);
        let limited = |i: usize| limits[i].0 && self.per_slice[i].load(Ordering::Relaxed) > 0;
        if (0..4).any(|i| limited(i) && credit[i].load(Ordering::Relaxed) <= 0) {
            return false;
        }
        for (i, (_, charge)) in limits.iter().enumerate() {
            if limited(i) {
                credit[i].fetch_sub(*charge, Ordering::Relaxed);
            }
        }
        true
    }

    /// Refills for `slices` slices gone by: unused shared credit is
    /// dropped, debt is paid from the new quota; the quota goes to the
    /// shared credit when nothing waits, else it is dealt out among the
    /// channels with I/O waiting (a waiting channel keeps at most one
    /// earlier deal it could not spend yet).
    pub fn refill(&self, slices: u64) {
        let slices = i64::try_from(slices.min(1000)).unwrap_or(1000);
        let chans: Vec<Arc<ChannelQos>> = {
            let mut list = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let (waiting, idle): (Vec<&Arc<ChannelQos>>, Vec<&Arc<ChannelQos>>) = chans
            .iter()
            .partition(|c| c.waiting.load(Ordering::Relaxed) > 0);
        let drop_credit = |a: &AtomicI64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.min(0)));
        };
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        for i in 0..4 {
            let q = self.per_slice[i].load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            let add = q.saturating_mul(slices);
            for c in &idle {
                drop_credit(&c.credit[i]);
            }
            if waiting.is_empty() {
                let _ = self.balance[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.min(0).saturating_add(add))
                });
                continue;
            }
            drop_credit(&self.balance[i]);
            let n = waiting.len() as i64;
            let (each, rest) = (add / n, add % n);
            for k in 0..waiting.len() {
                let c = waiting[(start + k) % waiting.len()];
                let give = each + i64::from((k as i64) < rest);
                // A waiting channel that could not use its last deal (its
                // core was busy elsewhere) keeps it: it still has I/O to
                // spend it on (at most one deal is kept).
                let _ = c.credit[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.min(each + 1).saturating_add(give))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_quotas() {
        let u = QosUpdate {
            rw_ios_per_sec: Some(1500),
            r_mbytes_per_sec: Some(1),
            ..Default::default()
        };
        let l = u.apply(QosLimits::default());
        assert_eq!(l.rw_ios_per_sec, 2000);
        assert_eq!(l.r_mbytes_per_sec, 1);
        assert_eq!(l.per_slice(), [2, 0, 1048, 0]);
        let l = QosUpdate {
            rw_ios_per_sec: Some(1),
            ..Default::default()
        }
        .apply(l);
        assert_eq!(l.rw_ios_per_sec, 1000, "1..999 becomes 1000");
        assert_eq!(l.r_mbytes_per_sec, 1, "kept");
        let l = QosUpdate {
            rw_ios_per_sec: Some(0),
            r_mbytes_per_sec: Some(0),
            ..Default::default()
        }
        .apply(l);
        assert!(!l.any());
    }

    #[test]
    fn admission_charges_and_refills() {
        let q = Qos::default();
        assert_eq!(
            q.set(
                QosUpdate {
                    rw_ios_per_sec: Some(2000),
                    ..Default::default()
                }
                .apply(QosLimits::default())
            ),
            Some(1)
        );
        assert!(q.active());
        // Two I/O per slice; flushes and unmaps pass.
        assert!(q.admit(IoType::Read, 4096));
        assert!(q.admit(IoType::Write, 4096));
        assert!(!q.admit(IoType::Read, 4096));
        assert!(q.admit(IoType::Flush, 0));
        assert!(q.admit(IoType::Unmap, 1 << 20));
        q.refill(1);
        assert!(q.admit(IoType::Read, 512));
        // Credit left at a refill is dropped: two refills in a row leave
        // one slice's quota, not two.
        q.refill(1);
        q.refill(1);
        assert!(q.admit(IoType::Read, 512));
        assert!(q.admit(IoType::Read, 512));
        assert!(!q.admit(IoType::Read, 512));
        // A read byte limit holds reads but not writes.
        q.set(QosLimits {
            rw_ios_per_sec: 0,
            r_mbytes_per_sec: 1,
            ..Default::default()
        });
        assert!(q.admit(IoType::Read, 1 << 20), "a positive balance admits");
        assert!(!q.admit(IoType::Read, 512), "then the debt holds reads");
        assert!(q.admit(IoType::Write, 1 << 20));
        q.refill(1000);
        assert!(q.admit(IoType::Read, 512), "the debt is paid");
        // Off: the refill task's generation is over.
        assert_eq!(q.set(QosLimits::default()), None);
        assert!(!q.active());
        assert!(!q.current(1));
    }

    #[test]
    fn the_quota_is_dealt_among_waiting_channels_by_turns() {
        let q = Qos::default();
        q.set(QosLimits {
            rw_ios_per_sec: 1000,
            ..Default::default()
        });
        let (a, b, idle) = (q.register(), q.register(), q.register());
        a.set_waiting(5);
        b.set_waiting(5);
        // One I/O per slice, two channels waiting: turn by turn.
        let mut got = [0, 0];
        for _ in 0..10 {
            q.refill(1);
            for (k, c) in [&a, &b].iter().enumerate() {
                while q.admit_waiting(c, IoType::Read, 4096) {
                    got[k] += 1;
                }
            }
            assert!(!q.admit_waiting(&idle, IoType::Read, 4096));
        }
        assert_eq!(got, [5, 5]);
        // While channels wait, the shared credit is not refilled: a channel
        // with nothing waiting queues behind them too.
        assert!(!q.admit(IoType::Read, 4096));
        // Nothing waits: the quota is shared again, and dealt credit left
        // over is dropped.
        a.set_waiting(0);
        b.set_waiting(0);
        q.refill(1);
        assert!(q.admit(IoType::Read, 4096));
        assert!(!q.admit(IoType::Read, 4096));
        assert!(!q.admit_waiting(&a, IoType::Read, 4096));
        assert!(!q.admit_waiting(&b, IoType::Read, 4096));
    }
}
