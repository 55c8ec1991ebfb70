//! The dispatcher's configuration, checked against [`crate::limits`] before anything starts.

use std::time::Duration;

use hyper::Uri;

use crate::budget::RetryBudgetConfig;
use crate::limits::*;
use crate::outlier::OutlierConfig;
use crate::Error;

/// Everything a [`crate::Dispatcher`] needs to know about one target.
///
/// One dispatcher serves one target (one downstream service). Targets of different speed get
/// different dispatchers, so each has its own connection pools, bulkheads, budget and
/// timeouts, and a slow target cannot take a fast one's connections.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// The endpoints (instances) normally used, as `http://host:port/path` URLs.
    pub primary: Vec<String>,
    /// The endpoints used when no primary endpoint is in rotation; may be empty.
    pub backup: Vec<String>,
    /// How long establishing a TCP connection may take. A connect failure means the request
    /// never left, so it is always safe to retry.
    pub connect_timeout: Duration,
    /// How long an attempt may take from its start to the end of the answer. Longer than
    /// `connect_timeout`, so that a slow connect is reported as a connect failure.
    pub read_timeout: Duration,
    /// Read timeouts an order may have (counted over all its `deliver` calls) before the
    /// dispatcher stops and answers [`crate::Attempt::UnknownNeedsReconciliation`].
    pub max_read_timeouts: u32,
    /// Attempts of one `deliver` call, the first included.
    pub attempts_max: u32,
    /// Deliveries in flight to one endpoint (the endpoint bulkhead).
    pub in_flight_per_endpoint: u32,
    /// Deliveries in flight for one campaign (the campaign bulkhead).
    pub in_flight_per_campaign: u32,
    /// How much in-process retrying is allowed.
    pub retry_budget: RetryBudgetConfig,
    /// When endpoints are ejected.
    pub outlier: OutlierConfig,
    /// The optional statistics webhook.
    pub webhook: Option<WebhookConfig>,
}

/// The statistics webhook: told of every delivery's outcome, never allowed to delay one.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where the statistics are posted.
    pub url: String,
    /// How long one call may take before it is abandoned.
    pub timeout: Duration,
}

/// The parsed URIs of a valid configuration.
#[derive(Debug)]
pub(crate) struct Uris {
    pub(crate) primary: Vec<Uri>,
    pub(crate) backup: Vec<Uri>,
    pub(crate) webhook: Option<Uri>,
}

impl DispatchConfig {
    /// A configuration of these primary endpoints with the default settings.
    pub fn new(primary: Vec<String>) -> DispatchConfig {
        DispatchConfig {
            primary,
            backup: Vec::new(),
            connect_timeout: Duration::from_millis(250),
            read_timeout: Duration::from_secs(2),
            max_read_timeouts: 3,
            attempts_max: 3,
            in_flight_per_endpoint: 256,
            in_flight_per_campaign: 512,
            retry_budget: RetryBudgetConfig::default(),
            outlier: OutlierConfig::default(),
            webhook: None,
        }
    }

