//! The module's options, as SPDK's `bdev_nvme_set_options` sets them: I/O
//! and admin command timeouts with the action on a timeout, how often an
//! I/O a reset took is submitted again, and the reconnect policy of a
//! controller whose reset failed. SPDK's defaults and validation rules
//! (with its log texts) apply; options change only while no controller is
//! attached, as in SPDK.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nvme_driver::TimeoutAction;

use crate::BdevError;

/// What a controller does when a reset fails (SPDK's
/// `ctrlr_loss_timeout_sec`, `reconnect_delay_sec`,
/// `fast_io_fail_timeout_sec`; per controller from
/// `bdev_nvme_attach_controller`, else the module's options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Seconds a failed controller is retried before it is deleted (its
    /// bdevs unregistered); -1: forever; 0: no retries (the controller
    /// stays failed until a reset succeeds).
    pub ctrlr_loss_timeout_sec: i32,
    /// Seconds between reconnect attempts (0 with a zero loss timeout).
    pub reconnect_delay_sec: u32,
    /// Seconds after which I/O to a failed controller fails instead of
    /// waiting for a reconnect (0: it waits as long as the controller is
    /// retried).
    pub fast_io_fail_timeout_sec: u32,
}

impl Recovery {
    /// SPDK's rules for the three values; the error is SPDK's text.
    ///
    /// # Errors
    /// The rule broken.
    pub fn validate(&self) -> Result<(), String> {
        let (loss, delay, fast) = (
            self.ctrlr_loss_timeout_sec,
            self.reconnect_delay_sec,
            self.fast_io_fail_timeout_sec,
        );
        if loss < -1 {
            return Err("ctrlr_loss_timeout_sec can't be less than -1.".into());
        }
        if loss == 0 {
            if delay != 0 || fast != 0 {
                return Err("Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0.".into());
            }
            return Ok(());
        }
        if delay == 0 {
            return Err(
                "reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0.".into(),
            );
        }
        if loss > 0 && delay > loss as u32 {
            return Err("reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec.".into());
        }
        if fast != 0 && fast < delay {
            return Err("reconnect_delay_sec can't be more than fast_io_fail_timeout_sec.".into());
        }
        if loss > 0 && fast > loss as u32 {
            return Err(
                "fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec.".into(),
            );
        }
        Ok(())
    }
}

/// The module's options (SPDK's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeOptions {
    /// What to do about a command past its timeout.
    pub action_on_timeout: TimeoutAction,
    /// I/O command timeout in microseconds (0: off).
    pub timeout_us: u64,
    /// Admin command timeout in microseconds (0: `timeout_us`, or the
    /// driver's own bound of 10 s when that is 0 too).
    pub timeout_admin_us: u64,
    /// Retries of a transport error (fabrics transports; PCIe has none).
    pub transport_retry_count: u32,
    /// Submissions again of an I/O a reset took (-1: without limit).
    pub bdev_retry_count: i32,
    /// Seconds a failed controller is retried before it is deleted.
    pub ctrlr_loss_timeout_sec: i32,
    /// Seconds between reconnect attempts.
    pub reconnect_delay_sec: u32,
    /// Seconds after which I/O to a failed controller fails.
    pub fast_io_fail_timeout_sec: u32,
    /// Keep Alive timeout of fabrics controllers in milliseconds.
    pub keep_alive_timeout_ms: u32,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            action_on_timeout: TimeoutAction::None,
            timeout_us: 0,
            timeout_admin_us: 0,
            transport_retry_count: 4,
            bdev_retry_count: 3,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            keep_alive_timeout_ms: 10_000,
        }
    }
}

impl NvmeOptions {
    /// SPDK's checks (`bdev_nvme_validate_opts`), with its texts.
    ///
    /// # Errors
    /// The rule broken.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_us == 0 && self.timeout_admin_us != 0 {
            return Err(
                "Invalid options: Can't have (timeout_us == 0) with (timeout_admin_us > 0)".into(),
            );
        }
        if self.bdev_retry_count < -1 {
            return Err("Invalid option: bdev_retry_count can't be less than -1.".into());
        }
        self.recovery().validate()
    }

    /// The reconnect policy part.
    pub fn recovery(&self) -> Recovery {
        Recovery {
            ctrlr_loss_timeout_sec: self.ctrlr_loss_timeout_sec,
            reconnect_delay_sec: self.reconnect_delay_sec,
            fast_io_fail_timeout_sec: self.fast_io_fail_timeout_sec,
        }
    }

    /// The I/O timeout (None: off).
    pub fn io_timeout(&self) -> Option<Duration> {
        (self.timeout_us != 0).then(|| Duration::from_micros(self.timeout_us))
    }

    /// The admin timeout when one is set (`timeout_admin_us`, else
    /// `timeout_us`).
    pub fn admin_timeout(&self) -> Option<Duration> {
        match (self.timeout_admin_us, self.timeout_us) {
            (0, 0) => None,
            (0, t) | (t, _) => Some(Duration::from_micros(t)),
        }
    }
}

