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
    _rsvd192: [u8; 320],
}

const _: () = assert!(size_of::<SmartLog>() == 512);

/// Reads a 128-bit little-endian counter, saturated to `u64`.
pub fn le128(bytes: &[u8; 16]) -> u64 {
    let v = u128::from_le_bytes(*bytes);
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl SmartLog {
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
