//! The descriptor budget: at most so many logs keep their session file and index open. Past it,
//! the least recently used idle log closes its descriptors (CLOCK: a log used since the last pass
//! gets a second chance) and reopens them on its next use, checking it is still the same file.

use std::collections::VecDeque;
use std::sync::{Mutex, Weak};

use super::log::EmbeddedLog;

/// Logs with open descriptors, in the order they opened them.
#[derive(Debug)]
pub struct FdBudget {
    cap: usize,
    // std Mutex: queue edits only; a log's own state lock is taken inside it, never the reverse.
    open: Mutex<VecDeque<Weak<EmbeddedLog>>>,
}

impl FdBudget {
    /// A budget of `cap` logs (two descriptors each), sized from the process's open-file limit.
    pub fn from_rlimit() -> Self {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        // Half the limit for logs (two each), the rest for connections, the WAL and the writer.
        let cap = usize::try_from(soft / 4)
            .unwrap_or(usize::MAX)
            .clamp(32, 65_536);
        Self {
            cap,
            open: Mutex::new(VecDeque::new()),
        }
    }

    /// Records that `log` opened its descriptors, closing others' if over budget.
    pub fn opened(&self, log: Weak<EmbeddedLog>) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.push_back(log);
        let mut scanned = 0;
        while open.len() > self.cap && scanned < 2 * open.len() {
            let Some(candidate) = open.pop_front() else {
                break;
            };
            scanned += 1;
            // A dropped log has closed its descriptors already.
            if let Some(log) = candidate.upgrade()
                && !log.try_close_files()
            {
                open.push_back(candidate);
            }
        }
    }
}
