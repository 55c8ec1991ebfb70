//! The event feed: the log read from a position, events rendered with account ids and ledgers.
//!
//! The log stores accounts by index; the caller names them (the engine keeps every account's
//! name as of the durable log) and says up to which position it can. The feed reads the log
//! itself, not the read model, so a follower of the feed trails the log by its own pace only,
//! never by the read model's. A page scans a bounded number of events, whatever the filter lets
//! through, so a filter that matches nothing cannot make one request read the whole log; the
//! page's `next` says where the scan stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tally_core::{decode_events, AccountIndex, Event, TransferEvent, TransferKind};
use tally_log::LogReader;

use crate::limits::{FEED_PAGE_EVENTS_MAX, FEED_READERS_KEPT_MAX, FEED_SCAN_EVENTS_MAX};
use crate::ReadError;

/// Reads pages of the event feed from the log. Shared by every request.
pub struct EventFeed {
    /// Readers of the log, each used by one request at a time. Kept between requests because a
    /// fresh reader indexes a segment from its start before it can seek, which would make every
    /// page cost the whole segment. At most [`FEED_READERS_KEPT_MAX`] are kept idle; a request
    /// that finds none makes a new one.
    template: Mutex<Box<dyn LogReader>>,
    idle: Mutex<Vec<Box<dyn LogReader>>>,
    /// Pages read so far.
    pages: AtomicU64,
}

/// An account as the feed names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedAccount {
    /// Its id; `None` for a ledger's external account.
    pub id: Option<String>,
    /// Its ledger.
    pub ledger: String,
}

/// Which events a page keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only events of this ledger (by code).
    pub ledger: Option<String>,
    /// Only events that name this account (by id).
    pub account: Option<String>,
}

/// One event as the feed serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEvent {
    /// Its position in the log.
    pub position: u64,
    /// Its batch's timestamp, in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// What happened.
    pub body: FeedBody,
}

/// What an event records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedBody {
    /// An account was opened.
    AccountCreated {
        /// Its id.
        account: String,
        /// Its ledger.
        ledger: String,
        /// Whether it may go below zero.
        allow_overdraft: bool,
    },
    /// Value moved, was reserved, posted or released (`kind` says which).
    Transfer {
        /// The transfer id.
        transfer_id: String,
        /// `deposit`, `withdrawal`, `transfer`, `pending`, `post` or `void`.
        kind: &'static str,
        /// The ledger.
        ledger: String,
        /// The account debited; `None` for the ledger's external account.
        from: Option<String>,
        /// The account credited; `None` for the ledger's external account.
        to: Option<String>,
        /// Amount in minor units.
        amount: u64,
        /// For a post or void: the position of the pending transfer.
        pending_position: Option<u64>,
    },
    /// A transfer command was refused.
    Rejected {
        /// The command's transfer id.
        transfer_id: String,
        /// Why (the API's error code).
        code: &'static str,
    },
    /// A pending transfer timed out and released its reservation.
    Expired {
        /// The position of the pending transfer.
        pending_position: u64,
    },
    /// An access token was revoked.
    TokenRevoked {
        /// The token's id.
        token_id: String,
    },
    /// A campaign or claim changed; the gifts themselves move as the transfers around it.
    Campaign {
        /// `campaign_defined`, `campaign_published`, `claim_recorded`, `claim_settled`,
        /// `claim_attempted` or `claim_attempt_ended`.
        event_type: &'static str,
        /// The campaign's id (campaign events).
        campaign: Option<String>,
        /// The claim's order id (claim events).
        order_id: Option<String>,
        /// `claim_settled`: the claim's new state.
        state: Option<&'static str>,
        /// `claim_attempted` and `claim_attempt_ended`: the attempt's number.
        attempt: Option<u32>,
        /// `claim_attempt_ended`: the order's read timeouts so far.
        read_timeouts: Option<u32>,
        /// `claim_recorded`: position of the claim's pending transfer.
        pending_position: Option<u64>,
    },
}

/// A page of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPage {
    /// The events kept, in position order.
    pub events: Vec<FeedEvent>,
    /// The last position scanned: the `after` of the next page. `None` when nothing was scanned
    /// (nothing new yet): ask again with the same `after`.
    pub next: Option<u64>,
    /// The end the caller set when the page was read: events below it are served.
    pub end: u64,
}

