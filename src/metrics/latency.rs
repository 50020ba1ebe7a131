//! A latency histogram that records with two atomic additions, to memory
//! of the recording thread's own.
//!
//! prometheus-client's own histogram takes a mutex on every observation;
//! recorded on every proxied request by every serving thread, that would
//! be a lock all of them contend for. This one keeps a counter per bucket
//! and the sum in nanoseconds for each thread (see `per_thread`), and adds
//! them up only when `/metrics` is read. A scrape that races an
//! observation may see the bucket counted and not yet its time in the sum;
//! the next scrape agrees again.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::per_thread::PerThread;

/// Room for the buckets' counts (one more than the bounds) and the sum.
const SLOTS: usize = 16;
/// Where the sum in nanoseconds is kept.
const SUM: usize = SLOTS - 1;

/// Cheap to clone; clones record into the same buckets.
#[derive(Clone, Debug)]
pub(super) struct Latency(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in seconds, ascending; a last bucket without a bound
    /// (`+Inf`) follows them. At most `SLOTS - 2`.
    bounds: Box<[f64]>,
    /// The count of bucket `i` at `i`, the sum at [`SUM`].
    counts: PerThread<SLOTS>,
}

// === impl Latency ===

impl Latency {
    pub(super) fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        assert!(
            bounds.len() + 2 <= SLOTS,
            "a latency histogram has at most {} bounds",
            SLOTS - 2
        );
        Latency(Arc::new(Buckets {
            bounds,
            counts: PerThread::new(),
        }))
    }

    pub(super) fn observe(&self, elapsed: Duration) {
        let b = &*self.0;
        let secs = elapsed.as_secs_f64();
        let i = b
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(b.bounds.len());
        b.counts.add(i, 1);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        b.counts.add(SUM, nanos);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = &*self.0;
        let buckets: Vec<(f64, u64)> = b
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip((0..=b.bounds.len()).map(|i| b.counts.sum(i)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(b.counts.sum(SUM)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
