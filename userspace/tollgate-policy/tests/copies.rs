//! `defaults.classified_copies`: statements that copy classified data into another table or
//! location (CTAS, INSERT … SELECT, MERGE, CREATE VIEW, COPY INTO @stage, UPDATE … SET from
//! another table) escape masking, so an allow or mask decision on them is turned into a deny.

use tollgate_policy::{analyze, Action, Decision, EvalInput, Identity, NameContext, Policy};

const POLICY: &str = r#"
version: 1
defaults:
  classified_copies: __COPIES__
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.SSN"]
    tags: [phi.ssn]
  - columns: ["CLINICAL.EHR.PATIENTS.NAME"]
    tags: [phi.name]
  - columns: ["CLINICAL.EHR.PATIENTS.DOB", "CLINICAL.EHR.VISITS.NOTE"]
    tags: [phi.other]
rules:
  - id: merges-need-approval
    match:
      statements: [merge]
    action: require_approval
    reason: "merges need a human approval"
  - id: masked-views
    match:
      statements: [create_view]
    action: mask
    mask:
      - { tags: [phi.ssn, phi.name], method: redact }
  - id: allow-everything-else
    action: allow
"#;

fn policy(copies: &str) -> Policy {
    Policy::compile(&POLICY.replace("__COPIES__", copies), "copies.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn decide(policy: &Policy, sql: &str) -> Decision {
    let analysis = analyze(sql, &NameContext::new("CLINICAL", "EHR"));
    policy.evaluate(&EvalInput {
        identity: &Identity::default(),
        analysis: analysis.as_ref(),
    })
}

/// Asserts a `defaults.classified_copies` denial by `rule` whose reason names `named`, and
/// returns the reason.
#[track_caller]
fn denied_copy(policy: &Policy, sql: &str, rule: &str, named: &str) -> String {
    let d = decide(policy, sql);
    let Action::Deny { reason } = &d.action else {
        panic!("{sql}: expected a deny, got {d:?}")
    };
    assert_eq!(d.rule_id, rule, "{sql}: {d:?}");
    assert!(
        reason.starts_with("copying classified data (")
            && reason.ends_with(
                ") into another table or location would escape masking \
                 (defaults.classified_copies)"
            )
            && reason.contains(named),
        "{sql}: {reason}"
    );
    reason.clone()
}

#[track_caller]
fn expect(policy: &Policy, sql: &str, action: &str, rule: &str) {
    let d = decide(policy, sql);
    assert_eq!(
        (d.action.name(), d.rule_id.as_str()),
        (action, rule),
        "{sql}: {d:?}"
    );
}

#[test]
fn ctas_over_a_classified_table_is_denied_by_default_and_allowed_when_configured() {
    let sql = "CREATE TABLE scratch.p AS SELECT * FROM patients";
    denied_copy(
        &policy("deny"),
        sql,
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.*",
    );
    expect(&policy("allow"), sql, "allow", "allow-everything-else");
    // Left out, the default is deny.
    let p = Policy::compile(
        &POLICY.replace("  classified_copies: __COPIES__\n", ""),
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    denied_copy(&p, sql, "allow-everything-else", "CLINICAL.EHR.PATIENTS");
    // CLONE copies the whole table; no column is named, the table is.
    denied_copy(
        &policy("deny"),
        "CREATE TABLE scratch.p CLONE patients",
        "allow-everything-else",
        "(CLINICAL.EHR.PATIENTS)",
    );
    // A CTE does not hide the read.
    denied_copy(
        &policy("deny"),
        "CREATE TABLE scratch.p AS WITH c AS (SELECT ssn FROM patients) SELECT * FROM c",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.SSN",
    );
}

#[test]
fn insert_select_of_a_classified_column_is_denied_without_literals_in_the_reason() {
    let p = policy("deny");
    let reason = denied_copy(
        &p,
        "INSERT INTO scratch.t SELECT ssn, name FROM patients WHERE city = 'Springfield' AND id > 4242",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.NAME, CLINICAL.EHR.PATIENTS.SSN",
    );
    assert!(
        !reason.contains("Springfield") && !reason.contains("4242"),
        "{reason}"
    );
    // The column is named once, not again as its table.
    assert!(!reason.contains("PATIENTS)"), "{reason}");
    expect(
        &policy("allow"),
        "INSERT INTO scratch.t SELECT ssn FROM patients",
        "allow",
        "allow-everything-else",
    );
    // Writing into a classified table from an unclassified one copies nothing out.
    expect(
        &p,
        "INSERT INTO patients (ssn, name) SELECT a, b FROM staging.raw",
        "allow",
        "allow-everything-else",
    );
}

#[test]
fn create_view_over_a_phi_table_is_denied_even_when_masked() {
    let p = policy("deny");
    denied_copy(
        &p,
        "CREATE VIEW scratch.v AS SELECT name FROM patients",
        "masked-views",
        "CLINICAL.EHR.PATIENTS.NAME",
    );
    // Any column of a table that may hold classified columns: the view's definition is an
    // unclassified copy of it.
    denied_copy(
        &p,
        "CREATE OR REPLACE VIEW scratch.v AS SELECT id FROM patients",
        "masked-views",
        "(CLINICAL.EHR.PATIENTS)",
    );
}

#[test]
fn unloads_of_a_phi_table_to_a_stage_are_denied() {
    let p = policy("deny");
    let reason = denied_copy(
        &p,
        "COPY INTO @exports/p/ FROM patients",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS",
    );
    assert!(!reason.contains("exports"), "{reason}");
    denied_copy(
        &p,
        "COPY INTO 's3://bucket/x' FROM (SELECT ssn FROM patients)",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.SSN",
    );
    expect(
        &policy("allow"),
        "COPY INTO @exports/p/ FROM patients",
        "allow",
        "allow-everything-else",
    );
}

#[test]
fn update_from_a_classified_column_of_another_table_is_denied() {
    let p = policy("deny");
    denied_copy(
        &p,
        "UPDATE scratch.t SET x = p.ssn FROM patients p WHERE scratch.t.id = p.id",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.SSN",
    );
    denied_copy(
        &p,
        "UPDATE scratch.t SET x = (SELECT name FROM patients WHERE id = 7)",
        "allow-everything-else",
        "CLINICAL.EHR.PATIENTS.NAME",
    );
    // Reading PHI only to pick rows, or rewriting a classified column in place, copies
    // nothing into another table.
    expect(
        &p,
        "UPDATE scratch.t SET flag = 1 FROM patients p WHERE scratch.t.id = p.id AND p.ssn = ?",
        "allow",
        "allow-everything-else",
    );
    expect(
        &p,
        "UPDATE patients SET name = UPPER(name) WHERE id = ?",
        "allow",
        "allow-everything-else",
    );
}

#[test]
fn copies_without_classified_data_are_unaffected() {
    let p = policy("deny");
    for sql in [
        "CREATE TABLE scratch.p AS SELECT * FROM ref.providers",
        "INSERT INTO scratch.t SELECT a, b FROM staging.raw",
        "COPY INTO @exports/r/ FROM ref.providers",
        "UPDATE scratch.t SET x = r.code FROM ref.codes r WHERE scratch.t.id = r.id",
        // Not copies: a plain read, a VALUES insert.
        "SELECT ssn FROM patients",
        "INSERT INTO scratch.t VALUES (1, 2)",
    ] {
        expect(&p, sql, "allow", "allow-everything-else");
    }
    expect(
        &p,
        "CREATE VIEW scratch.v AS SELECT * FROM ref.providers",
        "mask",
        "masked-views",
    );
}

#[test]
fn a_copy_held_for_approval_stays_held_for_approval() {
    let p = policy("deny");
    expect(
        &p,
        "MERGE INTO scratch.t USING patients p ON scratch.t.id = p.id \
         WHEN MATCHED THEN UPDATE SET scratch.t.ssn = p.ssn",
        "require_approval",
        "merges-need-approval",
    );
    // An allowed MERGE from PHI (a policy whose merge rule allows) is denied.
    let allowing = Policy::compile(
        &POLICY
            .replace("__COPIES__", "deny")
            .replace("action: require_approval", "action: allow")
            .replace("    reason: \"merges need a human approval\"\n", ""),
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    denied_copy(
        &allowing,
        "MERGE INTO scratch.t USING patients p ON scratch.t.id = p.id \
         WHEN NOT MATCHED THEN INSERT (id, ssn) VALUES (p.id, p.ssn)",
        "merges-need-approval",
        "CLINICAL.EHR.PATIENTS.SSN",
    );
    // Merging unclassified data into a PHI table: the target's own columns are not copied.
    expect(
        &allowing,
        "MERGE INTO patients t USING staging.raw s ON t.id = s.id \
         WHEN MATCHED THEN UPDATE SET t.name = COALESCE(s.full_name, t.name)",
        "allow",
        "merges-need-approval",
    );
}

#[test]
fn each_statement_of_a_text_is_checked_and_the_strictest_wins() {
    let p = policy("deny");
    let d = decide(
        &p,
        "SELECT 1; CREATE TABLE scratch.p AS SELECT ssn FROM patients; SELECT 2",
    );
    assert_eq!(
        (d.action.name(), d.rule_id.as_str()),
        ("deny", "allow-everything-else"),
        "{d:?}"
    );
    assert_eq!(
        d.statements
            .iter()
            .map(|s| s.action.name())
            .collect::<Vec<_>>(),
        ["allow", "deny", "allow"]
    );
    // EXECUTE IMMEDIATE text is decided like the rest.
    let d = decide(
        &p,
        "EXECUTE IMMEDIATE 'INSERT INTO scratch.t SELECT name FROM patients'",
    );
    assert_eq!(d.action.name(), "deny", "{d:?}");
    let d = decide(
        &policy("allow"),
        "SELECT 1; CREATE TABLE scratch.p AS SELECT ssn FROM patients",
    );
    assert_eq!(d.action, Action::Allow, "{d:?}");
}

#[test]
fn a_reason_names_at_most_three_columns_or_tables() {
    let reason = denied_copy(
        &policy("deny"),
        "INSERT INTO scratch.t SELECT p.ssn, p.name, p.dob, v.note \
         FROM patients p JOIN visits v ON p.id = v.pid",
        "allow-everything-else",
        ", …)",
    );
    let list = &reason[reason.find('(').unwrap() + 1..reason.find(')').unwrap()];
    assert_eq!(
        list,
        "CLINICAL.EHR.PATIENTS.DOB, CLINICAL.EHR.PATIENTS.NAME, CLINICAL.EHR.PATIENTS.SSN, …"
    );
}
