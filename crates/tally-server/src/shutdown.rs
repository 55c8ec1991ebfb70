//! The signals that ask a long-running process to stop gracefully: SIGTERM and SIGINT.
//!
//! Tokio installs a signal's handler when its listener is created, not when the future that
//! waits for it is first polled. A process that says it is ready and only then creates its
//! listeners (in a task a busy runtime has not run yet) can be killed by the default action
//! of a SIGTERM sent the moment it is ready, ending with no snapshot and a failed exit.
//! So the listeners are created here, before the process announces itself.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT listeners, installed when this is created.
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers now; must be called inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes at the first SIGTERM or SIGINT received since [`ShutdownSignals::install`].
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_signal_sent_before_anyone_waits_is_still_received() {
        let signals = ShutdownSignals::install().unwrap();
        // SAFETY: raise(3) sends a signal to this process; its handler is installed above, so
        // the default action (ending the test binary) never runs.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(10), signals.received())
            .await
            .expect("the SIGTERM raised before waiting is received");
    }
}
