//! Opaque sources: data a statement reads that has no table name — `TABLE(RESULT_SCAN(…))`
//! (an earlier result, possibly one Tollgate masked), table functions other than pure
//! generators, stages read in `FROM`. The analysis records them; policy fails closed on them:
//! a permissive rule covers one only by naming it in `match.sources` (never by a vacuous
//! `tables` glob), a restrictive rule's `tables` / `columns` / `tags` count it as a match, and
//! it may touch masked or classified data (`defaults.unknown_lineage`,
//! `defaults.classified_copies`).

use std::collections::BTreeSet;
use std::path::Path;

use tollgate_policy::{
    analyze, load, Action, Decision, EvalInput, Fallback, Identity, NameContext, OpaqueSource,
    Policy, SnowflakeIdentity, StatementInfo, StatementLineage,
};

fn ctx() -> NameContext {
    NameContext::new("CLINICAL", "EHR")
}

fn one(sql: &str) -> StatementInfo {
    let mut a = analyze(sql, &ctx()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements.remove(0)
}

fn labels(st: &StatementInfo) -> Vec<String> {
    st.opaque_sources.iter().map(OpaqueSource::label).collect()
}

fn tables(st: &StatementInfo) -> Vec<String> {
    st.tables().map(ToString::to_string).collect()
}

/// The end-to-end masking policy, against which the hole was found.
fn masking() -> Policy {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/policies/masking.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn user(name: &str) -> Identity {
    Identity {
        snowflake: SnowflakeIdentity {
            user: Some(name.into()),
            role: Some("ANALYST".into()),
            database: Some("CLINICAL".into()),
            schema: Some("EHR".into()),
            ..SnowflakeIdentity::default()
        },
        ..Identity::default()
    }
}

fn decide(policy: &Policy, identity: &Identity, sql: &str) -> Decision {
    let analysis = analyze(sql, &ctx());
    policy.evaluate(&EvalInput {
        identity,
        analysis: analysis.as_ref(),
    })
}

#[track_caller]
fn expect(policy: &Policy, who: &str, sql: &str, action: &str, rule: &str) -> Decision {
    let d = decide(policy, &user(who), sql);
    assert_eq!(
        (d.action.name(), d.rule_id.as_str()),
        (action, rule),
        "{sql}\n{}",
        serde_json::to_string_pretty(&d).unwrap()
    );
    d
}

#[track_caller]
fn reason(d: &Decision) -> &str {
    match &d.action {
        Action::Deny { reason } | Action::RequireApproval { reason } => reason,
        other => panic!("not a refusal: {other:?}"),
    }
}

// --- Analysis ------------------------------------------------------------------------------

#[test]
fn result_scan_is_an_opaque_source_wherever_it_is() {
    for sql in [
        "SELECT * FROM TABLE(RESULT_SCAN('01b2c3d4-0000-1111-0000-00000000abcd'))",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "select r.* from table(result_scan(last_query_id(-2))) r",
        "SELECT $1, $2 FROM TABLE(RESULT_SCAN(LAST_QUERY_ID())) AS r WHERE $1 > 0",
        // In a subquery, a CTE, a join, a set operation.
        "SELECT * FROM (SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID())))",
        "WITH r AS (SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))) SELECT * FROM r",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM TABLE(RESULT_SCAN('q')))",
        "SELECT 1 UNION ALL SELECT $1 FROM TABLE(RESULT_SCAN('q'))",
    ] {
        let st = one(sql);
        assert_eq!(labels(&st), ["RESULT_SCAN"], "{sql}");
        assert!(tables(&st).is_empty(), "{sql}: {:?}", tables(&st));
        assert!(!st.unresolved_bindings, "{sql}");
        assert!(
            matches!(st.lineage, Some(StatementLineage::Unknown { .. })),
            "{sql}: {:?}",
            st.lineage
        );
    }
    let st = one("SELECT p.name, r.$2 FROM patients p \
         JOIN TABLE(RESULT_SCAN(LAST_QUERY_ID())) r ON p.id = r.$1");
    assert_eq!(labels(&st), ["RESULT_SCAN"]);
    assert_eq!(tables(&st), ["CLINICAL.EHR.PATIENTS"]);
    // Copies and writes record it too.
    for sql in [
        "CREATE TABLE scratch.public.t AS SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "INSERT INTO scratch.public.t SELECT * FROM TABLE(RESULT_SCAN('q'))",
        "MERGE INTO scratch.public.t USING TABLE(RESULT_SCAN('q')) s ON t.id = s.id \
         WHEN MATCHED THEN UPDATE SET t.v = s.v",
    ] {
        assert_eq!(labels(&one(sql)), ["RESULT_SCAN"], "{sql}");
    }
}

#[test]
fn a_column_beside_an_opaque_source_is_not_claimed_by_the_one_named_table() {
    // `ssn` may be a column of the earlier result, not of BULK.PUBLIC.X.
    let st = one("SELECT ssn FROM bulk.public.x, TABLE(RESULT_SCAN('q'))");
    let columns: Vec<String> = st.columns.iter().map(ToString::to_string).collect();
    assert_eq!(columns, ["?.SSN"]);
    // Without it, the single table owns it as before.
    let st = one("SELECT ssn FROM bulk.public.x");
    let columns: Vec<String> = st.columns.iter().map(ToString::to_string).collect();
    assert_eq!(columns, ["BULK.PUBLIC.X.SSN"]);
}

#[test]
fn table_functions_are_opaque_unless_they_only_compute_from_their_arguments() {
    for (sql, label) in [
        ("SELECT * FROM my_udtf(1)", "TABLE(MY_UDTF)"),
        ("SELECT * FROM TABLE(my_udtf(1))", "TABLE(MY_UDTF)"),
        (
            "SELECT * FROM TABLE(my_db.s.my_udtf(1))",
            "TABLE(MY_DB.S.MY_UDTF)",
        ),
        (
            "SELECT query_text FROM TABLE(INFORMATION_SCHEMA.QUERY_HISTORY())",
            "TABLE(INFORMATION_SCHEMA.QUERY_HISTORY)",
        ),
        (
            "SELECT * FROM TABLE(INFER_SCHEMA(location => '@st', file_format => 'f'))",
            "TABLE(INFER_SCHEMA)",
        ),
        (
            "SELECT * FROM TABLE(TO_QUERY('SELECT 1'))",
            "TABLE(TO_QUERY)",
        ),
        // A qualified or quoted name is not the built-in.
        (
            "SELECT * FROM TABLE(clinical.ehr.flatten(input => 1))",
            "TABLE(CLINICAL.EHR.FLATTEN)",
        ),
        (
            r#"SELECT * FROM TABLE("GENERATOR"(ROWCOUNT => 1))"#,
            "TABLE(GENERATOR)",
        ),
        (
            "SELECT f.* FROM patients p, LATERAL my_udtf(p.id) f",
            "TABLE(MY_UDTF)",
        ),
    ] {
        let st = one(sql);
        assert_eq!(labels(&st), [label], "{sql}");
    }
    for sql in [
        "SELECT SEQ4() FROM TABLE(GENERATOR(ROWCOUNT => 10))",
        "SELECT UNIFORM(1, 10, RANDOM()) FROM TABLE(generator(rowcount => 5, timelimit => 1))",
        "SELECT value FROM TABLE(FLATTEN(input => PARSE_JSON('[1, 2]')))",
        "SELECT f.value FROM patients p, TABLE(FLATTEN(input => p.notes)) f",
        "SELECT f.value FROM patients p, LATERAL FLATTEN(input => p.notes) f",
        "SELECT * FROM TABLE(SPLIT_TO_TABLE('a,b', ','))",
        "SELECT * FROM TABLE(STRTOK_SPLIT_TO_TABLE('a b', ' '))",
    ] {
        let st = one(sql);
        assert!(st.opaque_sources.is_empty(), "{sql}: {:?}", labels(&st));
        assert!(!st.unresolved_bindings, "{sql}");
    }
    // What a pure table function's arguments read is still read.
    let st =
        one("SELECT f.value FROM TABLE(FLATTEN(input => (SELECT ARRAY_AGG(ssn) FROM patients))) f");
    assert!(st.opaque_sources.is_empty());
    assert_eq!(tables(&st), ["CLINICAL.EHR.PATIENTS"]);
    // …and an opaque function's arguments too.
    let st = one("SELECT * FROM TABLE(my_udtf((SELECT MAX(id) FROM patients)))");
    assert_eq!(labels(&st), ["TABLE(MY_UDTF)"]);
    assert_eq!(tables(&st), ["CLINICAL.EHR.PATIENTS"]);
}

#[test]
fn table_of_a_name_is_that_table_and_of_a_variable_is_unresolved() {
    let st = one("SELECT ssn FROM TABLE('clinical.ehr.patients')");
    assert!(st.opaque_sources.is_empty());
    assert_eq!(tables(&st), ["CLINICAL.EHR.PATIENTS"]);
    for sql in ["SELECT * FROM TABLE($t)", "SELECT * FROM TABLE(?)"] {
        let st = one(sql);
        assert!(st.unresolved_bindings, "{sql}: {st:?}");
    }
}

#[test]
fn stage_reads_in_from_are_opaque_sources_and_loads() {
    for (sql, stage) in [
        ("SELECT $1 FROM @my_stage", "@my_stage"),
        ("SELECT $1, $2 FROM @~/file.csv", "@~/file.csv"),
        ("SELECT $1 FROM @%patients", "@%patients"),
        (
            "SELECT t.$1 FROM @db.sch.st/path/ (file_format => 'f', pattern => '.*') t",
            "@db.sch.st/path/",
        ),
        (
            "SELECT * FROM patients WHERE id IN (SELECT $1 FROM @my_stage)",
            "@my_stage",
        ),
    ] {
        let st = one(sql);
        assert_eq!(
            st.opaque_sources,
            BTreeSet::from([OpaqueSource::Stage {
                stage: stage.into()
            }]),
            "{sql}"
        );
        assert_eq!(
            st.stage_ops
                .iter()
                .map(|o| (o.op, o.stage.as_str()))
                .collect::<Vec<_>>(),
            [(tollgate_policy::StageOpKind::Load, stage)],
            "{sql}"
        );
    }
    // `COPY INTO <table> FROM @stage` is a load statement, not a read of an opaque source.
    let st = one("COPY INTO t FROM @st/path/");
    assert!(st.opaque_sources.is_empty());
}

// --- The end-to-end policy -------------------------------------------------------------------

#[test]
fn result_scan_is_denied_by_default_naming_why_and_what_to_do() {
    let p = masking();
    for sql in [
        "SELECT * FROM TABLE(RESULT_SCAN('01b2c3d4-0000-1111-0000-00000000abcd'))",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID(-2))) r",
    ] {
        for who in ["agent1", "capped", "bytecapped", "recorded", "someone"] {
            let d = expect(&p, who, sql, "deny", "default:no_rule_matched");
            assert_eq!(
                reason(&d),
                "TABLE(RESULT_SCAN(…)) re-reads the result of an earlier query, which Tollgate \
                 may have masked, and cannot be traced to tables; no policy rule names it in \
                 match.sources (defaults.no_rule_matched); run the original query again \
                 instead of reading its result back",
                "{who}: {sql}"
            );
            assert!(!reason(&d).contains("01b2"));
            assert_eq!(d.statements[0].opaque_sources, ["RESULT_SCAN"]);
            assert!(d.statements[0].tables.is_empty());
        }
    }
}

