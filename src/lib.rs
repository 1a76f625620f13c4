//! The fencepost wire API: generated `fencepost.v1` messages, client and server stubs.
//!
//! Other crates alias it: `use fencepost as proto;` so wire types read `proto::v1::...`.

/// `fencepost.v1`: see `proto/fencepost/v1/fencepost.proto` for the documented contract.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fencepost.v1");
}

/// The encoded file descriptor set of `fencepost.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fencepost_descriptor.bin"));

/// Most lease ids one KeepAlive message may name; a client with more splits them over several
/// messages.
pub const MAX_KEEPALIVE_IDS: usize = 10_000;

/// The `google.rpc.ErrorInfo` domain of every fencepost error.
pub const ERROR_DOMAIN: &str = "fencepost.dev";
