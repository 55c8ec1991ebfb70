//! The status report as terminal text: coloured when the output is a terminal, plain (and
//! stable for scripts and `grep`) when it is not.

use std::fmt::Write;

use crate::report::{human_seconds, percent, Health, StatusReport};

/// Whether to colour the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// ANSI colours.
    On,
    /// Plain text.
    Off,
}

fn paint(colour: Colour, health: Health, text: &str) -> String {
    if colour == Colour::Off {
        return text.to_string();
    }
    let code = match health {
        Health::Healthy => "32",
        Health::Degraded => "33",
        Health::Down => "1;31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn bold(colour: Colour, text: &str) -> String {
    match colour {
        Colour::On => format!("\x1b[1m{text}\x1b[0m"),
        Colour::Off => text.to_string(),
    }
}

/// The report as lines of text.
pub fn render(report: &StatusReport, colour: Colour) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}",
        bold(colour, "tally"),
        paint(colour, report.health, report.health.as_str())
    );
    let _ = writeln!(
        out,
        "version {} · up {} (since {}) · generated {}",
        report.version,
        human_seconds(report.uptime_seconds),
        report.started_at,
        report.generated_at
    );

    let _ = writeln!(out, "\n{}", bold(colour, "availability"));
    for window in &report.availability {
        let observed = window.observed_percent();
        let _ = writeln!(
            out,
            "  {:<4} {:>10}  {} requests, {} failed, observed {observed:.1} %",
            window.window,
            percent(window.availability),
            window.requests,
            window.failed
        );
    }

    let _ = writeln!(out, "\n{}", bold(colour, "dependencies"));
    let name_width = report
        .dependencies
        .iter()
        .map(|dependency| dependency.name.len())
        .max()
        .unwrap_or(0);
    for dependency in &report.dependencies {
        let health = dependency.health.as_str();
        let _ = writeln!(
            out,
            "  {:<name_width$}  {}{}  {}",
            dependency.name,
            paint(colour, dependency.health, health),
            " ".repeat("degraded".len() - health.len()),
            dependency.reason
        );
        for detail in &dependency.details {
            let _ = writeln!(
                out,
                "  {:<name_width$}    {}: {}",
                "", detail.name, detail.value
            );
        }
    }

    let _ = writeln!(out, "\n{}", bold(colour, "offline jobs"));
    if report.jobs.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for job in &report.jobs {
        let progress = if job.total > 0 {
            format!(
                "{} of {} ({:.1} %)",
                job.done,
                job.total,
                100.0 * job.done.min(job.total) as f64 / job.total as f64
            )
        } else {
            format!("{} done", job.done)
        };
        let rate = job
            .rate_per_second
            .map_or_else(String::new, |rate| format!(", {rate:.0}/s"));
        let _ = writeln!(out, "  {}: {}, {progress}{rate}", job.name, job.state);
    }

    let _ = writeln!(out, "\n{}", bold(colour, "recent incidents"));
    if report.incidents.is_empty() {
        let _ = writeln!(out, "  none recorded");
    }
    for incident in &report.incidents {
        let from = incident
            .from
            .map_or_else(String::new, |from| format!("{} -> ", from.as_str()));
        let _ = writeln!(
            out,
            "  {}  {}  {from}{}  {}",
            incident.at,
            incident.dependency,
            paint(colour, incident.to, incident.to.as_str()),
            incident.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_has_no_escape_codes_and_colour_has() {
        let report = crate::html::tests::sample();
        let plain = render(&report, Colour::Off);
        assert!(!plain.contains('\x1b'));
        assert!(plain.starts_with("tally: down\n"), "{plain}");
        assert!(
            plain.contains("  1h     99.700 %  1000 requests, 3 failed"),
            "{plain}"
        );
        assert!(plain.contains("disk  down"), "{plain}");
        assert!(plain.contains("read model: catching up, 50 of 100 (50.0 %), 1000/s"));
        assert!(plain.contains("disk  healthy -> down  full"), "{plain}");
        let coloured = render(&report, Colour::On);
        assert!(coloured.contains("\x1b[1;31mdown\x1b[0m"));
    }
}
