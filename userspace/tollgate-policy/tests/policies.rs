//! Every shipped policy compiles, and the HIPAA starter decides representative statements as
//! its comments say.

use std::path::{Path, PathBuf};

use tollgate_policy::{
    analyze, load, Action, Decision, EvalInput, Identity, NameContext, Policy, ProcessIdentity,
    SnowflakeIdentity,
};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

#[test]
fn every_shipped_policy_compiles() {
    let mut seen = 0;
    for entry in std::fs::read_dir(policies_dir()).expect("policies/ exists") {
        let path = entry.expect("dir entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            let policy = load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(policy.rule_count() > 0, "{} has no rules", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 1, "no policy files found");
}

fn hipaa() -> Policy {
    load(&policies_dir().join("hipaa.yaml")).expect("hipaa.yaml compiles")
}

fn role(role: &str) -> Identity {
    Identity {
        snowflake: SnowflakeIdentity {
            account: Some("ACME-CLINIC".into()),
            user: Some("AGENT_SVC".into()),
            role: Some(role.into()),
            ..SnowflakeIdentity::default()
        },
        process: Some(ProcessIdentity {
            comm: "python3".into(),
            uid: 1000,
            ..ProcessIdentity::default()
        }),
        ..Identity::default()
    }
}

fn decide(policy: &Policy, identity: &Identity, sql: &str) -> Decision {
    let ctx = NameContext::new("CLINICAL", "PUBLIC");
    let analysis = analyze(sql, &ctx);
    policy.evaluate(&EvalInput {
        identity,
        analysis: analysis.as_ref(),
    })
}

#[track_caller]
fn expect(policy: &Policy, identity: &Identity, sql: &str, action: &str, rule: &str) {
    let d = decide(policy, identity, sql);
    assert_eq!(
        (d.action.name(), d.rule_id.as_str()),
        (action, rule),
        "{sql}\n{}",
        serde_json::to_string_pretty(&d).unwrap()
    );
}

#[test]
fn stage_exfiltration_is_denied_for_everyone() {
    let p = hipaa();
    for r in ["CLINICIAN", "ANALYST", "DATA_ENGINEER", "ACCOUNTADMIN"] {
        let id = role(r);
        expect(
            &p,
            &id,
            "COPY INTO @exports/p FROM patients",
            "deny",
            "deny-stage-exfiltration",
        );
        expect(
            &p,
            &id,
            "copy into 's3://bucket/x' from (select ssn from patients)",
            "deny",
            "deny-stage-exfiltration",
        );
        expect(
            &p,
            &id,
            "GET @exports/p file:///tmp/",
            "deny",
            "deny-stage-exfiltration",
        );
        expect(
            &p,
            &id,
            "PUT file:///tmp/x.csv @~/in",
            "deny",
            "deny-stage-exfiltration",
        );
        expect(
            &p,
            &id,
            "CREATE STAGE ex URL='s3://bucket/'",
            "deny",
            "deny-stage-exfiltration",
        );
    }
}

#[test]
fn phi_copies_are_denied() {
    let p = hipaa();
    let id = role("DATA_ENGINEER");
    expect(
        &p,
        &id,
        "CREATE TABLE scratch.p AS SELECT * FROM patients",
        "deny",
        "deny-phi-copies",
    );
    expect(
        &p,
        &id,
        "CREATE TABLE scratch.p CLONE patients",
        "deny",
        "deny-phi-copies",
    );
    expect(
        &p,
        &id,
        "INSERT INTO analytics.t SELECT icd10_code FROM ehr.diagnoses",
        "deny",
        "deny-phi-copies",
    );
    expect(
        &p,
        &id,
        "CREATE VIEW analytics.v AS SELECT * FROM billing.claims",
        "deny",
        "deny-phi-copies",
    );
    expect(
        &p,
        &id,
        "DROP TABLE patients",
        "deny",
        "deny-phi-destruction",
    );
    expect(
        &p,
        &id,
        "TRUNCATE TABLE ehr.encounters",
        "deny",
        "deny-phi-destruction",
    );
}

#[test]
fn writes_need_approval() {
    let p = hipaa();
    let id = role("DATA_ENGINEER");
    expect(
        &p,
        &id,
        "INSERT INTO analytics.daily VALUES (1, 2)",
        "require_approval",
        "engineers-writes-need-approval",
    );
    expect(
        &p,
        &id,
        "UPDATE ehr.encounters SET status = 'closed' WHERE id = ?",
        "require_approval",
        "engineers-writes-need-approval",
    );
    expect(
        &p,
        &id,
        "DELETE FROM analytics.daily WHERE d < '2020-01-01'",
        "require_approval",
        "engineers-writes-need-approval",
    );
    expect(
        &p,
        &id,
        "CALL analytics.refresh_marts()",
        "require_approval",
        "engineers-writes-need-approval",
    );
    // Analysts have no write rule: default deny.
    expect(
        &p,
        &role("ANALYST"),
        "INSERT INTO analytics.daily VALUES (1)",
        "deny",
        "default:no_rule_matched",
    );
}

#[test]
fn reads_by_role() {
    let p = hipaa();
    let d = decide(
        &p,
        &role("CLINICIAN"),
        "SELECT name, dob FROM patients WHERE mrn = ?",
    );
    assert_eq!(
        (d.action.name(), d.rule_id.as_str(), d.max_rows),
        ("allow", "clinicians-read-phi", Some(500))
    );
    // Clinicians do not read billing through this rule; billing is not in their list.
    expect(
        &p,
        &role("CLINICIAN"),
        "SELECT member_id FROM billing.claims",
        "deny",
        "default:no_rule_matched",
    );

    expect(
        &p,
        &role("ANALYST"),
        "SELECT * FROM analytics.readmissions",
        "allow",
        "analysts-read-deidentified",
    );
    let d = decide(&p, &role("ANALYST"), "SELECT ssn, name FROM patients");
    assert_eq!(d.rule_id, "analysts-masked-phi");
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert!(plan
        .directives
        .iter()
        .any(|m| m.tags == ["phi.ssn"] && m.keep_last == Some(4)));
    assert_eq!(d.statements[0].tags, vec!["phi.name", "phi.ssn"]);
    // The plan carries the lineage; result columns resolve to the directives.
    let cols = [
        tollgate_policy::ResultColumnMeta {
            name: "SSN",
            ..Default::default()
        },
        tollgate_policy::ResultColumnMeta {
            name: "NAME",
            ..Default::default()
        },
    ];
    let actions = p.resolve_result_columns(&d.rule_id, plan, &cols);
    assert!(
        matches!(
            &actions[..],
            [
                tollgate_policy::ColumnAction::Mask {
                    method: tollgate_policy::MaskMethod::Partial,
                    keep_last: Some(4),
                    ..
                },
                tollgate_policy::ColumnAction::Mask {
                    method: tollgate_policy::MaskMethod::Redact,
                    ..
                }
            ]
        ),
        "{actions:?}"
    );
    // Filtering on a masked column would reveal it; untraceable lineage is refused.
    expect(
        &p,
        &role("ANALYST"),
        "SELECT name FROM patients WHERE ssn = ?",
        "deny",
        "analysts-masked-phi",
    );
    expect(
        &p,
        &role("ANALYST"),
        "SELECT f.value FROM patients p, LATERAL FLATTEN(input => p.phones) f",
        "deny",
        "analysts-masked-phi",
    );
    expect(
        &p,
        &role("ANALYST"),
        "SELECT p.mrn, e.admit_date FROM patients p JOIN ehr.encounters e ON p.mrn = e.mrn",
        "mask",
        "analysts-masked-phi",
    );

    let agent = role("AGENT_TRIAGE");
    expect(
        &p,
        &agent,
        "SELECT * FROM ehr.diagnoses",
        "require_approval",
        "agents-phi-reads-need-approval",
    );
    expect(
        &p,
        &agent,
        "SELECT p.ssn FROM patients p JOIN ehr.encounters e ON p.id = e.patient_id",
        "require_approval",
        "agents-phi-reads-need-approval",
    );
    expect(
        &p,
        &agent,
        "SELECT count(*) FROM ehr.encounters",
        "allow",
        "known-roles-read-non-phi",
    );
    expect(
        &p,
        &agent,
        "SELECT npi, specialty FROM ref.providers",
        "allow",
        "known-roles-read-non-phi",
    );
    // A subquery hiding a PHI read still counts.
    expect(
        &p,
        &agent,
        "SELECT count(*) FROM ref.providers WHERE npi IN (SELECT ssn FROM patients)",
        "require_approval",
        "agents-phi-reads-need-approval",
    );
}

#[test]
fn unknown_identities_and_unknown_sql_are_denied() {
    let p = hipaa();
    expect(
        &p,
        &role("PUBLIC"),
        "SELECT npi FROM ref.providers",
        "deny",
        "default:no_rule_matched",
    );
    expect(
        &p,
        &Identity::default(),
        "SHOW TABLES",
        "deny",
        "default:no_rule_matched",
    );
    expect(
        &p,
        &role("CLINICIAN"),
        "SELEC name FROM patients",
        "deny",
        "default:unparseable_sql",
    );
    expect(
        &p,
        &role("CLINICIAN"),
        "SELECT * FROM IDENTIFIER(?)",
        "deny",
        "default:unresolved_bindings",
    );
    expect(
        &p,
        &role("CLINICIAN"),
        "CREATE SCHEMA clinical.tmp",
        "deny",
        "default:unknown_statement",
    );
}

#[test]
fn metadata_and_session() {
    let p = hipaa();
    let id = role("ANALYST");
    expect(
        &p,
        &id,
        "SHOW TABLES IN SCHEMA clinical.ehr",
        "allow",
        "metadata-for-known-roles",
    );
    expect(
        &p,
        &id,
        "DESCRIBE TABLE patients",
        "allow",
        "metadata-for-known-roles",
    );
    expect(
        &p,
        &id,
        "USE SCHEMA clinical.analytics",
        "allow",
        "metadata-for-known-roles",
    );
    expect(
        &p,
        &id,
        "USE ROLE ACCOUNTADMIN",
        "require_approval",
        "approve-role-switch",
    );
    expect(
        &p,
        &id,
        "GRANT SELECT ON TABLE patients TO ROLE analyst",
        "deny",
        "deny-grants",
    );
}

#[test]
fn multi_statement_text_is_as_strict_as_its_worst_statement() {
    let p = hipaa();
    let id = role("CLINICIAN");
    let d = decide(
        &p,
        &id,
        "SELECT name FROM patients; COPY INTO @x FROM patients; SELECT 1",
    );
    assert_eq!(
        (d.action.name(), d.rule_id.as_str()),
        ("deny", "deny-stage-exfiltration")
    );
    assert_eq!(d.statements.len(), 3);
    assert_eq!(d.statements[0].action, Action::Allow);
    // USE earlier in the text resolves later names: ANALYTICS.READMISSIONS, not PUBLIC.
    let d = decide(
        &p,
        &role("ANALYST"),
        "USE SCHEMA analytics; SELECT * FROM readmissions",
    );
    assert_eq!(d.action, Action::Allow);
    // On a tie the first statement names the rule; each statement keeps its own.
    assert_eq!(d.rule_id, "metadata-for-known-roles");
    assert_eq!(d.statements[1].rule_id, "analysts-read-deidentified");
    assert_eq!(
        d.statements[1].tables[0].to_string(),
        "CLINICAL.ANALYTICS.READMISSIONS"
    );
    assert_eq!(d.max_rows, Some(1_000_000));
    // EXECUTE IMMEDIATE text is analysed too.
    expect(
        &p,
        &id,
        "EXECUTE IMMEDIATE 'COPY INTO @x FROM patients'",
        "deny",
        "deny-stage-exfiltration",
    );
}

#[test]
fn hipaa_analyst_masking_through_the_safe_harbor_profile() {
    // analysts-masked-phi uses `profile: safe_harbor` with explicit SSN (partial) and MRN
    // (token) entries; every column resolves as it did with the explicit list.
    let p = hipaa();
    let sql = "SELECT ssn, name, mrn, dob, zip, email, phone, city FROM patients";
    let d = decide(&p, &role("ANALYST"), sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    let names = ["SSN", "NAME", "MRN", "DOB", "ZIP", "EMAIL", "PHONE", "CITY"];
    let cols: Vec<tollgate_policy::ResultColumnMeta<'_>> = names
        .iter()
        .map(|n| tollgate_policy::ResultColumnMeta {
            name: n,
            ..Default::default()
        })
        .collect();
    let got: Vec<String> = p
        .resolve_result_columns(&d.rule_id, plan, &cols)
        .iter()
        .map(|a| match a {
            tollgate_policy::ColumnAction::Mask {
                method,
                keep_last,
                rule_id,
                ..
            } => {
                assert_eq!(rule_id, "analysts-masked-phi");
                format!(
                    "{method:?}{}",
                    keep_last.map_or(String::new(), |k| k.to_string())
                )
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            "Partial4",
            "Redact",
            "Token",
            "Generalize",
            "Generalize",
            "Redact",
            "Redact",
            "Generalize"
        ]
    );
    let d = decide(
        &p,
        &role("ANALYST"),
        "SELECT e.admit_date, d.icd10_code FROM ehr.encounters e \
         JOIN ehr.diagnoses d ON e.id = d.encounter_id",
    );
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    let cols = [
        tollgate_policy::ResultColumnMeta {
            name: "ADMIT_DATE",
            ..Default::default()
        },
        tollgate_policy::ResultColumnMeta {
            name: "ICD10_CODE",
            ..Default::default()
        },
    ];
    let actions = p.resolve_result_columns(&d.rule_id, plan, &cols);
    assert!(
        matches!(
            &actions[..],
            [
                tollgate_policy::ColumnAction::Mask {
                    method: tollgate_policy::MaskMethod::Generalize,
                    ..
                },
                tollgate_policy::ColumnAction::Mask {
                    method: tollgate_policy::MaskMethod::Redact,
                    ..
                }
            ]
        ),
        "{actions:?}"
    );
}

#[test]
fn byte_caps_take_the_smallest_of_the_deciding_rules() {
    let p = Policy::compile(
        "version: 1
rules:
  - id: big
    match: { tables: [\"CLINICAL.PUBLIC.BIG\"] }
    action: allow
    max_bytes: 1 GiB
  - id: small
    match: { tables: [\"CLINICAL.PUBLIC.SMALL\"] }
    action: allow
    max_bytes: 2 MB
    max_rows: 10
  - id: rest
    action: allow
",
        "caps.yaml",
    )
    .expect("compiles");
    let id = role("ANALYST");
    let d = decide(&p, &id, "SELECT * FROM big");
    assert_eq!((d.max_bytes, d.max_rows), (Some(1 << 30), None));
    let d = decide(&p, &id, "SELECT * FROM big; SELECT * FROM small");
    assert_eq!((d.max_bytes, d.max_rows), (Some(2_000_000), Some(10)));
    assert_eq!(d.statements[0].max_bytes, Some(1 << 30));
    let d = decide(&p, &id, "SELECT * FROM other");
    assert_eq!((d.max_bytes, d.max_rows), (None, None));
}

#[test]
fn recording_takes_the_strictest_of_the_deciding_rules() {
    let p = Policy::compile(
        "version: 1
rules:
  - id: verbose
    match: { tables: [\"CLINICAL.PUBLIC.DEMO\"] }
    action: allow
    audit: { sql: full, results: masked, max_result_rows: 5 }
  - id: rest
    action: allow
",
        "record.yaml",
    )
    .expect("compiles");
    let id = role("ANALYST");
    let d = decide(&p, &id, "SELECT * FROM demo");
    assert!(d.record.sql_full);
    assert_eq!(d.record.result_rows, 5);
    let d = decide(&p, &id, "SELECT * FROM demo; SELECT * FROM other");
    assert!(!d.record.sql_full);
    assert_eq!(d.record.result_rows, 0);
    let d = decide(&p, &id, "SELECT * FROM other");
    assert_eq!(d.record, tollgate_policy::Recording::default());
}
