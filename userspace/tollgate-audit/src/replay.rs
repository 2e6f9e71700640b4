//! `tollgate replay`: a chain printed as it happened (pure formatting over events).

use std::fmt::Write as _;

use crate::event::{format_us, Event, EventKind};

fn field(out: &mut String, name: &str, value: &str) {
    if !value.is_empty() {
        let _ = write!(out, " {name}={value}");
    }
}

/// One line for an event (no values: what the agent saw is printed separately).
pub fn event_line(e: &Event, start_us: i64) -> String {
    let mut out = format!(
        "{} +{:>9.3}s #{:<3} {:<17}",
        format_us(e.ts_us),
        (e.ts_us - start_us) as f64 / 1e6,
        e.seq,
        e.kind.as_str()
    );
    match e.kind {
        EventKind::Connection | EventKind::Disconnect => {
            for k in [
                "client",
                "original_dst",
                "sni",
                "gate",
                "bytes_up",
                "bytes_down",
                "requests",
            ] {
                if let Some(v) = e.attrs.get(k) {
                    field(&mut out, k, v);
                }
            }
        }
        EventKind::Login => {
            field(&mut out, "outcome", &e.decision);
            field(&mut out, "user", &e.sf_user);
            field(&mut out, "role", &e.sf_role);
            field(&mut out, "account", &e.sf_account);
            field(&mut out, "oidc_sub", &e.oidc_subject);
        }
        EventKind::Query => {
            field(&mut out, "kind", &e.statement_kind);
            if !e.tables.is_empty() {
                field(&mut out, "tables", &e.tables.join(","));
            }
            let _ = write!(out, " sql={:?}", e.sql);
            field(&mut out, "fingerprint", &e.sql_fingerprint);
        }
        EventKind::Decision | EventKind::ApprovalRequest | EventKind::ApprovalDecision => {
            field(&mut out, "decision", &e.decision);
            field(&mut out, "rule", &e.rule_id);
            if !e.reason.is_empty() {
                let _ = write!(out, " reason={:?}", e.reason);
            }
        }
        EventKind::Result | EventKind::Chunk => {
            field(&mut out, "query_id", &e.query_id);
            field(&mut out, "outcome", &e.decision);
            let _ = write!(out, " rows={} bytes={}", e.rows, e.bytes);
            if e.duration_us > 0 {
                let _ = write!(out, " took={:.1}ms", e.duration_us as f64 / 1000.0);
            }
            for m in &e.masked {
                let _ = write!(
                    out,
                    " masked[{}:{}×{} by {}]",
                    m.column, m.method, m.values, m.rule_id
                );
            }
        }
        EventKind::PolicyReload => {
            field(&mut out, "outcome", &e.decision);
            for k in ["policy", "digest", "rules", "in_force_digest"] {
                if let Some(v) = e.attrs.get(k) {
                    field(&mut out, k, v);
                }
            }
        }
        EventKind::Error | EventKind::SessionEnd => {}
    }
    field(&mut out, "error", &e.error_code);
    if !e.reason.is_empty()
        && matches!(
            e.kind,
            EventKind::Error
                | EventKind::SessionEnd
                | EventKind::Disconnect
                | EventKind::PolicyReload
        )
    {
        let _ = write!(out, " reason={:?}", e.reason);
    }
    if !e.signature.is_empty() {
        let _ = write!(out, " [signed {}]", e.key_id);
    }
    out
}

/// The whole chain: a header with the identity, then one line per event, then the masked rows
/// the agent received where they were recorded.
pub fn render(events: &[Event]) -> String {
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| e.seq);
    events.dedup_by(|a, b| a.event_id == b.event_id);
    let Some(first) = events.first() else {
        return "no events\n".to_owned();
    };
    let who = events
        .iter()
        .find(|e| e.kind == EventKind::Login)
        .copied()
        .unwrap_or(first);
    let mut out = String::new();
    let _ = writeln!(out, "session {} on host {}", first.session_id, first.host);
    let _ = writeln!(
        out,
        "  process: pid={} uid={} comm={} exe={} cgroup={}",
        who.pid.map_or("-".into(), |p| p.to_string()),
        who.uid.map_or("-".into(), |p| p.to_string()),
        or_dash(&who.comm),
        or_dash(&who.exe),
        or_dash(&who.cgroup)
    );
    let _ = writeln!(
        out,
        "  snowflake: account={} user={} role={} warehouse={} database={} schema={}",
        or_dash(&who.sf_account),
        or_dash(&who.sf_user),
        or_dash(&who.sf_role),
        or_dash(&who.sf_warehouse),
        or_dash(&who.sf_database),
        or_dash(&who.sf_schema)
    );
    if !who.oidc_subject.is_empty() {
        let _ = writeln!(
            out,
            "  oidc: sub={} iss={}",
            who.oidc_subject, who.oidc_issuer
        );
    }
    for e in &events {
        let _ = writeln!(out, "  {}", event_line(e, first.ts_us));
        if !e.result_rows.is_empty() {
            let _ = writeln!(out, "      rows the agent received: {}", e.result_rows);
        }
    }
    let closed = events.last().is_some_and(|e| e.kind.is_final());
    let _ = writeln!(
        out,
        "  {} events, {}",
        events.len(),
        if closed { "closed" } else { "still open" }
    );
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_identity_statements_and_decisions() {
        let mut login = Event::new(EventKind::Login, "s1");
        login.sf_user = "AGENT1".into();
        login.comm = "python3".into();
        let mut q = Event::new(EventKind::Query, "s1");
        q.seq = 1;
        q.sql = "SELECT name FROM patients WHERE id = ?".into();
        let mut d = Event::new(EventKind::Decision, "s1");
        d.seq = 2;
        d.decision = "mask".into();
        d.rule_id = "analysts".into();
        let text = render(&[d, login, q]);
        assert!(text.contains("user=AGENT1"), "{text}");
        assert!(text.contains("comm=python3"), "{text}");
        let qi = text.find("query").unwrap();
        let di = text.find("decision=mask rule=analysts").unwrap();
        assert!(qi < di, "{text}");
        assert!(text.contains("still open"), "{text}");
    }
}
