//! A one-line-per-command text language for ledger commands, for tests, simulations and
//! examples: scenarios read as prose instead of struct literals.
//!
//! ```text
//! open a USD            # account a in ledger USD
//! open o USD overdraft  # may go below zero
//! deposit d1 a 100
//! withdraw w1 a 30
//! transfer t1 a b 10
//! pending p1 a b 10 [timeout_s]
//! post x1 p1 [amount]
//! void v1 p1
//! linked transfer t1 a b 10, transfer t2 b c 5
//! campaign spring GIFT 100 2 10 1000 5000 verifier [offset_s]  # inventory, per-user and daily limits, window in s
//! publish spring
//! claim o1 spring alice     # order id, campaign, user
//! attempt o1 1
//! ended o1 1 0              # attempt 1 ended without settling; read timeouts so far
//! settle o1 delivered       # or voided, unknown
//! ```
//!
//! A scripted campaign's window is in seconds since the epoch, with one UTC offset for all of it
//! (0 unless given) and an empty stored spec.

use std::num::NonZeroU64;

use crate::campaign::{CampaignDefinition, ClaimState, OffsetChange};
use crate::command::{Command, PendingOptions, TransferBody, TransferCommand};
use crate::id::{Id, LedgerCode};

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line:?}: {reason}")]
pub struct ScriptError {
    /// The offending line.
    pub line: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The lines of a script, without blank lines and `#` comments.
pub fn lines(script: &str) -> impl Iterator<Item = &str> {
    script
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
}

/// Parses one line into a command.
pub fn parse(line: &str) -> Result<Command, ScriptError> {
    let fail = |reason: String| ScriptError {
        line: line.to_string(),
        reason,
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["open", account, ledger, rest @ ..] => Ok(Command::CreateAccount {
            id: id(account).map_err(fail)?,
            ledger: LedgerCode::new(ledger).map_err(|error| fail(format!("ledger: {error}")))?,
            allow_overdraft: match rest {
                [] => false,
                ["overdraft"] => true,
                _ => {
                    return Err(fail(
                        "expected `overdraft` or nothing after the ledger".into(),
                    ))
                }
            },
        }),
        ["linked", ..] => {
            let chain = line["linked".len()..]
                .split(',')
                .map(|part| transfer(&part.split_whitespace().collect::<Vec<_>>()));
            Ok(Command::Linked(
                chain.collect::<Result<_, _>>().map_err(fail)?,
            ))
        }
        ["campaign", ..] => campaign(&words).map_err(fail),
        ["publish", campaign] => Ok(Command::PublishCampaign {
            id: id(campaign).map_err(fail)?,
        }),
        ["claim", order, campaign, user] => Ok(Command::Claim {
            campaign: id(campaign).map_err(fail)?,
            order_id: id(order).map_err(fail)?,
            user: id(user).map_err(fail)?,
        }),
        ["settle", order, outcome] => Ok(Command::SettleClaim {
            order_id: id(order).map_err(fail)?,
            outcome: match *outcome {
                "delivered" => ClaimState::Delivered,
                "voided" => ClaimState::Voided,
                "unknown" => ClaimState::Unknown,
                _ => return Err(fail(format!("unknown outcome {outcome:?}"))),
            },
        }),
        ["attempt", order, number] => Ok(Command::RecordClaimAttempt {
            order_id: id(order).map_err(fail)?,
            attempt: number
                .parse()
                .map_err(|_| fail(format!("attempt {number:?} is not a number")))?,
        }),
        ["ended", order, number, read_timeouts] => Ok(Command::EndClaimAttempt {
            order_id: id(order).map_err(fail)?,
            attempt: number
                .parse()
                .map_err(|_| fail(format!("attempt {number:?} is not a number")))?,
            read_timeouts: read_timeouts
                .parse()
                .map_err(|_| fail(format!("read timeouts {read_timeouts:?} is not a number")))?,
        }),
        _ => Ok(Command::Transfer(transfer(&words).map_err(fail)?)),
    }
}

fn campaign(words: &[&str]) -> Result<Command, String> {
    let ["campaign", campaign, ledger, inventory, per_user, daily, starts, ends, verifier, rest @ ..] =
        words
    else {
        return Err("expected: campaign ID LEDGER INVENTORY PER_USER DAILY STARTS_S ENDS_S VERIFIER [OFFSET_S]".into());
    };
    let number = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("{text:?} is not a number"))
    };
    let seconds = |text: &str| {
        number(text)?
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("{text} s is beyond Tally's clock"))
    };
    let offset_seconds = match rest {
        [] => 0,
        [offset] => offset
            .parse()
            .map_err(|_| format!("offset {offset:?} is not a number of seconds"))?,
        _ => return Err("too many words after the verification account".into()),
    };
    let starts_at_ns = seconds(starts)?;
    Ok(Command::DefineCampaign(Box::new(CampaignDefinition {
        id: id(campaign)?,
        gift_ledger: LedgerCode::new(ledger).map_err(|error| format!("ledger: {error}"))?,
        inventory: number(inventory)?,
        per_user_limit: number(per_user)?,
        daily_limit: number(daily)?,
        starts_at_ns,
        ends_at_ns: seconds(ends)?,
        verification_account: id(verifier)?,
        offsets: vec![OffsetChange {
            from_ns: starts_at_ns,
            offset_seconds,
        }],
        spec: Vec::new(),
    })))
}