static OPTIONS: Mutex<Option<NvmeOptions>> = Mutex::new(None);

/// Kept apart for the I/O path (read per completion of a reset I/O).
static BDEV_RETRY_COUNT: AtomicI32 = AtomicI32::new(3);

/// The module's options now.
pub fn options() -> NvmeOptions {
    OPTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default()
}

/// Sets the module's options (whole), as `bdev_nvme_set_options` does:
/// refused while a controller is attached (`BdevError::Busy`-like
/// [`BdevError::NotPermitted`]), checked by SPDK's rules.
///
/// # Errors
/// [`BdevError::NotPermitted`] with controllers attached,
/// [`BdevError::Invalid`] naming the rule broken.
pub fn set_options(o: NvmeOptions) -> Result<(), BdevError> {
    if !super::controllers_list().is_empty() {
        return Err(BdevError::NotPermitted(
            "RPC not permitted with nvme controllers already attached".into(),
        ));
    }
    o.validate()
        .map_err(|why| BdevError::invalid("bdev_nvme options", why))?;
    BDEV_RETRY_COUNT.store(o.bdev_retry_count, Ordering::Relaxed);
    *OPTIONS.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
    Ok(())
}

/// Sets `bdev_retry_count` alone (see [`bdev_retry_count`]); unlike
/// [`set_options`], also with controllers attached (tests).
///
/// # Errors
/// [`BdevError::Invalid`] below -1.
pub fn set_bdev_retry_count(n: i32) -> Result<(), BdevError> {
    if n < -1 {
        return Err(BdevError::invalid(
            "bdev_retry_count",
            "Invalid option: bdev_retry_count can't be less than -1.",
        ));
    }
    BDEV_RETRY_COUNT.store(n, Ordering::Relaxed);
    let mut g = OPTIONS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(NvmeOptions::default).bdev_retry_count = n;
    Ok(())
}

/// How many times an I/O aborted by a controller reset is submitted again
/// (-1: without limit; SPDK's default 3).
pub fn bdev_retry_count() -> i32 {
    BDEV_RETRY_COUNT.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(loss: i32, delay: u32, fast: u32) -> Result<(), String> {
        Recovery {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fast,
        }
        .validate()
    }

    #[test]
    fn spdk_rules_for_the_reconnect_policy() {
        assert_eq!(r(0, 0, 0), Ok(()));
        assert_eq!(r(-1, 2, 0), Ok(()));
        assert_eq!(r(-1, 2, 4), Ok(()));
        assert_eq!(r(10, 2, 5), Ok(()));
        assert_eq!(r(10, 10, 10), Ok(()));
        assert!(r(-2, 1, 0).unwrap_err().contains("less than -1"));
        assert!(
            r(0, 1, 0)
                .unwrap_err()
                .starts_with("Both reconnect_delay_sec")
        );
        assert!(
            r(0, 0, 1)
                .unwrap_err()
                .starts_with("Both reconnect_delay_sec")
        );
        assert!(r(-1, 0, 0).unwrap_err().contains("can't be 0"));
        assert!(r(5, 0, 0).unwrap_err().contains("can't be 0"));
        assert!(
            r(5, 6, 0)
                .unwrap_err()
                .contains("more than ctrlr_loss_timeout_sec")
        );
        assert!(
            r(10, 5, 3)
                .unwrap_err()
                .contains("more than fast_io_fail_timeout_sec")
        );
        assert!(r(-1, 5, 3).unwrap_err().contains("more than fast_io_fail"));
        assert!(
            r(10, 2, 11)
                .unwrap_err()
                .starts_with("fast_io_fail_timeout_sec can't be more")
        );
    }

    #[test]
    fn admin_timeout_follows_the_io_timeout_when_unset() {
        let mut o = NvmeOptions::default();
        assert_eq!((o.io_timeout(), o.admin_timeout()), (None, None));
        o.timeout_us = 5_000_000;
        assert_eq!(o.admin_timeout(), Some(Duration::from_secs(5)));
        o.timeout_admin_us = 1_000_000;
        assert_eq!(o.admin_timeout(), Some(Duration::from_secs(1)));
        o.timeout_us = 0;
        assert!(o.validate().unwrap_err().contains("timeout_admin_us > 0"));
    }
}
