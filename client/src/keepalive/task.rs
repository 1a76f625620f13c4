//! The keepalive task's loop: renew on a tick, match replies, apply pushed losses, reconnect a
//! broken stream, and move each lease's health as its deadline approaches.

use std::collections::HashMap;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fencepost as proto;
use proto::v1::fencepost_client::FencepostClient;
use proto::v1::{KeepAliveRequest, KeepAliveResponse};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use super::Command;
use super::in_flight::InFlight;
use crate::Error;
use crate::health::{LeaseHealth, LeaseSignal, LossReason};
use crate::retry::Backoff;

/// Renewal messages sent and not yet answered, at most (a round larger than this is sent alone);
/// a stalled stream skips ticks beyond it.
pub(super) const MAX_IN_FLIGHT: usize = 16;
/// The shortest renewal period, for leases with a tiny TTL.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// How long opening the stream may take before it is tried again.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

struct Tracked {
    ttl: Duration,
    deadline: Instant,
    signal: Arc<LeaseSignal>,
}

impl Tracked {
    /// Jeopardy once half the TTL has passed without a confirmed renewal.
    fn jeopardy_at(&self) -> Instant {
        self.deadline
            .checked_sub(self.ttl / 2)
            .unwrap_or(self.deadline)
    }
}

struct Open {
    /// Unbounded: [`InFlight::room_for`] bounds what is queued.
    requests: mpsc::UnboundedSender<KeepAliveRequest>,
    replies: tonic::Streaming<KeepAliveResponse>,
    in_flight: InFlight,
}

type Opening = Pin<Box<dyn Future<Output = Result<Open, Error>> + Send>>;

pub(super) struct Task {
    rpc: FencepostClient<Channel>,
    inbox: mpsc::UnboundedReceiver<Command>,
    leases: HashMap<String, Tracked>,
    stream: Option<Open>,
    opening: Option<Opening>,
    reconnect_at: Option<Instant>,
    backoff: Backoff,
    next_tick: Instant,
    paused: bool,
}

