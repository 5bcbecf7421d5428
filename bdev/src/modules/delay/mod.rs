//! The delay vbdev: holds each read and write completion of its base for an
//! average latency, or the p99 latency for one I/O in a hundred (as SPDK's
//! bdev_delay), all settable at run time (`bdev_delay_update_latency`).

pub mod rpc;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reactor::{PollStatus, Poller};
use serde_json::json;

use super::passthru::{Base, pass_down};
use crate::{Bdev, BdevChannel, BdevError, BdevIo, BdevOps, BdevProps, IoHandle, IoStatus, IoType};

/// Which latency to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyType {
    /// Average read latency.
    AvgRead,
    /// 99th percentile read latency.
    P99Read,
    /// Average write latency.
    AvgWrite,
    /// 99th percentile write latency.
    P99Write,
}

impl std::str::FromStr for LatencyType {
    type Err = BdevError;
    fn from_str(s: &str) -> Result<Self, BdevError> {
        Ok(match s {
            "avg_read" => LatencyType::AvgRead,
            "p99_read" => LatencyType::P99Read,
            "avg_write" => LatencyType::AvgWrite,
            "p99_write" => LatencyType::P99Write,
            other => {
                return Err(BdevError::invalid(
                    "latency_type",
                    format!("{other:?}: avg_read, p99_read, avg_write or p99_write"),
                ));
            }
        })
    }
}

/// Latencies in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Average read latency.
    pub avg_read_us: u64,
    /// p99 read latency.
    pub p99_read_us: u64,
    /// Average write latency.
    pub avg_write_us: u64,
    /// p99 write latency.
    pub p99_write_us: u64,
}

/// The delay bdev's function table.
pub struct Delay {
    name: String,
    uuid: String,
    base: Base,
    lat: [AtomicU64; 4],
}

struct Held {
    /// Due time on the reactor's clock.
    due: Duration,
    seq: u64,
    io: IoHandle,
    status: IoStatus,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct Queue {
    heap: BinaryHeap<Reverse<Held>>,
    seq: u64,
    rng: u64,
}

/// Per-core state: the base's channel and the completions being held.
pub struct DelayChannel {
    base: BdevChannel,
    queue: Rc<RefCell<Queue>>,
    poller: Poller,
}

impl Drop for DelayChannel {
    fn drop(&mut self) {
        self.poller.unregister();
        // Nothing may be lost: deliver what is still held.
        let held: Vec<Held> = self.queue.borrow_mut().heap.drain().map(|r| r.0).collect();
        for h in held {
            h.io.complete(h.status);
        }
    }
}

impl Delay {
    fn latency(&self, t: LatencyType) -> u64 {
        self.lat[t as usize].load(Ordering::Relaxed)
    }

    /// Sets one latency.
    pub fn set_latency(&self, t: LatencyType, us: u64) {
        self.lat[t as usize].store(us, Ordering::Relaxed);
    }

    /// The latencies now.
    pub fn latencies(&self) -> Latencies {
        Latencies {
            avg_read_us: self.latency(LatencyType::AvgRead),
            p99_read_us: self.latency(LatencyType::P99Read),
            avg_write_us: self.latency(LatencyType::AvgWrite),
            p99_write_us: self.latency(LatencyType::P99Write),
        }
    }
}

/// Where the base's completion of a delayed I/O goes: into this core's
/// queue, until its due time (the delay was put in the module context).
fn base_done(mut parent: IoHandle, _child: &mut BdevIo, status: IoStatus) {
    let delay_ns = parent.io().module_ctx[0];
    parent.io_mut().module_ctx[0] = 0;
    let Some(queue) = parent
        .module_channel::<DelayChannel>()
        .map(|c| c.queue.clone())
    else {
        log::error!("delay: an I/O without its channel");
        return parent.complete(IoStatus::Failed);
    };
    let mut q = queue.borrow_mut();
    q.seq += 1;
    let seq = q.seq;
    q.heap.push(Reverse(Held {
        due: reactor::now() + Duration::from_nanos(delay_ns),
        seq,
        io: parent,
        status,
    }));
}

impl BdevOps for Delay {
    type Channel = DelayChannel;

    fn create_channel(&self, _core: reactor::CoreId) -> Result<DelayChannel, String> {
        let base = self.base.channel()?;
        let queue = Rc::new(RefCell::new(Queue {
            heap: BinaryHeap::with_capacity(4096),
            seq: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }));
        let q = Rc::downgrade(&queue);
        // A timed poller (every microsecond): it also gives a simulated
        // runtime the deadlines its clock moves to.
        let poller = reactor::register_timed_poller(
            format!("delay_{}", self.name),
            Duration::from_micros(1),
            move || {
                let Some(q) = q.upgrade() else {
                    return PollStatus::Idle;
                };
                let now = reactor::now();
                let mut n = 0;
                loop {
                    let due = {
                        let mut qq = q.borrow_mut();
                        match qq.heap.peek() {
                            Some(Reverse(h)) if h.due <= now => qq.heap.pop().map(|r| r.0),
                            _ => None,
                        }
                    };
                    let Some(h) = due else { break };
                    n += 1;
                    h.io.complete(h.status);
                }
                if n > 0 {
                    PollStatus::Busy
                } else {
                    PollStatus::Idle
                }
            },
        );
        Ok(DelayChannel {
            base,
            queue,
            poller,
        })
    }

