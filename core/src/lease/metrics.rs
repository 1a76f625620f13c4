//! Metrics of the lease core: counters of the events it publishes (grants, ends, appends, outside
//! changes found), and gauges read from its state when scraped (leases, waiters, whether the store
//! still accepts writes).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Inner;
use super::types::{EndReason, Event, EventKind};
use crate::resource::ResourceName;

/// A label set of one label.
type Label = [(&'static str, &'static str); 1];

/// Counters of published events.
#[derive(Default)]
pub(super) struct Counters {
    grants: Counter,
    ends: Family<Label, Counter>,
    batches: Counter,
    entries: Counter,
    modified: Counter,
    adopted: Counter,
    /// Session files known to refuse appends: found changed (or missing lines kept aside), and
    /// not adopted since.
    blocked: Mutex<HashSet<ResourceName>>,
}

impl Counters {
    /// Counts one event about to be published.
    pub fn count(&self, event: &Event) {
        match &event.kind {
            EventKind::Granted => {
                self.grants.inc();
            }
            EventKind::Ended(reason) => {
                self.ends.get_or_create(&[("how", reason.as_str())]).inc();
            }
            EventKind::Appended => {
                self.batches.inc();
                if let Some((first, last)) = event.seqs {
                    self.entries.inc_by(last + 1 - first);
                }
            }
            // The scan reports a blocked file again when it comes back into use: count it once.
            EventKind::ExternalModification(_) => {
                if self.blocked().insert(event.resource.clone()) {
                    self.modified.inc();
                }
            }
            EventKind::Adopted(_) => {
                self.blocked().remove(&event.resource);
                self.adopted.inc();
            }
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashSet<ResourceName>> {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("grants", "Leases granted", self.grants.clone());
        // Every way a lease can end, at zero from the start.
        for reason in [EndReason::Released, EndReason::Expired, EndReason::Forced] {
            drop(self.ends.get_or_create(&[("how", reason.as_str())]));
        }
        registry.register(
            "lease_ends",
            "Leases ended, by how (released, expired, forced: force-released by an operator)",
            self.ends.clone(),
        );
        registry.register(
            "appended_batches",
            "Batches appended (acknowledged: durable)",
            self.batches.clone(),
        );
        registry.register(
            "appended_entries",
            "Entries (lines) appended in those batches",
            self.entries.clone(),
        );
        registry.register(
            "external_modifications",
            "Session files found changed behind the server's back, or missing acknowledged lines \
             kept aside at start-up (each refuses appends until an operator adopts it; Describe \
             names what changed); a file is counted again only after an adoption",
            self.modified.clone(),
        );
        registry.register(
            "adoptions",
            "Session files an operator adopted",
            self.adopted.clone(),
        );
    }
}

/// The gauges, read from the core's state on each scrape.
struct Gauges(Arc<Inner>);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // No walk over the resources under the state lock: leases are counted by the table, and
        // the lease limits already count leases plus acquires waiting.
        let leases = self.0.lock().leases.iter().len();
        let waiters = self.0.claims.total().saturating_sub(leases);
        let blocked = self.0.counters.blocked().len();
        let stopped = usize::from(self.0.store.failure().is_some());
        for (name, help, value) in [
            ("leases", "Live leases.", leases),
            (
                "waiters",
                "Acquire calls waiting in a queue (or being granted); a retry of one (same client id and idempotency key) is not counted again.",
                waiters,
            ),
            (
                "blocked_files",
                "Session files refusing appends until an operator adopts them.",
                blocked,
            ),
            (
                "store_stopped",
                "1 once the store stopped accepting writes after a failed write, fsync or \
                 checkpoint (health is NOT_SERVING; a restart recovers), else 0.",
                stopped,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Registers the core's counters and gauges.
pub(super) fn register(inner: &Arc<Inner>, registry: &mut Registry) {
    inner.counters.register(registry);
    registry.register_collector(Box::new(Gauges(Arc::clone(inner))));
}
