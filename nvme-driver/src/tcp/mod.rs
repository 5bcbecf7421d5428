//! NVMe over TCP: the wire format both ends share ([`pdu`]; the target
//! lives in the appliance, `apps::nvmf`) and the host side: a controller
//! reached over TCP ([`TcpController`]: the admin queue, bring-up,
//! keep-alive, resets) and its I/O queue pairs ([`TcpQpair`]), with the
//! same contracts as the PCIe ones (polled, never waiting; after a reset
//! every outstanding command completes once, as aborted by the reset).

pub mod conn;
pub mod ctrlr;
pub mod pdu;
pub mod qpair;
pub mod sock;

pub use ctrlr::{TcpController, TcpOptions};
pub use qpair::TcpQpair;
