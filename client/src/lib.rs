//! The fencepost Rust SDK: connect to a fencepost server, acquire leases, append fenced batches,
//! read entries back and follow events.
//!
//! ```no_run
//! use std::time::Duration;
//! use fencepost_client::{AcquireOptions, Client, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect("unix:/run/fencepost.sock").await?;
//! let options = AcquireOptions::default().wait(Duration::from_secs(5));
//! let grant = client.acquire("agents/main/sessions/4f1c2a.jsonl", options).await?;
//! let lease = grant.lease.unwrap_or_default();
//! match client
//!     .append(&lease.resource, &lease.lease_id, lease.token, [r#"{"role":"user"}"#], None)
//!     .await
//! {
//!     Ok(done) => println!("appended as seq {}", done.first_seq),
//!     Err(err) if err.is_fencing() => println!("lost the right to write: {err}"),
//!     Err(err) => return Err(err),
//! }
//! client.release(&lease.resource, &lease.lease_id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Replies are the generated wire types of the root crate (`fencepost::v1`, re-exported as
//! [`proto`]); errors are the typed [`Error`].

mod builder;
mod client;
mod endpoint;
mod error;
mod options;
mod owner;
mod stream;

pub use builder::{ClientBuilder, DEFAULT_CONNECT_TIMEOUT};
pub use client::Client;
pub use error::{Error, code_name};
pub use fencepost as proto;
pub use options::{AcquireOptions, ReadOptions, WatchTarget};
pub use owner::{default_name, hostname, new_owner};
pub use proto::v1::OwnerKind;
pub use stream::ResponseStream;
