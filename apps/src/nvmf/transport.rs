//! The TCP transport's options (`nvmf_create_transport`), with SPDK's
//! defaults for TCP and its checks, and their JSON form
//! (`nvmf_get_transports`, save_config).

use serde::Deserialize;
use serde_json::{Value, json};

/// The options of the TCP transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOpts {
    /// Most commands outstanding on one I/O queue (SQ size).
    pub max_queue_depth: u16,
    /// Most I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data the target accepts on I/O queues (bytes).
    pub in_capsule_data_size: u32,
    /// The largest I/O (bytes; MDTS follows from it).
    pub max_io_size: u32,
    /// Buffer unit size (bytes; SPDK's, kept for the interface).
    pub io_unit_size: u32,
    /// Admin queue depth.
    pub max_aq_depth: u32,
    /// Shared buffers (SPDK's pool size; kept for the interface).
    pub num_shared_buffers: u32,
    /// Per-poll-group buffer cache (SPDK's; kept for the interface).
    pub buf_cache_size: u32,
    /// DIF insert/strip (not supported: false only).
    pub dif_insert_or_strip: bool,
    /// Zero-copy through the bdev's zcopy (kept for the interface).
    pub zcopy: bool,
    /// C2HData with the SUCCESS flag (no response capsule) for reads, when
    /// the host disabled SQ flow control.
    pub c2h_success: bool,
    /// SO_PRIORITY of the connections' sockets (0 to 16).
    pub sock_priority: u32,
    /// Seconds an abort waits (kept for the interface).
    pub abort_timeout_sec: u32,
    /// RDMA's; carried and shown.
    pub ack_timeout: u32,
    /// RDMA's; carried and shown.
    pub data_wr_pool_size: u32,
}

impl Default for TcpOpts {
    fn default() -> Self {
        TcpOpts {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: u32::MAX,
            dif_insert_or_strip: false,
            zcopy: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            ack_timeout: 0,
            data_wr_pool_size: 0,
        }
    }
}

/// `nvmf_create_transport`'s parameters: unknown keys (RDMA's, newer
/// SPDK's) are ignored, as SPDK's relaxed decoding does; a known key with
/// the wrong type is an error.
#[derive(Debug, Deserialize)]
pub struct CreateParams {
    /// "TCP" in any case.
    pub trtype: String,
    /// The target's name (only the default target exists).
    pub tgt_name: Option<String>,
    /// See [`TcpOpts`].
    pub max_queue_depth: Option<u16>,
    /// See [`TcpOpts`].
    pub max_io_qpairs_per_ctrlr: Option<u16>,
    /// See [`TcpOpts`].
    pub in_capsule_data_size: Option<u32>,
    /// See [`TcpOpts`].
    pub max_io_size: Option<u32>,
    /// See [`TcpOpts`].
    pub io_unit_size: Option<u32>,
    /// See [`TcpOpts`].
    pub max_aq_depth: Option<u32>,
    /// See [`TcpOpts`].
    pub num_shared_buffers: Option<u32>,
    /// See [`TcpOpts`].
    pub buf_cache_size: Option<u32>,
    /// See [`TcpOpts`].
    pub dif_insert_or_strip: Option<bool>,
    /// See [`TcpOpts`].
    pub zcopy: Option<bool>,
    /// See [`TcpOpts`].
    pub c2h_success: Option<bool>,
    /// See [`TcpOpts`].
    pub sock_priority: Option<u32>,
    /// See [`TcpOpts`].
    pub abort_timeout_sec: Option<u32>,
    /// See [`TcpOpts`].
    pub ack_timeout: Option<u32>,
    /// See [`TcpOpts`].
    pub data_wr_pool_size: Option<u32>,
    /// SPDK's acceptor poll period (µs; accepted, not shown).
    pub acceptor_poll_rate: Option<u32>,
    /// SPDK's control message count (accepted, not shown).
    pub control_msg_num: Option<u16>,
}

