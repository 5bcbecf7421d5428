//! Log pages.

use std::mem::size_of;

/// SMART / Health Information log page (512 bytes), the fields a user reads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SmartLog {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature in kelvins (little endian).
    pub temperature: [u8; 2],
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage used.
    pub percentage_used: u8,
    /// Endurance group critical warning summary.
    pub endurance_group_warning: u8,
    _rsvd7: [u8; 25],
    /// Data units read (thousands of 512-byte units), 128-bit little endian.
    pub data_units_read: [u8; 16],
    /// Data units written, 128-bit little endian.
    pub data_units_written: [u8; 16],
    /// Host read commands, 128-bit little endian.
    pub host_read_commands: [u8; 16],
    /// Host write commands, 128-bit little endian.
    pub host_write_commands: [u8; 16],
    /// Controller busy time in minutes.
    pub controller_busy_time: [u8; 16],
    /// Power cycles.
    pub power_cycles: [u8; 16],
    /// Power on hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and data integrity errors.
    pub media_errors: [u8; 16],
    /// Number of error information log entries.
    pub num_err_log_entries: [u8; 16],
    /// Minutes above the warning composite temperature threshold.
    pub warning_temp_time: [u8; 4],
    /// Minutes above the critical composite temperature threshold.
    pub critical_temp_time: [u8; 4],
    /// Temperature sensors 1-8 in kelvins (0: not reported).
    pub temp_sensors: [u8; 16],
    _rsvd216: [u8; 296],
}

const _: () = assert!(size_of::<SmartLog>() == 512);

/// Reads a 128-bit little-endian counter, saturated to `u64`.
pub fn le128(bytes: &[u8; 16]) -> u64 {
    let v = u128::from_le_bytes(*bytes);
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl SmartLog {
    /// Reads the page from its 512 bytes (shorter input reads as zeroes).
    pub fn parse(b: &[u8]) -> SmartLog {
        let mut page = [0u8; 512];
        let n = b.len().min(512);
        page[..n].copy_from_slice(&b[..n]);
        // SAFETY: SmartLog is repr(C), 512 bytes, made only of integers and
        // byte arrays, so every bit pattern is valid; the read is unaligned.
        unsafe { std::ptr::read_unaligned(page.as_ptr().cast::<SmartLog>()) }
    }

    /// Minutes above the warning composite temperature threshold.
    pub fn warning_temperature_time(&self) -> u32 {
        u32::from_le_bytes(self.warning_temp_time)
    }

    /// Minutes above the critical composite temperature threshold.
    pub fn critical_temperature_time(&self) -> u32 {
        u32::from_le_bytes(self.critical_temp_time)
    }

    /// Controller busy time in minutes.
    pub fn controller_busy_minutes(&self) -> u64 {
        le128(&self.controller_busy_time)
    }

    /// Data units read (thousands of 512-byte units).
    pub fn data_units_read(&self) -> u64 {
        le128(&self.data_units_read)
    }

    /// Data units written (thousands of 512-byte units).
    pub fn data_units_written(&self) -> u64 {
        le128(&self.data_units_written)
    }

    /// Power-on hours.
    pub fn power_on_hours(&self) -> u64 {
        le128(&self.power_on_hours)
    }

    /// Unsafe shutdowns.
    pub fn unsafe_shutdowns(&self) -> u64 {
        le128(&self.unsafe_shutdowns)
    }

    /// Media and data integrity errors.
    pub fn media_errors(&self) -> u64 {
        le128(&self.media_errors)
    }

    /// Error information log entries over the controller's life.
    pub fn error_log_entries(&self) -> u64 {
        le128(&self.num_err_log_entries)
    }

    /// Composite temperature in kelvins.
    pub fn temperature_kelvin(&self) -> u16 {
        u16::from_le_bytes(self.temperature)
    }

    /// Host read commands.
    pub fn host_reads(&self) -> u64 {
        le128(&self.host_read_commands)
    }

    /// Host write commands.
    pub fn host_writes(&self) -> u64 {
        le128(&self.host_write_commands)
    }

    /// Power cycles.
    pub fn power_cycle_count(&self) -> u64 {
        le128(&self.power_cycles)
    }
}

/// One Error Information log entry (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorLogEntry {
    /// Error count (0 = entry unused).
    pub error_count: u64,
    /// Submission queue id.
    pub sqid: u16,
    /// Command id.
    pub cid: u16,
    /// Status field (with phase in bit 0).
    pub status: u16,
    /// Parameter error location.
    pub param_error_location: u16,
    /// LBA.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor specific information available.
    pub vs: u8,
    /// Transport type.
    pub trtype: u8,
    _rsvd: [u8; 2],
    /// Command specific information.
    pub cs: u64,
    /// Transport type specific information.
    pub trtype_specific: u16,
    _rsvd2: [u8; 22],
}

const _: () = assert!(size_of::<ErrorLogEntry>() == 64);

impl ErrorLogEntry {
    /// Reads one entry from its 64 bytes (shorter input reads as zeroes).
    pub fn parse(b: &[u8]) -> ErrorLogEntry {
        let mut e = [0u8; 64];
        let n = b.len().min(64);
        e[..n].copy_from_slice(&b[..n]);
        // SAFETY: ErrorLogEntry is repr(C), 64 bytes of integers: every bit
        // pattern is valid; the read is unaligned.
        unsafe { std::ptr::read_unaligned(e.as_ptr().cast::<ErrorLogEntry>()) }
    }
}