#[test]
fn result_scan_in_a_subquery_cte_or_join_is_denied() {
    let p = masking();
    for sql in [
        "SELECT * FROM (SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID())))",
        "WITH r AS (SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))) SELECT * FROM r",
        "SELECT p.id FROM patients p JOIN TABLE(RESULT_SCAN(LAST_QUERY_ID())) r ON p.id = r.$1",
        "SELECT p.id FROM patients p WHERE p.id IN (SELECT $1 FROM TABLE(RESULT_SCAN('q')))",
    ] {
        let d = expect(&p, "agent1", sql, "deny", "default:no_rule_matched");
        assert!(reason(&d).contains("RESULT_SCAN"), "{sql}: {}", reason(&d));
    }
    for sql in [
        "SELECT x.* FROM bulk.public.events x JOIN TABLE(RESULT_SCAN(LAST_QUERY_ID())) r \
         ON x.id = r.$1",
        "WITH r AS (SELECT * FROM TABLE(RESULT_SCAN('q'))) \
         SELECT * FROM bulk.public.events WHERE id IN (SELECT $1 FROM r)",
    ] {
        let d = expect(&p, "capped", sql, "deny", "default:no_rule_matched");
        assert!(reason(&d).contains("RESULT_SCAN"), "{sql}: {}", reason(&d));
    }
}