impl EventFeed {
    /// A feed reading the log through copies of `reader`.
    pub fn new(reader: Box<dyn LogReader>) -> EventFeed {
        EventFeed {
            template: Mutex::new(reader),
            idle: Mutex::new(Vec::new()),
            pages: AtomicU64::new(0),
        }
    }

    /// Up to `limit` events strictly after `after` (from position 0 when `None`) that pass
    /// `filter`, below `end`, scanning at most [`FEED_SCAN_EVENTS_MAX`] events; `limit` is
    /// clamped to `1..=`[`FEED_PAGE_EVENTS_MAX`]. `name` names the account at an index; every
    /// account an event below `end` names must have one.
    pub fn page(
        &self,
        after: Option<u64>,
        limit: u32,
        filter: &FeedFilter,
        end: u64,
        name: &dyn Fn(AccountIndex) -> Option<FeedAccount>,
    ) -> Result<FeedPage, ReadError> {
        let mut reader = self.take();
        self.pages.fetch_add(1, Ordering::Relaxed);
        let page = read_page(reader.as_mut(), after, limit, filter, end, name);
        self.give_back(reader);
        page
    }

    /// Pages read so far.
    pub fn pages_read(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    fn take(&self) -> Box<dyn LogReader> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        idle.unwrap_or_else(|| {
            self.template
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .another()
        })
    }

    fn give_back(&self, reader: Box<dyn LogReader>) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < FEED_READERS_KEPT_MAX {
            idle.push(reader);
        }
    }
}

fn read_page(
    reader: &mut dyn LogReader,
    after: Option<u64>,
    limit: u32,
    filter: &FeedFilter,
    end: u64,
    name: &dyn Fn(AccountIndex) -> Option<FeedAccount>,
) -> Result<FeedPage, ReadError> {
    let limit = limit.clamp(1, FEED_PAGE_EVENTS_MAX) as usize;
    let from = after.map_or(0, |after| after.saturating_add(1));
    let mut page = FeedPage {
        events: Vec::new(),
        next: None,
        end,
    };
    if from >= end {
        return Ok(page);
    }
    let mut scanned = 0u64;
    let log_error = |source| ReadError::Log {
        position: from,
        source,
    };
    'batches: for batch in reader.read_from(from).map_err(log_error)? {
        let batch = batch.map_err(log_error)?;
        let header = batch.header;
        let events =
            decode_events(&batch.body, header.event_count).map_err(|source| ReadError::Decode {
                first_position: header.first_position,
                source,
            })?;
        for (offset, event) in events.into_iter().enumerate() {
            let position = header.first_position + offset as u64;
            if position < from {
                continue;
            }
            if position >= end || scanned == FEED_SCAN_EVENTS_MAX || page.events.len() == limit {
                break 'batches;
            }
            scanned += 1;
            page.next = Some(position);
            let account = |index| name(index).ok_or(ReadError::UnknownAccount { position, index });
            let body = render(event, &account)?;
            if filter.keeps(&body) {
                page.events.push(FeedEvent {
                    position,
                    timestamp_ns: header.timestamp_ns,
                    body,
                });
            }
        }
    }
    Ok(page)
}

