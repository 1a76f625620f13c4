//! The embedded store's ordering and durability contract, against real files: batches ordered
//! back to back without waiting for each other, reads that wait for what was ordered before them,
//! and a failed batch failing every batch ordered after it.

use std::io::Write;
use std::sync::Arc;

use super::EmbeddedStore;
use crate::error::CoreError;
use crate::model::{Owner, OwnerKind};
use crate::resource::ResourceName;
use crate::store::{NewBatch, ResourceLog, Store};

fn name() -> ResourceName {
    ResourceName::parse("agents/main/sessions/s1.jsonl").unwrap()
}

fn batch(epoch: u64, lines: &[&str]) -> NewBatch {
    NewBatch {
        epoch,
        token: 7,
        owner: Arc::new(Owner {
            client_id: "c1".into(),
            name: "test".into(),
            kind: OwnerKind::Runner,
        }),
        time_unix_micros: 1,
        entries: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
        request: None,
    }
}

async fn read_all(log: &dyn ResourceLog) -> Vec<String> {
    log.settled().await;
    log.read(1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.data).unwrap())
        .collect()
}

#[tokio::test]
async fn batches_ordered_back_to_back_land_in_order_and_reads_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.open(&name()).await.unwrap();
    // Neither waits for the other's durability: the second is ordered on the first's head.
    let first = log
        .append(batch(1, &[r#"{"n":1}"#, r#"{"n":2}"#]))
        .await
        .unwrap();
    let second = log.append(batch(2, &[r#"{"n":3}"#])).await.unwrap();
    assert_eq!((first.next_seq, second.next_seq), (3, 4));
    assert_eq!(second.length, first.length + 8);
    assert_eq!(log.head(), second);
    // A read issued now sees both, because it waits for them.
    assert_eq!(
        read_all(log.as_ref()).await,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
    log.durable(second).await.unwrap();
    assert_eq!(log.last_token(), 7);
    let on_disk = std::fs::read_to_string(dir.path().join(name().as_str())).unwrap();
    assert_eq!(on_disk, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
    assert!(log.blocked().is_none());
}

#[tokio::test]
async fn a_failed_batch_fails_every_batch_ordered_after_it_and_the_head_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.open(&name()).await.unwrap();
    let kept = log.append(batch(1, &[r#"{"n":1}"#])).await.unwrap();
    log.durable(kept).await.unwrap();
    // A foreign writer appends behind the server's back. Nothing checks the disk when a batch
    // is ordered, so the first batch is ordered; the writer then refuses it on its length check,
    // and must refuse a second one ordered after it, whose offset counted the first.
    let path = dir.path().join(name().as_str());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"foreign\":true}\n")
        .unwrap();
    let first = log.append(batch(2, &[r#"{"n":2}"#])).await.unwrap();
    // Usually ordered before the writer gets to the first; refused at once if it already has.
    let second = log.append(batch(3, &[r#"{"n":3}"#])).await;
    let outcomes = [
        log.durable(first).await,
        match second {
            Ok(head) => log.durable(head).await,
            Err(e) => Err(e),
        },
    ];
    for outcome in outcomes {
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, CoreError::ExternalModification { .. }),
            "{err:?}"
        );
    }
    // What was durable stays so; the head is the durable one again, and the log stays stopped.
    log.durable(kept).await.unwrap();
    assert_eq!(log.head(), kept);
    assert!(matches!(
        log.append(batch(2, &[r#"{"n":4}"#])).await,
        Err(CoreError::ExternalModification { .. })
    ));
    assert_eq!(read_all(log.as_ref()).await, [r#"{"n":1}"#]);
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert_eq!(on_disk, "{\"n\":1}\n{\"foreign\":true}\n");
}
