//! A latency histogram that records with two atomic additions.
//!
//! prometheus-client's own histogram takes a mutex on every observation;
//! recorded on every proxied request by every serving thread, that would
//! be a lock all of them contend for. This one keeps a counter per bucket
//! and the sum in nanoseconds, and adds them up only when `/metrics` is
//! read. A scrape that races an observation may see the bucket counted
//! and not yet its time in the sum; the next scrape agrees again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Cheap to clone; clones record into the same buckets.
#[derive(Clone, Debug)]
pub(super) struct Latency(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in seconds, ascending; a last bucket without a bound
    /// (`+Inf`) follows them.
    bounds: Box<[f64]>,
    /// One more than `bounds`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

// === impl Latency ===

impl Latency {
    pub(super) fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Latency(Arc::new(Buckets {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
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
        b.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        b.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
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
            .zip(b.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(b.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