fn render(
    event: Event,
    account: &dyn Fn(AccountIndex) -> Result<FeedAccount, ReadError>,
) -> Result<FeedBody, ReadError> {
    Ok(match event {
        Event::AccountCreated {
            id,
            ledger,
            allow_overdraft,
        } => FeedBody::AccountCreated {
            account: id.to_string(),
            ledger: ledger.to_string(),
            allow_overdraft,
        },
        Event::Transfer(TransferEvent {
            id,
            kind,
            debit,
            credit,
            amount,
            ..
        }) => {
            let (from, to) = (account(debit)?, account(credit)?);
            let pending_position = match kind {
                TransferKind::Post { pending } | TransferKind::Void { pending } => Some(pending),
                _ => None,
            };
            FeedBody::Transfer {
                transfer_id: id.to_string(),
                kind: kind.name(),
                ledger: from.ledger,
                from: from.id,
                to: to.id,
                amount,
                pending_position,
            }
        }
        Event::Rejected { id, code, .. } => FeedBody::Rejected {
            transfer_id: id.to_string(),
            code: code.as_str(),
        },
        Event::Expired { pending } => FeedBody::Expired {
            pending_position: pending,
        },
        Event::TokenRevoked { token_id } => FeedBody::TokenRevoked {
            token_id: token_id.to_string(),
        },
        Event::CampaignDefined(definition) => campaign_body("campaign_defined", |body| {
            body.0 = Some(definition.id.to_string())
        }),
        Event::CampaignPublished { campaign } => campaign_body("campaign_published", |body| {
            body.0 = Some(campaign.to_string())
        }),
        Event::ClaimRecorded {
            order_id, pending, ..
        } => campaign_body("claim_recorded", |body| {
            body.1 = Some(order_id.to_string());
            body.4 = Some(pending);
        }),
        Event::ClaimSettled { order_id, outcome } => campaign_body("claim_settled", |body| {
            body.1 = Some(order_id.to_string());
            body.2 = Some(outcome.name());
        }),
        Event::ClaimAttempted { order_id, attempt } => campaign_body("claim_attempted", |body| {
            body.1 = Some(order_id.to_string());
            body.3 = Some(attempt);
        }),
        Event::ClaimAttemptEnded {
            order_id,
            attempt,
            read_timeouts,
        } => campaign_body("claim_attempt_ended", |body| {
            body.1 = Some(order_id.to_string());
            body.3 = Some(attempt);
            body.5 = Some(read_timeouts);
        }),
    })
}

/// Campaign, order id, state, attempt, pending position and read timeouts of a campaign
/// event, as `fill` sets them.
type CampaignFields = (
    Option<String>,
    Option<String>,
    Option<&'static str>,
    Option<u32>,
    Option<u64>,
    Option<u32>,
);

fn campaign_body(event_type: &'static str, fill: impl FnOnce(&mut CampaignFields)) -> FeedBody {
    let mut fields: CampaignFields = (None, None, None, None, None, None);
    fill(&mut fields);
    let (campaign, order_id, state, attempt, pending_position, read_timeouts) = fields;
    FeedBody::Campaign {
        event_type,
        campaign,
        order_id,
        state,
        attempt,
        read_timeouts,
        pending_position,
    }
}

impl FeedFilter {
    /// Whether `body` passes. An event that names no ledger or account (a rejection, an expiry,
    /// a revocation, a campaign or claim event) passes only a filter without that condition: an expiry is found through
    /// the pending transfer it names, which a filtered reader has seen.
    fn keeps(&self, body: &FeedBody) -> bool {
        let (ledger, accounts): (Option<&str>, [Option<&str>; 2]) = match body {
            FeedBody::AccountCreated {
                account, ledger, ..
            } => (Some(ledger), [Some(account), None]),
            FeedBody::Transfer {
                ledger, from, to, ..
            } => (Some(ledger), [from.as_deref(), to.as_deref()]),
            FeedBody::Rejected { .. }
            | FeedBody::Expired { .. }
            | FeedBody::TokenRevoked { .. }
            | FeedBody::Campaign { .. } => (None, [None, None]),
        };
        let ledger_ok = self
            .ledger
            .as_deref()
            .is_none_or(|wanted| ledger == Some(wanted));
        let account_ok = self
            .account
            .as_deref()
            .is_none_or(|wanted| accounts.contains(&Some(wanted)));
        ledger_ok && account_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(from: Option<&str>, to: Option<&str>) -> FeedBody {
        FeedBody::Transfer {
            transfer_id: "t".into(),
            kind: "transfer",
            ledger: "EUR".into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
            amount: 1,
            pending_position: None,
        }
    }

    #[test]
    fn filters_keep_what_they_name() {
        let none = FeedFilter::default();
        let eur = FeedFilter {
            ledger: Some("EUR".into()),
            account: None,
        };
        let alice = FeedFilter {
            ledger: None,
            account: Some("alice".into()),
        };
        let both = FeedFilter {
            ledger: Some("USD".into()),
            account: Some("alice".into()),
        };
        let event = transfer(Some("alice"), None);
        assert!(none.keeps(&event) && eur.keeps(&event) && alice.keeps(&event));
        assert!(!both.keeps(&event));
        assert!(!alice.keeps(&transfer(Some("bob"), None)));
        let expired = FeedBody::Expired {
            pending_position: 3,
        };
        assert!(none.keeps(&expired) && !eur.keeps(&expired) && !alice.keeps(&expired));
    }
}
