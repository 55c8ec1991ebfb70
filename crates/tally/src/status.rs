//! `tally status`: the status page in the terminal, from a running server's `/status.json`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use tally_status::text::{render, Colour};
use tally_status::{Health, StatusReport};

use tally_project::http::{Connection, Endpoint};

/// How long to wait for the server's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The server, as `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "TALLY_TARGET")]
    target: String,
    /// Print the server's JSON as it came instead of text.
    #[arg(long)]
    json: bool,
    /// Colour the text: `auto` (when standard output is a terminal and NO_COLOR is unset),
    /// `always` or `never`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
}

/// Prints the status; exits 0 when healthy, 1 when degraded or down (so scripts can check),
/// 2 when the server could not be asked. The token comes from `TALLY_TOKEN` (an `operator`
/// token), unless the server opens its status with `--open-status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let token = std::env::var("TALLY_TOKEN").ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let endpoint = Endpoint::parse(&args.target, token.as_deref().map(str::trim)).await?;
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            Connection::new(endpoint).send(Method::GET, "/status.json", Bytes::new()),
        )
        .await
        .with_context(|| format!("{} did not answer within {REQUEST_TIMEOUT:?}", args.target))?
        .with_context(|| format!("cannot reach {}", args.target))
    })?;
    if !response.status.is_success() {
        let hint = if response.status.as_u16() == 401 {
            "; set TALLY_TOKEN to a token with the `operator` scope"
        } else {
            ""
        };
        anyhow::bail!(
            "{} answered {}: {}{hint}",
            args.target,
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    let report: StatusReport = serde_json::from_slice(&response.body).with_context(|| {
        format!(
            "{} answered /status.json with something that is not a status report",
            args.target
        )
    })?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&response.body));
    } else {
        let colour = match args.color.as_str() {
            "always" => Colour::On,
            "never" => Colour::Off,
            _ if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() => {
                Colour::On
            }
            _ => Colour::Off,
        };
        print!("{}", render(&report, colour));
    }
    Ok(if report.health == Health::Healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
