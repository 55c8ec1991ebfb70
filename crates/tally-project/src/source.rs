//! The event feed of a running server (`GET /v1/events`), read page by page with long polls,
//! ahead of the projector ([`ReadAhead`]).

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::fold::FeedEvent;
use crate::http::{Connection, Endpoint};

/// Events per page at most, as the server allows.
pub const PAGE_EVENTS_MAX: u32 = 1000;

/// Pages read ahead and not yet taken, at most: as many as one commit folds while catching up
/// (see `COMMIT_EVENTS_MAX`), few enough to bound memory (a page is at most 1000 events, a few
/// hundred kilobytes parsed).
pub const PAGES_AHEAD_MAX: usize = 16;

/// How long a long poll of the feed waits for the next event.
const LONG_POLL: Duration = Duration::from_secs(1);

/// How much longer than its long poll a page may take before the reader gives up on the
/// connection and asks again on a new one: a server that stopped answering (or a connection
/// lost without a reset) must not stall the projector silently.
const PAGE_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// The longest pause between retries of a failing feed.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// The next pause of a retry loop: doubling from 100 ms up to [`RETRY_DELAY_MAX`].
pub fn next_retry(retry: Duration) -> Duration {
    (retry * 2).clamp(Duration::from_millis(100), RETRY_DELAY_MAX)
}

/// A page of the feed.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub events: Vec<FeedEvent>,
    /// The last position the page read.
    pub next: Option<u64>,
    /// The server serves events below this position.
    pub end: u64,
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum SourceError {
    /// Worth retrying: the server is unreachable, restarting or overloaded.
    Transient(anyhow::Error),
    /// Retrying cannot help (a refused token, a feed that contradicts itself).
    Fatal(anyhow::Error),
}

pub struct Source {
    connection: Connection,
    url: String,
}

impl Source {
    pub async fn new(url: &str, token: Option<&str>) -> anyhow::Result<Source> {
        let endpoint = Endpoint::parse(url, token).await?;
        Ok(Source {
            connection: Connection::new(endpoint),
            url: url.to_owned(),
        })
    }

    /// Up to `limit` events from position `from` on; when there are none yet, waits up to
    /// `wait` for the next one.
    pub async fn page(
        &mut self,
        from: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<Page, SourceError> {
        assert!((1..=PAGE_EVENTS_MAX).contains(&limit));
        let after = match from.checked_sub(1) {
            Some(after) => format!("after={after}&"),
            None => String::new(),
        };
        let path = format!(
            "/v1/events?{after}limit={limit}&wait_ms={}",
            wait.as_millis()
        );
        // The connection is cancel-safe: a request given up on leaves no connection behind.
        let send = self.connection.send(Method::GET, &path, Bytes::new());
        let response = tokio::time::timeout(wait + PAGE_TIMEOUT_MARGIN, send)
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {:?}", wait + PAGE_TIMEOUT_MARGIN)))
            .map_err(|error| {
                SourceError::Transient(error.context(format!("reading {}{path}", self.url)))
            })?;
        // Only an error shows the body: a page is hundreds of kilobytes to check for nothing.
        let body = || String::from_utf8_lossy(&response.body);
        match response.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(SourceError::Fatal(anyhow!(
                    "{} refused the feed ({}): pass a token without restrictions with --token or \
                     TALLY_TOKEN: {}",
                    self.url,
                    response.status,
                    body()
                )))
            }
            status if status.is_server_error() => {
                return Err(SourceError::Transient(anyhow!(
                    "{}{path} answered {status}: {}",
                    self.url,
                    body()
                )))
            }
            status => {
                return Err(SourceError::Fatal(anyhow!(
                    "{}{path} answered {status}: {}",
                    self.url,
                    body()
                )))
            }
        }
        let page: Page = serde_json::from_slice(&response.body)
            .with_context(|| {
                format!(
                    "{}{path} answered a page that is not the feed's JSON",
                    self.url
                )
            })
            .map_err(SourceError::Fatal)?;
        check(&page, from).map_err(|error| {
            SourceError::Fatal(
                error.context(format!("{}{path} answered a page out of order", self.url)),
            )
        })?;
        Ok(page)
    }
}

/// Pages of the feed, as [`ReadAhead`] reads them: from the server ([`Source`]), or from a
/// fake feed in tests.
pub trait Pages: Send + 'static {
    /// Up to `limit` events from position `from` on; when there are none yet, waits up to
    /// `wait` for the next one.
    fn page(
        &mut self,
        from: u64,
        limit: u32,
        wait: Duration,
    ) -> impl std::future::Future<Output = Result<Page, SourceError>> + Send;
}

