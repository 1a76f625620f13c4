//! The JSON the CLI prints: one compact object per line, with stable field names scripts read.

use std::io::Write;

use fencepost_client::proto::v1::{
    AcquireResponse, AppendOnceResponse, AppendResponse, DescribeResponse, Entry, Head, Lease,
    LeaseEnd, LeaseStatus, Owner, OwnerKind, ReleaseOutcome, WatchEvent, WatchEventKind,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::exit::Failure;

/// Writes `value` as one compact JSON line on stdout and flushes it, so a reader of a pipe sees
/// each event as it happens.
///
/// # Errors
///
/// A quiet success when stdout was closed by its reader (`fencepostctl watch | head -1`), a
/// failure for any other write error.
pub fn emit(value: &impl Serialize) -> Result<(), Failure> {
    let mut line = serde_json::to_vec(value)
        .map_err(|err| Failure::other("OUTPUT", &format!("cannot encode JSON: {err}")))?;
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&line)
        .and_then(|()| stdout.flush())
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::quiet(),
            _ => Failure::other("OUTPUT", &format!("cannot write to stdout: {err}")),
        })
}

/// The lower-case tail of a proto enum value name: `WATCH_EVENT_KIND_GRANTED` -> `granted`.
fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// The label of a raw enum number, or `unknown(N)` for a value newer than this CLI.
fn enum_label<E: TryFrom<i32>>(
    value: i32,
    name: impl Fn(&E) -> &'static str,
    prefix: &str,
) -> String {
    E::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |known| label(name(&known), prefix),
    )
}

/// `health`: `serving` or `not_serving`.
#[derive(Serialize)]
pub struct HealthView {
    pub status: &'static str,
}

/// What `adopt` prints.
#[derive(Serialize)]
pub struct AdoptView {
    pub resource: String,
    pub epoch: u64,
    pub head: Option<HeadView>,
    pub detail: String,
}

#[derive(Serialize)]
pub struct HeadView {
    epoch: u64,
    next_seq: u64,
    length: u64,
    chain_hash: String,
}

impl From<&Head> for HeadView {
    fn from(head: &Head) -> Self {
        Self {
            epoch: head.epoch,
            next_seq: head.next_seq,
            length: head.length,
            chain_hash: hex::encode(&head.chain_hash),
        }
    }
}

fn head_view(head: Option<&Head>) -> Option<HeadView> {
    head.map(HeadView::from)
}

#[derive(Serialize)]
pub struct OwnerView {
    client_id: String,
    name: String,
    kind: String,
}

impl From<&Owner> for OwnerView {
    fn from(owner: &Owner) -> Self {
        Self {
            client_id: owner.client_id.clone(),
            name: owner.name.clone(),
            kind: enum_label(owner.kind, OwnerKind::as_str_name, "OWNER_KIND_"),
        }
    }
}

fn owner_view(owner: Option<&Owner>) -> Option<OwnerView> {
    owner.map(OwnerView::from)
}

#[derive(Serialize)]
pub struct LeaseView {
    resource: String,
    lease_id: String,
    token: u64,
    ttl_ms: u64,
    ttl_remaining_ms: u64,
    owner: Option<OwnerView>,
}

impl From<&Lease> for LeaseView {
    fn from(lease: &Lease) -> Self {
        Self {
            resource: lease.resource.clone(),
            lease_id: lease.lease_id.clone(),
            token: lease.token,
            ttl_ms: lease.ttl_ms,
            ttl_remaining_ms: lease.ttl_remaining_ms,
            owner: owner_view(lease.owner.as_ref()),
        }
    }
}

/// `acquire`: the lease flattened, plus the head at the grant and its epoch.
#[derive(Serialize)]
pub struct AcquireView {
    #[serde(flatten)]
    lease: LeaseView,
    epoch: u64,
    head: Option<HeadView>,
}

