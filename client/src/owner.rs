//! The identity a client presents as lease owner: a fresh `client_id`, a readable name and a kind.

use fencepost as proto;
use proto::v1::{Owner, OwnerKind};

/// A new owner identity for one client instance: a fresh UUID v4 `client_id`, the name
/// `<hostname> pid <pid>` and the given kind.
///
/// ```
/// let owner = fencepost_client::new_owner(fencepost_client::OwnerKind::Cron);
/// assert_eq!(owner.kind(), fencepost_client::OwnerKind::Cron);
/// ```
#[must_use]
pub fn new_owner(kind: OwnerKind) -> Owner {
    Owner {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: default_name(),
        kind: kind.into(),
    }
}

/// `<hostname> pid <pid>`, the default owner name.
///
/// ```
/// assert!(fencepost_client::default_name().contains(" pid "));
/// ```
#[must_use]
pub fn default_name() -> String {
    format!("{} pid {}", hostname(), std::process::id())
}

/// This machine's host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`.
///
/// ```
/// assert!(!fencepost_client::hostname().is_empty());
/// ```
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_owner_gets_its_own_client_id() {
        let first = new_owner(OwnerKind::Runner);
        let second = new_owner(OwnerKind::Runner);
        assert_ne!(first.client_id, second.client_id);
        assert!(uuid::Uuid::parse_str(&first.client_id).is_ok());
        assert_eq!(first.kind(), OwnerKind::Runner);
    }

    #[test]
    fn default_name_is_host_and_pid() {
        let name = default_name();
        assert!(name.ends_with(&format!(" pid {}", std::process::id())));
        assert!(!hostname().is_empty());
    }
}
