//! Joins as oracles on masked columns: a join condition comparing a masked column with
//! constants — literals, `IN` lists, subqueries, or *derived constants* (columns of derived
//! tables, CTEs and `VALUES` whose lineage holds no base column) — tells the agent which rows
//! hold a given masked value, so it is a predicate on the masked column
//! (`defaults.masked_predicates`). Only a bare equi-join of two table columns is exempt.

use tollgate_policy::{
    analyze, Action, Decision, EvalInput, Identity, NameContext, Policy, StatementLineage,
};

const POLICY: &str = r#"
version: 1
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.SSN", "CLINICAL.STAGING.RAW.SSN"]
    tags: [phi.ssn]
  - columns: ["CLINICAL.EHR.PATIENTS.NAME"]
    tags: [phi.name]
  - columns: ["CLINICAL.EHR.PATIENTS.MRN", "CLINICAL.EHR.VISITS.MRN"]
    tags: [phi.mrn]
rules:
  - id: masked-reads
    match:
      statements: [select]
    action: mask
    mask:
      - { tags: [phi.ssn], method: partial, keep_last: 4 }
      - { tags: [phi.name], method: redact }
      - { tags: [phi.mrn], method: token }
"#;

const SSN: &str = "CLINICAL.EHR.PATIENTS.SSN";

/// The refusal of a join comparing PATIENTS.SSN with constants.
const JOIN_REASON: &str = "joining masked column CLINICAL.EHR.PATIENTS.SSN with constant or \
                           computed values instead of a table column would reveal its values \
                           (defaults.masked_predicates)";

