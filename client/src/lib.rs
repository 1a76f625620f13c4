//! The fencepost Rust SDK: connect to a fencepost server, hold kept-alive leases whose loss is
//! observable, append fenced batches, yield a lease during slow work and learn what others
//! appended meanwhile, and follow events.
//!
//! ```no_run
//! use std::time::Duration;
//! use fencepost_client::{Client, Error};
//! use serde_json::json;
//!
//! # async fn call_the_model() -> String { String::new() }
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect("unix:/run/fencepost.sock").await?;
//! let lease = client
//!     .lease("agents/main/sessions/4f1c2a.jsonl")
//!     .ttl(Duration::from_secs(15))
//!     .wait(Duration::from_secs(30))
//!     .acquire()
//!     .await?;
//! lease.append([json!({"role": "user", "text": "summarise the incident"})]).await?;
//!
//! // Let heartbeats and cron jobs write while the model thinks.
//! let (reply, changes, lease) = lease.yield_for(call_the_model()).await?;
//! for change in &changes {
//!     println!("meanwhile {} wrote seq {}", change.owner.name, change.seq);
//! }
//! match lease.append([json!({"role": "assistant", "text": reply})]).await {
//!     Ok(done) => println!("appended as seq {}", done.first_seq),
//!     Err(err) if err.is_fencing() => println!("lost the right to write: {err}"),
//!     Err(err) => return Err(err),
//! }
//! lease.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Transient failures are retried with the same request id or idempotency key ([`RetryPolicy`]);
//! errors are the typed [`Error`]; raw replies are the generated wire types of the root crate
//! (`fencepost::v1`, re-exported as [`proto`]).

mod append_once;
mod builder;
mod changes;
mod client;
mod endpoint;
mod entry;
mod error;
mod health;
mod keepalive;
mod lease;
mod lease_builder;
mod options;
mod owner;
mod raw;
mod retry;
mod stream;
mod yield_;

pub use append_once::AppendOnce;
pub use builder::{ClientBuilder, DEFAULT_CONNECT_TIMEOUT};
pub use changes::{Change, Changes};
pub use client::Client;
pub use entry::IntoEntry;
pub use error::{Error, code_name};
pub use fencepost as proto;
pub use health::{LeaseHealth, LossReason};
pub use lease::Lease;
pub use lease_builder::LeaseBuilder;
pub use options::{AcquireOptions, ReadOptions, WatchTarget};
pub use owner::{default_name, hostname, new_owner};
pub use proto::v1::OwnerKind;
pub use retry::RetryPolicy;
pub use stream::ResponseStream;
pub use tokio_util::sync::CancellationToken;
pub use yield_::Suspended;

/// The project README, compiled as a doctest so its Rust examples ("Using the SDK") stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct Readme;
