//! The event feed over HTTP: pages (`GET /v1/events`) and a server-sent event stream that
//! follows new events as they become durable (`GET /v1/events/stream`).
//!
//! Both read the log through [`EventFeed`], on a blocking thread (a page may scan up to
//! `FEED_SCAN_EVENTS_MAX` events), and name accounts with the engine's [`AccountNames`], so the
//! feed keeps up with the log whatever the read model's lag: it serves every durable event. The
//! stream resumes where a client left off, from `after` or the standard `Last-Event-ID` header
//! (every event's SSE id is its position), so a dropped connection loses nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream};
use tally_engine::AccountNames;
use tally_log::LogReader;
use tally_read::{EventFeed, FeedAccount, FeedFilter, FeedPage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{
    parse_id, parse_page_limit, EventJson, EventStreamQuery, EventsJson, EventsQuery,
};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::limits::{
    EVENTS_PAGE_DEFAULT, EVENTS_PAGE_MAX, EVENTS_PAGE_WAIT_MAX, EVENT_STREAMS_MAX,
    EVENT_STREAM_WAIT,
};
use crate::routes::read_error;
use crate::AppState;

/// What the feed's routes share: the log's reader pool and the bound on open streams.
#[derive(Clone)]
pub struct Feed {
    pages: Arc<EventFeed>,
    /// The event streams open at once, bounded: a stream outlives its request (the concurrency
    /// limit of the HTTP layer lets go when the answer's headers are sent), so it needs a bound
    /// of its own.
    streams: Arc<Semaphore>,
}

impl Feed {
    /// A feed reading the log through copies of `reader`.
    pub fn new(reader: Box<dyn LogReader>) -> Feed {
        Feed {
            pages: Arc::new(EventFeed::new(reader)),
            streams: Arc::new(Semaphore::new(EVENT_STREAMS_MAX)),
        }
    }

    /// Pages of the feed read so far (a stream reads one whenever the log moves).
    pub fn pages_read(&self) -> u64 {
        self.pages.pages_read()
    }
}

/// A page of the log's events, oldest first, with account ids and ledgers: every durable event,
/// whatever the read model's lag.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery), responses(
    (status = 200, description = "A page of events", body = EventsJson),
    (status = 400, description = "Malformed query", body = ErrorBody),
    (status = 403, description = "The token is limited to some ledgers or accounts; the feed needs an unrestricted one", body = ErrorBody),
))]
pub async fn get_events(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventsJson>, ApiError> {
    let limit = parse_page_limit(query.limit, EVENTS_PAGE_DEFAULT, EVENTS_PAGE_MAX)?;
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0));
    if wait > EVENTS_PAGE_WAIT_MAX {
        return Err(ApiError::invalid(format!(
            "wait_ms: must be at most {}, found {}",
            EVENTS_PAGE_WAIT_MAX.as_millis(),
            wait.as_millis()
        )));
    }
    let filter = filter(&caller, query.ledger.as_deref(), query.account.as_deref())?;
    let names = app.engine.account_names();
    let mut page = page(&app.feed, &names, query.after, limit, filter.clone()).await?;
    if page.next.is_none() && !wait.is_zero() {
        // Nothing new: a long-polling follower hears of the next event as soon as it is
        // durable, without asking again and again.
        let next = query.after.map_or(0, |after| after.saturating_add(1));
        if wait_beyond(&names, next, wait).await {
            page = self::page(&app.feed, &names, query.after, limit, filter).await?;
        }
    }
    Ok(Json(page.into()))
}

/// New events as server-sent events, from `after` (or the `Last-Event-ID` header) on, for as
/// long as the client stays (or `limit` events); each event's id is its position and its data
/// the JSON of `GET /v1/events`.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(EventStreamQuery), responses(
    (status = 200, description = "A stream of events (text/event-stream), each `id: POSITION`, `event: TYPE`, `data: EVENT JSON`", content_type = "text/event-stream", body = String),
    (status = 400, description = "Malformed query or Last-Event-ID", body = ErrorBody),
    (status = 403, description = "The token is limited to some ledgers or accounts; the feed needs an unrestricted one", body = ErrorBody),
    (status = 503, description = "Too many streams are open", body = ErrorBody),
))]
pub async fn stream_events(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventStreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("Last-Event-ID: must be an event position (a number)")
                })
        })
        .transpose()?;
    if query.limit == Some(0) {
        return Err(ApiError::invalid("limit: must be at least 1"));
    }
    let filter = filter(&caller, query.ledger.as_deref(), query.account.as_deref())?;
    let permit = Arc::clone(&app.feed.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded(format!(
            "{EVENT_STREAMS_MAX} event streams are open, the most this server keeps; retry later or read pages of /v1/events"
        )))?;
    let follower = Follower {
        _permit: permit,
        feed: app.feed.clone(),
        names: app.engine.account_names(),
        after: last_event_id.or(query.after),
        filter,
        ready: VecDeque::new(),
        remaining: query.limit,
        ended: false,
    };
    let events = stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// One stream's place in the log.