fn policy() -> Policy {
    Policy::compile(POLICY, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn ctx() -> NameContext {
    NameContext::new("CLINICAL", "EHR")
}

fn decide(policy: &Policy, sql: &str) -> Decision {
    let analysis = analyze(sql, &ctx());
    policy.evaluate(&EvalInput {
        identity: &Identity::default(),
        analysis: analysis.as_ref(),
    })
}

/// (predicate columns, constant join columns) of `sql`.
#[track_caller]
fn traced(sql: &str) -> (Vec<String>, Vec<String>) {
    let a = analyze(sql, &ctx()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    match &a.statements[0].lineage {
        Some(StatementLineage::Known(p)) => (
            p.predicate_columns.iter().map(|c| c.to_string()).collect(),
            p.constant_join_columns
                .iter()
                .map(|c| c.to_string())
                .collect(),
        ),
        other => panic!("{sql}: {other:?}"),
    }
}

#[track_caller]
fn denied(policy: &Policy, sql: &str) -> String {
    let d = decide(policy, sql);
    match d.action {
        Action::Deny { reason } => {
            assert_eq!(d.rule_id, "masked-reads", "{sql}");
            assert!(!reason.contains("900"), "a literal leaked: {reason}");
            reason
        }
        other => panic!("{sql}: expected deny, got {other:?}"),
    }
}

#[track_caller]
fn masked(policy: &Policy, sql: &str) {
    let d = decide(policy, sql);
    assert_eq!(d.action.name(), "mask", "{sql}: {d:?}");
}

#[test]
fn joins_against_constants_are_refused_as_such() {
    let p = policy();
    for sql in [
        // Derived table of a literal.
        "SELECT a.id FROM CLINICAL.EHR.PATIENTS a JOIN (SELECT '900-00-0001' AS s) b \
         ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s) b ON b.s = a.ssn",
        "SELECT a.id FROM patients a LEFT JOIN (SELECT '900-00-0001' AS s) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001') b (s) ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s FROM visits) b \
         ON a.ssn = b.s",
        // VALUES.
        "SELECT a.id FROM patients a JOIN (VALUES ('900-00-0001')) v(s) ON a.ssn = v.s",
        "SELECT a.id FROM patients a JOIN (VALUES ('900-00-0001'), ('900-00-0002')) v(s) \
         ON a.ssn = v.s",
        "SELECT a.id FROM patients a JOIN (SELECT column1 AS s FROM (VALUES ('900-00-0001'))) v \
         ON a.ssn = v.s",
        // CTE of literals.
        "WITH g AS (SELECT '900-00-0001' s) SELECT a.id FROM patients a JOIN g ON a.ssn = g.s",
        "WITH g (s) AS (SELECT '900-00-0001') SELECT a.id FROM patients a JOIN g ON a.ssn = g.s",
        "WITH g AS (SELECT '900-00-0001' s), h AS (SELECT s FROM g) \
         SELECT a.id FROM patients a JOIN h ON a.ssn = h.s",
        // Derived constants: functions and operators of literals.
        "SELECT a.id FROM patients a JOIN (SELECT CONCAT('900', '-00-0001') AS s) b \
         ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT UPPER('x') s) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT '9' || '00-00-0001' s) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT CAST('900-00-0001' AS VARCHAR) s) b \
         ON a.ssn = b.s",
        // Mixed with a table column: still not a table column.
        "SELECT a.id FROM patients a JOIN (SELECT ssn AS s FROM staging.raw UNION ALL \
         SELECT '900-00-0001') b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT CASE WHEN r.id = 1 THEN '900-00-0001' END s \
         FROM staging.raw r) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT COALESCE(r.ssn, '900-00-0001') s \
         FROM staging.raw r) b ON a.ssn = b.s",
        // USING and NATURAL against a derived table of literals.
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS ssn) b USING (ssn)",
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS ssn, 1 AS k) b USING (k, ssn)",
        "SELECT a.id FROM patients a NATURAL JOIN (SELECT '900-00-0001' AS ssn) b",
        "SELECT id FROM (SELECT '900-00-0001' AS ssn) b NATURAL JOIN patients",
        // Literals, lists and subqueries directly in the join condition.
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn = '900-00-0001'",
        "SELECT a.id FROM patients a JOIN visits v ON v.id = a.id AND a.ssn = '900-00-0001'",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn IN ('900-00-0001', '900-00-0002')",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn IN (SELECT '900-00-0001')",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn = (SELECT '900-00-0001')",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn BETWEEN '900' AND '901'",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn LIKE '900%'",
        "SELECT a.id FROM patients a JOIN visits v ON a.ssn > v.note || ''",
        // Nested derived tables that only pass literals through.
        "SELECT a.id FROM patients a JOIN (SELECT s FROM (SELECT s FROM (SELECT '900-00-0001' \
         AS s) x) y) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT * FROM (SELECT '900-00-0001' AS s)) b \
         ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT y.s AS s FROM (SELECT * FROM \
         (VALUES ('900-00-0001')) v(s)) y) b ON a.ssn = b.s",
        // Parenthesised joins, joins inside subqueries and CTEs.
        "SELECT a.id FROM (patients a JOIN (SELECT '900-00-0001' AS s) b ON a.ssn = b.s)",
        "SELECT id FROM (SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s) b \
         ON a.ssn = b.s)",
        "WITH m AS (SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s) b \
         ON a.ssn = b.s) SELECT id FROM m",
        "SELECT id FROM visits WHERE patient_id IN (SELECT a.id FROM patients a \
         JOIN (SELECT '900-00-0001' AS s) b ON a.ssn = b.s)",
        // Unqualified columns.
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s) b ON ssn = s",
    ] {
        assert_eq!(denied(&p, sql), JOIN_REASON, "{sql}");
        let (predicates, constant) = traced(sql);
        assert!(predicates.iter().any(|c| c == SSN), "{sql}: {predicates:?}");
        assert!(constant.iter().any(|c| c == SSN), "{sql}: {constant:?}");
    }
}

#[test]
fn filters_against_constants_stay_filters() {
    // The equality in `WHERE` (comma join, subqueries) was never exempt: the filter refusal.
    let p = policy();
    for sql in [
        "SELECT a.id FROM patients a, (SELECT '900-00-0001' s) b WHERE a.ssn = b.s",
        "SELECT a.id FROM patients a WHERE a.ssn IN (SELECT '900-00-0001')",
        "SELECT a.id FROM patients a WHERE a.ssn = (SELECT '900-00-0001')",
        "SELECT a.id FROM patients a WHERE a.ssn IN ('900-00-0001')",
        "SELECT a.id FROM patients a, staging.raw r WHERE a.ssn = r.ssn",
    ] {
        let reason = denied(&p, sql);
        assert_eq!(
            reason,
            "filtering, sorting or grouping on masked column CLINICAL.EHR.PATIENTS.SSN would \
             reveal its values (defaults.masked_predicates)",
            "{sql}"
        );
    }
    // A join on table columns that also filters on a masked one is a plain filter.
    let sql = "SELECT a.id FROM patients a JOIN staging.raw r ON a.ssn = r.ssn AND a.name > r.ssn";
    let reason = denied(&p, sql);
    assert!(
        reason.starts_with("filtering, sorting or grouping"),
        "{reason}"
    );
}

