//! The read model as the handlers see it: present once it has opened.
//!
//! Opening the read model may repair or rebuild a large redb file. That is offline work and must
//! not delay the write path, so the server starts serving as soon as the engine has recovered,
//! and queries that need the read model wait for it, as they wait for it to catch up.

use std::time::Duration;

use tally_read::{ReadError, ReadModel};
use tokio::sync::watch;

/// A read model that may still be opening; cheap to clone.
#[derive(Clone)]
pub struct ReadSlot {
    state: watch::Receiver<Option<Result<ReadModel, String>>>,
}

impl ReadSlot {
    /// A slot holding an open read model.
    pub fn ready(read: ReadModel) -> ReadSlot {
        ReadSlot {
            state: watch::channel(Some(Ok(read))).1,
        }
    }

    /// A slot filled by `open`, run on a blocking thread.
    pub fn opening(
        open: impl FnOnce() -> Result<ReadModel, ReadError> + Send + 'static,
    ) -> ReadSlot {
        let (sender, state) = watch::channel(None);
        tokio::task::spawn_blocking(move || {
            let result = open().map_err(|error| {
                tracing::error!(%error, "the read model failed to open; transfer lookups and history are unavailable");
                error.to_string()
            });
            sender.send_replace(Some(result));
        });
        ReadSlot { state }
    }

    /// The read model if it has opened, the reason if it failed, `None` while it is opening.
    pub fn get(&self) -> Option<Result<ReadModel, String>> {
        self.state.borrow().clone()
    }

    /// Waits up to `timeout` for the read model to open.
    pub async fn wait(&self, timeout: Duration) -> Result<ReadModel, String> {
        let mut state = self.state.clone();
        let waited = tokio::time::timeout(timeout, state.wait_for(Option::is_some))
            .await
            .map(|result| result.map(|value| value.clone()));
        match waited {
            Ok(Ok(Some(result))) => result,
            Ok(Ok(None) | Err(_)) => Err("the read model was abandoned while opening".into()),
            Err(_) => Err(format!(
                "the read model is still opening after {}s",
                timeout.as_secs()
            )),
        }
    }
}