impl From<&AcquireResponse> for AcquireView {
    fn from(reply: &AcquireResponse) -> Self {
        Self {
            lease: reply
                .lease
                .as_ref()
                .map_or_else(|| LeaseView::from(&Lease::default()), LeaseView::from),
            epoch: reply.head.as_ref().map_or(0, |head| head.epoch),
            head: head_view(reply.head.as_ref()),
        }
    }
}

/// `append`: where the batch landed.
#[derive(Serialize)]
pub struct AppendView<'a> {
    resource: &'a str,
    first_seq: u64,
    last_seq: u64,
    count: usize,
    epoch: u64,
    head: Option<HeadView>,
}

impl<'a> AppendView<'a> {
    pub fn new(resource: &'a str, count: usize, reply: &AppendResponse) -> Self {
        Self {
            resource,
            first_seq: reply.first_seq,
            last_seq: reply.last_seq,
            count,
            epoch: reply.head.as_ref().map_or(0, |head| head.epoch),
            head: head_view(reply.head.as_ref()),
        }
    }
}

/// `append-once`: where the batch landed and the token it was appended under.
#[derive(Serialize)]
pub struct AppendOnceView<'a> {
    #[serde(flatten)]
    append: AppendView<'a>,
    token: u64,
}

impl<'a> AppendOnceView<'a> {
    pub fn new(resource: &'a str, count: usize, reply: &AppendOnceResponse) -> Self {
        let append = AppendResponse {
            first_seq: reply.first_seq,
            last_seq: reply.last_seq,
            head: reply.head.clone(),
        };
        Self {
            append: AppendView::new(resource, count, &append),
            token: reply.token,
        }
    }
}

/// `release`: what happened to the lease.
#[derive(Serialize)]
pub struct ReleaseView {
    outcome: String,
    lease_id: String,
}

impl ReleaseView {
    pub fn new(outcome: i32, lease_id: String) -> Self {
        Self {
            outcome: enum_label(outcome, ReleaseOutcome::as_str_name, "RELEASE_OUTCOME_"),
            lease_id,
        }
    }
}

/// `renew`.
#[derive(Serialize)]
pub struct RenewView {
    pub ttl_remaining_ms: u64,
}

/// `keepalive`: one lease's status.
#[derive(Serialize)]
pub struct LeaseStatusView {
    lease_id: String,
    alive: bool,
    ttl_remaining_ms: u64,
    /// `null` while alive, else `released`, `expired`, `forced` or `unknown`.
    ended: Option<String>,
}

impl From<&LeaseStatus> for LeaseStatusView {
    fn from(status: &LeaseStatus) -> Self {
        Self {
            lease_id: status.lease_id.clone(),
            alive: status.alive,
            ttl_remaining_ms: status.ttl_remaining_ms,
            ended: (status.ended != i32::from(LeaseEnd::Unspecified))
                .then(|| enum_label(status.ended, LeaseEnd::as_str_name, "LEASE_END_")),
        }
    }
}

/// An entry's own line: embedded verbatim when it is JSON (no re-encoding, so numbers and key
/// order stay exactly as written), as a string otherwise.
#[derive(Serialize)]
#[serde(untagged)]
enum EntryData<'a> {
    Json(&'a RawValue),
    Text(String),
}

/// `read`: one entry with its metadata.
#[derive(Serialize)]
pub struct EntryView<'a> {
    seq: u64,
    epoch: u64,
    token: u64,
    owner: Option<OwnerView>,
    time_unix_micros: u64,
    chain_hash: String,
    entry: EntryData<'a>,
}

impl<'a> From<&'a Entry> for EntryView<'a> {
    fn from(entry: &'a Entry) -> Self {
        let data = serde_json::from_slice::<&RawValue>(&entry.data).map_or_else(
            |_| EntryData::Text(String::from_utf8_lossy(&entry.data).into_owned()),
            EntryData::Json,
        );
        Self {
            seq: entry.seq,
            epoch: entry.epoch,
            token: entry.token,
            owner: owner_view(entry.owner.as_ref()),
            time_unix_micros: entry.time_unix_micros,
            chain_hash: hex::encode(&entry.chain_hash),
            entry: data,
        }
    }
}