struct Follower {
    /// Its place among the open streams, given back when the stream ends or the client leaves.
    _permit: OwnedSemaphorePermit,
    feed: Feed,
    names: Arc<AccountNames>,
    after: Option<u64>,
    filter: FeedFilter,
    ready: VecDeque<EventJson>,
    /// Events still to send when the client asked for a bounded number.
    remaining: Option<u32>,
    ended: bool,
}

impl Follower {
    /// The next event to send, waiting for the log to grow when there is none;
    /// `None` ends the stream (after an error event, when the feed cannot be read).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            if let Some(json) = self.ready.pop_front() {
                self.remaining = self.remaining.map(|remaining| remaining - 1);
                let event = Event::default()
                    .id(json.position.to_string())
                    .event(json.event_type);
                return Some(event.json_data(&json).expect("events serialize"));
            }
            if self.ended {
                return None;
            }
            match page(
                &self.feed,
                &self.names,
                self.after,
                EVENTS_PAGE_MAX,
                self.filter.clone(),
            )
            .await
            {
                Ok(page) => {
                    let scanned = page.next.is_some();
                    self.after = page.next.or(self.after);
                    self.ready
                        .extend(page.events.into_iter().map(EventJson::from));
                    if !scanned {
                        // Nothing new: wait until the next event is durable; keep-alives flow
                        // meanwhile.
                        let next = self.after.map_or(0, |after| after.saturating_add(1));
                        wait_beyond(&self.names, next, EVENT_STREAM_WAIT).await;
                    }
                }
                Err(error) => {
                    self.ended = true;
                    let message = error.message;
                    return Some(Event::default().event("error").data(message));
                }
            }
        }
    }
}

/// The feed filter of a request. A token limited to some ledgers or accounts could learn of
/// other accounts through the counterparties of its own transfers, so the feed is for
/// unrestricted tokens only.
fn filter(
    caller: &Caller,
    ledger: Option<&str>,
    account: Option<&str>,
) -> Result<FeedFilter, ApiError> {
    if caller.restriction.is_some() {
        return Err(ApiError::forbidden(
            "the event feed needs a token without ledger or account restrictions",
        ));
    }
    let ledger = ledger
        .map(|ledger| parse_id("ledger", ledger).map(|id| id.to_string()))
        .transpose()?;
    let account = account
        .map(|account| parse_id("account", account).map(|id| id.to_string()))
        .transpose()?;
    Ok(FeedFilter { ledger, account })
}

/// Waits until the event at `position` is visible, or `timeout` passes; returns whether it is.
async fn wait_beyond(names: &AccountNames, position: u64, timeout: Duration) -> bool {
    let mut visible = names.subscribe();
    let reached = tokio::time::timeout(timeout, visible.wait_for(|visible| *visible > position))
        .await
        .is_ok_and(|changed| changed.is_ok());
    reached
}

/// Reads one page of every visible event on a blocking thread.
async fn page(
    feed: &Feed,
    names: &Arc<AccountNames>,
    after: Option<u64>,
    limit: u32,
    filter: FeedFilter,
) -> Result<FeedPage, ApiError> {
    let (pages, names) = (Arc::clone(&feed.pages), Arc::clone(names));
    tokio::task::spawn_blocking(move || {
        let name = |index| {
            names.get(index).map(|name| FeedAccount {
                id: name.id.map(|id| id.to_string()),
                ledger: name.ledger.to_string(),
            })
        };
        pages.page(after, limit, &filter, names.visible(), &name)
    })
    .await
    .map_err(|_| ApiError::unavailable("reading the event feed was cancelled; retry"))?
    .map_err(read_error)
}
