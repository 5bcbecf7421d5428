//! A registered block device: its geometry, its module's function table, its
//! open descriptors and claim, its I/O device (per-core channels) and
//! statistics.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use reactor::IoDevice;

use crate::channel::Chan;
use crate::claim::{ClaimType, Claims};
use crate::desc::DescInner;
use crate::error::BdevError;
use crate::ops::ErasedOps;
pub use crate::props::BdevProps;
use crate::qos::{QosLimits, QosUpdate};
use crate::stats::{ChannelStats, IoStats};
use crate::types::{BdevEvent, IoType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Active = 0,
    Removing = 1,
}

pub(crate) struct BdevInner {
    pub props: BdevProps,
    /// Other names (the registration's, changed by
    /// [`crate::set_alias`]).
    pub aliases: Mutex<Vec<String>>,
    pub uuid: String,
    pub module: String,
    pub num_blocks: AtomicU64,
    pub ops: Box<dyn ErasedOps>,
    pub io_device: IoDevice<Chan>,
    pub descs: Mutex<Vec<Weak<DescInner>>>,
    pub claims: Mutex<Claims>,
    /// Ranges quiesced (each channel keeps a copy).
    pub quiesced: Mutex<Vec<crate::quiesce::QRange>>,
    /// A reset is under way (one at a time).
    pub reset_active: std::sync::atomic::AtomicBool,
    /// Channels are frozen by a reset (new channels start frozen).
    pub frozen: std::sync::atomic::AtomicBool,
    state: AtomicU8,
    pub channel_stats: Mutex<Vec<Weak<ChannelStats>>>,
    pub retired_stats: Mutex<IoStats>,
    /// Rate limits (`bdev_set_qos_limit`).
    pub qos: crate::qos::Qos,
    /// Latency histograms are kept (`bdev_enable_histogram`): new
    /// channels start one.
    pub histogram: std::sync::atomic::AtomicBool,
    /// The I/O type the histograms count (None: every type).
    pub histogram_opc: Mutex<Option<IoType>>,
}

impl BdevInner {
    pub fn new(
        props: BdevProps,
        uuid: String,
        module: String,
        ops: Box<dyn ErasedOps>,
        io_device: IoDevice<Chan>,
    ) -> Self {
        BdevInner {
            num_blocks: AtomicU64::new(props.num_blocks),
            aliases: Mutex::new(props.aliases.clone()),
            props,
            uuid,
            module,
            ops,
            io_device,
            descs: Mutex::new(Vec::new()),
            claims: Mutex::new(Claims::default()),
            quiesced: Mutex::new(Vec::new()),
            reset_active: std::sync::atomic::AtomicBool::new(false),
            frozen: std::sync::atomic::AtomicBool::new(false),
            state: AtomicU8::new(State::Active as u8),
            channel_stats: Mutex::new(Vec::new()),
            retired_stats: Mutex::new(IoStats::default()),
            qos: crate::qos::Qos::default(),
            histogram: std::sync::atomic::AtomicBool::new(false),
            histogram_opc: Mutex::new(None),
        }
    }

    pub fn state(&self) -> State {
        if self.state.load(Ordering::Acquire) == State::Removing as u8 {
            State::Removing
        } else {
            State::Active
        }
    }

    pub fn set_removing(&self) -> bool {
        self.state.swap(State::Removing as u8, Ordering::AcqRel) != State::Removing as u8
    }

    pub fn quiesced(&self) -> MutexGuard<'_, Vec<crate::quiesce::QRange>> {
        self.quiesced.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claims(&self) -> MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn descs(&self) -> MutexGuard<'_, Vec<Weak<DescInner>>> {
        self.descs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live_descs(&self) -> Vec<Arc<DescInner>> {
        let mut d = self.descs();
        d.retain(|w| w.strong_count() > 0);
        d.iter().filter_map(Weak::upgrade).collect()
    }

    pub fn deliver(&self, ev: BdevEvent) {
        for d in self.live_descs() {
            d.deliver(&self.props.name, ev);
        }
    }

    pub fn stats(&self) -> IoStats {
        let mut s = *self.retired_stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = self.channel_stats.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        for c in list.iter().filter_map(Weak::upgrade) {
            c.add_into(&mut s);
        }
        s
    }
}

/// A handle to a registered bdev (cheap to clone). It stays valid after the
/// bdev is unregistered, but I/O can no longer be opened on it.
#[derive(Clone)]
pub struct Bdev {
    pub(crate) inner: Arc<BdevInner>,
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdev")
            .field("name", &self.name())
            .field("block_size", &self.block_size())
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

impl Bdev {
    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.props.name
    }

