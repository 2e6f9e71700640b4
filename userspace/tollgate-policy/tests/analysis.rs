//! SQL analysis: every statement kind, name resolution, CTE scoping, hidden statements.

use tollgate_policy::{analyze, AnalysisError, StageOpKind, StatementInfo, StatementKind, UseKind};

fn one(sql: &str) -> StatementInfo {
    let ctx = tollgate_policy::NameContext::new("CLINICAL", "PUBLIC");
    let mut a = analyze(sql, &ctx).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements.remove(0)
}

fn names(set: &std::collections::BTreeSet<tollgate_policy::TableName>) -> Vec<String> {
    set.iter().map(ToString::to_string).collect()
}

#[track_caller]
fn kind(sql: &str, expected: StatementKind) -> StatementInfo {
    let s = one(sql);
    assert_eq!(s.kind, expected, "{sql}");
    s
}

#[test]
fn every_kind() {
    use StatementKind as K;
    let s = kind("select a from t", K::Select);
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.T"]);
    let s = kind("insert into t (a) values (?)", K::Insert);
    assert_eq!(names(&s.writes), ["CLINICAL.PUBLIC.T"]);
    let s = kind("insert into t select * from ehr.diagnoses", K::InsertSelect);
    assert_eq!(names(&s.reads), ["CLINICAL.EHR.DIAGNOSES"]);
    let s = kind("update t set a = 1 where b in (select b from u)", K::Update);
    assert_eq!(
        (names(&s.reads), names(&s.writes)),
        (
            vec!["CLINICAL.PUBLIC.U".into()],
            vec!["CLINICAL.PUBLIC.T".into()]
        )
    );
    let s = kind("delete from t using u where t.id = u.id", K::Delete);
    assert_eq!(
        (names(&s.reads), names(&s.writes)),
        (
            vec!["CLINICAL.PUBLIC.U".into()],
            vec!["CLINICAL.PUBLIC.T".into()]
        )
    );
    let s = kind(
        "merge into t using s on t.id = s.id when matched then delete",
        K::Merge,
    );
    assert_eq!(
        (names(&s.reads), names(&s.writes)),
        (
            vec!["CLINICAL.PUBLIC.S".into()],
            vec!["CLINICAL.PUBLIC.T".into()]
        )
    );
    kind("create table t (a int)", K::CreateTable);
    let s = kind(
        "create table x.t as select * from patients",
        K::CreateTableAsSelect,
    );
    assert_eq!(
        (names(&s.reads), names(&s.writes)),
        (
            vec!["CLINICAL.PUBLIC.PATIENTS".into()],
            vec!["CLINICAL.X.T".into()]
        )
    );
    kind("create view v as select 1 as a", K::CreateView);
    kind("drop table t", K::Drop);
    kind("alter table t add column c int", K::Alter);
    kind("truncate table t", K::Truncate);
    let s = kind(
        "copy into t from @st/path/ file_format = (type = csv)",
        K::CopyIntoTable,
    );
    assert_eq!(s.stage_ops[0].op, StageOpKind::Load);
    let s = kind("copy into @st/out/ from patients", K::CopyIntoLocation);
    assert_eq!(
        (s.stage_ops[0].op, s.stage_ops[0].stage.as_str()),
        (StageOpKind::Unload, "@st/out/")
    );
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.PATIENTS"]);
    let s = kind("GET @st/out/ file:///tmp/out/ parallel = 4", K::Get);
    assert_eq!(
        s.stage_ops[0].local_file.as_deref(),
        Some("file:///tmp/out/")
    );
    let s = kind("put 'file:///tmp/in.csv' @~/in", K::Put);
    assert_eq!(
        (s.stage_ops[0].op, s.stage_ops[0].stage.as_str()),
        (StageOpKind::Upload, "@~/in")
    );
    kind("create stage ex url = 's3://bucket/p/'", K::CreateStage);
    kind("use database clinical", K::Use(UseKind::Database));
    kind("use schema ehr", K::Use(UseKind::Schema));
    kind("use warehouse wh", K::Use(UseKind::Warehouse));
    kind("use role analyst", K::Use(UseKind::Role));
    kind("use secondary roles all", K::Use(UseKind::SecondaryRoles));
    kind("show tables", K::Show);
    let s = kind("describe table patients", K::Describe);
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.PATIENTS"]);
    let s = kind("call ehr.refresh(1)", K::Call);
    assert_eq!(s.routine.unwrap().to_string(), "CLINICAL.EHR.REFRESH");
    kind("execute immediate :stmt", K::ExecuteImmediate);
    kind("set x = 1", K::Set);
    kind("begin", K::Begin);
    kind("commit", K::Commit);
    kind("rollback", K::Rollback);
    kind("grant select on table t to role r", K::Grant);
    kind("revoke select on table t from role r", K::Revoke);
    kind("explain select * from t", K::Explain);
    assert_eq!(
        one("create schema s").kind,
        K::Other("CREATE SCHEMA".into())
    );
}

