//! W4 after a workload: read every session back from the system and check it against the history.

use crate::check::check;
use crate::history::History;
use crate::systems::System;

/// `ok`, or `fail: <first difference>`.
pub async fn safety(sys: &dyn System, history: &History) -> String {
    let sessions = history.sessions();
    let sources = match sys.contents(&sessions).await {
        Ok(sources) => sources,
        Err(e) => return format!("fail: cannot read the sessions back: {e:#}"),
    };
    let refs: Vec<(&str, &_)> = sources.iter().map(|(name, c)| (*name, c)).collect();
    match check(history, &refs) {
        Ok(()) => "ok".to_owned(),
        Err(diff) => format!("fail: {diff}"),
    }
}