fn id(text: &str) -> Result<Id, String> {
    Id::new(text).map_err(|error| format!("id {text:?}: {error}"))
}

fn amount(text: &str) -> Result<NonZeroU64, String> {
    text.parse::<u64>()
        .ok()
        .and_then(NonZeroU64::new)
        .ok_or_else(|| format!("amount {text:?} is not a positive integer"))
}

fn transfer(words: &[&str]) -> Result<TransferCommand, String> {
    let body = match words {
        ["deposit", _, account, value] => TransferBody::Deposit {
            account: id(account)?,
            amount: amount(value)?,
        },
        ["withdraw", _, account, value] => TransferBody::Withdrawal {
            account: id(account)?,
            amount: amount(value)?,
        },
        ["transfer", _, from, to, value] => TransferBody::Transfer {
            from: id(from)?,
            to: id(to)?,
            amount: amount(value)?,
            pending: None,
        },
        ["pending", _, from, to, value, rest @ ..] if rest.len() <= 1 => {
            let timeout_s = match rest.first() {
                None => 0,
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("timeout {text:?} is not a number of seconds"))?,
            };
            TransferBody::Transfer {
                from: id(from)?,
                to: id(to)?,
                amount: amount(value)?,
                pending: Some(PendingOptions { timeout_s }),
            }
        }
        ["post", _, pending, rest @ ..] if rest.len() <= 1 => TransferBody::Post {
            pending_id: id(pending)?,
            amount: rest.first().map(|value| amount(value)).transpose()?,
        },
        ["void", _, pending] => TransferBody::Void {
            pending_id: id(pending)?,
        },
        _ => return Err(format!("unknown command {words:?}")),
    };
    Ok(TransferCommand {
        id: id(words[1])?,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        for line in lines("open a USD overdraft\ndeposit d a 1 # fund\npending p a b 2 60\npost x p\nlinked transfer t a b 1, void v p\ncampaign c G 9 1 2 10 20 v -3600\npublish c\nclaim o c u\nattempt o 1\nsettle o unknown") {
            parse(line).unwrap();
        }
        for line in [
            "open a",
            "deposit d a 0",
            "transfer t a b -1",
            "post x p 1 2",
            "fly t a b 1",
            "open a USD maybe",
            "campaign c G 9 1 2 10 20",
            "settle o maybe",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }
}