#[test]
fn an_allow_rule_by_table_glob_no_longer_matches_result_scan_vacuously() {
    let p = masking();
    // The same rule still allows its tables and table-less selects.
    expect(
        &p,
        "capped",
        "SELECT * FROM bulk.public.events",
        "allow",
        "capped-bulk",
    );
    expect(
        &p,
        "capped",
        "SELECT CURRENT_DATE()",
        "allow",
        "capped-bulk",
    );
    expect(
        &p,
        "capped",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "deny",
        "default:no_rule_matched",
    );
    let p = Policy::compile(
        r#"
version: 1
rules:
  - id: bulk
    match: { statements: [select], tables: ["BULK.PUBLIC.*"] }
    action: allow
  - id: anything
    match: { statements: [select] }
    action: allow
"#,
        "vacuous.yaml",
    )
    .unwrap();
    for sql in [
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "SELECT * FROM bulk.public.events, TABLE(RESULT_SCAN('q'))",
        "SELECT * FROM TABLE(my_udtf())",
        "SELECT $1 FROM @my_stage",
    ] {
        expect(&p, "u", sql, "deny", "default:no_rule_matched");
    }
}

#[test]
fn generator_queries_are_still_allowed_where_table_less_selects_are() {
    let p = masking();
    let sql = "SELECT SEQ4(), UNIFORM(1, 10, RANDOM()) FROM TABLE(GENERATOR(ROWCOUNT => 10))";
    expect(&p, "capped", sql, "allow", "capped-bulk");
    expect(&p, "someone", sql, "allow", "plain-reads");
    // Under the mask rule it cannot touch classified data: masked by the result metadata.
    let d = expect(&p, "agent1", sql, "mask", "analysts-masked");
    let Action::Mask { plan } = &d.action else {
        unreachable!()
    };
    assert_eq!(plan.fallback, None);
}

