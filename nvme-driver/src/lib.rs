//! The poll-mode user-space NVMe driver: PCIe transport through VFIO, the
//! controller bring-up and reset state machines, admin commands, and I/O
//! queue pairs each owned by exactly one core.
//!
//! Owns: BAR0 registers, submission/completion rings, command encoding, PRP
//! lists, completion polling, timeouts, abort and reset, async events.
//!
//! Must not: take interrupts, lock or allocate on the submit/complete path,
//! or create Rust references into memory the controller may write.

pub mod pci;
pub mod regs;
