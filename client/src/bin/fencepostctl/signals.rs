//! SIGINT/SIGTERM as the normal way to end the long-running commands (keepalive, watch), and the
//! signals `run` forwards to its command.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::exit::Failure;

/// Both stop signals, registered up front so that one arriving early is not lost.
pub struct Interrupt {
    interrupt: Signal,
    terminate: Signal,
}

impl Interrupt {
    /// Registers the handlers; from now on SIGINT/SIGTERM no longer kill the process.
    pub fn install() -> Result<Self, Failure> {
        let register = |kind: SignalKind| {
            signal(kind).map_err(|err| {
                Failure::other("SIGNAL", &format!("cannot install a signal handler: {err}"))
            })
        };
        Ok(Self {
            interrupt: register(SignalKind::interrupt())?,
            terminate: register(SignalKind::terminate())?,
        })
    }

    /// Resolves when SIGINT or SIGTERM arrives.
    pub async fn recv(&mut self) {
        self.recv_which().await;
    }

    /// Resolves with the signal when SIGINT or SIGTERM arrives.
    pub async fn recv_which(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
        }
    }
}
