//! One result line per scenario: what it allows, what it measured, and
//! whether that is within the allowance. Printed, and appended as a
//! markdown table row to `$TETHER_CHAOS_REPORT` when set (the full run's
//! script builds docs/reliability.md's table from it).

use std::io::Write;

/// Env var naming the file result rows are appended to.
pub const REPORT_ENV: &str = "TETHER_CHAOS_REPORT";

/// Prints `scenario | allowance | measured | PASS/FAIL`, appends it to the
/// report file, and returns whether it passed (the caller asserts, after
/// recording every check of its scenario).
pub fn verdict(scenario: &str, allowance: &str, measured: &str, pass: bool) -> bool {
    let word = if pass { "PASS" } else { "FAIL" };
    let row = format!("| {scenario} | {allowance} | {measured} | {word} |");
    // The suite's output is this table: a result line per scenario.
    eprintln!("CHAOS {row}");
    if let Some(path) = std::env::var_os(REPORT_ENV) {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{row}");
        }
    }
    pass
}