/// The largest in-capsule data size accepted.
pub const MAX_IN_CAPSULE: u32 = 128 * 1024;
/// The largest I/O size accepted (what one command may move).
pub const MAX_IO_SIZE: u32 = 4 << 20;

impl TcpOpts {
    /// The options `p` asks for over the defaults.
    ///
    /// # Errors
    /// What is out of range, named: a queue depth under 2, in-capsule data
    /// over 128 KiB or not a multiple of 16, a maximum I/O size not a power
    /// of two or outside 8 KiB..4 MiB, a zero I/O unit, a socket priority
    /// over 16, DIF insert/strip.
    pub fn from_params(p: &CreateParams) -> Result<TcpOpts, String> {
        let d = TcpOpts::default();
        let mut o = TcpOpts {
            max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
            max_io_qpairs_per_ctrlr: p
                .max_io_qpairs_per_ctrlr
                .unwrap_or(d.max_io_qpairs_per_ctrlr),
            in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
            max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
            io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
            max_aq_depth: p.max_aq_depth.unwrap_or(d.max_aq_depth),
            num_shared_buffers: p.num_shared_buffers.unwrap_or(d.num_shared_buffers),
            buf_cache_size: p.buf_cache_size.unwrap_or(d.buf_cache_size),
            dif_insert_or_strip: p.dif_insert_or_strip.unwrap_or(false),
            zcopy: p.zcopy.unwrap_or(false),
            c2h_success: p.c2h_success.unwrap_or(d.c2h_success),
            sock_priority: p.sock_priority.unwrap_or(0),
            abort_timeout_sec: p.abort_timeout_sec.unwrap_or(d.abort_timeout_sec),
            ack_timeout: p.ack_timeout.unwrap_or(0),
            data_wr_pool_size: p.data_wr_pool_size.unwrap_or(0),
        };
        if o.max_queue_depth < 2 {
            return Err(format!(
                "max_queue_depth {} (at least 2)",
                o.max_queue_depth
            ));
        }
        if o.max_io_qpairs_per_ctrlr == 0 {
            return Err("max_io_qpairs_per_ctrlr 0 (at least 1)".into());
        }
        if o.in_capsule_data_size > MAX_IN_CAPSULE || !o.in_capsule_data_size.is_multiple_of(16) {
            return Err(format!(
                "in_capsule_data_size {} (a multiple of 16, at most {MAX_IN_CAPSULE})",
                o.in_capsule_data_size
            ));
        }
        if !o.max_io_size.is_power_of_two() || !(8192..=MAX_IO_SIZE).contains(&o.max_io_size) {
            return Err(format!(
                "max_io_size {} (a power of two from 8192 to {MAX_IO_SIZE})",
                o.max_io_size
            ));
        }
        if o.io_unit_size == 0 {
            return Err("io_unit_size 0".into());
        }
        if o.sock_priority > 16 {
            return Err(format!(
                "sock_priority {} (the range is 0 to 16)",
                o.sock_priority
            ));
        }
        if o.dif_insert_or_strip {
            return Err("dif_insert_or_strip is not supported".into());
        }
        o.max_aq_depth = o.max_aq_depth.clamp(32, 4096);
        o.io_unit_size = o.io_unit_size.min(o.max_io_size);
        Ok(o)
    }

    /// The JSON `nvmf_get_transports` shows (and save_config replays).
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": "TCP",
            "max_queue_depth": self.max_queue_depth,
            "max_io_qpairs_per_ctrlr": self.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": self.in_capsule_data_size,
            "max_io_size": self.max_io_size,
            "io_unit_size": self.io_unit_size,
            "max_aq_depth": self.max_aq_depth,
            "num_shared_buffers": self.num_shared_buffers,
            "buf_cache_size": self.buf_cache_size,
            "dif_insert_or_strip": self.dif_insert_or_strip,
            "zcopy": self.zcopy,
            "c2h_success": self.c2h_success,
            "sock_priority": self.sock_priority,
            "abort_timeout_sec": self.abort_timeout_sec,
            "ack_timeout": self.ack_timeout,
            "data_wr_pool_size": self.data_wr_pool_size,
        })
    }
}
