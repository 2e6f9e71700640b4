//! `tollgate replay`, `tollgate audit verify`, `tollgate audit tail`: reading the audit trail
//! back from the spool or from ClickHouse.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tollgate_audit::chain::public_path;
use tollgate_audit::clickhouse::{fetch, Selection};
use tollgate_audit::event::parse_rfc3339_us;
use tollgate_audit::{replay, spool, verify, Event, PublicKey, Scope};

use crate::config::{ClickHouseSection, Config, DEFAULT_STATE_DIR};

/// Where to read events from.
#[derive(Args, Debug, Clone)]
pub struct Source {
    /// Tollgate's configuration file (its spool, key and ClickHouse settings).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// State directory (default spool `<dir>/spool`, key `<dir>/audit.key`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Read this spool directory.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Read from ClickHouse at this HTTP(S) URL instead of the spool.
    #[arg(long, value_name = "URL")]
    clickhouse: Option<String>,
    /// ClickHouse database.
    #[arg(long, value_name = "NAME")]
    clickhouse_database: Option<String>,
    /// ClickHouse user that may read the events (not the insert-only writer).
    #[arg(long, value_name = "NAME")]
    clickhouse_user: Option<String>,
    /// File holding that user's password.
    #[arg(long, value_name = "FILE")]
    clickhouse_password_file: Option<PathBuf>,
}

impl Source {
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.state_dir {
            c.state_dir = d.clone();
        } else if self.config.is_none() {
            c.state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        }
        if let Some(s) = &self.spool {
            c.audit.spool_dir = Some(s.clone());
        }
        Ok(c)
    }

    /// The ClickHouse settings when reading from ClickHouse.
    fn clickhouse(
        &self,
        c: &Config,
    ) -> Result<Option<tollgate_audit::clickhouse::ClickHouseConfig>> {
        let section = match (&self.clickhouse, &c.audit.clickhouse) {
            (Some(url), base) => {
                let mut s = base.clone().unwrap_or_default();
                s.url = url.clone();
                s
            }
            (None, _) => return Ok(None),
        };
        let mut s: ClickHouseSection = section;
        if let Some(d) = &self.clickhouse_database {
            s.database = d.clone();
        }
        let mut cfg = s.sink_config()?;
        // Reading needs SELECT: the given user, else the configured admin, else the writer.
        if let Some(u) = &self.clickhouse_user {
            cfg.admin_user = Some(u.clone());
            cfg.admin_password = match &self.clickhouse_password_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                ),
                None => None,
            };
        }
        Ok(Some(cfg))
    }

    fn load(&self, sel: &Selection) -> Result<(Vec<Event>, String)> {
        let c = self.config()?;
        if let Some(ch) = self.clickhouse(&c)? {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let events = rt.block_on(fetch(&ch, sel)).with_context(|| {
                format!("reading the audit trail from ClickHouse at {}", ch.url)
            })?;
            return Ok((
                events,
                format!("ClickHouse {} database {}", ch.url, ch.database),
            ));
        }
        let dir = c.spool_dir();
        if !dir.exists() {
            bail!(
                "no audit spool at {} (give --spool DIR, --state-dir DIR, --config FILE or --clickhouse URL)",
                dir.display()
            );
        }
        let mut events = spool::read_all(&dir)?;
        events.retain(|e| {
            sel.session.as_deref().is_none_or(|s| e.session_id == s)
                && sel.host.as_deref().is_none_or(|h| e.host == h)
        });
        if sel.since_us.is_some() || sel.until_us.is_some() {
            let in_range: std::collections::HashSet<String> = events
                .iter()
                .filter(|e| {
                    sel.since_us.is_none_or(|t| e.ts_us >= t)
                        && sel.until_us.is_none_or(|t| e.ts_us < t)
                })
                .map(|e| e.session_id.clone())
                .collect();
            events.retain(|e| in_range.contains(&e.session_id));
        }
        Ok((events, format!("spool {}", dir.display())))
    }
}