#[test]
fn flatten_over_a_classified_column_behaves_as_before() {
    let p = masking();
    for sql in [
        "SELECT f.value FROM patient_contacts c, TABLE(FLATTEN(input => c.profile)) f",
        "SELECT f.value FROM patient_contacts c, LATERAL FLATTEN(input => c.profile) f",
    ] {
        let d = expect(&p, "agent1", sql, "deny", "analysts-masked");
        assert!(
            reason(&d)
                .starts_with("column lineage of this statement cannot be traced (table function"),
            "{sql}: {}",
            reason(&d)
        );
        assert!(d.statements[0].opaque_sources.is_empty());
        assert_eq!(
            d.statements[0]
                .tables
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["CLINICAL.EHR.PATIENT_CONTACTS"]
        );
    }
    // Over an unclassified table it is allowed where its table is.
    expect(
        &p,
        "capped",
        "SELECT f.value FROM bulk.public.events e, TABLE(FLATTEN(input => e.tags)) f",
        "allow",
        "capped-bulk",
    );
}

#[test]
fn stage_reads_are_denied_by_default_without_naming_files() {
    let p = masking();
    let d = expect(
        &p,
        "capped",
        "SELECT $1 FROM @my_stage",
        "deny",
        "default:no_rule_matched",
    );
    assert_eq!(
        reason(&d),
        "reading stage @my_stage directly returns files that cannot be traced to tables; no \
         policy rule names it in match.sources (defaults.no_rule_matched); load the files \
         into a table (COPY INTO) and query the table"
    );
    let d = expect(
        &p,
        "agent1",
        "SELECT $1, $2 FROM @~/patients_2024.csv",
        "deny",
        "default:no_rule_matched",
    );
    assert!(reason(&d).contains("stage @~ "), "{}", reason(&d));
    assert!(!reason(&d).contains("patients_2024"), "{}", reason(&d));
    assert_eq!(d.statements[0].opaque_sources, ["@~/patients_2024.csv"]);
}