#[test]
fn multi_statement_text_hides_nothing() {
    let ctx = tollgate_policy::NameContext::new("CLINICAL", "PUBLIC");
    let a = analyze(
        "select 1; -- harmless\n copy into @x from patients ; select ';'",
        &ctx,
    )
    .unwrap();
    let kinds: Vec<_> = a.statements.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            StatementKind::Select,
            StatementKind::CopyIntoLocation,
            StatementKind::Select
        ]
    );
    let a = analyze("GET @s file:///tmp/;DROP TABLE patients", &ctx).unwrap();
    assert_eq!(a.statements[1].kind, StatementKind::Drop);
}

#[test]
fn ctes_are_not_tables_but_their_bodies_are_read() {
    let s = one("with patients as (select 1 as a) select * from patients");
    assert!(s.reads.is_empty(), "{s:?}");
    let s = one("with x as (select * from clinical.public.patients) select * from x");
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.PATIENTS"]);
    // A CTE body naming itself reads the real table.
    let s = one("with patients as (select * from patients) select * from patients");
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.PATIENTS"]);
    // Earlier CTEs are visible to later ones; a CTE's scope ends with its query.
    let s =
        one("with a as (select 1 x), b as (select * from a) select * from b, (select * from a) q");
    assert!(s.reads.is_empty(), "{s:?}");
    let s = one("select * from (with a as (select 1 x) select * from a) q, a");
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.A"]);
}

#[test]
fn subqueries_in_every_position() {
    let s = one("select (select max(ssn) from patients) from ref.providers \
         where exists (select 1 from ehr.diagnoses d where d.pid = 1) \
         and npi in (select npi from billing.claims)");
    assert_eq!(
        names(&s.reads),
        [
            "CLINICAL.BILLING.CLAIMS",
            "CLINICAL.EHR.DIAGNOSES",
            "CLINICAL.PUBLIC.PATIENTS",
            "CLINICAL.REF.PROVIDERS"
        ]
    );
}

