//! Fencing tokens that never repeat: issued from memory under a durable ceiling.
//!
//! The ceiling file holds a number above every token issued so far. It is raised by a block
//! (write, fsync, rename, fsync the directory) before any token above the old ceiling is handed
//! out, so after a crash the next token starts above anything ever issued, at one fsync per block.
//!
//! A ceiling file that is lost, or restored from an older copy of the data dir, would let tokens
//! repeat. So each start also begins at the wall clock, in microseconds since the Unix epoch
//! (waiting for it to pass the ceiling after a quick restart): the tokens of a run rise by one per
//! grant from its start time, so, at fewer than a million grants a second and with a clock that
//! is not set back, every token issued before is below the clock of any later start.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use tokio::sync::Mutex;

use super::paths::sync_dir;
use crate::model::now_unix_micros;

/// Tokens reserved per ceiling raise: a raise (two fsyncs, during which grants wait) comes every
/// 65,536 grants, and the ceiling runs at most that many microseconds (65 ms) ahead of the clock,
/// which is all a start right after a stop has to wait for.
const BLOCK: u64 = 1 << 16;
/// How far the ceiling may be ahead of the clock for a start to wait until the clock passes it;
/// further ahead, the clock was set back, and the start goes on above the ceiling (logged).
const CATCH_UP_US: u64 = 2 * BLOCK;

/// The token allocator of one data dir (tokens are unique across all its resources).
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    // Async mutex: raising the ceiling awaits a blocking fsync.
    state: Mutex<(u64, u64)>,
}

impl Tokens {
    /// Loads the ceiling from `path` (missing = 0). Blocks until the clock passes the ceiling if
    /// it is at most [`CATCH_UP_US`] ahead (a start right after a stop), so each run's tokens
    /// begin at its clock and never run ahead of it.
    ///
    /// # Errors
    /// An unreadable or malformed ceiling file: starting anyway could reuse tokens.
    pub fn load(path: PathBuf) -> io::Result<Self> {
        let ahead = read_ceiling(&path)?
            .saturating_add(1)
            .saturating_sub(now_unix_micros());
        if ahead > CATCH_UP_US {
            tracing::warn!(
                ahead_ms = ahead / 1000,
                "the token ceiling is ahead of the clock (the clock was set back, or the ceiling \
                 was written by a version with larger blocks): tokens continue above the \
                 ceiling, but until the clock catches up a data dir restored from an older copy \
                 could issue tokens again"
            );
        } else if ahead > 0 {
            std::thread::sleep(std::time::Duration::from_micros(ahead));
        }
        Self::load_at(path, now_unix_micros())
    }

    /// [`Tokens::load`] at wall-clock time `now` (microseconds since the Unix epoch), without
    /// waiting.
    ///
    /// # Errors
    /// As [`Tokens::load`].
    fn load_at(path: PathBuf, now: u64) -> io::Result<Self> {
        let ceiling = read_ceiling(&path)?;
        Ok(Self {
            path,
            state: Mutex::new((ceiling.saturating_add(1).max(now), ceiling)),
        })
    }

    /// The next token, durable: strictly above every token issued before (across restarts) and
    /// above `floor`.
    ///
    /// # Errors
    /// The I/O error raising the ceiling; no token is issued then.
    pub async fn next(&self, floor: u64) -> io::Result<u64> {
        let mut state = self.state.lock().await;
        let next = state.0.max(floor.saturating_add(1));
        // The last value is never issued, so `state.0` can always move past what was issued.
        if next == u64::MAX {
            return Err(io::Error::other(
                "fencing tokens are exhausted (2^64 - 1 reached)",
            ));
        }
        let ceiling = state.1;
        if next > ceiling {
            let raised = next.saturating_add(BLOCK - 1);
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || persist(&path, raised))
                .await
                .map_err(io::Error::other)??;
            state.1 = raised;
        }
        state.0 = next + 1;
        Ok(next)
    }
}

/// The ceiling in `path` (missing = 0).
fn read_ceiling(path: &PathBuf) -> io::Result<u64> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "token ceiling {} is malformed ({e}); refusing to risk reusing tokens",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn persist(path: &PathBuf, ceiling: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{ceiling}")?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_continue_above_everything_issued_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let first = Tokens::load_at(path.clone(), 1_000).unwrap();
        let mut last = 0;
        for _ in 0..10 {
            let t = first.next(0).await.unwrap();
            assert!(t > last);
            last = t;
        }
        drop(first); // a crash: no clean shutdown
        // Even with the clock set back, the ceiling keeps tokens rising.
        let second = Tokens::load_at(path, 5).unwrap();
        let t = second.next(0).await.unwrap();
        assert!(t > last);
        let floor = t + 10 * BLOCK;
        assert_eq!(
            second.next(floor).await.unwrap(),
            floor + 1,
            "a floor is honoured"
        );
        let err = second.next(u64::MAX - 1).await.unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        assert!(
            second.next(u64::MAX).await.is_err(),
            "a floor at the top is refused, not wrapped"
        );
    }

    #[tokio::test]
    async fn a_lost_or_restored_ceiling_still_issues_above_earlier_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let old_copy = dir.path().join("tokens.backup");
        // A run started at t = 1,000,000 µs; the data dir is backed up after its first grant.
        let first = Tokens::load_at(path.clone(), 1_000_000).unwrap();
        let mut last = first.next(0).await.unwrap();
        std::fs::copy(&path, &old_copy).unwrap();
        for _ in 0..BLOCK + 5 {
            last = first.next(0).await.unwrap();
        }
        drop(first);
        // Restored from the backup, or lost, and started again later (more than a microsecond
        // per grant issued since: a second later here).
        std::fs::copy(&old_copy, &path).unwrap();
        let restored = Tokens::load_at(path.clone(), 3_000_000).unwrap();
        assert!(restored.next(0).await.unwrap() > last);
        std::fs::remove_file(&path).unwrap();
        let lost = Tokens::load_at(path, 3_000_000).unwrap();
        assert!(lost.next(0).await.unwrap() > last);
    }
}
