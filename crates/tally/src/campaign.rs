//! `tally campaign ...`: gift campaign definitions. The rules and their messages live in
//! `tally-campaign`; this module reads the file and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tally_campaign::{check, CampaignError, CampaignSpec, Format};

#[derive(clap::Subcommand)]
pub enum CampaignCommand {
    /// Check a campaign file (TOML, or JSON if it ends in .json) against every rule and print
    /// each violation with its field and a fix. Exit code 0: valid; 1: violations or a parse
    /// error; 2: the file could not be read.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The campaign file.
    file: PathBuf,
    /// Print the violations as a JSON array of {"field","rule","message","fix"} (`[]` when
    /// valid); a parse error is one element with the rule `parse_error`.
    #[arg(long)]
    json: bool,
}

pub fn run(command: CampaignCommand) -> anyhow::Result<ExitCode> {
    match command {
        CampaignCommand::Check(args) => check_file(args),
    }
}

/// Exit code for a campaign that cannot be published.
const EXIT_INVALID: u8 = 1;

fn check_file(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let path = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read campaign file {path}"))?;
    let format = Format::for_file_name(&path);
    let spec = match CampaignSpec::parse(&text, format) {
        Ok(spec) => spec,
        Err(error) => {
            if args.json {
                print_json(&[parse_violation(&error)])?;
            } else {
                println!("{path}: {error}");
                println!("  fix: correct the {format} at that place; docs/campaigns.md describes every field");
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let violations = check(&spec);
    if args.json {
        print_json(&violations)?;
    } else if violations.is_empty() {
        println!("{path}: campaign {} is valid: {}", spec.id, spec.summary());
    } else {
        for violation in &violations {
            println!("{}: {}", violation.field, violation.message);
            println!("  fix: {}", violation.fix);
            println!("  rule: {}", violation.rule);
            println!();
        }
        println!(
            "{path}: {} violation(s); the campaign cannot be published",
            violations.len()
        );
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

/// A parse error in the shape of a violation, for `--json`.
#[derive(Serialize)]
struct ParseViolation {
    field: String,
    rule: &'static str,
    message: String,
    fix: String,
}

fn parse_violation(error: &CampaignError) -> ParseViolation {
    let field = match error {
        CampaignError::Parse {
            field: Some(field), ..
        } => field.clone(),
        _ => String::new(),
    };
    ParseViolation {
        field,
        rule: "parse_error",
        message: error.to_string(),
        fix: "correct the file at that place; docs/campaigns.md describes every field".into(),
    }
}

fn print_json<T: Serialize>(items: &[T]) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(items)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_and_parse_errors_have_one_json_shape() {
        let error = CampaignSpec::parse("{", Format::Json).unwrap_err();
        let parse = serde_json::to_value(parse_violation(&error)).unwrap();
        let violation = tally_campaign::Violation {
            field: "id".into(),
            rule: tally_campaign::Rule::IdInvalid,
            message: "m".into(),
            fix: "f".into(),
        };
        let violation = serde_json::to_value(violation).unwrap();
        let keys = |value: &serde_json::Value| {
            value
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&parse), keys(&violation));
    }
}
