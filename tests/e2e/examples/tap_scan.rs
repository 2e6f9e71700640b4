//! Scans a receive-tap directory (see `tollgate_e2e::tap`) and prints what it holds as JSON:
//! files, plaintext bytes tapped, HTTP responses (and how many were cut short, and how many
//! bytes were not HTTP), payloads, where each needle was found, regex matches (counted) and the
//! `https://` URLs received.
//!
//! ```text
//! cargo run -p tollgate-e2e --example tap_scan -- <tap-dir> [--needle TEXT]... [--regex RE]...
//!     [--require-all]
//! ```
//!
//! `--require-all` exits 1 when a needle was not found (used by
//! `tests/drivers/tap/selfcheck.sh`, which checks that the tap captures what drivers receive).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tollgate_e2e::tap;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: tap_scan <tap-dir> [--needle TEXT]...")?,
    );
    let (mut needles, mut regexes, mut require_all) = (Vec::new(), Vec::new(), false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--needle" => needles.push(args.next().context("--needle needs a value")?),
            "--regex" => regexes.push(args.next().context("--regex needs a value")?),
            "--require-all" => require_all = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let payloads = tap::received_payloads(&dir)?;
    let n: Vec<&[u8]> = needles.iter().map(|s| s.as_bytes()).collect();
    let found = tap::find_needles(&payloads, &n);
    let mut per_needle = serde_json::Map::new();
    for needle in &needles {
        let sources: Vec<&str> = found
            .iter()
            .filter(|(_, n)| n == needle)
            .map(|(s, _)| s.as_str())
            .collect();
        per_needle.insert(needle.clone(), json!(sources));
    }
    let mut per_regex = serde_json::Map::new();
    for r in &regexes {
        let re = regex::bytes::Regex::new(r).with_context(|| format!("regex {r}"))?;
        per_regex.insert(r.clone(), json!(tap::find_regex(&payloads, &re).len()));
    }
    let (mut responses, mut truncated, mut unparsed) = (0, 0, 0);
    for f in tap::tap_files(&dir)? {
        let parsed = tap::parse_responses(&std::fs::read(&f)?);
        responses += parsed.responses.len();
        truncated += parsed.responses.iter().filter(|r| r.truncated).count();
        unparsed += parsed.unparsed.map_or(0, |(_, b)| b.len());
    }
    let report = json!({
        "dir": dir,
        "files": tap::tap_files(&dir)?.len(),
        "tapped_bytes": tap::tapped_bytes(&dir)?,
        "responses": responses,
        "truncated_responses": truncated,
        "unparsed_bytes": unparsed,
        "payloads": payloads.len(),
        "payload_bytes": payloads.iter().map(|p| p.body.len()).sum::<usize>(),
        "needles": per_needle,
        "regex_matches": per_regex,
        "urls": tap::find_urls(&payloads),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let missing: Vec<&String> = needles
        .iter()
        .filter(|n| !found.iter().any(|(_, f)| f == *n))
        .collect();
    if require_all && !missing.is_empty() {
        eprintln!("tap_scan: not found in {}: {missing:?}", dir.display());
        std::process::exit(1);
    }
    Ok(())
}
