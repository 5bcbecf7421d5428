//! NVMe over TCP: the wire format both ends share ([`pdu`]). The target
//! lives in the appliance (`apps::nvmf`); the initiator will sit here,
//! behind the same queue-pair interface as PCIe.

pub mod pdu;