impl Task {
    pub(super) fn new(
        rpc: FencepostClient<Channel>,
        inbox: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            rpc,
            inbox,
            leases: HashMap::new(),
            stream: None,
            opening: None,
            reconnect_at: None,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            next_tick: Instant::now(),
            paused: false,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            if self.stream.is_none()
                && self.opening.is_none()
                && self.reconnect_at.is_none()
                && !self.leases.is_empty()
            {
                self.opening = Some(Box::pin(open(self.rpc.clone())));
            }
            let next_check = self.next_check();
            let ticking = self.stream.is_some() && !self.paused && !self.leases.is_empty();
            tokio::select! {
                biased;
                command = self.inbox.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                reply = next_reply(self.stream.as_mut()) => self.reply(reply),
                opened = finish(self.opening.as_mut()) => {
                    self.opening = None;
                    self.opened(opened);
                }
                () = sleep_until_some(next_check) => {}
                () = sleep_until(self.next_tick), if ticking => self.tick(),
                () = sleep_until_some(self.reconnect_at) => self.reconnect_at = None,
            }
            self.check(Instant::now());
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register(lease) => {
                self.leases.insert(
                    lease.lease_id,
                    Tracked {
                        ttl: lease.ttl,
                        deadline: lease.deadline,
                        signal: lease.signal,
                    },
                );
                // Renew at once: the server reports a loss only for leases renewed on the stream.
                self.next_tick = Instant::now();
            }
            Command::Unregister(lease_id) => {
                self.leases.remove(&lease_id);
            }
            Command::Pause(paused) => {
                self.paused = paused;
                self.next_tick = Instant::now();
            }
        }
    }

    /// Sends one renewal round naming every live lease.
    fn tick(&mut self) {
        let now = Instant::now();
        self.next_tick = now + self.period();
        let Some(open) = self.stream.as_mut() else {
            return;
        };
        if !open.in_flight.room_for(messages(self.leases.len())) {
            return;
        }
        let mut lease_ids: Vec<String> = self.leases.keys().cloned().collect();
        lease_ids.sort_unstable();
        if send_round(&open.requests, &mut open.in_flight, &lease_ids, now).is_err() {
            self.broken();
        }
    }

    /// A third of the shortest TTL: two renewals may go missing before any lease expires.
    fn period(&self) -> Duration {
        self.leases
            .values()
            .map(|lease| lease.ttl / 3)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(MIN_PERIOD)
    }

    fn reply(&mut self, reply: Option<Result<KeepAliveResponse, Error>>) {
        let reply = match reply {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => {
                tracing::debug!(%error, "keepalive stream failed");
                self.broken();
                return;
            }
            None => {
                tracing::debug!("the server ended the keepalive stream");
                self.broken();
                return;
            }
        };
        let ids: Vec<&str> = reply.leases.iter().map(|s| s.lease_id.as_str()).collect();
        let sent = self
            .stream
            .as_mut()
            .and_then(|open| open.in_flight.answered(&ids));
        for status in &reply.leases {
            let Some(lease) = self.leases.get_mut(&status.lease_id) else {
                continue;
            };
            if status.alive {
                // Only a reply to a request we know the send time of may extend the deadline.
                if let Some(sent) = sent {
                    let deadline = sent + Duration::from_millis(status.ttl_remaining_ms);
                    lease.deadline = lease.deadline.max(deadline);
                }
            } else {
                self.lose(&status.lease_id.clone(), LossReason::from_end(status.ended));
            }
        }
        self.backoff.reset();
    }

    fn opened(&mut self, opened: Result<Open, Error>) {
        match opened {
            Ok(open) => {
                self.stream = Some(open);
                self.next_tick = Instant::now();
            }
            Err(error) => {
                tracing::debug!(%error, "cannot open the keepalive stream");
                self.broken();
            }
        }
    }

    /// Drops the stream and schedules a reconnect (the leases keep their deadlines meanwhile).
    fn broken(&mut self) {
        self.stream = None;
        self.reconnect_at = Some(Instant::now() + self.backoff.next_pause());
    }

    fn lose(&mut self, lease_id: &str, reason: LossReason) {
        if let Some(lease) = self.leases.remove(lease_id)
            && lease.signal.lose(reason)
        {
            tracing::info!(lease_id, reason = reason.as_str(), "lease lost");
        }
    }

    /// Moves every lease to the health its deadline says; a lease lost elsewhere is dropped.
    fn check(&mut self, now: Instant) {
        let mut lost = Vec::new();
        for (id, lease) in &self.leases {
            if lease.signal.current().is_lost() {
                lost.push((id.clone(), None));
            } else if now >= lease.deadline {
                lost.push((id.clone(), Some(LossReason::ConnectionLost)));
            } else if now >= lease.jeopardy_at() {
                lease.signal.set_live(LeaseHealth::Jeopardy);
            } else {
                lease.signal.set_live(LeaseHealth::Healthy);
            }
        }
        for (id, reason) in lost {
            match reason {
                Some(reason) => self.lose(&id, reason),
                None => {
                    self.leases.remove(&id);
                }
            }
        }
    }

    /// The next instant some lease changes health.
    fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        self.leases
            .values()
            .map(|lease| {
                let jeopardy = lease.jeopardy_at();
                if now < jeopardy {
                    jeopardy
                } else {
                    lease.deadline
                }
            })
            .min()
    }
}

/// Messages a round naming `leases` leases takes.
fn messages(leases: usize) -> usize {
    leases.div_ceil(proto::MAX_KEEPALIVE_IDS).max(1)
}

/// Sends one renewal round naming `lease_ids`, in messages of at most the server's limit of ids
/// each, if [`InFlight::room_for`] it. A round is sent whole or not at all, so that every lease is
/// renewed however many messages it takes. `Err` when the stream is gone.
fn send_round(
    requests: &mpsc::UnboundedSender<KeepAliveRequest>,
    in_flight: &mut InFlight,
    lease_ids: &[String],
    now: Instant,
) -> Result<(), mpsc::error::SendError<KeepAliveRequest>> {
    if !in_flight.room_for(messages(lease_ids.len())) {
        return Ok(());
    }
    for chunk in lease_ids.chunks(proto::MAX_KEEPALIVE_IDS) {
        requests.send(KeepAliveRequest {
            lease_ids: chunk.to_vec(),
        })?;
        in_flight.push(now, chunk.to_vec());
    }
    Ok(())
}

/// Opens the KeepAlive stream: requests go through a channel the task feeds.
async fn open(mut rpc: FencepostClient<Channel>) -> Result<Open, Error> {
    let (requests, outbound) = mpsc::unbounded_channel();
    let call = rpc.keep_alive(UnboundedReceiverStream::new(outbound));
    let replies = tokio::time::timeout(OPEN_TIMEOUT, call)
        .await
        .map_err(|_elapsed| Error::RequestTimeout {
            after: OPEN_TIMEOUT,
        })??
        .into_inner();
    Ok(Open {
        requests,
        replies,
        in_flight: InFlight::default(),
    })
}

