//! Conversions between core values and wire types, and the one CoreError -> Status table.

use std::time::Duration;

use fencepost as proto;
use fencepost_core::lease::{EndReason, Event, EventKind, LeaseStatus, LeaseView, ReleaseOutcome};
use fencepost_core::{CoreError, Head, Owner, OwnerKind, ResourceName, StoredEntry};
use proto::v1;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The single mapping from domain errors to gRPC statuses, with an ErrorInfo reason.
pub fn status(err: &CoreError) -> Status {
    let code = match err {
        CoreError::InvalidResource { .. }
        | CoreError::InvalidEntry { .. }
        | CoreError::EntryTooLarge { .. }
        | CoreError::BatchTooLarge { .. }
        | CoreError::InvalidArgument { .. } => Code::InvalidArgument,
        CoreError::StaleToken { .. }
        | CoreError::LeaseEnded { .. }
        | CoreError::WrongResource { .. }
        | CoreError::HeadMismatch { .. }
        | CoreError::ExternalModification { .. }
        | CoreError::ResourceBusy { .. } => Code::FailedPrecondition,
        CoreError::LeaseNotFound { .. } => Code::NotFound,
        CoreError::WaitTimeout { .. } => Code::DeadlineExceeded,
        CoreError::CorruptMetadata { .. } => Code::DataLoss,
        CoreError::TooManyLeases { .. } => Code::ResourceExhausted,
        CoreError::Superseded { .. } => Code::Aborted,
        CoreError::ShuttingDown => Code::Unavailable,
        _ => Code::Internal,
    };
    crate::metrics::refused(err.reason());
    let metadata: std::collections::HashMap<String, String> = err
        .metadata()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Status::with_error_details(
        code,
        err.to_string(),
        ErrorDetails::with_error_info(err.reason(), proto::ERROR_DOMAIN, metadata),
    )
}

/// Parses a resource name from a request field.
pub fn resource(name: &str) -> Result<ResourceName, Status> {
    ResourceName::parse(name).map_err(|e| status(&e))
}

/// An INVALID_ARGUMENT status for a request field.
pub fn invalid(field: &'static str, reason: impl Into<String>) -> Status {
    status(&CoreError::InvalidArgument {
        field,
        reason: reason.into(),
    })
}

pub fn owner_from(owner: Option<v1::Owner>) -> Result<Owner, Status> {
    let o = owner.ok_or_else(|| invalid("owner", "is required (client_id, name, kind)"))?;
    let kind = match v1::OwnerKind::try_from(o.kind) {
        Ok(v1::OwnerKind::Runner) => OwnerKind::Runner,
        Ok(v1::OwnerKind::Heartbeat) => OwnerKind::Heartbeat,
        Ok(v1::OwnerKind::Cron) => OwnerKind::Cron,
        Ok(v1::OwnerKind::Channel) => OwnerKind::Channel,
        Ok(v1::OwnerKind::Cli) => OwnerKind::Cli,
        Ok(v1::OwnerKind::Other | v1::OwnerKind::Unspecified) => OwnerKind::Other,
        Err(_) => {
            return Err(invalid(
                "owner.kind",
                format!("{} is not a known kind", o.kind),
            ));
        }
    };
    Ok(Owner {
        client_id: o.client_id,
        name: o.name,
        kind,
    })
}

pub fn owner(o: &Owner) -> v1::Owner {
    let kind = match o.kind {
        OwnerKind::Runner => v1::OwnerKind::Runner,
        OwnerKind::Heartbeat => v1::OwnerKind::Heartbeat,
        OwnerKind::Cron => v1::OwnerKind::Cron,
        OwnerKind::Channel => v1::OwnerKind::Channel,
        OwnerKind::Cli => v1::OwnerKind::Cli,
        OwnerKind::Other => v1::OwnerKind::Other,
    };
    v1::Owner {
        client_id: o.client_id.clone(),
        name: o.name.clone(),
        kind: kind.into(),
    }
}