#[test]
fn table_functions_are_denied_by_default() {
    let p = masking();
    let d = expect(
        &p,
        "agent1",
        "SELECT query_text FROM TABLE(INFORMATION_SCHEMA.QUERY_HISTORY())",
        "deny",
        "default:no_rule_matched",
    );
    assert_eq!(
        reason(&d),
        "table function INFORMATION_SCHEMA.QUERY_HISTORY returns data that cannot be traced to \
         tables; no policy rule names it in match.sources (defaults.no_rule_matched); query \
         the tables it reads directly"
    );
    let d = expect(
        &p,
        "capped",
        "SELECT * FROM my_udtf(1), TABLE(RESULT_SCAN('q')), @st",
        "deny",
        "default:no_rule_matched",
    );
    assert!(
        reason(&d).starts_with("TABLE(RESULT_SCAN(…)) re-reads")
            && reason(&d).contains("(and 2 more such sources)"),
        "{}",
        reason(&d)
    );
}

// --- Rules that name opaque sources ------------------------------------------------------------

const NAMING: &str = r#"
version: 1
defaults:
  unknown_lineage: __LINEAGE__
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.SSN"]
    tags: [phi.ssn]
rules:
  - id: no-udtf-for-guests
    match: { snowflake: { user: [guest] }, sources: ["TABLE(*)"] }
    action: deny
    reason: "guests may not call table functions"
  - id: guests-no-clinical
    match: { snowflake: { user: [guest] }, tables: ["CLINICAL.*.*"] }
    action: deny
    reason: "guests may not read clinical data"
  - id: guests-no-ssn
    match: { snowflake: { user: [guest2] }, tags: [phi.ssn] }
    action: require_approval
    reason: "ssn reads need approval"
  - id: loader
    match:
      snowflake: { user: [loader] }
      statements: [select, create_table_as_select]
      tables: ["SCRATCH.*.*"]
      sources: ["@LANDING/*", "RESULT_SCAN"]
    action: allow
  - id: masked-analyst
    match:
      snowflake: { user: [analyst] }
      statements: [select]
      tables: ["CLINICAL.EHR.*"]
      sources: [result_scan]
    action: mask
    mask:
      - { tags: [phi.ssn], method: redact }
  - id: guest-reads
    match: { snowflake: { user: [guest, guest2, reader] }, statements: [select], sources: ["*"] }
    action: allow
"#;

