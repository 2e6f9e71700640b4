//! Properties of the evaluator over generated policies, identities and statements.

use proptest::prelude::*;
use tollgate_policy::{
    analyze, Action, EvalInput, Identity, NameContext, Policy, SnowflakeIdentity,
};

const SQL: &[&str] = &[
    "select name from patients",
    "select * from ehr.encounters e join patients p on e.pid = p.id",
    "select 1",
    "with x as (select * from patients) select * from x",
    "insert into analytics.t select * from patients",
    "update ehr.encounters set status = ? where id = ?",
    "copy into @s from patients",
    "show tables",
    "use role analyst",
    "select * from other.x.y",
    "select * from identifier(?)",
    "create schema s",
    "select a from analytics.t; delete from patients",
    "GET @s file:///tmp/",
];
const ROLES: &[&str] = &["ANALYST", "CLINICIAN", "*", "AGENT_*"];
const TABLES: &[&str] = &[
    "CLINICAL.PUBLIC.PATIENTS",
    "CLINICAL.EHR.*",
    "CLINICAL.*.*",
    "OTHER.X.*",
    "CLINICAL.ANALYTICS.*",
];
const KINDS: &[&str] = &[
    "select",
    "write",
    "read",
    "insert_select",
    "stage",
    "metadata",
    "use",
    "other",
];
const ACTIONS: &[&str] = &["allow", "deny", "require_approval", "mask"];

#[derive(Debug, Clone)]
struct RuleGen {
    role: Option<usize>,
    tables: Option<Vec<usize>>,
    kinds: Option<Vec<usize>>,
    action: usize,
}

fn rule_gen() -> impl Strategy<Value = RuleGen> {
    (
        proptest::option::of(0..ROLES.len()),
        proptest::option::of(proptest::collection::vec(0..TABLES.len(), 1..3)),
        proptest::option::of(proptest::collection::vec(0..KINDS.len(), 1..3)),
        0..ACTIONS.len(),
    )
        .prop_map(|(role, tables, kinds, action)| RuleGen {
            role,
            tables,
            kinds,
            action,
        })
}

fn rule_yaml(i: usize, r: &RuleGen, tables_override: Option<&[&str]>) -> String {
    let mut s = format!("  - id: r{i}\n    match:\n");
    if let Some(role) = r.role {
        s += &format!("      snowflake: {{ role: [\"{}\"] }}\n", ROLES[role]);
    }
    match (tables_override, &r.tables) {
        (Some(t), _) => s += &format!("      tables: {t:?}\n"),
        (None, Some(t)) => {
            s += &format!(
                "      tables: {:?}\n",
                t.iter().map(|&i| TABLES[i]).collect::<Vec<_>>()
            )
        }
        _ => {}
    }
    if let Some(k) = &r.kinds {
        s += &format!(
            "      statements: {:?}\n",
            k.iter().map(|&i| KINDS[i]).collect::<Vec<_>>()
        );
    }
    if s.ends_with("match:\n") {
        s = s.replace("    match:\n", "");
    }
    let action = ACTIONS[r.action];
    s += &format!("    action: {action}\n");
    match action {
        "deny" | "require_approval" => s += "    reason: generated\n",
        "mask" => s += "    mask: [{ columns: [\"*.*.*.SSN\"], method: redact }]\n",
        _ => {}
    }
    s
}

