//! fencepost-core: resource names, leases, fencing tokens and durable storage.
//!
//! Knows nothing of gRPC: the server maps [`Core`] calls and [`CoreError`]s to the wire.

pub mod config;
mod detach;
pub mod entry;
pub mod error;
pub mod lease;
pub mod model;
pub mod resource;
pub mod store;

pub use config::Limits;
pub use error::CoreError;
pub use lease::ReadFrom;
pub use lease::{Core, EndReason};
pub use model::{Head, Owner, OwnerKind, StoredEntry};
pub use resource::ResourceName;