#[test]
fn equi_joins_of_table_columns_keep_working() {
    let p = policy();
    for sql in [
        "SELECT v.ID, q.NAME FROM CLINICAL.EHR.VISITS v JOIN (SELECT ID, NAME, SSN FROM \
         CLINICAL.EHR.PATIENTS) q ON v.PATIENT_ID = q.ID",
        "SELECT p.id FROM staging.raw other_table JOIN PATIENTS p ON p.SSN = other_table.SSN",
        "SELECT p.id FROM patients p JOIN staging.raw r ON p.ssn = r.ssn",
        "SELECT p.id FROM patients p JOIN (SELECT ssn AS s FROM staging.raw) r ON p.ssn = r.s",
        "SELECT p.id FROM patients p JOIN (SELECT r.ssn::varchar AS s FROM staging.raw r \
         WHERE r.id > 0) r ON p.ssn = r.s",
        "WITH r AS (SELECT ssn FROM staging.raw) SELECT p.id FROM patients p JOIN r \
         ON p.ssn = r.ssn",
        "SELECT p.id FROM patients p JOIN (SELECT * FROM staging.raw) r ON p.ssn = r.ssn",
        "SELECT p.id FROM patients p JOIN (SELECT ssn FROM staging.raw UNION ALL \
         SELECT ssn FROM patients) r ON p.ssn = r.ssn",
        "SELECT p.id FROM patients p JOIN staging.raw r USING (ssn)",
        "SELECT p.id FROM patients p JOIN (SELECT ssn, id AS k FROM staging.raw) r USING (ssn)",
        "SELECT p.id FROM patients p NATURAL JOIN staging.raw r",
        "SELECT p.id FROM patients p NATURAL JOIN (SELECT ssn FROM staging.raw) r",
        "SELECT p.id FROM patients p JOIN visits v ON p.mrn = v.mrn AND p.id = v.patient_id",
        "SELECT p.id FROM patients p JOIN visits v USING (mrn)",
        // Constants compared with unmasked columns are fine.
        "SELECT p.id FROM patients p JOIN (SELECT 42 AS k) b ON p.id = b.k",
        "SELECT p.ssn FROM patients p JOIN visits v ON p.id = v.patient_id AND v.id = 7",
    ] {
        masked(&p, sql);
    }
    let (predicates, constant) =
        traced("SELECT p.id FROM patients p JOIN (SELECT 42 AS k) b ON p.id = b.k");
    assert_eq!(predicates, ["CLINICAL.EHR.PATIENTS.ID"]);
    assert_eq!(constant, ["CLINICAL.EHR.PATIENTS.ID"]);
    let (predicates, constant) =
        traced("SELECT p.id FROM patients p JOIN (SELECT ssn FROM staging.raw) r USING (ssn)");
    assert!(predicates.is_empty() && constant.is_empty());
}