/// `describe`.
#[derive(Serialize)]
pub struct DescribeView {
    resource: String,
    exists: bool,
    holder: Option<LeaseView>,
    token: u64,
    epoch: u64,
    waiters: u32,
    head: Option<HeadView>,
    /// Why appends are refused (e.g. an external modification); `null` while they are accepted.
    blocked: Option<String>,
}

impl From<&DescribeResponse> for DescribeView {
    fn from(reply: &DescribeResponse) -> Self {
        Self {
            resource: reply.resource.clone(),
            exists: reply.exists,
            holder: reply.holder.as_ref().map(LeaseView::from),
            token: reply.token,
            epoch: reply.head.as_ref().map_or(0, |head| head.epoch),
            waiters: reply.waiters,
            head: head_view(reply.head.as_ref()),
            blocked: (!reply.blocked.is_empty()).then(|| reply.blocked.clone()),
        }
    }
}

/// `watch`: one event.
#[derive(Serialize)]
pub struct WatchView {
    kind: String,
    resource: String,
    lease_id: String,
    token: u64,
    owner: Option<OwnerView>,
    first_seq: u64,
    last_seq: u64,
    head: Option<HeadView>,
    dropped: u64,
    time_unix_micros: u64,
}

impl From<&WatchEvent> for WatchView {
    fn from(event: &WatchEvent) -> Self {
        Self {
            kind: enum_label(event.kind, WatchEventKind::as_str_name, "WATCH_EVENT_KIND_"),
            resource: event.resource.clone(),
            lease_id: event.lease_id.clone(),
            token: event.token,
            owner: owner_view(event.owner.as_ref()),
            first_seq: event.first_seq,
            last_seq: event.last_seq,
            head: head_view(event.head.as_ref()),
            dropped: event.dropped,
            time_unix_micros: event.time_unix_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8]) -> Entry {
        Entry {
            seq: 1,
            data: data.to_vec(),
            ..Entry::default()
        }
    }

    #[test]
    fn json_entries_are_embedded_verbatim() {
        let stored = entry(br#"{"z":1,"a":12345678901234567890123,"f":1.50}"#);
        let line = serde_json::to_string(&EntryView::from(&stored)).unwrap();
        assert!(
            line.ends_with(r#""entry":{"z":1,"a":12345678901234567890123,"f":1.50}}"#),
            "{line}"
        );
    }

    #[test]
    fn non_json_entries_become_strings() {
        let stored = entry(b"not json");
        let line = serde_json::to_string(&EntryView::from(&stored)).unwrap();
        assert!(line.ends_with(r#""entry":"not json"}"#), "{line}");
    }

    #[test]
    fn enum_values_print_as_lower_case_words() {
        let event = WatchEvent {
            kind: WatchEventKind::Appended.into(),
            ..WatchEvent::default()
        };
        assert_eq!(WatchView::from(&event).kind, "appended");
        let release = ReleaseView::new(ReleaseOutcome::AlreadyReleased.into(), String::new());
        assert_eq!(release.outcome, "already_released");
        assert_eq!(
            enum_label(99, ReleaseOutcome::as_str_name, "RELEASE_OUTCOME_"),
            "unknown(99)"
        );
    }

    #[test]
    fn a_free_resource_has_a_null_holder() {
        let reply = DescribeResponse {
            resource: "a.jsonl".to_owned(),
            head: Some(Head {
                epoch: 0,
                next_seq: 1,
                length: 0,
                chain_hash: vec![0; 32],
            }),
            ..DescribeResponse::default()
        };
        let value = serde_json::to_value(DescribeView::from(&reply)).unwrap();
        assert!(value["holder"].is_null());
        assert!(value["blocked"].is_null());
        assert_eq!(value["head"]["chain_hash"], "0".repeat(64));
        assert_eq!(value["epoch"], 0);
    }
}