fn naming(lineage: &str) -> Policy {
    Policy::compile(&NAMING.replace("__LINEAGE__", lineage), "naming.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_permissive_rule_covers_only_the_sources_it_names() {
    let p = naming("deny");
    expect(
        &p,
        "loader",
        "SELECT $1 FROM @landing/day1/",
        "allow",
        "loader",
    );
    expect(
        &p,
        "loader",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "allow",
        "loader",
    );
    expect(
        &p,
        "loader",
        "SELECT s.$1 FROM @landing/x/ s JOIN scratch.public.t t ON t.id = s.$1",
        "allow",
        "loader",
    );
    // Another stage, a table function, or a table outside `tables` is not covered.
    for sql in [
        "SELECT $1 FROM @other/x/",
        "SELECT * FROM TABLE(RESULT_SCAN('q')), TABLE(my_udtf())",
        "SELECT * FROM TABLE(RESULT_SCAN('q')) r JOIN bulk.public.t b ON b.id = r.$1",
    ] {
        expect(&p, "loader", sql, "deny", "default:no_rule_matched");
    }
    // `sources: ["*"]` covers every opaque source.
    expect(
        &p,
        "reader",
        "SELECT $1 FROM @anything",
        "allow",
        "guest-reads",
    );
    expect(
        &p,
        "reader",
        "SELECT * FROM TABLE(RESULT_SCAN('q'))",
        "allow",
        "guest-reads",
    );
}

#[test]
fn a_restrictive_rule_counts_an_opaque_source_as_a_match() {
    let p = naming("deny");
    let d = expect(
        &p,
        "guest",
        "SELECT * FROM TABLE(my_udtf())",
        "deny",
        "no-udtf-for-guests",
    );
    assert_eq!(reason(&d), "guests may not call table functions");
    // `TABLE(*)` does not name RESULT_SCAN, but the result may hold clinical rows.
    expect(
        &p,
        "guest",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "deny",
        "guests-no-clinical",
    );
    expect(&p, "guest", "SELECT 1", "allow", "guest-reads");
    expect(
        &p,
        "guest2",
        "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "require_approval",
        "guests-no-ssn",
    );
    expect(
        &p,
        "guest2",
        "SELECT $1 FROM @st",
        "require_approval",
        "guests-no-ssn",
    );
    expect(
        &p,
        "guest2",
        "SELECT SEQ4() FROM TABLE(GENERATOR(ROWCOUNT => 3))",
        "allow",
        "guest-reads",
    );
}

#[test]
fn a_mask_rule_naming_result_scan_falls_to_unknown_lineage() {
    let sql = "SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))";
    let d = expect(&naming("deny"), "analyst", sql, "deny", "masked-analyst");
    assert_eq!(
        reason(&d),
        "column lineage of this statement cannot be traced (TABLE(RESULT_SCAN(…)) re-reads the \
         result of an earlier query, which Tollgate may have masked, and cannot be traced to \
         tables); the policy denies it (defaults.unknown_lineage)"
    );
    for (lineage, fallback) in [
        ("mask_all", Fallback::MaskAll),
        ("detect", Fallback::Detect),
    ] {
        let d = expect(&naming(lineage), "analyst", sql, "mask", "masked-analyst");
        let Action::Mask { plan } = &d.action else {
            unreachable!()
        };
        assert_eq!(plan.fallback, Some(fallback), "{lineage}");
        assert!(matches!(
            plan.lineage,
            Some(StatementLineage::Unknown { .. })
        ));
    }
}

#[test]
fn copying_an_opaque_source_counts_as_copying_classified_data() {
    let p = naming("deny");
    let d = expect(
        &p,
        "loader",
        "CREATE TABLE scratch.public.t AS SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "deny",
        "loader",
    );
    assert_eq!(
        reason(&d),
        "TABLE(RESULT_SCAN(…)) re-reads the result of an earlier query, which Tollgate may have \
         masked, and cannot be traced to tables; copying it into another table or location \
         would escape masking (defaults.classified_copies)"
    );
    let allow_copies = NAMING.replace("__LINEAGE__", "deny\n  classified_copies: allow");
    let p = Policy::compile(&allow_copies, "naming.yaml").unwrap();
    expect(
        &p,
        "loader",
        "CREATE TABLE scratch.public.t AS SELECT * FROM TABLE(RESULT_SCAN(LAST_QUERY_ID()))",
        "allow",
        "loader",
    );
}

#[test]
fn sources_patterns_are_validated() {
    let bad = r#"
version: 1
rules:
  - id: r
    match: { sources: ["QUERY_HISTORY", "TABLE()", "@", "RESULT_SCAN", "table(f*)", "@st/*", "*"] }
    action: allow
  - id: e
    match: { sources: [] }
    action: allow
"#;
    let err = Policy::compile(bad, "bad.yaml").unwrap_err().to_string();
    for field in [
        "rules[0].match.sources[0]: `QUERY_HISTORY` names no kind of source",
        "rules[0].match.sources[1]: `TABLE()` names no kind of source",
        "rules[0].match.sources[2]: `@` names no kind of source",
        "rules[1].match.sources: an empty list matches nothing",
    ] {
        assert!(err.contains(field), "{field}\n{err}");
    }
    assert!(!err.contains("sources[3]"), "{err}");
    assert!(!err.contains("sources[4]"), "{err}");
    assert!(!err.contains("sources[5]"), "{err}");
    assert!(!err.contains("sources[6]"), "{err}");
}

#[test]
fn explain_output_lists_opaque_sources_only_when_there_are_some() {
    let p = masking();
    let d = decide(&p, &user("agent1"), "SELECT * FROM TABLE(RESULT_SCAN('q'))");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["statements"][0]["opaque_sources"][0], "RESULT_SCAN");
    let d = decide(&p, &user("agent1"), "SELECT id FROM patients");
    let json = serde_json::to_value(&d).unwrap();
    assert!(json["statements"][0].get("opaque_sources").is_none());
    let a = analyze("SELECT $1 FROM @st", &ctx()).unwrap();
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json["statements"][0]["opaque_sources"][0],
        serde_json::json!({"kind": "stage", "stage": "@st"})
    );
}