pub fn head(h: &Head) -> v1::Head {
    v1::Head {
        epoch: h.epoch,
        next_seq: h.next_seq,
        length: h.length,
        chain_hash: h.chain_hash.to_vec(),
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A millisecond field where 0 means "not given".
pub fn opt_millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

pub fn lease(l: &LeaseView) -> v1::Lease {
    v1::Lease {
        lease_id: l.lease_id.to_string(),
        resource: l.resource.to_string(),
        token: l.token,
        ttl_ms: millis(l.ttl),
        ttl_remaining_ms: millis(l.remaining),
        owner: Some(owner(&l.owner)),
    }
}

pub fn lease_end(r: EndReason) -> v1::LeaseEnd {
    match r {
        EndReason::Released => v1::LeaseEnd::Released,
        EndReason::Expired => v1::LeaseEnd::Expired,
        EndReason::Forced => v1::LeaseEnd::Forced,
    }
}

pub fn lease_status(lease_id: String, s: LeaseStatus) -> v1::LeaseStatus {
    let (alive, ttl_remaining_ms, ended) = match s {
        LeaseStatus::Alive(d) => (true, millis(d), v1::LeaseEnd::Unspecified),
        LeaseStatus::Ended(r) => (false, 0, lease_end(r)),
        LeaseStatus::Unknown => (false, 0, v1::LeaseEnd::Unknown),
    };
    v1::LeaseStatus {
        lease_id,
        alive,
        ttl_remaining_ms,
        ended: ended.into(),
    }
}

pub fn release(o: &ReleaseOutcome) -> v1::ReleaseResponse {
    let (outcome, id) = match o {
        ReleaseOutcome::Released(id) => (v1::ReleaseOutcome::Released, id.to_string()),
        ReleaseOutcome::AlreadyEnded(id, r) => (
            match r {
                EndReason::Released => v1::ReleaseOutcome::AlreadyReleased,
                EndReason::Expired => v1::ReleaseOutcome::AlreadyExpired,
                EndReason::Forced => v1::ReleaseOutcome::AlreadyForced,
            },
            id.to_string(),
        ),
        ReleaseOutcome::NotHeld => (v1::ReleaseOutcome::NotHeld, String::new()),
    };
    v1::ReleaseResponse {
        outcome: outcome.into(),
        lease_id: id,
    }
}

pub fn entry(e: StoredEntry) -> v1::Entry {
    v1::Entry {
        seq: e.seq,
        epoch: e.epoch,
        token: e.token,
        owner: Some(owner(&e.owner)),
        time_unix_micros: e.time_unix_micros,
        chain_hash: e.chain_hash.to_vec(),
        data: e.data,
    }
}

pub fn event(e: &Event) -> v1::WatchEvent {
    let (kind, detail) = match &e.kind {
        EventKind::Granted => (v1::WatchEventKind::Granted, ""),
        EventKind::Appended => (v1::WatchEventKind::Appended, ""),
        EventKind::Ended(EndReason::Released) => (v1::WatchEventKind::Released, ""),
        EventKind::Ended(EndReason::Expired) => (v1::WatchEventKind::Expired, ""),
        EventKind::Ended(EndReason::Forced) => (v1::WatchEventKind::Forced, ""),
        EventKind::ExternalModification(d) => (v1::WatchEventKind::ExternalModification, &**d),
        EventKind::Adopted(d) => (v1::WatchEventKind::Adopted, &**d),
    };
    let (first_seq, last_seq) = e.seqs.unwrap_or_default();
    v1::WatchEvent {
        kind: kind.into(),
        resource: e.resource.to_string(),
        lease_id: e.lease_id.to_string(),
        token: e.token,
        owner: Some(owner(&e.owner)),
        first_seq,
        last_seq,
        head: e.head.as_ref().map(head),
        dropped: 0,
        time_unix_micros: e.time_unix_micros,
        detail: detail.to_owned(),
    }
}
