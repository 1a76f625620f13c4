//! The grant task: opens the resource's log, issues a durable token, installs the lease.

use std::sync::Arc;

use tokio::time::Instant;

use super::Inner;
use super::state::{Effects, Holder, LeaseRec, Waiter};
use super::table::LeaseKey;
use super::types::{EndReason, Event, EventKind, Grant};
use crate::error::CoreError;
use crate::model::now_unix_micros;
use crate::resource::ResourceName;

/// Grants `resource` (already marked as being granted) to `waiter`.
pub(super) async fn run(inner: Arc<Inner>, resource: ResourceName, waiter: Waiter) {
    let Some(gate) = inner
        .lock()
        .resources
        .get(&resource)
        .map(|r| r.gate.clone())
    else {
        return;
    };
    // Wait for any append still in flight under the previous lease, so the new token is issued
    // only after it, and the head we return includes it.
    let _gate = gate.lock_owned().await;
    let prepared = async {
        let log = inner.log(&resource).await?;
        let token = inner.store.issue_token(&resource, log.last_token()).await?;
        Ok::<_, CoreError>((log, token))
    }
    .await;

    let mut fx = Effects::default();
    {
        let mut st = inner.lock();
        let now = Instant::now();
        match prepared {
            Err(e) => {
                tracing::warn!(resource = %resource, error = %e, "grant failed");
                if let Some(res) = st.resources.get_mut(&resource) {
                    res.holder = Holder::Free;
                }
                // Retries of the same keyed acquire are the same call: they fail with it (they
                // hold no claim, so none may be granted a lease of its own).
                if let Some(key) = &waiter.idempotency_key {
                    for retry in st.take_retries(&resource, &waiter.owner.client_id, key) {
                        let _ = retry.tx.send(Err(e.clone()));
                    }
                }
                let _ = waiter.tx.send(Err(e));
                st.pump(&resource, &mut fx);
            }
            Ok((log, token)) => {
                debug_assert!(
                    waiter.claim.is_some(),
                    "only a waiter with a claim is granted a lease"
                );
                let (key, id) = LeaseKey::mint();
                let rec = LeaseRec {
                    id: id.clone(),
                    resource: resource.clone(),
                    token,
                    owner: waiter.owner.clone(),
                    ttl: waiter.ttl,
                    deadline: now + waiter.ttl,
                    idempotency_key: waiter.idempotency_key.clone(),
                    appends: Default::default(),
                    loss: Vec::new(),
                    _claim: waiter.claim,
                    shared: false,
                };
                let deadline = rec.deadline;
                if let Some(key) = &waiter.idempotency_key {
                    st.idempotency
                        .insert((waiter.owner.client_id.clone(), key.clone()), id.clone());
                }
                let grant = Grant {
                    lease: rec.view(now),
                    head: log.head(),
                };
                st.leases.insert(key, rec);
                let earliest = st.schedule_expiry(key, deadline);
                let res = st
                    .resources
                    .get_mut(&resource)
                    .expect("granting keeps the entry");
                res.log = Some(log);
                res.token = token;
                res.holder = Holder::Held(id.clone());
                fx.events.push(Event {
                    kind: EventKind::Granted,
                    resource: resource.clone(),
                    lease_id: id.clone(),
                    token,
                    owner: waiter.owner.clone(),
                    seqs: None,
                    head: Some(grant.head),
                    time_unix_micros: now_unix_micros(),
                });
                tracing::debug!(resource = %resource, lease_id = %id, token, "lease granted");
                if earliest {
                    inner.expiry.notify_one();
                }
                // Retries of the same keyed acquire, queued while this grant was under way, get
                // the same lease; so if the original caller left, the lease is still taken.
                let retries = match &waiter.idempotency_key {
                    Some(key) => st.take_retries(&resource, &waiter.owner.client_id, key),
                    None => std::collections::VecDeque::new(),
                };
                let mut taken = usize::from(waiter.tx.send(Ok(grant.clone())).is_ok());
                for retry in retries {
                    taken += usize::from(retry.tx.send(Ok(grant.clone())).is_ok());
                }
                if taken > 1
                    && let Some(rec) = st.leases.get_mut(&id)
                {
                    rec.shared = true;
                }
                if taken == 0 {
                    // The waiter left while we were granting: pass the lease on.
                    st.end_lease(&id, EndReason::Released, &mut fx);
                }
            }
        }
    }
    inner.apply(fx);
}
