//! The status page as server-rendered HTML: no JavaScript, no external assets, readable from a
//! phone-width window up. It refreshes itself every few seconds with a `meta` refresh.

use std::fmt::Write;

use crate::report::{human_seconds, percent, Health, StatusReport};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = "
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --line: #8884; }
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; }
.meta { color: #888; margin: 0; overflow-wrap: anywhere; }
.banner { border-radius: .5rem; padding: .75rem 1rem; margin: 1rem 0; font-weight: 600; color: #fff; }
.banner.healthy { background: var(--ok); } .banner.degraded { background: var(--warn); } .banner.down { background: var(--bad); }
.badge { display: inline-block; border-radius: 1rem; padding: 0 .6rem; font-size: .85rem; font-weight: 600; color: #fff; white-space: nowrap; }
.badge.healthy { background: var(--ok); } .badge.degraded { background: var(--warn); } .badge.down { background: var(--bad); }
.windows { display: flex; flex-wrap: wrap; gap: .75rem; }
.window { flex: 1 1 10rem; border: 1px solid var(--line); border-radius: .5rem; padding: .75rem; }
.window .figure { font-size: 1.6rem; font-weight: 700; font-variant-numeric: tabular-nums; }
.window .label { font-weight: 600; }
.small { font-size: .85rem; color: #888; }
table { border-collapse: collapse; width: 100%; }
th { white-space: nowrap; }
.name { white-space: nowrap; }
th, td { text-align: left; vertical-align: top; padding: .4rem .5rem; border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
dl { margin: .25rem 0 0; display: grid; grid-template-columns: max-content 1fr; gap: 0 .75rem; font-size: .85rem; }
dt { color: #888; } dd { margin: 0; overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
progress { width: 100%; }
@media (max-width: 40rem) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { border-bottom: 1px solid var(--line); padding: .5rem 0; }
  td { border: 0; padding: .15rem 0; }
}
";

/// The page for a report.
pub fn render(report: &StatusReport) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let health = report.health.as_str();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>Tally status: {health}</title><style>{STYLE}</style></head><body>\n\
         <h1>Tally status</h1>\n<p class=\"meta\">version {version} · up {uptime} (since {started}) · generated {generated}</p>\n\
         <div class=\"banner {health}\" id=\"overall\" data-health=\"{health}\">{headline}</div>\n",
        version = escape(&report.version),
        uptime = human_seconds(report.uptime_seconds),
        started = escape(&report.started_at),
        generated = escape(&report.generated_at),
        headline = headline(report),
    );

    page.push_str("<h2>Availability</h2>\n<p class=\"small\">Measured by Tally from its own answers to API requests: a request failed if it got a 5xx or was refused for overload. Time when Tally was not running is not counted; “observed” says how much of each window was.</p>\n<div class=\"windows\">\n");
    for window in &report.availability {
        let observed = window.observed_percent();
        let _ = writeln!(
            page,
            "<div class=\"window\" id=\"availability-{name}\" data-requests=\"{requests}\" data-failed=\"{failed}\">\
             <div class=\"label\">last {name}</div><div class=\"figure\">{figure}</div>\
             <div class=\"small\">{requests} {noun}, {failed} failed · observed {observed:.1} %</div></div>",
            name = escape(&window.window),
            figure = percent(window.availability),
            requests = window.requests,
            failed = window.failed,
            noun = if window.requests == 1 { "request" } else { "requests" },
        );
    }
    page.push_str("</div>\n");

    page.push_str("<h2>Dependencies</h2>\n<table id=\"dependencies\"><thead><tr><th>Dependency</th><th>State</th><th>Why</th></tr></thead><tbody>\n");
    for dependency in &report.dependencies {
        let health = dependency.health.as_str();
        let _ = write!(
            page,
            "<tr id=\"dependency-{name}\" data-health=\"{health}\"><td class=\"name\"><strong>{name}</strong></td>\
             <td><span class=\"badge {health}\">{health}</span></td><td>{reason}",
            name = escape(&dependency.name),
            reason = escape(&dependency.reason),
        );
        if !dependency.details.is_empty() {
            page.push_str("<dl>");
            for detail in &dependency.details {
                let _ = write!(
                    page,
                    "<dt>{}</dt><dd>{}</dd>",
                    escape(&detail.name),
                    escape(&detail.value)
                );
            }
            page.push_str("</dl>");
        }
        page.push_str("</td></tr>\n");
    }
    page.push_str("</tbody></table>\n");

    page.push_str("<h2>Offline jobs</h2>\n");
    if report.jobs.is_empty() {
        page.push_str("<p class=\"small\">None.</p>\n");
    } else {
        page.push_str("<table id=\"jobs\"><thead><tr><th>Job</th><th>State</th><th>Progress</th></tr></thead><tbody>\n");
        for job in &report.jobs {
            let progress = if job.total > 0 {
                format!(
                    "<progress max=\"{total}\" value=\"{done}\"></progress><div class=\"small\">{done} of {total}{rate}</div>",
                    total = job.total,
                    done = job.done.min(job.total),
                    rate = rate(job.rate_per_second),
                )
            } else {
                format!(
                    "<div class=\"small\">{done} done{rate}</div>",
                    done = job.done,
                    rate = rate(job.rate_per_second)
                )
            };
            let _ = writeln!(
                page,
                "<tr><td>{name}</td><td>{state}</td><td>{progress}</td></tr>",
                name = escape(&job.name),
                state = escape(&job.state),
            );
        }
        page.push_str("</tbody></table>\n");
    }

    page.push_str("<h2>Recent incidents</h2>\n");
    if report.incidents.is_empty() {
        page.push_str("<p class=\"small\">None recorded.</p>\n");
    } else {
        page.push_str("<table id=\"incidents\"><thead><tr><th>When (UTC)</th><th>Dependency</th><th>Change</th><th>Why</th></tr></thead><tbody>\n");
        for incident in &report.incidents {
            let from = incident.from.map_or("", Health::as_str);
            let to = incident.to.as_str();
            let arrow = if from.is_empty() { "" } else { " → " };
            let _ = writeln!(
                page,
                "<tr><td>{at}</td><td class=\"name\">{dependency}</td><td>{from}{arrow}<span class=\"badge {to}\">{to}</span></td><td>{reason}</td></tr>",
                at = escape(&incident.at),
                dependency = escape(&incident.dependency),
                reason = escape(&incident.reason),
            );
        }
        page.push_str("</tbody></table>\n");
    }
    page.push_str("<p class=\"small\">The same data for machines: <a href=\"/status.json\">/status.json</a>.</p>\n</body></html>\n");
    page
}

fn headline(report: &StatusReport) -> String {
    let troubled: Vec<String> = report
        .dependencies
        .iter()
        .filter(|dependency| dependency.health != Health::Healthy)
        .map(|dependency| {
            format!(
                "{} {}",
                escape(&dependency.name),
                dependency.health.as_str()
            )
        })
        .collect();
    match report.health {
        Health::Healthy => "All systems healthy".to_string(),
        Health::Degraded => format!("Degraded: {}", troubled.join(", ")),
        Health::Down => format!("Down: {}", troubled.join(", ")),
    }
}

fn rate(rate_per_second: Option<f64>) -> String {
    rate_per_second.map_or_else(String::new, |rate| format!(" · {rate:.0}/s"))
}

/// `text` safe inside HTML text and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::{DependencyStatus, Detail, Incident, JobStatus, WindowFigures};

    pub(crate) fn sample() -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            started_at: "2026-11-23T10:00:00Z".into(),
            uptime_seconds: 3_725,
            generated_at: "2026-11-23T11:02:05Z".into(),
            health: Health::Down,
            availability: vec![WindowFigures {
                window: "1h".into(),
                seconds: 3_600,
                requests: 1_000,
                failed: 3,
                availability: Some(0.997),
                observed_seconds: 3_600,
            }],
            dependencies: vec![
                DependencyStatus {
                    name: "disk".into(),
                    health: Health::Down,
                    reason: "<script>alert(1)</script> only 3 MiB free".into(),
                    details: vec![Detail::new("free", "3 MiB")],
                },
                DependencyStatus {
                    name: "log".into(),
                    health: Health::Healthy,
                    reason: "appending".into(),
                    details: vec![],
                },
            ],
            jobs: vec![JobStatus {
                name: "read model".into(),
                state: "catching up".into(),
                done: 50,
                total: 100,
                rate_per_second: Some(1_000.0),
            }],
            incidents: vec![Incident {
                at_unix: 0,
                at: "2026-11-23T11:00:00Z".into(),
                dependency: "disk".into(),
                from: Some(Health::Healthy),
                to: Health::Down,
                reason: "full".into(),
            }],
        }
    }

    #[test]
    fn the_page_shows_every_part_and_escapes_text() {
        let page = render(&sample());
        assert!(page.contains("99.700 %"), "{page}");
        assert!(page.contains("1000 requests, 3 failed"));
        assert!(page.contains("id=\"dependency-disk\" data-health=\"down\""));
        assert!(page.contains("id=\"dependency-log\" data-health=\"healthy\""));
        assert!(page.contains("Down: disk down"));
        assert!(page.contains("<progress max=\"100\" value=\"50\">"));
        assert!(page.contains("healthy → <span class=\"badge down\">down</span>"));
        assert!(!page.contains("<script>"), "text must be escaped");
        assert!(page.contains("&lt;script&gt;"));
        assert!(!page.contains("<script"), "the page has no JavaScript");
    }
}