    fn submit(&self, ch: &DelayChannel, mut io: IoHandle) {
        let ty = io.io().io_type();
        let (avg, p99) = match ty {
            IoType::Read => (LatencyType::AvgRead, LatencyType::P99Read),
            IoType::Write => (LatencyType::AvgWrite, LatencyType::P99Write),
            _ => return pass_down(&ch.base, io),
        };
        let tail = {
            let mut q = ch.queue.borrow_mut();
            q.rng ^= q.rng << 13;
            q.rng ^= q.rng >> 7;
            q.rng ^= q.rng << 17;
            q.rng.is_multiple_of(100)
        };
        let us = self.latency(if tail { p99 } else { avg });
        io.io_mut().module_ctx[0] = us * 1000;
        io.forward(&ch.base, base_done);
    }

    fn io_type_supported(&self, ty: IoType) -> bool {
        // Zero-copy windows are not passed through (the window would have
        // to stay open across the base's and this bdev's callbacks).
        ty != IoType::Zcopy && self.base.bdev.io_type_supported(ty)
    }

    fn dump_info_json(&self) -> serde_json::Value {
        let l = self.latencies();
        json!({ "delay": {
            "name": self.name, "base_bdev_name": self.base.bdev.name(),
            "avg_read_latency": l.avg_read_us, "p99_read_latency": l.p99_read_us,
            "avg_write_latency": l.avg_write_us, "p99_write_latency": l.p99_write_us,
        }})
    }

    fn write_config_json(&self) -> Option<serde_json::Value> {
        let l = self.latencies();
        Some(json!({
            "method": "bdev_delay_create",
            "params": {
                "base_bdev_name": self.base.bdev.name(), "name": self.name, "uuid": self.uuid,
                "avg_read_latency": l.avg_read_us, "p99_read_latency": l.p99_read_us,
                "avg_write_latency": l.avg_write_us, "p99_write_latency": l.p99_write_us,
            }
        }))
    }

    fn destruct(&self) {
        self.base.close();
    }
}

/// Creates delay bdev `name` over `base_name` with latencies in µs.
///
/// # Errors
/// As [`super::passthru::create`]; [`BdevError::Invalid`] when a p99
/// latency is below its average.
pub fn create(
    base_name: &str,
    name: &str,
    lat: Latencies,
    uuid: Option<&str>,
) -> Result<Bdev, BdevError> {
    if lat.p99_read_us < lat.avg_read_us || lat.p99_write_us < lat.avg_write_us {
        return Err(BdevError::invalid(
            "latency",
            "a p99 latency below its average",
        ));
    }
    if crate::get(name).is_some() {
        return Err(BdevError::Exists(name.to_owned()));
    }
    let uuid = match uuid {
        Some(u) => super::check_uuid(u)?,
        None => crate::new_uuid(),
    };
    let base = Base::open(base_name, name, "delay")?;
    let b = &base.bdev;
    let mut props = BdevProps::new(name, "delay", b.block_size(), b.num_blocks());
    props.uuid = Some(uuid.clone());
    let d = Delay {
        name: name.to_owned(),
        uuid,
        base,
        lat: [
            AtomicU64::new(lat.avg_read_us),
            AtomicU64::new(lat.p99_read_us),
            AtomicU64::new(lat.avg_write_us),
            AtomicU64::new(lat.p99_write_us),
        ],
    };
    crate::register("delay", props, d)
}

/// Sets one latency of delay bdev `name` (`bdev_delay_update_latency`).
///
/// # Errors
/// [`BdevError::NotFound`] when there is no delay bdev of that name;
/// [`BdevError::Invalid`] when it would put a p99 below its average.
pub fn update_latency(name: &str, t: LatencyType, us: u64) -> Result<(), BdevError> {
    let b = crate::get(name)
        .filter(|b| b.module() == "delay")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let d = b
        .ops_as::<Delay>()
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    let mut l = d.latencies();
    match t {
        LatencyType::AvgRead => l.avg_read_us = us,
        LatencyType::P99Read => l.p99_read_us = us,
        LatencyType::AvgWrite => l.avg_write_us = us,
        LatencyType::P99Write => l.p99_write_us = us,
    }
    if l.p99_read_us < l.avg_read_us || l.p99_write_us < l.avg_write_us {
        return Err(BdevError::invalid(
            "latency",
            format!("{us} us would put a p99 latency below its average"),
        ));
    }
    d.set_latency(t, us);
    Ok(())
}

/// Deletes delay bdev `name`.
///
/// # Errors
/// [`BdevError::NotFound`] when there is no delay bdev of that name.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    crate::get(name)
        .filter(|b| b.module() == "delay")
        .ok_or_else(|| BdevError::NotFound(name.to_owned()))?;
    crate::unregister(name).await
}
