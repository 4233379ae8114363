//! [`TimedStore`]: a [`Store`] that records each operation's latency and
//! failures in [`Metrics`] (`runstream_store_latency_seconds{op}`,
//! `runstream_store_errors_total{op}`) and delegates everything else.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{BoxFuture, FutureExt};
use runstream::core::wire::SnapshotBody;
use serde_json::Value;

use crate::hub::Chaos;
use crate::metrics::Metrics;
use crate::store::{
    BatchOutcome, CancelOutcome, CancelTarget, IdemKey, NewEvent, QueuedSend, Replay, RunMeta,
    RunSpec, SendOutcome, SendRecord, Store, StoreError, StoreResult, Tail,
};

/// The store the handlers use: `inner`, timed.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl TimedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn timed<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        f: impl Future<Output = StoreResult<T>> + Send + 'a,
    ) -> BoxFuture<'a, StoreResult<T>> {
        async move {
            let t0 = Instant::now();
            let r = f.await;
            // A refused second reply is the store answering, not failing.
            let ok = matches!(r, Ok(_) | Err(StoreError::ReplyTaken(_)));
            self.metrics.store_op(op, t0.elapsed().as_secs_f64(), ok);
            r
        }
        .boxed()
    }
}

impl Store for TimedStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn new_run_id(&self, seed: u64) -> BoxFuture<'_, StoreResult<String>> {
        self.timed("new_run_id", self.inner.new_run_id(seed))
    }

    fn create<'a>(&'a self, id: &'a str, spec: RunSpec) -> BoxFuture<'a, StoreResult<bool>> {
        self.timed("create", self.inner.create(id, spec))
    }

    fn meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<RunMeta>>> {
        self.timed("meta", self.inner.meta(id))
    }

    fn append<'a>(
        &'a self,
        id: &'a str,
        ty: &'a str,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        self.timed("append", self.inner.append(id, ty, payload))
    }

    fn read<'a>(&'a self, id: &'a str, after: u64) -> BoxFuture<'a, StoreResult<Option<Replay>>> {
        self.timed("read", self.inner.read(id, after))
    }

    fn tail<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Tail>>> {
        self.timed("tail", self.inner.tail(id))
    }

    fn snapshot<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<SnapshotBody>>> {
        self.timed("snapshot", self.inner.snapshot(id))
    }

    fn send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
        content: &'a str,
    ) -> BoxFuture<'a, StoreResult<SendOutcome>> {
        self.timed("send", self.inner.send(session, crid, content))
    }

    fn next_message_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<String>> {
        self.timed("next_message_id", self.inner.next_message_id(id))
    }

    fn prune<'a>(&'a self, id: &'a str, keep_from: u64) -> BoxFuture<'a, StoreResult<bool>> {
        self.timed("prune", self.inner.prune(id, keep_from))
    }

    fn set_chaos<'a>(&'a self, id: &'a str, chaos: Chaos) -> BoxFuture<'a, StoreResult<bool>> {
        self.timed("set_chaos", self.inner.set_chaos(id, chaos))
    }

    fn info(&self) -> BoxFuture<'_, StoreResult<Value>> {
        self.timed("info", self.inner.info())
    }

    fn append_batch<'a>(
        &'a self,
        id: &'a str,
        events: Vec<NewEvent>,
        key: Option<IdemKey>,
    ) -> BoxFuture<'a, StoreResult<BatchOutcome>> {
        self.timed("append_batch", self.inner.append_batch(id, events, key))
    }

    fn request_cancel<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        payload: Value,
    ) -> BoxFuture<'a, StoreResult<CancelOutcome>> {
        self.timed(
            "request_cancel",
            self.inner.request_cancel(id, target, payload),
        )
    }

    fn cancel_requested<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
    ) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        self.timed("cancel_requested", self.inner.cancel_requested(id, target))
    }

    fn schedule_grace<'a>(
        &'a self,
        id: &'a str,
        target: &'a CancelTarget,
        due_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.timed(
            "schedule_grace",
            self.inner.schedule_grace(id, target, due_ms),
        )
    }

    fn claim_due_graces(
        &self,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, StoreResult<Vec<(String, CancelTarget)>>> {
        self.timed("claim_due_graces", self.inner.claim_due_graces(now_ms, max))
    }

    /// Not timed: a long poll's latency is its wait.
    fn sends_after<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        wait_ms: u64,
    ) -> BoxFuture<'a, StoreResult<(Vec<SendRecord>, String)>> {
        self.inner.sends_after(after, max, wait_ms)
    }

    /// Not timed: a chat worker's heartbeat.
    fn heartbeat_sends<'a>(
        &'a self,
        consumer: &'a str,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.inner.heartbeat_sends(consumer, answering)
    }

    /// Not timed: a chat worker's blocking read.
    fn claim_sends<'a>(
        &'a self,
        consumer: &'a str,
        block_ms: u64,
        reclaim_idle_ms: u64,
        answering: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<QueuedSend>>> {
        self.inner
            .claim_sends(consumer, block_ms, reclaim_idle_ms, answering)
    }

    fn ack_send<'a>(&'a self, queue_id: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        self.timed("ack_send", self.inner.ack_send(queue_id))
    }

    fn claim_send<'a>(
        &'a self,
        session: &'a str,
        crid: &'a str,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        self.timed("claim_send", self.inner.claim_send(session, crid))
    }
}
