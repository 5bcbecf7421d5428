//! Per-core poll-mode runtime: one reactor thread per core, pinned, running
//! pollers and draining lockless message rings from the other cores.
//!
//! Owns: reactor threads and their pinning, cross-core message rings,
//! pollers (busy/idle, timed), per-core I/O channels of registered I/O
//! devices, the small local executor for control-path tasks, shutdown and
//! per-reactor statistics.
//!
//! Must not: block a reactor thread, take a lock or allocate on the hot path,
//! or know anything about storage (no DMA, no devices, no bdevs).
