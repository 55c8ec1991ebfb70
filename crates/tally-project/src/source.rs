//! The event feed of a running server (`GET /v1/events`), read page by page with long polls.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::fold::FeedEvent;
use crate::http::{Connection, Endpoint};

/// Events per page at most, as the server allows.
pub const PAGE_EVENTS_MAX: u32 = 1000;

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
        let response = self
            .connection
            .send(Method::GET, &path, Bytes::new())
            .await
            .map_err(|error| {
                SourceError::Transient(error.context(format!("reading {}{path}", self.url)))
            })?;
        let body = String::from_utf8_lossy(&response.body);
        match response.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(SourceError::Fatal(anyhow!(
                    "{} refused the feed ({}): pass a token without restrictions with --token or \
                     TALLY_TOKEN: {body}",
                    self.url,
                    response.status
                )))
            }
            status if status.is_server_error() => {
                return Err(SourceError::Transient(anyhow!(
                    "{}{path} answered {status}: {body}",
                    self.url
                )))
            }
            status => {
                return Err(SourceError::Fatal(anyhow!(
                    "{}{path} answered {status}: {body}",
                    self.url
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
