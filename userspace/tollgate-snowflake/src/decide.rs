//! Phase 4 — decide: the statement's SQL analysed against the session's current database and
//! schema, and the policy evaluated on it, giving a [`Verdict`]. Pure: no I/O, no clock, no
//! logging — the same input always gives the same verdict.

use std::sync::Arc;

use tollgate_policy::{
    Action, Decision, EvalInput, Identity, NameContext, Policy, StatementCache, StatementKind,
    UseKind,
};

use crate::plan::ResultPlan;
use crate::reply::{Api, Refusal, RefusalKind};

/// A statement to decide.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    /// Its SQL text (never logged; recorded only redacted unless the rule says otherwise).
    pub sql: &'a str,
    /// The API it came through.
    pub api: Api,
    /// For the SQL API: where the identity came from, named in refusals.
    pub decided_for: Option<&'a str>,
}

/// What the policy says about a statement.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it; apply `plan` to its result.
    Allow(Allowed),
    /// Refuse it.
    Deny(Refusal),
    /// Hold it for a human (see the hold phase).
    Hold(HoldRequest),
}

/// An allowed statement.
#[derive(Debug)]
pub struct Allowed {
    /// `USE` targets, applied to the session once the statement succeeds.
    pub uses: Vec<(UseKind, String)>,
    /// What the result must undergo.
    pub plan: ResultPlan,
}

/// A statement the policy holds for approval.
#[derive(Debug)]
pub struct HoldRequest {
    /// The deciding rule.
    pub rule_id: String,
    /// Why, as the policy says (shown to the approver and the agent).
    pub reason: String,
    /// The refusal the agent gets while no approval can be given.
    pub refusal: Refusal,
    /// What the result would undergo once approved.
    pub plan: ResultPlan,
}

/// A decided statement: the verdict and what the audit trail records about it.
#[derive(Debug)]
pub struct Decided {
    /// The policy's decision.
    pub decision: Decision,
    /// Statement kinds in text order (`select`, `use`, …; `unparseable` when the SQL cannot be
    /// parsed).
    pub kinds: Vec<String>,
    /// The literal-free fingerprint of the SQL.
    pub fingerprint: String,
    /// The SQL with its literals redacted (what the audit trail records unless the rule says
    /// otherwise).
    pub redacted_sql: String,
    /// Tables the statements touch, sorted and unique.
    pub tables: Vec<String>,
    /// What to do.
    pub verdict: Verdict,
}