    /// Other names.
    pub fn aliases(&self) -> Vec<String> {
        self.inner
            .aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The UUID.
    pub fn uuid(&self) -> &str {
        &self.inner.uuid
    }

    /// The module that registered it (`malloc`, `null`, `nvme`...).
    pub fn module(&self) -> &str {
        &self.inner.module
    }

    /// The product name.
    pub fn product_name(&self) -> &str {
        &self.inner.props.product_name
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.inner.props.block_size
    }

    /// Size in blocks (changes on resize).
    pub fn num_blocks(&self) -> u64 {
        self.inner.num_blocks.load(Ordering::Acquire)
    }

    /// The module's properties as registered.
    pub fn props(&self) -> &BdevProps {
        &self.inner.props
    }

    /// Whether the bdev handles `ty` (WriteZeroes counts as supported when
    /// the layer can emulate it with writes; Abort of what the layer queues
    /// always is). COPY, SEEK_DATA and SEEK_HOLE answer for the module
    /// alone (as SPDK shows them), though the layer emulates or answers
    /// them for every bdev.
    pub fn io_type_supported(&self, ty: IoType) -> bool {
        self.inner.ops.io_type_supported(ty)
            || ty == IoType::Abort
            || (ty == IoType::WriteZeroes && self.inner.ops.io_type_supported(IoType::Write))
    }

    /// The module holding a claim on it (the first, for shared claims).
    pub fn claimed_by(&self) -> Option<String> {
        self.inner.claims().holders().next().map(str::to_owned)
    }

    /// The type of the claims on it, if any.
    pub fn claim_type(&self) -> Option<ClaimType> {
        self.inner.claims().ty()
    }

    /// The bdevs built on it (whose claims on it said so).
    pub fn claimed_for(&self) -> Vec<String> {
        self.inner.claims().owners().map(str::to_owned).collect()
    }

    /// Every module holding a claim on it.
    pub fn claim_holders(&self) -> Vec<String> {
        self.inner.claims().holders().map(str::to_owned).collect()
    }

    /// Open descriptors.
    pub fn open_descriptors(&self) -> usize {
        self.inner.live_descs().len()
    }

    /// I/O statistics.
    pub fn stats(&self) -> IoStats {
        self.inner.stats()
    }

    /// `driver_specific` information from the module.
    pub fn dump_info_json(&self) -> serde_json::Value {
        self.inner.ops.dump_info_json()
    }

    /// The RPC that re-creates the bdev, for `save_config`.
    pub fn write_config_json(&self) -> Option<serde_json::Value> {
        self.inner.ops.write_config_json()
    }

    /// The module's function table, for modules that need their own type
    /// back (e.g. to update a delay bdev's latencies).
    pub fn ops_as<T: 'static>(&self) -> Option<&T> {
        self.inner.ops.as_any().downcast_ref::<T>()
    }

    /// Changes the block count (a module's notification) and delivers
    /// Resize to every open descriptor; vbdevs stacked on top follow it
    /// through their descriptors' event callbacks.
    pub fn notify_blockcnt_change(&self, new_blocks: u64) {
        let old = self.inner.num_blocks.swap(new_blocks, Ordering::AcqRel);
        if old != new_blocks {
            log::info!("bdev {}: block count {old} -> {new_blocks}", self.name());
            self.inner.deliver(BdevEvent::Resize {
                old_blocks: old,
                new_blocks,
            });
        }
    }

    /// Whether it is being removed.
    pub fn is_removing(&self) -> bool {
        self.inner.state() == State::Removing
    }

    /// Its QoS rate limits (0 = none).
    pub fn qos_limits(&self) -> QosLimits {
        self.inner.qos.limits()
    }