/// `tollgate replay` arguments.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The session id (as in Tollgate's log and the `session_id` column), or `conn:<id>`.
    session: String,
    #[command(flatten)]
    source: Source,
}

/// `tollgate audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the trail: hashes, links, sequence, signatures; report every gap, edit, reorder or
    /// deletion. Exits 1 when anything is wrong.
    Verify {
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Sessions with events at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Sessions with events before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Public key file (default: `<audit key>.pub` of the configuration).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Follow the spool: print each event as it is recorded.
    Tail {
        /// Start from the beginning instead of the end.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many events (default: follow forever).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        #[command(flatten)]
        source: Source,
    },
}

/// `tollgate replay SESSION`.
pub fn replay(args: &ReplayArgs) -> Result<()> {
    let sel = Selection {
        session: Some(args.session.clone()),
        ..Selection::default()
    };
    let (events, from) = args.source.load(&sel)?;
    if events.is_empty() {
        bail!("no events of session {} in the {from}", args.session);
    }
    out!("{}", replay::render(&events))?;
    Ok(())
}

fn time_arg(name: &str, v: &Option<String>) -> Result<Option<i64>> {
    v.as_deref()
        .map(|s| {
            parse_rfc3339_us(s).with_context(|| {
                format!("--{name} {s}: not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z)")
            })
        })
        .transpose()
}

/// `tollgate audit …`.
pub fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            session,
            since,
            until,
            public_key,
            json,
            source,
        } => {
            let sel = Selection {
                session: session.clone(),
                since_us: time_arg("since", &since)?,
                until_us: time_arg("until", &until)?,
                host: None,
            };
            let c = source.config()?;
            let key_path = public_key.unwrap_or_else(|| public_path(&c.audit_key()));
            let key = PublicKey::load(&key_path).with_context(|| {
                format!(
                    "loading the host's public key {} (give --public-key FILE)",
                    key_path.display()
                )
            })?;
            let (events, from) = source.load(&sel)?;
            // A whole host's trail (no session filter) must have no holes in its host sequence.
            let scope = Scope {
                complete_hosts: session.is_none() && since.is_none() && until.is_none(),
            };
            let report = verify(&events, Some(&key), scope);
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                outln!(
                    "verified {} events in {} sessions from the {from} with key {}",
                    report.events,
                    report.chains.len(),
                    key.key_id()
                )?;
                let open = report.chains.iter().filter(|c| !c.closed).count();
                if open > 0 {
                    outln!("{open} session(s) still open (no signed end yet)")?;
                }
                if report.duplicates > 0 {
                    outln!(
                        "{} duplicate copies (re-deliveries not yet merged by ClickHouse; harmless)",
                        report.duplicates
                    )?;
                }
                for p in &report.problems {
                    outln!("{p}")?;
                }
                if report.ok() {
                    outln!("OK: the trail is complete and unaltered")?;
                }
            }
            if !report.ok() {
                bail!(
                    "{} problem(s) found in the audit trail",
                    report.problems.len()
                );
            }
            Ok(())
        }
        AuditCommand::Tail {
            from_start,
            count,
            source,
        } => {
            let c = source.config()?;
            let dir = c.spool_dir();
            let mut next = if from_start {
                0
            } else {
                spool::segments(&dir)
                    .ok()
                    .and_then(|s| s.last().cloned())
                    .map(|(_, p)| {
                        spool::read_segment(&p, 0)
                            .map(|(ev, _)| ev.last().map_or(0, |(_, e)| e.host_seq + 1))
                            .unwrap_or(0)
                    })
                    .unwrap_or(0)
            };
            let mut printed = 0usize;
            loop {
                let events = spool::read_from(&dir, next, 10_000)?;
                for e in &events {
                    outln!("{} {}", e.session_id, replay::event_line(e, e.ts_us))?;
                    next = e.host_seq + 1;
                    printed += 1;
                    if count.is_some_and(|n| printed >= n) {
                        return Ok(());
                    }
                }
                if events.is_empty() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