/// Decides `statement` for `identity` under `policy`. The statement's analysis comes from
/// `statements` when its text was seen in the same context before (the cache only saves work:
/// the verdict is the same either way).
pub fn decide(
    policy: &Arc<Policy>,
    statements: &StatementCache,
    identity: &Identity,
    statement: Statement<'_>,
) -> Decided {
    let ctx = NameContext {
        database: identity.snowflake.database.clone(),
        schema: identity.snowflake.schema.clone(),
    };
    let prepared = statements.prepare(statement.sql, &ctx);
    let analysis = &prepared.analysis;
    let decision = policy.evaluate(&EvalInput {
        identity,
        analysis: analysis.as_ref(),
    });
    let kinds = match analysis {
        Ok(a) => a.statements.iter().map(|s| s.kind.to_string()).collect(),
        Err(_) => vec!["unparseable".to_owned()],
    };
    let mut tables: Vec<String> = decision
        .statements
        .iter()
        .flat_map(|s| s.tables.iter().map(ToString::to_string))
        .collect();
    tables.sort();
    tables.dedup();
    let decided_for = statement
        .decided_for
        .map(|s| format!(" (decided for {s})"))
        .unwrap_or_default();
    let refuse = |kind: RefusalKind, what: &str, reason: &str| {
        Refusal::new(
            kind,
            statement.api,
            format!(
                "Tollgate {what} this statement (rule {}): {reason}{decided_for}",
                decision.rule_id
            ),
        )
    };
    let plan = |mask: Option<&tollgate_policy::MaskPlan>| ResultPlan {
        rule_id: decision.rule_id.clone(),
        mask: mask.cloned(),
        max_rows: decision.max_rows,
        max_bytes: decision.max_bytes,
        record_rows: decision.record.result_rows,
        policy: policy.clone(),
    };
    let verdict = match &decision.action {
        Action::Allow => {
            let uses = analysis
                .as_ref()
                .map(|a| {
                    a.statements
                        .iter()
                        .filter(|s| matches!(s.kind, StatementKind::Use(_)))
                        .filter_map(|s| s.use_target.as_ref())
                        .map(|u| (u.kind, u.name.clone()))
                        .collect()
                })
                .unwrap_or_default();
            Verdict::Allow(Allowed {
                uses,
                plan: plan(None),
            })
        }
        Action::Mask { plan: mask } => Verdict::Allow(Allowed {
            uses: Vec::new(),
            plan: plan(Some(mask)),
        }),
        Action::Deny { reason } => Verdict::Deny(refuse(RefusalKind::Denied, "denied", reason)),
        Action::RequireApproval { reason } => Verdict::Hold(HoldRequest {
            rule_id: decision.rule_id.clone(),
            reason: reason.clone(),
            refusal: refuse(
                RefusalKind::ApprovalRequired,
                "requires approval for",
                &format!("approval required: {reason}"),
            ),
            plan: plan(None),
        }),
    };
    Decided {
        kinds,
        fingerprint: prepared.literal_free.fingerprint.clone(),
        redacted_sql: prepared.literal_free.redacted.clone(),
        tables,
        verdict,
        decision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Arc<Policy> {
        Arc::new(Policy::compile(yaml, "test.yaml").expect("test policy compiles"))
    }

    const POLICY: &str = r#"
version: 1
defaults:
  unparseable_sql: deny
  unknown_statement: deny
  unresolved_bindings: deny
  no_rule_matched: deny
rules:
  - id: no-notes
    match: { tables: ["CLINICAL.PUBLIC.NOTES"] }
    action: deny
    reason: notes are off limits
  - id: hold-exports
    match: { statements: [insert] }
    action: require_approval
    reason: exports need a reviewer
  - id: reads
    match: { statements: [select, use] }
    action: allow
"#;

    fn identity() -> Identity {
        Identity {
            snowflake: tollgate_identity::SnowflakeIdentity {
                database: Some("CLINICAL".into()),
                schema: Some("PUBLIC".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn stmt(sql: &str) -> Statement<'_> {
        Statement {
            sql,
            api: Api::Driver,
            decided_for: None,
        }
    }

    #[test]
    fn the_three_verdicts() {
        let p = policy(POLICY);
        let d = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            stmt("select * from notes where id = 42"),
        );
        match d.verdict {
            Verdict::Deny(r) => {
                assert_eq!(r.kind, RefusalKind::Denied);
                assert!(r.message.contains("rule no-notes"), "{}", r.message);
                assert!(!r.message.contains("42"), "no literal in the refusal");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        assert_eq!(d.tables, vec!["CLINICAL.PUBLIC.NOTES".to_owned()]);
        let other = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            stmt("select * from notes where id = 7"),
        );
        assert_eq!(
            d.fingerprint, other.fingerprint,
            "the fingerprint ignores literals"
        );
        let d = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            stmt("use schema other"),
        );
        match d.verdict {
            Verdict::Allow(a) => assert_eq!(a.uses, vec![(UseKind::Schema, "OTHER".into())]),
            other => panic!("expected allow, got {other:?}"),
        }
        let d = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            stmt("insert into clinical.public.visits values (1)"),
        );
        match d.verdict {
            Verdict::Hold(h) => {
                assert_eq!(h.rule_id, "hold-exports");
                assert_eq!(h.refusal.kind, RefusalKind::ApprovalRequired);
                assert!(h.refusal.message.contains("approval required: exports"));
            }
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn a_cached_statement_is_decided_afresh_for_each_identity_and_policy() {
        let p = policy(
            r#"
version: 1
defaults: { no_rule_matched: deny }
rules:
  - id: analysts-read
    match: { snowflake: { role: [ANALYST] }, statements: [select] }
    action: allow
"#,
        );
        let cache = StatementCache::new(1 << 20);
        let mut analyst = identity();
        analyst.snowflake.role = Some("ANALYST".into());
        let mut other = identity();
        other.snowflake.role = Some("INTERN".into());
        let sql = "select * from visits where id = 3";
        let first = decide(&p, &cache, &analyst, stmt(sql));
        assert!(matches!(first.verdict, Verdict::Allow(_)));
        let second = decide(&p, &cache, &other, stmt(sql));
        assert!(
            matches!(second.verdict, Verdict::Deny(_)),
            "same text, other role"
        );
        let third = decide(&policy(POLICY), &cache, &analyst, stmt(sql));
        assert_eq!(
            third.decision.rule_id, "reads",
            "same text, the policy in force"
        );
        assert_eq!(cache.len(), 1, "one analysis served all three");
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.redacted_sql, "select * from visits where id = ?");
    }

    #[test]
    fn unparseable_sql_is_decided_by_the_default_and_named() {
        let p = policy(POLICY);
        let d = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            stmt("selec nonsense ((("),
        );
        assert_eq!(d.kinds, vec!["unparseable".to_owned()]);
        assert!(matches!(d.verdict, Verdict::Deny(_)));
    }

    #[test]
    fn sql_api_refusals_say_whom_they_were_decided_for() {
        let p = policy(POLICY);
        let d = decide(
            &p,
            &StatementCache::new(1 << 20),
            &identity(),
            Statement {
                sql: "select * from notes",
                api: Api::SqlApi,
                decided_for: Some("key-pair JWT"),
            },
        );
        let Verdict::Deny(r) = d.verdict else {
            panic!("expected a denial")
        };
        assert_eq!(r.api, Api::SqlApi);
        assert!(
            r.message.ends_with("(decided for key-pair JWT)"),
            "{}",
            r.message
        );
    }
}