fn compile(rules: &[String]) -> Policy {
    let text = format!("version: 1\nrules:\n{}", rules.concat());
    Policy::compile(&text, "gen.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn identity(role: &str) -> Identity {
    Identity {
        snowflake: SnowflakeIdentity {
            role: Some(role.into()),
            user: Some("U".into()),
            ..SnowflakeIdentity::default()
        },
        ..Identity::default()
    }
}

fn ctx() -> NameContext {
    NameContext::new("CLINICAL", "PUBLIC")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prepending_a_deny_rule_never_loosens(
        rules in proptest::collection::vec(rule_gen(), 0..8),
        extra in rule_gen(),
        sql in 0..SQL.len(),
        role in prop::sample::select(vec!["ANALYST", "CLINICIAN", "AGENT_X", "NOBODY"]),
    ) {
        let base: Vec<String> = rules.iter().enumerate().map(|(i, r)| rule_yaml(i, r, None)).collect();
        let deny = RuleGen { action: 1, ..extra };
        let mut stricter = vec![rule_yaml(99, &deny, None)];
        stricter.extend(base.iter().cloned());
        let analysis = analyze(SQL[sql], &ctx());
        let id = identity(role);
        let input = EvalInput { identity: &id, analysis: analysis.as_ref() };
        let before = compile(&base).evaluate(&input);
        let after = compile(&stricter).evaluate(&input);
        prop_assert!(after.action.strictness() >= before.action.strictness(), "{before:?}\n{after:?}");
        if before.action.strictness() == 3 {
            prop_assert_eq!(after.action.name(), "deny");
        }
    }

    #[test]
    fn a_table_matched_only_by_deny_rules_is_never_allowed(
        rules in proptest::collection::vec(rule_gen(), 1..8),
        role in prop::sample::select(vec!["ANALYST", "CLINICIAN", "AGENT_X"]),
        sql in prop::sample::select(vec![
            "select * from clinical.public.patients",
            "select a.x from clinical.analytics.t a join clinical.public.patients p on a.id = p.id",
            "with q as (select ssn from patients) select * from q",
            "select * from other.x.y where id in (select id from patients)",
            "insert into other.x.y select * from patients",
        ]),
    ) {
        // Permissive rules may only name tables other than PATIENTS; restrictive ones name it.
        let texts: Vec<String> = rules.iter().enumerate().map(|(i, r)| {
            if ACTIONS[r.action] == "allow" || ACTIONS[r.action] == "mask" {
                rule_yaml(i, r, Some(&["OTHER.X.*", "CLINICAL.ANALYTICS.*"]))
            } else {
                rule_yaml(i, r, Some(&["CLINICAL.PUBLIC.PATIENTS"]))
            }
        }).collect();
        let analysis = analyze(sql, &ctx());
        let id = identity(role);
        let d = compile(&texts).evaluate(&EvalInput { identity: &id, analysis: analysis.as_ref() });
        prop_assert!(d.action.strictness() >= 2, "{sql}: {d:?}");
    }

    #[test]
    fn unparseable_input_is_never_allowed_by_default(
        // Random text (almost never SQL), real statements, and statements with junk after
        // them (either): both branches below run on every test run.
        text in prop_oneof![
            ".{0,200}",
            prop::sample::select(SQL).prop_map(str::to_owned),
            (prop::sample::select(SQL), ".{0,20}").prop_map(|(sql, junk)| format!("{sql} {junk}")),
        ],
        rules in proptest::collection::vec(rule_gen(), 0..6),
    ) {
        let texts: Vec<String> = rules.iter().enumerate().map(|(i, r)| rule_yaml(i, r, None)).collect();
        let policy = compile(&texts);
        let analysis = analyze(&text, &ctx());
        let id = identity("ANALYST");
        let d = policy.evaluate(&EvalInput { identity: &id, analysis: analysis.as_ref() });
        match &analysis {
            // Text that does not parse, or holds no statement, is refused by the default.
            Err(_) => {
                prop_assert!(matches!(d.action, Action::Deny { .. }), "{:?}", d);
                prop_assert_eq!(&d.rule_id, "default:unparseable_sql");
                prop_assert!(d.statements.is_empty(), "{:?}", d);
            }
            Ok(a) if a.statements.is_empty() => {
                prop_assert!(matches!(d.action, Action::Deny { .. }), "{text:?}: {d:?}");
                prop_assert_eq!(&d.rule_id, "default:unparseable_sql");
            }
            // Text that parses is decided statement by statement, never by that default: the
            // strictest statement decides, and the deciding rule is one of theirs.
            Ok(a) => {
                prop_assert_ne!(&d.rule_id, "default:unparseable_sql", "{:?}", text);
                prop_assert_eq!(d.statements.len(), a.statements.len(), "{:?}", d);
                prop_assert!(d.statements.iter().any(|s| s.rule_id == d.rule_id), "{:?}", d);
                let strictest = d.statements.iter().map(|s| s.action.strictness()).max();
                prop_assert_eq!(Some(d.action.strictness()), strictest, "{:?}", d);
            }
        }
    }

    #[test]
    fn analysis_and_evaluation_are_deterministic(
        rules in proptest::collection::vec(rule_gen(), 0..8),
        sql in 0..SQL.len(),
        role in prop::sample::select(vec!["ANALYST", "CLINICIAN", "AGENT_X"]),
    ) {
        let texts: Vec<String> = rules.iter().enumerate().map(|(i, r)| rule_yaml(i, r, None)).collect();
        let policy = compile(&texts);
        let again = compile(&texts);
        let a1 = analyze(SQL[sql], &ctx());
        let a2 = analyze(SQL[sql], &ctx());
        prop_assert_eq!(&a1, &a2);
        let id = identity(role);
        let d1 = policy.evaluate(&EvalInput { identity: &id, analysis: a1.as_ref() });
        let d2 = again.evaluate(&EvalInput { identity: &id, analysis: a2.as_ref() });
        prop_assert_eq!(d1, d2);
    }

    #[test]
    fn analysis_never_panics(text in "\\PC{0,300}") {
        let _ = analyze(&text, &ctx());
        let _ = tollgate_policy::redact_literals(&text);
        let _ = tollgate_policy::fingerprint(&text);
    }

    #[test]
    fn string_literals_never_survive_redaction(
        prefix in "[a-z0-9 ,=()*]{0,40}",
        secret in "[A-Z]{12}",
        suffix in "[a-z0-9 ,=()*]{0,40}",
    ) {
        let sql = format!("{prefix} '{secret}' {suffix}");
        prop_assert!(!tollgate_policy::redact_literals(&sql).contains(&secret));
    }
}