#[test]
fn masked_predicates_allow_lets_constant_joins_through() {
    let text = POLICY.replace(
        "version: 1\n",
        "version: 1\ndefaults:\n  masked_predicates: allow\n",
    );
    let p = Policy::compile(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    masked(
        &p,
        "SELECT a.id FROM patients a JOIN (SELECT '900-00-0001' AS s) b ON a.ssn = b.s",
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Relations with one column `S`, `{lit}` standing for a constant expression: derived
    /// constants when `{lit}` is one, table columns otherwise.
    const CONSTANT_LEAVES: &[&str] = &[
        "SELECT {lit} AS s",
        "SELECT {lit} AS s FROM visits",
        "SELECT * FROM (VALUES ({lit}), ({lit})) t(s)",
        "SELECT column1 AS s FROM (VALUES ({lit}))",
        "WITH k AS (SELECT {lit} AS s) SELECT s FROM k",
    ];
    const TABLE_LEAVES: &[&str] = &[
        "SELECT ssn AS s FROM staging.raw",
        "SELECT r.ssn AS s FROM staging.raw r WHERE r.id > 0",
        "SELECT mrn AS s FROM visits",
        "SELECT p2.ssn AS s FROM patients p2",
    ];
    /// Constant expressions.
    const LITERALS: &[&str] = &[
        "'900-00-0001'",
        "CONCAT('900', '-00-0001')",
        "UPPER('x')",
        "'9' || '00-00-0001'",
        "CAST('900-00-0001' AS VARCHAR)",
        "'900-00-0001'::VARCHAR",
        "LPAD(TO_CHAR(900), 3, '0')",
        "NULL",
        "(SELECT '900-00-0001')",
    ];
    /// Pass-through wrappers around a relation `{q}` with column `S`.
    const WRAPPERS: &[&str] = &[
        "SELECT s FROM ({q})",
        "SELECT * FROM ({q})",
        "SELECT x.s AS s FROM ({q}) x",
        "WITH w AS ({q}) SELECT s FROM w",
        "WITH w AS ({q}) SELECT * FROM w",
        "SELECT s::VARCHAR AS s FROM ({q})",
        "SELECT DISTINCT s FROM ({q})",
        "SELECT s FROM ({q}) WHERE 1 = 1",
        "SELECT s FROM ({q}) UNION ALL SELECT s FROM ({q})",
        "SELECT y AS s FROM ({q}) AS t (y)",
    ];
    /// Joins of PATIENTS with the relation `{q}` on SSN = S.
    const JOINS: &[&str] = &[
        "SELECT a.id FROM patients a JOIN ({q}) b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN ({q}) b ON b.s = a.ssn",
        "SELECT a.id FROM patients a INNER JOIN ({q}) b ON (a.ssn = b.s) AND a.id > 0",
        "SELECT a.id FROM patients a LEFT JOIN ({q}) b ON a.ssn = b.s",
        "WITH b AS ({q}) SELECT a.id FROM patients a JOIN b ON a.ssn = b.s",
        "SELECT a.id FROM patients a JOIN (SELECT s AS ssn FROM ({q})) b USING (ssn)",
        "SELECT a.id FROM patients a NATURAL JOIN (SELECT s AS ssn FROM ({q})) b",
        "SELECT a.id FROM visits v JOIN (patients a JOIN ({q}) b ON a.ssn = b.s) \
         ON v.patient_id = a.id",
    ];

    fn build(leaf: &str, wrappers: &[usize], join: usize) -> String {
        let mut q = leaf.to_owned();
        for &w in wrappers {
            q = WRAPPERS[w].replace("{q}", &q);
        }
        JOINS[join].replace("{q}", &q)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The same joins and pass-through wrappers: over derived constants they are refused
        /// as constant joins, over table columns they stay allowed.
        #[test]
        fn joins_on_derived_constants_are_refused_and_on_table_columns_allowed(
            leaf in 0..CONSTANT_LEAVES.len(),
            table in 0..TABLE_LEAVES.len(),
            literal in 0..LITERALS.len(),
            wrappers in proptest::collection::vec(0..WRAPPERS.len(), 0..4),
            join in 0..JOINS.len(),
        ) {
            let p = policy();
            let leaf_sql = CONSTANT_LEAVES[leaf].replace("{lit}", LITERALS[literal]);
            let sql = build(&leaf_sql, &wrappers, join);
            let d = decide(&p, &sql);
            let Action::Deny { reason } = &d.action else {
                return Err(TestCaseError::fail(format!("{sql}: {d:?}")));
            };
            prop_assert_eq!(reason.as_str(), JOIN_REASON, "{}", sql);

            let sql = build(TABLE_LEAVES[table], &wrappers, join);
            let d = decide(&p, &sql);
            prop_assert_eq!(d.action.name(), "mask", "{}: {:?}", sql, d);
        }
    }
}