impl Pages for Source {
    async fn page(&mut self, from: u64, limit: u32, wait: Duration) -> Result<Page, SourceError> {
        Source::page(self, from, limit, wait).await
    }
}

impl Source {
    /// The feed's end: the position below which the server serves events.
    pub async fn end(&mut self) -> anyhow::Result<u64> {
        match self.page(u64::MAX, 1, Duration::ZERO).await {
            Ok(page) => Ok(page.end),
            Err(SourceError::Transient(error) | SourceError::Fatal(error)) => Err(error),
        }
    }

    /// How long ago the event at `position` was committed; `None` when there is none yet.
    pub async fn age_of(&mut self, position: u64) -> anyhow::Result<Option<Duration>> {
        let page = match self.page(position, 1, Duration::ZERO).await {
            Ok(page) => page,
            Err(SourceError::Transient(error) | SourceError::Fatal(error)) => return Err(error),
        };
        page.events
            .first()
            .map(|event| {
                Ok(SystemTime::now()
                    .duration_since(timestamp(&event.timestamp)?)
                    .unwrap_or_default())
            })
            .transpose()
    }
}

/// Events must follow each other from `from` on, with no gap (the feed is unfiltered), and carry
/// timestamps the fold can read.
fn check(page: &Page, from: u64) -> anyhow::Result<()> {
    for (expected, event) in (from..=u64::MAX).zip(&page.events) {
        if event.position != expected {
            bail!("expected the event at {expected}, found {}", event.position);
        }
        timestamp(&event.timestamp)?;
    }
    Ok(())
}

/// Parses an RFC 3339 timestamp of the feed.
pub fn timestamp(text: &str) -> anyhow::Result<SystemTime> {
    humantime::parse_rfc3339(text).with_context(|| format!("{text:?} is not an RFC 3339 time"))
}

/// A page the reader read: the seek it was read for, the position it starts at, and the page.
type Read = (u64, u64, Result<Page, SourceError>);

/// Reads the feed on a task of its own, up to [`PAGES_AHEAD_MAX`] pages ahead, so that the next
/// pages are fetched and parsed while the projector folds and commits the current ones. The
/// projector names the position it needs; when that is not where the reader goes next (a lease
/// was lost, say), it seeks: the reader starts again there, and every page read before the seek
/// is dropped.
///
/// Pages are told apart by seek, not by position alone: a page read before a seek may start at
/// the very position sought and yet end elsewhere than the same page read again (the log grew
/// in between). Taking it would move the projector to a position the reader, which started
/// again at the seek, never passes through.
pub struct ReadAhead {
    pages: mpsc::Receiver<Read>,
    /// The projector's seeks: a number that grows with each, and the position.
    seek: watch::Sender<(u64, u64)>,
    /// Where the reader's next page starts, as far as the projector knows.
    expected: u64,
    task: JoinHandle<()>,
}

impl ReadAhead {
    pub fn start(source: impl Pages, from: u64, limit: u32) -> ReadAhead {
        assert!((1..=PAGE_EVENTS_MAX).contains(&limit));
        let (pages, receiver) = mpsc::channel(PAGES_AHEAD_MAX);
        let (seek, position) = watch::channel((0, from));
        let task = tokio::spawn(read_ahead(source, position, limit, pages));
        ReadAhead {
            pages: receiver,
            seek,
            expected: from,
            task,
        }
    }