    /// Checks every setting; returns the parsed URIs.
    pub(crate) fn validate(&self) -> Result<Uris, Error> {
        check(!self.primary.is_empty(), "primary", "must name an endpoint")?;
        let group_max = ENDPOINTS_PER_GROUP_MAX;
        check(
            self.primary.len() <= group_max,
            "primary",
            "has too many endpoints",
        )?;
        check(
            self.backup.len() <= group_max,
            "backup",
            "has too many endpoints",
        )?;
        let positive = Duration::from_millis(1);
        check(
            self.connect_timeout >= positive,
            "connect_timeout",
            "must be at least 1 ms",
        )?;
        check(
            self.connect_timeout < self.read_timeout,
            "read_timeout",
            "must be longer than connect_timeout",
        )?;
        check(
            self.read_timeout <= TIMEOUT_MAX,
            "read_timeout",
            "is over the limit",
        )?;
        let timeouts = 1..=READ_TIMEOUTS_PER_ORDER_MAX;
        check(
            timeouts.contains(&self.max_read_timeouts),
            "max_read_timeouts",
            "is out of range",
        )?;
        let attempts = 1..=ATTEMPTS_PER_DELIVERY_MAX;
        check(
            attempts.contains(&self.attempts_max),
            "attempts_max",
            "is out of range",
        )?;
        let endpoint = 1..=IN_FLIGHT_PER_ENDPOINT_MAX;
        let campaign = 1..=IN_FLIGHT_PER_CAMPAIGN_MAX;
        check(
            endpoint.contains(&self.in_flight_per_endpoint),
            "in_flight_per_endpoint",
            "is out of range",
        )?;
        check(
            campaign.contains(&self.in_flight_per_campaign),
            "in_flight_per_campaign",
            "is out of range",
        )?;
        self.validate_health()?;
        let webhook = match &self.webhook {
            Some(webhook) => {
                let timeout = webhook.timeout;
                check(
                    timeout >= positive,
                    "webhook.timeout",
                    "must be at least 1 ms",
                )?;
                check(
                    timeout <= WEBHOOK_TIMEOUT_MAX,
                    "webhook.timeout",
                    "is over the limit",
                )?;
                Some(parse(&webhook.url)?)
            }
            None => None,
        };
        let primary = self
            .primary
            .iter()
            .map(|url| parse(url))
            .collect::<Result<_, _>>()?;
        let backup = self
            .backup
            .iter()
            .map(|url| parse(url))
            .collect::<Result<_, _>>()?;
        Ok(Uris {
            primary,
            backup,
            webhook,
        })
    }

    fn validate_health(&self) -> Result<(), Error> {
        let budget = &self.retry_budget;
        let outlier = &self.outlier;
        let windows = Duration::from_millis(WINDOW_BUCKETS as u64)..=HEALTH_WINDOW_MAX;
        check(
            budget.percent <= RETRY_BUDGET_PERCENT_MAX,
            "retry_budget.percent",
            "is over 100",
        )?;
        check(
            budget.success_percent_min <= 100,
            "retry_budget.success_percent_min",
            "is over 100",
        )?;
        check(
            windows.contains(&budget.window),
            "retry_budget.window",
            "is out of range",
        )?;
        check(
            windows.contains(&outlier.window),
            "outlier.window",
            "is out of range",
        )?;
        check(
            outlier.consecutive_failures > 0,
            "outlier.consecutive_failures",
            "must be positive",
        )?;
        check(
            outlier.success_percent_min <= 100,
            "outlier.success_percent_min",
            "is over 100",
        )?;
        check(
            outlier.max_ejection_percent <= 100,
            "outlier.max_ejection_percent",
            "is over 100",
        )?;
        check(
            outlier.base_ejection <= outlier.max_ejection,
            "outlier.base_ejection",
            "must not exceed max_ejection",
        )?;
        check(
            outlier.max_ejection <= EJECTION_TIME_MAX,
            "outlier.max_ejection",
            "is over the limit",
        )
    }
}

fn check(condition: bool, field: &'static str, reason: &'static str) -> Result<(), Error> {
    if condition {
        Ok(())
    } else {
        Err(Error::InvalidConfig { field, reason })
    }
}

fn parse(url: &str) -> Result<Uri, Error> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URI"))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(
            "must start with http:// (https is not supported yet)",
        ));
    }
    if uri.authority().is_none() {
        return Err(invalid("has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_setting_names_its_field() {
        let mut config = DispatchConfig::new(vec!["http://127.0.0.1:1/deliver".to_owned()]);
        assert!(config.validate().is_ok());
        config.connect_timeout = config.read_timeout;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("read_timeout"), "{error}");
        let config = DispatchConfig::new(vec!["https://example.invalid/".to_owned()]);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("https"), "{error}");
        let config = DispatchConfig::new(Vec::new());
        assert!(config.validate().is_err());
    }
}
