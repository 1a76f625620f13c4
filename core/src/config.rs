//! Limits and timing the core enforces.

use std::time::Duration;

/// Limits on leases and entries.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TTL when the caller asks for none.
    pub default_ttl: Duration,
    /// Largest TTL a caller may ask for.
    pub max_ttl: Duration,
    /// Smallest TTL a caller may ask for.
    pub min_ttl: Duration,
    /// Largest Acquire wait.
    pub max_wait: Duration,
    /// Largest single entry, in bytes.
    pub max_entry_bytes: usize,
    /// Largest batch, in bytes (entries plus their newlines).
    pub max_batch_bytes: usize,
    /// Most entries in one batch.
    pub max_batch_entries: usize,
    /// How often active session files are checked for changes made behind the server's back.
    pub scan_interval: Duration,
    /// Most leases held plus acquires waiting, server-wide.
    pub max_leases: usize,
    /// Most leases held plus acquires waiting by one client id.
    pub max_leases_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(600),
            min_ttl: Duration::from_millis(100),
            max_wait: Duration::from_secs(3600),
            max_entry_bytes: 1 << 20,
            max_batch_bytes: 4 << 20,
            max_batch_entries: 10_000,
            scan_interval: Duration::from_secs(30),
            max_leases: 1_000_000,
            max_leases_per_client: 100_000,
        }
    }
}