    /// The page that starts at `from`, waiting up to `wait` for it; `None` when it did not come
    /// in time. An empty page says the feed had nothing after `from` for a long poll.
    pub async fn next(&mut self, from: u64, wait: Duration) -> Option<Result<Page, SourceError>> {
        self.seek_to(from);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let read = tokio::time::timeout_at(deadline, self.pages.recv())
                .await
                .ok()?;
            if let Some(page) = self.take(read) {
                return Some(page);
            }
        }
    }

    /// The page that starts at `from` if it was read already, without waiting.
    pub fn ready(&mut self, from: u64) -> Option<Result<Page, SourceError>> {
        self.seek_to(from);
        loop {
            let read = match self.pages.try_recv() {
                Ok(read) => Some(read),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            if let Some(page) = self.take(read) {
                return Some(page);
            }
        }
    }

    fn seek_to(&mut self, from: u64) {
        if self.expected != from {
            self.expected = from;
            self.seek.send_modify(|(number, position)| {
                *number += 1;
                *position = from;
            });
        }
    }

    /// `read` if it was read since the last seek; `None` (dropping it) otherwise.
    fn take(&mut self, read: Option<Read>) -> Option<Result<Page, SourceError>> {
        let (seek, start, page) = match read {
            Some(read) => read,
            None => return Some(Err(SourceError::Fatal(anyhow!("the feed reader stopped")))),
        };
        if seek != self.seek.borrow().0 {
            return None;
        }
        // Since the seek, the reader goes from page to page exactly as the projector does.
        assert_eq!(start, self.expected, "pages of one seek follow each other");
        if let Ok(page) = &page {
            self.expected = page.events.last().map_or(start, |last| last.position + 1);
        }
        Some(page)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_ahead(
    mut source: impl Pages,
    mut seek: watch::Receiver<(u64, u64)>,
    limit: u32,
    pages: mpsc::Sender<Read>,
) {
    // The last seek taken (its number and position), and where the next page starts.
    let mut sought = *seek.borrow_and_update();
    let mut from = sought.1;
    let mut retry = Duration::ZERO;
    loop {
        let read = tokio::select! {
            read = Pages::page(&mut source, from, limit, LONG_POLL) => read,
            changed = seek.changed() => {
                if changed.is_err() {
                    return;
                }
                sought = *seek.borrow_and_update();
                from = sought.1;
                continue;
            }
        };
        // After an error the reader waits before it asks again; the projector decides whether
        // the error ends it.
        let (next, delay) = match &read {
            Ok(page) => (
                page.events.last().map_or(from, |last| last.position + 1),
                Duration::ZERO,
            ),
            Err(error) => {
                let cause = match error {
                    SourceError::Transient(error) | SourceError::Fatal(error) => error,
                };
                tracing::debug!("feed read at {from} failed: {cause:#}");
                (from, next_retry(retry))
            }
        };
        retry = delay;
        // A seek while the page waits for room (or the reader waits to retry) drops the page:
        // the projector wants another position.
        tokio::select! {
            sent = pages.send((sought.0, from, read)) => {
                if sent.is_err() {
                    return;
                }
                from = next;
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        changed = seek.changed() => if changed.is_err() { return },
                    }
                }
            }
            changed = seek.changed() => if changed.is_err() { return },
        }
        // `changed()` marks a seek seen, so compare numbers rather than ask `has_changed`.
        let wanted = *seek.borrow_and_update();
        if wanted.0 != sought.0 {
            sought = wanted;
            from = wanted.1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed whose log grows by `GROWTH` events each time a page is read.
    struct GrowingFeed {
        len: u64,
    }

    const GROWTH: u64 = 3;

    impl Pages for GrowingFeed {
        async fn page(
            &mut self,
            from: u64,
            limit: u32,
            _wait: Duration,
        ) -> Result<Page, SourceError> {
            let end = self.len;
            let events = (from..end.min(from + u64::from(limit)))
                .map(|position| FeedEvent {
                    position,
                    timestamp: "2026-12-02T00:00:00Z".into(),
                    event_type: "token_revoked".into(),
                    ..FeedEvent::default()
                })
                .collect::<Vec<_>>();
            self.len += GROWTH;
            Ok(Page {
                next: events.last().map(|event| event.position),
                events,
                end,
            })
        }
    }

    /// Takes pages from `from` on until `until`, checking that they follow each other.
    async fn follow(reader: &mut ReadAhead, mut from: u64, until: u64) {
        while from < until {
            let page = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(page) = reader.next(from, Duration::from_millis(100)).await {
                        return page;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no page from {from} within 10 s"))
            .unwrap();
            for event in &page.events {
                assert_eq!(event.position, from, "pages follow each other");
                from += 1;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_that_never_answers_is_given_up_on_and_asked_again() {
        // A listener that never accepts: the connection opens (the kernel's backlog) and the
        // request goes out, but no answer ever comes.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let mut source = Source::new(&url, None).await.unwrap();
        let started = tokio::time::Instant::now();
        let wait = Duration::from_secs(1);
        match source.page(0, 10, wait).await {
            Err(SourceError::Transient(error)) => {
                assert!(
                    format!("{error:#}").contains("no answer within"),
                    "{error:#}"
                )
            }
            Err(SourceError::Fatal(error)) => panic!("a fatal error: {error:#}"),
            Ok(page) => panic!("a page from a silent server: {page:?}"),
        }
        assert!(started.elapsed() >= wait + PAGE_TIMEOUT_MARGIN);
    }

    #[tokio::test]
    async fn a_seek_drops_the_pages_read_ahead_even_one_that_starts_where_it_seeks() {
        let feed = GrowingFeed { len: 5 };
        let mut reader = ReadAhead::start(feed, 0, 10);
        follow(&mut reader, 0, 5).await;
        // Let the reader fill its queue with pages read while the log was short: [5, 8),
        // [8, 11), [11, 14), [14, 17). After a seek to 8 the reader reads [8, 18) and goes on
        // from 18: the short page at 8 read before the seek leads nowhere it passes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        follow(&mut reader, 8, 200).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        follow(&mut reader, 150, 400).await;
    }
}
