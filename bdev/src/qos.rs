//! QoS rate limits of a bdev, as SPDK's `bdev_set_qos_limit`: I/O per
//! second (reads and writes together) and MiB per second (reads and writes
//! together, reads only, writes only), 0 = no limit, enforced over every
//! core's channel of the bdev together.
//!
//! Time is cut into slices of 1 ms; each limit gets its per-second value
//! / 1000 per slice (at least one I/O or 512 bytes), held as a balance
//! that every core's channel draws from. An I/O is admitted while every
//! limit that applies to it has a positive balance, and charged to all of
//! them (so a large I/O may drive a balance negative: the debt is paid
//! from the next slices); otherwise it waits, in its channel's queue and
//! in order, until a slice refills the balance — it is never failed. A
//! balance left unused at the end of a slice is dropped (no bursts after
//! idle time). Only reads and writes count (and zero-copy starts); UNMAP,
//! WRITE_ZEROES, FLUSH, RESET and the rest pass.
//!
//! The balances are atomics shared by the bdev's channels: with a limit set,
//! each counted I/O of that bdev pays an atomic update per limit (the price
//! of one budget for all cores; SPDK instead sends every I/O of a limited
//! bdev to one thread). With no limit, the I/O path reads one flag.
//!
//! The refill runs as a task on the core that set the limits, every
//! millisecond, for as long as a limit is set.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
        self.as_array().iter().any(|v| *v > 0)
    }

    fn as_array(&self) -> [u64; 4] {
        [
            self.rw_ios_per_sec,
            self.rw_mbytes_per_sec,
            self.r_mbytes_per_sec,
            self.w_mbytes_per_sec,
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

/// The QoS state of one bdev.
#[derive(Debug, Default)]
pub(crate) struct Qos {
    limits: Mutex<QosLimits>,
    /// A limit is set: channels check [`Qos::admit`].
    active: AtomicBool,
    /// The quota of a slice per limit (0: not limited).
    per_slice: [AtomicI64; 4],
    /// What is left of the current slice per limit.
    balance: [AtomicI64; 4],
    /// Which refill task is the current one (a new one each time QoS is
    /// switched on; an older one sees the change and ends).
    generation: AtomicU64,
}

/// Which limits an I/O counts against: (I/O count, bytes, is it a read).
fn counted(ty: IoType) -> Option<bool> {
    match ty {
        IoType::Read => Some(true),
        IoType::Write | IoType::Zcopy => Some(false),
        _ => None,
    }
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

    /// Admits an I/O of `ty` moving `bytes`, charging every limit that
    /// applies, or refuses it (it waits for a refill). Types that do not
    /// count always pass.
    #[inline]
    pub fn admit(&self, ty: IoType, bytes: u64) -> bool {
        let Some(read) = counted(ty) else {
            return true;
        };
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // (applies, charge) per limit: I/O count, bytes, read bytes, write
        // bytes.
        let limits = [(true, 1), (true, bytes), (read, bytes), (!read, bytes)];
        let limited = |i: usize| limits[i].0 && self.per_slice[i].load(Ordering::Relaxed) > 0;
        if (0..4).any(|i| limited(i) && self.balance[i].load(Ordering::Relaxed) <= 0) {
            return false;
        }
        for (i, (_, charge)) in limits.iter().enumerate() {
            if limited(i) {
                self.balance[i].fetch_sub(*charge, Ordering::Relaxed);
            }
        }
        true
    }

    /// Refills the balances for `slices` slices gone by: unused credit is
    /// dropped, debt is paid from the new quota.
    pub fn refill(&self, slices: u64) {
        let slices = i64::try_from(slices.min(1000)).unwrap_or(1000);
        for i in 0..4 {
            let q = self.per_slice[i].load(Ordering::Relaxed);
            if q == 0 {
                continue;
            }
            let add = q.saturating_mul(slices);
            let _ = self.balance[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.min(0).saturating_add(add))
            });
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
}
