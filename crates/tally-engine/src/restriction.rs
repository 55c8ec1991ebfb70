//! What a restricted caller (a token limited to some ledgers or accounts) may touch, checked on
//! the state thread, where the ledger of every account is known.

use std::collections::HashSet;
use std::sync::RwLock;

use tally_core::{Command, Id, Ledger, Outcome, TransferBody, TransferCommand};

/// Ledgers and accounts a caller is limited to; an empty list means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restriction {
    /// Ledger codes the caller may touch.
    pub ledgers: Vec<String>,
    /// Account ids the caller may touch.
    pub accounts: Vec<String>,
}

impl Restriction {
    /// Whether an account (by ledger, and by id when known) is within the restriction.
    pub fn allows(&self, ledger: Option<&str>, account: Option<&str>) -> bool {
        let ledger_ok = self.ledgers.is_empty()
            || ledger.is_some_and(|code| self.ledgers.iter().any(|allowed| allowed == code));
        let account_ok = self.accounts.is_empty()
            || account.is_some_and(|id| self.accounts.iter().any(|allowed| allowed == id));
        ledger_ok && account_ok
    }

    /// Checks every account `command` touches. An account that does not exist is checked by id
    /// alone: the command fails with `not_found` anyway, before it could touch a ledger.
    pub(crate) fn check(&self, ledger: &Ledger, command: &Command) -> Result<(), String> {
        match command {
            Command::CreateAccount {
                id, ledger: code, ..
            } => self.require(Some(code.as_str()), id.as_str()),
            Command::Transfer(transfer) => self.check_transfer(ledger, transfer),
            Command::Linked(chain) => chain
                .iter()
                .try_for_each(|transfer| self.check_transfer(ledger, transfer)),
            Command::RevokeToken { .. } => {
                Err("a token restricted to ledgers or accounts cannot revoke tokens".into())
            }
            Command::Claim { campaign, user, .. } => match ledger.campaign_by_id(campaign) {
                Some((_, found)) => {
                    self.require(Some(found.definition.gift_ledger.as_str()), user.as_str())
                }
                // Refused with `campaign_not_found` anyway, before it could touch a ledger.
                None => self.require_account(user.as_str()),
            },
            // Campaigns belong to the whole instance: defining, publishing and settling them is
            // for unrestricted tokens (the routes ask for the admin scope besides).
            Command::DefineCampaign(_)
            | Command::PublishCampaign { .. }
            | Command::SettleClaim { .. }
            | Command::RecordClaimAttempt { .. }
            | Command::EndClaimAttempt { .. } => {
                Err("a token restricted to ledgers or accounts cannot manage campaigns".into())
            }
        }
    }

    fn check_transfer(&self, ledger: &Ledger, transfer: &TransferCommand) -> Result<(), String> {
        match &transfer.body {
            TransferBody::Deposit { account, .. } | TransferBody::Withdrawal { account, .. } => {
                self.check_account(ledger, account)
            }
            TransferBody::Transfer { from, to, .. } => {
                self.check_account(ledger, from)?;
                self.check_account(ledger, to)
            }
            TransferBody::Post { pending_id, .. } | TransferBody::Void { pending_id } => {
                let Some(Outcome::Committed { position, .. }) = ledger.outcome(pending_id) else {
                    return Ok(());
                };
                let Some(record) = ledger.pending(position) else {
                    // A committed transfer that is not pending: the state keeps no accounts
                    // for it, so the restriction cannot be checked. Letting it through would
                    // record a `not_pending` rejection and tell a restricted caller that a
                    // transfer of another ledger exists.
                    return Err(format!(
                        "the token may not resolve {:?}: it is not a pending transfer",
                        pending_id.as_str()
                    ));
                };
                for index in [record.debit, record.credit] {
                    let account = ledger.account(index);
                    let id = account.id.as_ref().map(Id::as_str).unwrap_or_default();
                    self.require(Some(ledger.ledger(account.ledger).code.as_str()), id)?;
                }
                Ok(())
            }
        }
    }

    fn check_account(&self, ledger: &Ledger, id: &Id) -> Result<(), String> {
        match ledger.account_by_id(id) {
            Some((_, account)) => self.require(
                Some(ledger.ledger(account.ledger).code.as_str()),
                id.as_str(),
            ),
            None => self.require_account(id.as_str()),
        }
    }

    fn require_account(&self, id: &str) -> Result<(), String> {
        if self.accounts.is_empty() || self.accounts.iter().any(|allowed| allowed == id) {
            Ok(())
        } else {
            Err(format!("the token may not touch account {id:?}"))
        }
    }

    fn require(&self, ledger: Option<&str>, account: &str) -> Result<(), String> {
        if self.allows(ledger, Some(account)) {
            Ok(())
        } else {
            Err(format!(
                "the token may not touch account {account:?} of ledger {:?}",
                ledger.unwrap_or("?")
            ))
        }
    }
}

/// The revoked token ids, as of the durable log: the writer adds a revocation once its batch is
/// durable, and the authentication layer reads the set on every request.
#[derive(Debug, Default)]
pub struct Revocations {
    tokens: RwLock<HashSet<String>>,
}

impl Revocations {
    pub(crate) fn seeded<'a>(tokens: impl Iterator<Item = &'a Id>) -> Revocations {
        Revocations {
            tokens: RwLock::new(tokens.map(|id| id.to_string()).collect()),
        }
    }

    /// Whether `token_id` is revoked.
    pub fn contains(&self, token_id: &str) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(token_id)
    }

    pub(crate) fn extend(&self, token_ids: Vec<String>) {
        self.tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(token_ids);
    }

    /// How many tokens are revoked.
    pub fn len(&self) -> usize {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether no token is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
