//! The tamper scan: once at start over every resource the store knows (a full check of each file
//! against its index), then periodically over the resources in use (length and identity). A newly
//! found change is logged and published as an event, once.

use std::collections::HashSet;
use std::sync::Arc;

use super::Inner;
use super::types::{Event, EventKind};
use crate::model::{Owner, OwnerKind, now_unix_micros};
use crate::resource::ResourceName;
use crate::store::ResourceLog;

pub(super) async fn run(inner: Arc<Inner>) {
    let mut reported: HashSet<ResourceName> = HashSet::new();
    match inner.store.resources().await {
        Ok(names) => {
            for name in names {
                if inner.lock().closed {
                    return;
                }
                match inner.log(&name).await {
                    Ok(log) => check(&inner, &name, log.as_ref(), &mut reported),
                    Err(e) => {
                        tracing::warn!(resource = %name, error = %e, "start-up scan cannot open resource")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "start-up scan cannot list resources"),
    }
    let mut tick = tokio::time::interval(inner.limits.scan_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let active: Vec<(ResourceName, Arc<dyn ResourceLog>)> = {
            let st = inner.lock();
            if st.closed {
                return;
            }
            st.resources
                .iter()
                .filter_map(|(n, r)| r.log.clone().map(|l| (n.clone(), l)))
                .collect()
        };
        reported.retain(|n| active.iter().any(|(a, _)| a == n));
        // One stat per resource, a chunk at a time on the blocking pool with a pause between
        // chunks: thousands of resources in use must neither hold a runtime worker nor take a
        // core away from keepalives in one burst.
        let mut active = active.into_iter();
        loop {
            let chunk: Vec<_> = active.by_ref().take(SCAN_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let scan_inner = inner.clone();
            let mut seen = std::mem::take(&mut reported);
            let scanned = tokio::task::spawn_blocking(move || {
                for (name, log) in chunk {
                    check(&scan_inner, &name, log.as_ref(), &mut seen);
                }
                seen
            })
            .await;
            match scanned {
                Ok(seen) => reported = seen,
                Err(e) => {
                    tracing::error!(error = %e, "the periodic tamper scan stopped");
                    return;
                }
            }
            tokio::time::sleep(SCAN_PAUSE).await;
        }
    }
}

/// Resources checked per step of the periodic scan.
const SCAN_CHUNK: usize = 128;
/// Pause between steps (10,000 resources in use take about 80 steps).
const SCAN_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

fn check(
    inner: &Inner,
    name: &ResourceName,
    log: &dyn ResourceLog,
    reported: &mut HashSet<ResourceName>,
) {
    let Some(err) = log.blocked() else {
        reported.remove(name);
        return;
    };
    if !reported.insert(name.clone()) {
        return;
    }
    tracing::warn!(resource = %name, error = %err, "session file refused for appends");
    publish(
        inner,
        name,
        EventKind::ExternalModification(Arc::from(err.to_string())),
    );
}

/// Publishes a server-side event (no lease involved).
pub(super) fn publish(inner: &Inner, name: &ResourceName, kind: EventKind) {
    inner.publish(Event {
        kind,
        resource: name.clone(),
        lease_id: Arc::from(""),
        token: 0,
        owner: Arc::new(Owner {
            client_id: "server".into(),
            name: "fencepost".into(),
            kind: OwnerKind::Other,
        }),
        seqs: None,
        head: None,
        time_unix_micros: now_unix_micros(),
    });
}