async fn next_reply(stream: Option<&mut Open>) -> Option<Result<KeepAliveResponse, Error>> {
    match stream {
        Some(open) => open
            .replies
            .message()
            .await
            .map_err(Error::from)
            .transpose(),
        None => pending().await,
    }
}

async fn finish(opening: Option<&mut Opening>) -> Result<Open, Error> {
    match opening {
        Some(opening) => opening.await,
        None => pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalive::Registration;

    #[test]
    fn jeopardy_comes_half_a_ttl_before_the_deadline() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let lease = Tracked {
            ttl: Duration::from_secs(10),
            deadline,
            signal: Arc::new(LeaseSignal::new()),
        };
        assert_eq!(lease.jeopardy_at(), deadline - Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_lease_without_a_confirmed_renewal_goes_into_jeopardy_then_is_lost() {
        let (_commands, inbox) = mpsc::unbounded_channel();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let mut task = Task::new(FencepostClient::new(channel), inbox);
        let signal = Arc::new(LeaseSignal::new());
        let start = Instant::now();
        task.command(Command::Register(Registration {
            lease_id: "l".into(),
            ttl: Duration::from_secs(3),
            deadline: start + Duration::from_secs(3),
            signal: Arc::clone(&signal),
        }));
        task.check(start + Duration::from_millis(1400));
        assert_eq!(signal.current(), LeaseHealth::Healthy);
        assert_eq!(task.next_check(), Some(start + Duration::from_millis(1500)));
        task.check(start + Duration::from_millis(1500));
        assert_eq!(signal.current(), LeaseHealth::Jeopardy);
        task.check(start + Duration::from_secs(3));
        assert_eq!(
            signal.current(),
            LeaseHealth::Lost(LossReason::ConnectionLost)
        );
        assert!(task.leases.is_empty());
    }

    /// Sends a round and returns the ids it named, in order.
    fn round(
        requests: &mpsc::UnboundedSender<KeepAliveRequest>,
        outbound: &mut mpsc::UnboundedReceiver<KeepAliveRequest>,
        in_flight: &mut InFlight,
        ids: &[String],
    ) -> Vec<String> {
        send_round(requests, in_flight, ids, Instant::now()).unwrap();
        std::iter::from_fn(|| outbound.try_recv().ok())
            .flat_map(|request| {
                assert!(request.lease_ids.len() <= proto::MAX_KEEPALIVE_IDS);
                request.lease_ids
            })
            .collect()
    }

    fn answer_all(in_flight: &mut InFlight, ids: &[String]) {
        for chunk in ids.chunks(proto::MAX_KEEPALIVE_IDS) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            assert!(in_flight.answered(&names).is_some());
        }
    }

    #[test]
    fn every_lease_is_in_every_round_however_many_messages_it_takes() {
        let (requests, mut outbound) = mpsc::unbounded_channel();
        let mut in_flight = InFlight::default();
        // More messages in one round than may be in flight: the tail of the set used to be cut
        // off, the same leases every time, once the request channel (sized in messages) filled.
        let count = (MAX_IN_FLIGHT + 1) * proto::MAX_KEEPALIVE_IDS + 1;
        let ids: Vec<String> = (0..count).map(|i| format!("l{i:07}")).collect();
        for _ in 0..3 {
            let named = round(&requests, &mut outbound, &mut in_flight, &ids);
            assert_eq!(named, ids, "a round names every lease once");
            // Unanswered, it goes alone: the next tick sends nothing.
            assert!(round(&requests, &mut outbound, &mut in_flight, &ids).is_empty());
            answer_all(&mut in_flight, &ids);
        }
        // Small rounds: at most MAX_IN_FLIGHT messages unanswered, as before.
        let small = &ids[..2];
        for _ in 0..MAX_IN_FLIGHT {
            assert_eq!(
                round(&requests, &mut outbound, &mut in_flight, small),
                small
            );
        }
        assert!(round(&requests, &mut outbound, &mut in_flight, small).is_empty());
        drop(outbound);
        let mut fresh = InFlight::default();
        assert!(send_round(&requests, &mut fresh, small, Instant::now()).is_err());
    }
}