#[test]
fn identifiers_fold_the_snowflake_way() {
    let s = one(r#"select "ssn", Name from "Clinical"."Public"."Patients""#);
    assert_eq!(names(&s.reads), ["Clinical.Public.Patients"]);
    let cols: Vec<String> = s.columns.iter().map(ToString::to_string).collect();
    assert_eq!(
        cols,
        [
            "Clinical.Public.Patients.NAME",
            "Clinical.Public.Patients.ssn"
        ]
    );
    let s = one("select * from Clinical.Public.Patients");
    assert_eq!(names(&s.reads), ["CLINICAL.PUBLIC.PATIENTS"]);
}

#[test]
fn columns_are_qualified_through_aliases() {
    let s =
        one("select p.ssn, e.admit_date, x from patients p join ehr.encounters e on p.id = e.pid");
    let cols: Vec<String> = s.columns.iter().map(ToString::to_string).collect();
    assert!(
        cols.contains(&"CLINICAL.PUBLIC.PATIENTS.SSN".to_string()),
        "{cols:?}"
    );
    assert!(
        cols.contains(&"CLINICAL.EHR.ENCOUNTERS.ADMIT_DATE".to_string()),
        "{cols:?}"
    );
    assert!(cols.contains(&"?.X".to_string()), "{cols:?}");
    let s = one("select p.* from patients p");
    assert_eq!(
        s.columns.iter().next().unwrap().to_string(),
        "CLINICAL.PUBLIC.PATIENTS.*"
    );
}

#[test]
fn use_changes_resolution_for_later_statements() {
    let ctx = tollgate_policy::NameContext::default();
    let a = analyze("select * from t; use database other; select * from t; use schema ehr; select * from t; use clinical.billing; select * from t", &ctx).unwrap();
    let reads: Vec<Vec<String>> = a
        .statements
        .iter()
        .filter(|s| s.kind == StatementKind::Select)
        .map(|s| names(&s.reads))
        .collect();
    assert_eq!(
        reads,
        [
            vec!["?.?.T"],
            vec!["OTHER.PUBLIC.T"],
            vec!["OTHER.EHR.T"],
            vec!["CLINICAL.BILLING.T"]
        ]
    );
    assert_eq!(a.statements[1].use_target.as_ref().unwrap().name, "OTHER");
}

#[test]
fn bindings() {
    assert!(!one("select * from t where id = ? and x = :1").unresolved_bindings);
    assert!(one("select * from identifier(?)").unresolved_bindings);
    assert!(one("insert into identifier(:t) values (1)").unresolved_bindings);
    assert!(one("execute immediate :sql").unresolved_bindings);
    let s = one("select * from identifier('ehr.encounters')");
    assert!(!s.unresolved_bindings);
    assert_eq!(names(&s.reads), ["CLINICAL.EHR.ENCOUNTERS"]);
}

#[test]
fn execute_immediate_text_is_analysed() {
    let ctx = tollgate_policy::NameContext::new("CLINICAL", "PUBLIC");
    let a = analyze("execute immediate $$copy into @x from patients$$", &ctx).unwrap();
    assert_eq!(a.statements[1].kind, StatementKind::CopyIntoLocation);
}

#[test]
fn unparseable_text_is_an_error() {
    let ctx = tollgate_policy::NameContext::default();
    for sql in [
        "selec 1",
        "select 'unterminated",
        "GET @s",
        "select * from t where",
        "\u{0}",
    ] {
        assert!(
            matches!(analyze(sql, &ctx), Err(AnalysisError::Unparseable { .. })),
            "{sql}"
        );
    }
    assert!(analyze("  -- only a comment\n", &ctx)
        .unwrap()
        .statements
        .is_empty());
}

#[test]
fn redaction_and_fingerprint() {
    let r = tollgate_policy::redact_literals(
        "SELECT * FROM patients WHERE ssn = '078-05-1120' AND mrn = 42",
    );
    assert_eq!(r, "SELECT * FROM patients WHERE ssn = ? AND mrn = ?");
    assert_eq!(
        tollgate_policy::fingerprint("select * from patients where ssn = '1'"),
        tollgate_policy::fingerprint("SELECT *  FROM PATIENTS WHERE SSN = '2'")
    );
}

#[test]
fn update_set_sources_are_the_columns_set_values_come_from() {
    let cols = |s: &StatementInfo| -> Vec<String> {
        s.set_sources.iter().map(ToString::to_string).collect()
    };
    let s = one(
        "update t set a = p.ssn, b = upper(p.name) from patients p where t.id = p.id and p.mrn = ?",
    );
    assert_eq!(
        cols(&s),
        [
            "CLINICAL.PUBLIC.PATIENTS.NAME",
            "CLINICAL.PUBLIC.PATIENTS.SSN"
        ]
    );
    // Subqueries in a SET value count (all of them, over-approximating), wildcards included;
    // the statement's WHERE does not.
    let s = one("update t set a = (select ssn from patients where id = t.id) where c = 1");
    assert_eq!(cols(&s), ["?.ID", "?.SSN", "CLINICAL.PUBLIC.T.ID"]);
    let s = one("update t set a = (select max(x) from (select * from u)) where c = 1");
    assert_eq!(cols(&s), ["?.X", "CLINICAL.PUBLIC.U.*"]);
    let s = one("update t set a = 1 where b in (select ssn from patients)");
    assert!(s.set_sources.is_empty(), "{s:?}");
    // Only UPDATE records them.
    let s = one("merge into t using u on t.id = u.id when matched then update set t.a = u.a");
    assert!(s.set_sources.is_empty(), "{s:?}");
}
