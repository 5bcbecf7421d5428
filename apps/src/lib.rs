//! The storage appliance: a JSON-RPC 2.0 server on a Unix socket speaking
//! SPDK's method names, parameters and result shapes; SPDK-format JSON config
//! load and save; volume exports (NBD, ublk, an NVMe/TCP target); signals and
//! orderly shutdown.
//!
//! Owns: the control plane seen from outside the process.
//!
//! Must not: touch the I/O path itself (it drives the bdev layer through its
//! control-path API), or trust any byte that arrives on a socket or in a file.
//!
//! # Shape
//!
//! ```text
//!  spdk-rpc ──unix socket──> server (accept thread, a thread per connection)
//!                              │ jsonrpc::Framer → parse_request → methods::dispatch
//!                              v
//!                            methods/{framework,bdev,nbd,ublk,nvmf} + bdev modules' rpc.rs
//!                              │ changes run on reactor 0 (Ctx::on_reactor)
//!                              v
//!  qemu-io ──NBD──> nbd (accept poller + a task per client on one reactor)
//!  /dev/ublkbN ──ublk_drv──> ublk (an io_uring per queue, a poller per queue)
//!  nvme-tcp host ──TCP──> nvmf (accept poller on reactor 0, a task per
//!                          connection, round-robin over the reactors)
//!                              │ BdevChannel I/O
//!                              v
//!                            bdev layer
//! ```
//!
//! The binary (`appliance`, `src/main.rs`) parses [`args`], sets up DMA
//! memory and reactors, loads `--json` ([`config`]), serves RPC
//! ([`server`]) and on SIGINT/SIGTERM or `spdk_kill_instance` tears down
//! in order ([`teardown`]): RPC closed, exports stopped, bdevs unregistered
//! from the top of each stack down, NVMe controllers detached, reactors
//! drained.

pub mod args;
pub mod completions;
pub mod config;
pub mod jsonrpc;
pub mod logger;
pub mod methods;
pub mod nbd;
pub mod nvmf;
pub mod server;
pub mod ublk;

use std::sync::Arc;

use methods::Ctx;

/// Stops every export, unregisters every bdev (vbdevs before their bases),
/// detaches every NVMe controller and runs every bdev module's fini. Runs
/// on a non-reactor thread.
pub fn teardown(ctx: &Arc<Ctx>) {
    // Nothing is attached behind the teardown's back.
    bdev::modules::nvme::hotplug::disable();
    nbd::stop_all();
    nvmf::stop_all();
    ublk::stop_all();
    for _ in 0..1000 {
        let list = bdev::list();
        if list.is_empty() {
            break;
        }
        let tops: Vec<String> = list
            .iter()
            .filter(|b| b.claimed_by().is_none() && b.module() != "nvme" && !b.is_removing())
            .map(|b| b.name().to_owned())
            .collect();
        if tops.is_empty() {
            for c in bdev::modules::nvme::controllers_list() {
                let name = c.name().to_owned();
                let r = ctx.on_reactor(move || async move {
                    bdev::modules::nvme::detach_controller(&name).await
                });
                if !matches!(r, Ok(Ok(()))) {
                    log::warn!("shutdown: detaching {}: {r:?}", c.name());
                }
            }
            for b in bdev::list() {
                let name = b.name().to_owned();
                let _ = ctx.on_reactor(move || async move { bdev::unregister(&name).await });
            }
            break;
        }
        for name in tops {
            let n = name.clone();
            match ctx.on_reactor(move || async move { bdev::unregister(&n).await }) {
                Ok(Ok(())) | Ok(Err(bdev::BdevError::NotFound(_))) => {}
                r => log::warn!("shutdown: unregistering {name}: {r:?}"),
            }
        }
    }
    // Every module's fini (after its bdevs are gone; may write metadata).
    if let Err(e) = ctx.on_reactor(bdev::fini) {
        log::warn!("shutdown: module fini: {e:?}");
    }
}