    /// Changes its QoS rate limits (`bdev_set_qos_limit`): enforced over
    /// every core's channel at once from the next I/O; I/O over a limit
    /// waits in its channel (never fails); removing the last limit lets
    /// what waits go. Returns the limits now in force (I/O limits rounded
    /// up to a multiple of 1000, as SPDK). The slices are refilled by a
    /// task on this core.
    ///
    /// # Errors
    /// [`BdevError::NotOnReactor`] off a reactor thread.
    pub fn set_qos_limits(&self, update: QosUpdate) -> Result<QosLimits, BdevError> {
        if reactor::current_core().is_none() {
            return Err(BdevError::NotOnReactor("set_qos_limits"));
        }
        let new = update.apply(self.qos_limits());
        if let Some(generation) = self.inner.qos.set(new) {
            let weak = Arc::downgrade(&self.inner);
            drop(reactor::spawn(async move {
                // The reactor's clock (simulated under SimRuntime).
                let slice = crate::qos::SLICE.as_nanos() as u64;
                let mut last = reactor::now().as_nanos() as u64;
                loop {
                    reactor::sleep(crate::qos::SLICE).await;
                    let Some(b) = weak.upgrade() else { break };
                    if !b.qos.current(generation) || b.state() == State::Removing {
                        break;
                    }
                    let now = reactor::now().as_nanos() as u64;
                    let slices = now.saturating_sub(last) / slice;
                    if slices > 0 {
                        last += slices * slice;
                        b.qos.refill(slices);
                    }
                }
            }));
        }
        log::info!("bdev {}: QoS limits {new:?}", self.name());
        Ok(new)
    }
}

impl Bdev {
    /// Starts or stops its latency histograms (`bdev_enable_histogram`):
    /// one per channel, of every I/O type or of `opc` alone; stopping
    /// drops what they counted.
    ///
    /// # Errors
    /// As [`Bdev::reset_stats`].
    pub async fn enable_histogram(&self, on: bool, opc: Option<IoType>) -> Result<(), BdevError> {
        *self
            .inner
            .histogram_opc
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = opc;
        self.inner.histogram.store(on, Ordering::Release);
        self.visit_channels(move |c| c.set_histogram(on, opc)).await
    }

    /// Whether latency histograms are kept.
    pub fn histogram_enabled(&self) -> bool {
        self.inner.histogram.load(Ordering::Acquire)
    }

    /// The latency histogram over every channel (`bdev_get_histogram`):
    /// SPDK's layout, base64 ([`HISTOGRAM_BUCKET_SHIFT`], ticks of
    /// [`HISTOGRAM_TICK_RATE`] per second); None when histograms are off.
    ///
    /// # Errors
    /// As [`Bdev::reset_stats`].
    pub async fn histogram(&self) -> Result<Option<String>, BdevError> {
        if !self.histogram_enabled() {
            return Ok(None);
        }
        let sum = Arc::new(Mutex::new(crate::histogram::new()));
        let s = sum.clone();
        self.visit_channels(move |c| {
            if let Some(h) = c.histogram.borrow().as_ref() {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                for (t, v) in s.iter_mut().zip(h.iter()) {
                    *t += v;
                }
            }
        })
        .await?;
        let s = sum.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(crate::histogram::encode(&s)))
    }

    /// Runs `f` with this bdev's layer channel on every core that has one,
    /// core after core by message, and resolves when the visit is over.
    pub(crate) async fn visit_channels(
        &self,
        mut f: impl FnMut(&std::rc::Rc<crate::channel::ChanState>) + Send + 'static,
    ) -> Result<(), BdevError> {
        self.inner
            .io_device
            .for_each_channel_async(move |ch| {
                f(&ch.state);
                Ok::<(), ()>(())
            })
            .await
            .map_err(|e| BdevError::Module {
                module: self.module().to_owned(),
                reason: format!("for_each_channel on {}: {e}", self.name()),
            })?
            .map_err(|()| BdevError::invalid("for_each_channel", "stopped"))
    }

    /// Resets this bdev's I/O statistics (`bdev_reset_iostat`): each
    /// channel's counters on its own core, by message, and those of the
    /// channels gone.
    ///
    /// # Errors
    /// [`BdevError::Module`] when the runtime stops during the visit, or
    /// when not called on a reactor.
    pub async fn reset_stats(&self, mode: crate::stats::StatsReset) -> Result<(), BdevError> {
        self.inner
            .retired_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset(mode);
        self.visit_channels(move |s| s.stats.reset(mode)).await
    }

    /// Calls `f` on every core that holds a channel of this bdev, with the
    /// core and the module's own channel there (`None` when its type is
    /// not `C` or the module could not make it), by message, core after
    /// core (SPDK's `spdk_for_each_channel` on a bdev's io_device); resolves
    /// once every core has been visited.
    ///
    /// # Errors
    /// [`BdevError::Module`] when the runtime stops during the visit, or
    /// when not called on a reactor.
    pub async fn for_each_channel<C: 'static>(
        &self,
        mut f: impl FnMut(reactor::CoreId, Option<&C>) + Send + 'static,
    ) -> Result<(), BdevError> {
        self.visit_channels(move |s| {
            let core = reactor::current_core().unwrap_or_default();
            f(core, s.module_channel().and_then(|c| c.downcast_ref::<C>()))
        })
        .await
    }
}
