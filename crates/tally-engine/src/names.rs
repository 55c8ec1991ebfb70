//! The names of accounts by index, as of the durable log: what the event feed needs to render
//! events, which store accounts by index.
//!
//! Why here and not in the read model: the feed must follow the log itself, not a projection of
//! it. The read model projects on an offline thread and may trail the log by seconds under load;
//! a feed served at its pace would add that to every downstream projection's lag (the Redis
//! projector's, the dispatcher's). The state thread already knows every name; the writer thread
//! publishes a batch's new names once the batch is durable, and only then moves
//! [`AccountNames::visible`], so a reader never sees an event whose accounts it cannot name.

use std::sync::RwLock;

use tally_core::{AccountIndex, Id, Ledger, LedgerCode};
use tokio::sync::watch;

/// An account's id (`None` for a ledger's external account) and its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountName {
    /// The client's id; `None` for a ledger's external account.
    pub id: Option<Id>,
    /// The account's ledger.
    pub ledger: LedgerCode,
}

/// Every account's name, by index, up to a position of the log.
#[derive(Debug)]
pub struct AccountNames {
    names: RwLock<Vec<AccountName>>,
    /// Every account named by an event below this position is in `names`.
    visible: watch::Sender<u64>,
}

impl AccountNames {
    /// The names of every account of `ledger`, visible up to its next position.
    pub(crate) fn seeded(ledger: &Ledger) -> AccountNames {
        let names = (0..ledger.account_count())
            .map(|index| name_of(ledger, index as AccountIndex))
            .collect();
        AccountNames {
            names: RwLock::new(names),
            visible: watch::Sender::new(ledger.next_position()),
        }
    }

    /// Adds the names of a durable batch's new accounts, then makes the batch visible up to
    /// `end`, its end position.
    pub(crate) fn extend(&self, new: Vec<AccountName>, end: u64) {
        assert!(end >= *self.visible.borrow(), "the log only grows");
        if !new.is_empty() {
            self.names
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(new);
        }
        self.visible.send_replace(end);
    }

    /// The name of the account at `index`; `None` if no visible event created it.
    pub fn get(&self, index: AccountIndex) -> Option<AccountName> {
        self.names
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(index as usize)
            .cloned()
    }

    /// The position below which every event's accounts can be named: the durable end of the
    /// log as of the last batch whose names were published.
    pub fn visible(&self) -> u64 {
        *self.visible.borrow()
    }

    /// Follows [`AccountNames::visible`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }
}

/// The name of the account at `index` of `ledger`.
pub(crate) fn name_of(ledger: &Ledger, index: AccountIndex) -> AccountName {
    let account = ledger.account(index);
    AccountName {
        id: account.id.clone(),
        ledger: ledger.ledger(account.ledger).code.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::{Command, LedgerCode};

    fn open(ledger: &mut Ledger, id: &str, timestamp_ns: u64) {
        let command = Command::CreateAccount {
            id: Id::new(id).unwrap(),
            ledger: LedgerCode::new("EUR").unwrap(),
            allow_overdraft: false,
        };
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        ledger.begin_batch(timestamp_ns, &mut events);
        ledger.execute(&command, &mut events, &mut replies);
    }

    #[test]
    fn names_follow_the_ledger_and_become_visible_with_their_batch() {
        let mut ledger = Ledger::new();
        open(&mut ledger, "alice", 1);
        let names = AccountNames::seeded(&ledger);
        assert_eq!(names.visible(), ledger.next_position());
        // A new ledger gets its external account first.
        assert_eq!(names.get(0).unwrap().id, None);
        assert_eq!(names.get(1).unwrap().id.unwrap().as_str(), "alice");
        assert_eq!(names.get(2), None);

        let before = ledger.account_count();
        open(&mut ledger, "bob", 2);
        let new = (before..ledger.account_count())
            .map(|index| name_of(&ledger, index as AccountIndex))
            .collect();
        let visible = names.subscribe();
        names.extend(new, ledger.next_position());
        assert!(visible.has_changed().unwrap());
        assert_eq!(names.get(2).unwrap().id.unwrap().as_str(), "bob");
        assert_eq!(names.get(2).unwrap().ledger.as_str(), "EUR");
        assert_eq!(names.visible(), ledger.next_position());
    }
}
