//! Column lineage and response-time mask resolution: every result column of a masked query is
//! traced to its source columns, and gets the strictest applicable directive.

use tollgate_policy::{
    analyze, Action, ColumnAction, Decision, EvalInput, Fallback, Identity, NameContext,
    OutputItem, Policy, ResultColumnMeta, StatementLineage,
};

const POLICY: &str = r#"
version: 1
defaults:
  unknown_lineage: __UNKNOWN__
  masked_predicates: __PREDICATES__
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.SSN"]
    tags: [phi.ssn]
  - columns: ["CLINICAL.EHR.PATIENTS.NAME"]
    tags: [phi.name]
  - columns: ["CLINICAL.EHR.PATIENTS.DOB"]
    tags: [phi.dob]
  - columns: ["CLINICAL.EHR.PATIENTS.MRN", "CLINICAL.EHR.VISITS.MRN"]
    tags: [phi.mrn]
  - columns: ["CLINICAL.EHR.VISITS.NOTE"]
    tags: [phi.note]
rules:
  - id: masked-reads
    match:
      statements: [select]
    action: mask
    mask:
      - { tags: [phi.ssn], method: partial, keep_last: 4 }
      - { tags: [phi.name], method: redact }
      - { tags: [phi.dob], method: generalize }
      - { tags: [phi.mrn], method: token }
      - { tags: [phi.note], method: token }
      - { columns: ["CLINICAL.EHR.VISITS.SECRET"], method: "null" }
"#;

fn policy_with(unknown_lineage: &str, masked_predicates: &str) -> Policy {
    let text = POLICY
        .replace("__UNKNOWN__", unknown_lineage)
        .replace("__PREDICATES__", masked_predicates);
    Policy::compile(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn policy() -> Policy {
    policy_with("deny", "deny")
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

fn lineage(sql: &str) -> StatementLineage {
    let a = analyze(sql, &ctx()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(a.statements.len(), 1, "{sql}");
    a.statements[0]
        .lineage
        .clone()
        .expect("a query has lineage")
}

fn known(sql: &str) -> Vec<OutputItem> {
    match lineage(sql) {
        StatementLineage::Known(p) => p.items,
        StatementLineage::Unknown { reason } => panic!("{sql}: unknown lineage: {reason}"),
    }
}

fn predicates(sql: &str) -> Vec<String> {
    match lineage(sql) {
        StatementLineage::Known(p) => p.predicate_columns.iter().map(|c| c.to_string()).collect(),
        StatementLineage::Unknown { reason } => panic!("{sql}: unknown lineage: {reason}"),
    }
}

fn unknown_reason(sql: &str) -> String {
    match lineage(sql) {
        StatementLineage::Unknown { reason } => reason,
        StatementLineage::Known(p) => panic!("{sql}: expected unknown lineage, got {p:?}"),
    }
}

/// (name, sources, transformed) of a Column item.
fn column(item: &OutputItem) -> (String, Vec<String>, bool) {
    match item {
        OutputItem::Column {
            name,
            sources,
            transformed,
        } => (
            name.clone(),
            sources.iter().map(|c| c.to_string()).collect(),
            *transformed,
        ),
        other => panic!("not a column: {other:?}"),
    }
}

fn meta(name: &str) -> ResultColumnMeta<'_> {
    ResultColumnMeta {
        name,
        ..ResultColumnMeta::default()
    }
}

/// Short form of a column action: `keep`, `partial4`, `redact`, `token`, `generalize`,
/// `null`, `detect`.
fn short(a: &ColumnAction) -> String {
    match a {
        ColumnAction::Keep => "keep".into(),
        ColumnAction::Detect { .. } => "detect".into(),
        ColumnAction::Mask {
            method, keep_last, ..
        } => {
            let m = serde_json::to_value(method).unwrap();
            format!(
                "{}{}",
                m.as_str().unwrap(),
                keep_last.map(|k| k.to_string()).unwrap_or_default()
            )
        }
    }
}

/// Decides `sql` (must be a mask), resolves the result columns `names` (rowtype without
/// table information) and returns the short actions.
#[track_caller]
fn masks_with(policy: &Policy, sql: &str, names: &[&str]) -> Vec<String> {
    let d = decide(policy, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{sql}: expected mask, got {d:?}");
    };
    let cols: Vec<ResultColumnMeta<'_>> = names.iter().map(|n| meta(n)).collect();
    let actions = policy.resolve_result_columns(&d.rule_id, plan, &cols);
    assert_eq!(actions.len(), names.len());
    actions.iter().map(short).collect()
}

#[track_caller]
fn masks(sql: &str, names: &[&str]) -> Vec<String> {
    masks_with(&policy(), sql, names)
}

#[track_caller]
fn denied_with(policy: &Policy, sql: &str) -> String {
    let d = decide(policy, sql);
    match d.action {
        Action::Deny { reason } => {
            assert_eq!(d.rule_id, "masked-reads", "{sql}");
            reason
        }
        other => panic!("{sql}: expected deny, got {other:?}"),
    }
}

#[track_caller]
fn denied(sql: &str) -> String {
    denied_with(&policy(), sql)
}

// --- Lineage -------------------------------------------------------------------------------

#[test]
fn alias_keeps_the_source_and_is_not_a_transformation() {
    let items = known("SELECT ssn AS x, p.name, dob::varchar AS d FROM patients p");
    assert_eq!(
        column(&items[0]),
        ("X".into(), vec!["CLINICAL.EHR.PATIENTS.SSN".into()], false)
    );
    assert_eq!(
        column(&items[1]),
        (
            "NAME".into(),
            vec!["CLINICAL.EHR.PATIENTS.NAME".into()],
            false
        )
    );
    assert_eq!(
        column(&items[2]),
        ("D".into(), vec!["CLINICAL.EHR.PATIENTS.DOB".into()], false)
    );
    let items = known(r#"SELECT ssn AS "x" FROM patients"#);
    assert_eq!(column(&items[0]).0, "x");
    assert_eq!(masks("SELECT ssn AS x FROM patients", &["X"]), ["partial4"]);
    assert_eq!(
        masks(
            "SELECT CAST(ssn AS VARCHAR) AS x, (ssn)::varchar FROM patients",
            &["X", "Y"]
        ),
        ["partial4", "partial4"]
    );
}

#[test]
fn functions_are_traced_and_transformations_escalate_partial_to_redact() {
    let items = known("SELECT UPPER(ssn) FROM patients");
    assert_eq!(
        column(&items[0]),
        (
            "UPPER(SSN)".into(),
            vec!["CLINICAL.EHR.PATIENTS.SSN".into()],
            true
        )
    );
    for sql in [
        "SELECT UPPER(ssn) FROM patients",
        "SELECT HEX_ENCODE(ssn) FROM patients",
        "SELECT SUBSTR(ssn, 1, 3) FROM patients",
        "SELECT BASE64_ENCODE(ssn) AS b FROM patients",
        "SELECT MD5(ssn), SHA2(ssn, 256) FROM patients",
        "SELECT TO_CHAR(ssn) FROM patients",
        "SELECT LEFT(ssn, 3) || '' FROM patients",
        "SELECT ssn + 0 FROM patients",
    ] {
        let n = known(sql).len();
        let names: Vec<&str> = ["A", "B"][..n].to_vec();
        assert!(
            masks(sql, &names).iter().all(|m| m == "redact"),
            "{sql}: {:?}",
            masks(sql, &names)
        );
    }
    // Generalize is escalated too: YEAR(dob) is fine, but LEFT(dob, 7) keeps the month.
    assert_eq!(
        masks(
            "SELECT dob, LEFT(dob::varchar, 7) FROM patients",
            &["DOB", "L"]
        ),
        ["generalize", "redact"]
    );
}

#[test]
fn concatenations_take_the_strictest_directive() {
    for sql in [
        "SELECT CONCAT(name, ssn) FROM patients",
        "SELECT name || ssn FROM patients",
        "SELECT name || '-' || ssn AS both FROM patients",
    ] {
        let (_, sources, transformed) = column(&known(sql)[0]);
        assert_eq!(
            sources,
            ["CLINICAL.EHR.PATIENTS.NAME", "CLINICAL.EHR.PATIENTS.SSN"],
            "{sql}"
        );
        assert!(transformed);
        assert_eq!(masks(sql, &["C"]), ["redact"], "{sql}");
    }
}

#[test]
fn strictness_order_without_escalation() {
    // Untransformed columns fed by two classified columns (UNION): the strictest wins.
    assert_eq!(
        masks(
            "SELECT ssn FROM patients UNION ALL SELECT dob FROM patients",
            &["SSN"]
        ),
        ["generalize"]
    );
    assert_eq!(
        masks(
            "SELECT dob FROM patients UNION ALL SELECT mrn FROM patients",
            &["DOB"]
        ),
        ["token"]
    );
    assert_eq!(
        masks(
            "SELECT mrn FROM patients UNION ALL SELECT name FROM patients",
            &["MRN"]
        ),
        ["redact"]
    );
    assert_eq!(
        masks(
            "SELECT name FROM patients UNION ALL SELECT secret FROM visits",
            &["NAME"]
        ),
        ["null"]
    );
}

#[test]
fn ctes_nested_ctes_and_cte_stars() {
    assert_eq!(
        masks(
            "WITH c AS (SELECT ssn AS s, name FROM patients) SELECT s, name FROM c",
            &["S", "NAME"]
        ),
        ["partial4", "redact"]
    );
    let sql = "WITH a AS (SELECT ssn, id FROM patients), b AS (SELECT ssn AS x, id FROM a) \
               SELECT x, id FROM b";
    assert_eq!(
        column(&known(sql)[0]),
        ("X".into(), vec!["CLINICAL.EHR.PATIENTS.SSN".into()], false)
    );
    assert_eq!(masks(sql, &["X", "ID"]), ["partial4", "keep"]);
    // `*` over a CTE expands to its projection, not to a wildcard.
    let sql = "WITH c AS (SELECT id, HEX_ENCODE(ssn) AS h FROM patients) SELECT * FROM c";
    let items = known(sql);
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| !i.is_wildcard()));
    assert_eq!(masks(sql, &["ID", "H"]), ["keep", "redact"]);
    // A CTE over `SELECT *` of a base table: names resolve through the wildcard.
    let sql = "WITH c AS (SELECT * FROM patients) SELECT ssn AS s, c.dob FROM c";
    assert_eq!(masks(sql, &["S", "DOB"]), ["partial4", "generalize"]);
    let sql = "WITH c AS (SELECT * EXCLUDE (dob) FROM patients) SELECT * FROM c";
    assert_eq!(
        masks(sql, &["ID", "SSN", "NAME"]),
        ["keep", "partial4", "redact"]
    );
    // Nested WITH inside a CTE; CTE column lists.
    let sql = "WITH o AS (WITH i AS (SELECT name FROM patients) SELECT name AS n FROM i) \
               SELECT n FROM o";
    assert_eq!(masks(sql, &["N"]), ["redact"]);
    let sql = "WITH c (a, b) AS (SELECT id, ssn FROM patients) SELECT b FROM c";
    assert_eq!(masks(sql, &["B"]), ["partial4"]);
}

#[test]
fn nested_subqueries() {
    let sql = "SELECT y FROM (SELECT x AS y FROM (SELECT LEFT(ssn, 3) AS x FROM patients) a) b";
    let (_, sources, transformed) = column(&known(sql)[0]);
    assert_eq!(sources, ["CLINICAL.EHR.PATIENTS.SSN"]);
    assert!(transformed);
    assert_eq!(masks(sql, &["Y"]), ["redact"]);
    let sql = "SELECT t.s FROM (SELECT ssn AS s FROM patients) AS t";
    assert_eq!(masks(sql, &["S"]), ["partial4"]);
    let sql = "SELECT s FROM (SELECT * FROM (SELECT ssn AS s, id FROM patients))";
    assert_eq!(masks(sql, &["S"]), ["partial4"]);
    let sql = "SELECT a FROM (SELECT ssn, id FROM patients) AS t (a, b)";
    assert_eq!(masks(sql, &["A"]), ["partial4"]);
}

#[test]
fn joins_of_two_phi_tables() {
    let sql = "SELECT name, note, p.mrn, v.id, dob FROM patients p JOIN visits v ON p.mrn = v.mrn";
    let items = known(sql);
    // Unqualified: every candidate table (over-approximation, fail safe).
    assert_eq!(
        column(&items[0]).1,
        ["CLINICAL.EHR.PATIENTS.NAME", "CLINICAL.EHR.VISITS.NAME"]
    );
    assert_eq!(column(&items[2]).1, ["CLINICAL.EHR.PATIENTS.MRN"]);
    assert_eq!(column(&items[3]).1, ["CLINICAL.EHR.VISITS.ID"]);
    assert_eq!(
        masks(sql, &["NAME", "NOTE", "MRN", "ID", "DOB"]),
        ["redact", "token", "token", "keep", "generalize"]
    );
    // Fully qualified references and comma joins.
    let sql = "SELECT ehr.patients.ssn, clinical.ehr.visits.note FROM ehr.patients, visits \
               WHERE patients.id = visits.patient_id";
    assert_eq!(masks(sql, &["SSN", "NOTE"]), ["partial4", "token"]);
}

#[test]
fn equi_join_conditions_are_not_predicates() {
    let sql = "SELECT p.id FROM patients p JOIN visits v ON p.mrn = v.mrn";
    assert!(predicates(sql).is_empty(), "{:?}", predicates(sql));
    assert_eq!(masks(sql, &["ID"]), ["keep"]);
    let sql = "SELECT p.id FROM patients p JOIN visits v USING (mrn)";
    assert!(predicates(sql).is_empty());
    // Anything more than `a = b` is a filter.
    let sql = "SELECT p.id FROM patients p JOIN visits v ON p.mrn = v.mrn AND v.note LIKE 'x%'";
    assert_eq!(predicates(sql), ["CLINICAL.EHR.VISITS.NOTE"]);
    let reason = denied(sql);
    assert!(reason.contains("CLINICAL.EHR.VISITS.NOTE"), "{reason}");
    let sql = "SELECT p.id FROM patients p JOIN visits v ON UPPER(p.mrn) = v.mrn";
    assert_eq!(
        predicates(sql),
        ["CLINICAL.EHR.PATIENTS.MRN", "CLINICAL.EHR.VISITS.MRN"]
    );
}

#[test]
fn select_star_over_a_base_table_expands_by_rowtype_names() {
    let items = known("SELECT * FROM patients");
    assert!(
        matches!(&items[..], [OutputItem::Wildcard { tables, except }]
        if tables.len() == 1 && except.is_empty())
    );
    assert_eq!(
        masks(
            "SELECT * FROM patients",
            &["ID", "SSN", "NAME", "DOB", "ZIP"]
        ),
        ["keep", "partial4", "redact", "generalize", "keep"]
    );
    // Zero columns in the wildcard region is fine too.
    assert_eq!(masks("SELECT id, * FROM patients", &["ID"]), ["keep"]);
}

#[test]
fn select_star_exclude() {
    let items = known("SELECT * EXCLUDE (ssn, dob) FROM patients");
    let OutputItem::Wildcard { except, .. } = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(except.iter().collect::<Vec<_>>(), ["DOB", "SSN"]);
    assert_eq!(
        masks(
            "SELECT * EXCLUDE (ssn, dob) FROM patients",
            &["ID", "NAME", "ZIP"]
        ),
        ["keep", "redact", "keep"]
    );
}

#[test]
fn qualified_star_and_a_column() {
    let sql = "SELECT p.*, v.note FROM patients p JOIN visits v ON p.mrn = v.mrn";
    assert_eq!(
        masks(sql, &["ID", "SSN", "NAME", "NOTE"]),
        ["keep", "partial4", "redact", "token"]
    );
    // Two wildcards with a column between them: the middle is positionally uncertain.
    let sql = "SELECT p.*, v.note AS n, v.* FROM patients p JOIN visits v ON p.mrn = v.mrn";
    assert_eq!(
        masks(sql, &["ID", "SSN", "N", "ID", "NOTE"]),
        ["token", "token", "token", "token", "token"]
    );
    // Too few result columns for the non-wildcard items: everything is redacted.
    assert_eq!(
        masks("SELECT v.note, p.* FROM patients p, visits v", &[]),
        Vec::<String>::new()
    );
    assert_eq!(
        masks(
            "SELECT v.note, v.id, p.* FROM patients p, visits v",
            &["NOTE"]
        ),
        ["redact"]
    );
}

#[test]
fn union_takes_every_branch() {
    let sql = "SELECT id, zip FROM visits UNION ALL SELECT id, ssn FROM patients";
    let (_, sources, transformed) = column(&known(sql)[1]);
    assert_eq!(
        sources,
        ["CLINICAL.EHR.PATIENTS.SSN", "CLINICAL.EHR.VISITS.ZIP"]
    );
    assert!(!transformed);
    assert_eq!(masks(sql, &["ID", "ZIP"]), ["keep", "partial4"]);
    let sql = "SELECT zip FROM visits INTERSECT SELECT UPPER(name) FROM patients \
               EXCEPT SELECT 'x'";
    assert_eq!(masks(sql, &["ZIP"]), ["redact"]);
}

#[test]
fn case_with_a_classified_column_only_in_the_condition() {
    let sql = "SELECT id, CASE WHEN ssn LIKE '9%' THEN 'a' ELSE 'b' END AS flag FROM patients";
    let (_, sources, transformed) = column(&known(sql)[1]);
    assert_eq!(sources, ["CLINICAL.EHR.PATIENTS.SSN"]);
    assert!(transformed);
    assert_eq!(masks(sql, &["ID", "FLAG"]), ["keep", "redact"]);
    let sql = "SELECT IFF(dob > '2000-01-01', 1, 0) AS young FROM patients";
    assert_eq!(masks(sql, &["YOUNG"]), ["redact"]);
}

#[test]
fn scalar_subqueries() {
    let sql = "SELECT v.id, (SELECT MAX(p.ssn) FROM patients p WHERE p.id = v.patient_id) AS s \
               FROM visits v";
    assert_eq!(masks(sql, &["ID", "S"]), ["keep", "redact"]);
    assert_eq!(
        predicates(sql),
        ["CLINICAL.EHR.PATIENTS.ID", "CLINICAL.EHR.VISITS.PATIENT_ID"]
    );
    // Correlated reference to the outer query inside the projection of the subquery; token
    // (a keyed hash of the whole value) is not escalated by a transformation.
    let sql = "SELECT (SELECT v.note FROM visits v WHERE v.patient_id = p.id LIMIT 1) || p.zip \
               FROM patients p";
    assert_eq!(masks(sql, &["X"]), ["token"]);
    let sql =
        "SELECT (SELECT p.ssn FROM patients p WHERE p.id = v.patient_id) || v.zip FROM visits v";
    assert_eq!(masks(sql, &["X"]), ["redact"]);
}

#[test]
fn window_functions_and_aggregates() {
    let sql = "SELECT id, ROW_NUMBER() OVER (PARTITION BY name ORDER BY dob) AS rn, \
               FIRST_VALUE(ssn) OVER (ORDER BY id) AS f FROM patients";
    let (_, sources, _) = column(&known(sql)[1]);
    assert_eq!(
        sources,
        ["CLINICAL.EHR.PATIENTS.DOB", "CLINICAL.EHR.PATIENTS.NAME"]
    );
    assert_eq!(masks(sql, &["ID", "RN", "F"]), ["keep", "redact", "redact"]);
    assert_eq!(
        masks(
            "SELECT COUNT(*), COUNT(ssn) AS n FROM patients",
            &["C", "N"]
        ),
        ["keep", "redact"]
    );
    // OBJECT_CONSTRUCT(*) carries every column of the table.
    assert_eq!(
        masks("SELECT OBJECT_CONSTRUCT(*) AS o FROM patients", &["O"]),
        ["redact"]
    );
}

#[test]
fn lateral_aliases_positional_references_and_date_parts() {
    let sql = "SELECT ssn AS x, UPPER(x) AS y FROM patients";
    assert_eq!(masks(sql, &["X", "Y"]), ["partial4", "redact"]);
    assert_eq!(masks("SELECT $2 FROM patients", &["$2"]), ["redact"]);
    assert_eq!(masks("SELECT p.$3 FROM patients p", &["$3"]), ["redact"]);
    let (_, sources, _) = column(&known("SELECT DATEADD(day, 1, dob) FROM patients")[0]);
    assert_eq!(sources, ["CLINICAL.EHR.PATIENTS.DOB"]);
}

#[test]
fn lineage_is_none_for_non_queries() {
    let a = analyze("INSERT INTO visits (id) VALUES (1)", &ctx()).unwrap();
    assert!(a.statements[0].lineage.is_none());
    let a = analyze("SHOW TABLES", &ctx()).unwrap();
    assert!(a.statements[0].lineage.is_none());
}

// --- Unknown lineage -----------------------------------------------------------------------

#[test]
fn untraceable_constructs_are_unknown() {
    for (sql, construct) in [
        (
            "SELECT f.value FROM patients p, LATERAL FLATTEN(input => p.tags) f",
            "table function",
        ),
        (
            "SELECT * FROM TABLE(FLATTEN(input => PARSE_JSON('[1]')))",
            "table function",
        ),
        (
            "SELECT * FROM patients PIVOT (COUNT(id) FOR zip IN ('10001', '10002')) AS pv",
            "PIVOT",
        ),
        (
            "SELECT * FROM patients UNPIVOT (val FOR col IN (ssn, name))",
            "UNPIVOT",
        ),
        ("SELECT IDENTIFIER('ssn') FROM patients", "IDENTIFIER"),
        ("SELECT * FROM IDENTIFIER('patients')", "IDENTIFIER"),
        (
            "WITH RECURSIVE r AS (SELECT ssn FROM patients UNION ALL SELECT ssn FROM r) \
             SELECT * FROM r",
            "recursive",
        ),
        (
            "WITH r AS (SELECT ssn FROM patients UNION ALL SELECT ssn FROM r) SELECT * FROM r",
            "recursive",
        ),
        (
            "SELECT * FROM patients UNION ALL SELECT * FROM visits",
            "wildcard",
        ),
        ("SELECT * RENAME (ssn AS x) FROM patients", "RENAME"),
        ("SELECT * REPLACE (name AS ssn) FROM patients", "REPLACE"),
        ("SELECT q.x FROM patients p", "qualifier"),
        (
            r#"SELECT "SUBSTR(SSN, 1, 3)" FROM (SELECT SUBSTR(ssn, 1, 3) FROM patients)"#,
            "quoted",
        ),
    ] {
        let reason = unknown_reason(sql);
        assert!(reason.contains(construct), "{sql}: {reason}");
        assert!(!reason.contains('\''), "{sql}: {reason}");
    }
}

#[test]
fn unknown_lineage_is_denied_by_default() {
    for sql in [
        "SELECT f.value FROM patients p, LATERAL FLATTEN(input => p.tags) f",
        "SELECT * FROM patients PIVOT (COUNT(id) FOR zip IN ('SECRETLITERAL')) AS pv",
    ] {
        let reason = denied(sql);
        assert!(
            reason.starts_with("column lineage of this statement cannot be traced ("),
            "{reason}"
        );
        assert!(
            reason.ends_with("); the policy denies it (defaults.unknown_lineage)"),
            "{reason}"
        );
        assert!(!reason.contains("SECRETLITERAL"), "{reason}");
        let d = decide(&policy(), sql);
        assert!(matches!(d.statements[0].action, Action::Deny { .. }));
    }
    // Several statements in one text cannot be mapped to their results either.
    let reason = denied("SELECT ssn FROM patients; SELECT 1");
    assert!(reason.contains("several statements"), "{reason}");
}

#[test]
fn unknown_lineage_mask_all_and_detect() {
    let sql = "SELECT * FROM patients PIVOT (COUNT(id) FOR zip IN ('1', '2')) AS pv";
    let p = policy_with("mask_all", "deny");
    let d = decide(&p, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(plan.fallback, Some(Fallback::MaskAll));
    assert_eq!(
        masks_with(&p, sql, &["NAME", "A", "B"]),
        ["redact", "redact", "redact"]
    );
    let p = policy_with("detect", "deny");
    let d = decide(&p, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(plan.fallback, Some(Fallback::Detect));
    let actions = p.resolve_result_columns(&d.rule_id, plan, &[meta("A"), meta("B")]);
    assert_eq!(
        actions,
        vec![
            ColumnAction::Detect {
                rule_id: "masked-reads".into()
            };
            2
        ]
    );
}

#[test]
fn unknown_lineage_without_classified_data_is_left_to_the_rowtype() {
    let sql = "SELECT value FROM TABLE(FLATTEN(input => PARSE_JSON('[1]')))";
    let p = policy();
    let d = decide(&p, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(plan.fallback, None);
    assert!(matches!(
        plan.lineage,
        Some(StatementLineage::Unknown { .. })
    ));
    assert_eq!(masks_with(&p, sql, &["VALUE"]), ["keep"]);
    let rowtype = [ResultColumnMeta {
        name: "SSN",
        database: "CLINICAL",
        schema: "EHR",
        table: "PATIENTS",
    }];
    let actions = p.resolve_result_columns(&d.rule_id, plan, &rowtype);
    // Transformedness is unknown: partial is escalated.
    assert_eq!(short(&actions[0]), "redact");
}

// --- Predicates ----------------------------------------------------------------------------

#[test]
fn filtering_on_a_masked_column_is_denied_by_default() {
    let sql = "SELECT name FROM patients WHERE ssn LIKE '1%'";
    assert_eq!(predicates(sql), ["CLINICAL.EHR.PATIENTS.SSN"]);
    let reason = denied(sql);
    assert_eq!(
        reason,
        "filtering, sorting or grouping on masked column CLINICAL.EHR.PATIENTS.SSN would \
         reveal its values (defaults.masked_predicates)"
    );
    for sql in [
        "SELECT id FROM patients ORDER BY dob",
        "SELECT name, COUNT(*) FROM patients GROUP BY 1",
        "SELECT name, COUNT(*) FROM patients GROUP BY name HAVING COUNT(*) > 1",
        "SELECT id FROM patients QUALIFY ROW_NUMBER() OVER (ORDER BY id) = 1 AND ssn > '5'",
        "SELECT * FROM patients ORDER BY 2",
        "WITH c AS (SELECT ssn AS s FROM patients) SELECT s FROM c ORDER BY s",
        "WITH c AS (SELECT id FROM patients WHERE name = 'SECRETLITERAL') SELECT id FROM c",
        "SELECT id FROM visits WHERE patient_id IN (SELECT id FROM patients WHERE dob > ?)",
        "SELECT id FROM visits WHERE mrn IN (SELECT mrn FROM patients)",
        "SELECT ssn AS x FROM patients WHERE x = ?",
        "SELECT id FROM patients WHERE HASH(*) = 5",
        "SELECT id FROM (SELECT id FROM patients ORDER BY ssn LIMIT 10)",
        "SELECT id FROM patients UNION SELECT id FROM visits WHERE note = ''",
    ] {
        let reason = denied(sql);
        assert!(
            reason.contains("(defaults.masked_predicates)"),
            "{sql}: {reason}"
        );
        assert!(!reason.contains("SECRETLITERAL"), "{reason}");
    }
    // Filters on unclassified columns, and EXISTS projections, are fine.
    for sql in [
        "SELECT ssn FROM patients WHERE id = ? ORDER BY id",
        "SELECT v.id FROM visits v WHERE EXISTS (SELECT * FROM patients p WHERE p.id = v.patient_id)",
        "SELECT zip, COUNT(*) FROM patients GROUP BY zip",
    ] {
        let d = decide(&policy(), sql);
        assert_eq!(d.action.name(), "mask", "{sql}: {d:?}");
    }
}

#[test]
fn masked_predicates_allow() {
    let p = policy_with("deny", "allow");
    let sql = "SELECT name FROM patients WHERE ssn LIKE '1%'";
    assert_eq!(masks_with(&p, sql, &["NAME"]), ["redact"]);
    let d = decide(&p, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    let Some(StatementLineage::Known(l)) = &plan.lineage else {
        panic!("{plan:?}")
    };
    assert_eq!(l.items.len(), 1);
}

// --- Resolution ----------------------------------------------------------------------------

#[test]
fn rowtype_table_information_classifies_what_the_sql_could_not() {
    let p = policy();
    let sql = "SELECT ssn FROM staging.raw";
    let d = decide(&p, sql);
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(
        p.resolve_result_columns(&d.rule_id, plan, &[meta("SSN")]),
        [ColumnAction::Keep]
    );
    let rowtype = [ResultColumnMeta {
        name: "SSN",
        database: "CLINICAL",
        schema: "EHR",
        table: "PATIENTS",
    }];
    assert_eq!(
        p.resolve_result_columns(&d.rule_id, plan, &rowtype),
        [ColumnAction::Mask {
            rule_id: "masked-reads".into(),
            method: tollgate_policy::MaskMethod::Partial,
            keep_last: Some(4),
            tags: vec!["phi.ssn".into()],
            sources: vec![
                "CLINICAL.EHR.PATIENTS.SSN".into(),
                "CLINICAL.STAGING.RAW.SSN".into()
            ],
        }]
    );
}

#[test]
fn classified_columns_without_a_directive_are_redacted() {
    let p = Policy::compile(
        r#"
version: 1
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.SSN"]
    tags: [phi.ssn]
  - columns: ["CLINICAL.EHR.PATIENTS.NAME"]
    tags: [phi.name]
rules:
  - id: only-ssn
    action: mask
    mask: [{ tags: [phi.ssn], method: token }]
"#,
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        masks_with(
            &p,
            "SELECT ssn, name, id FROM patients",
            &["SSN", "NAME", "ID"]
        ),
        ["token", "redact", "keep"]
    );
    let d = decide(&p, "SELECT name FROM patients");
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    let ColumnAction::Mask { rule_id, tags, .. } =
        &p.resolve_result_columns("only-ssn", plan, &[meta("NAME")])[0]
    else {
        panic!()
    };
    assert_eq!(
        (rule_id.as_str(), tags.as_slice()),
        ("only-ssn", &["phi.name".to_owned()][..])
    );
}

#[test]
fn mismatched_results_and_missing_lineage_redact_everything() {
    let p = policy();
    let d = decide(&p, "SELECT id, zip FROM visits");
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert_eq!(
        masks_with(&p, "SELECT id, zip FROM visits", &["ID", "ZIP"]),
        ["keep", "keep"]
    );
    let three = [meta("ID"), meta("ZIP"), meta("EXTRA")];
    let actions = p.resolve_result_columns(&d.rule_id, plan, &three);
    assert!(actions.iter().all(|a| short(a) == "redact"), "{actions:?}");
    let actions = p.resolve_result_columns(&d.rule_id, plan, &three[..1]);
    assert!(actions.iter().all(|a| short(a) == "redact"), "{actions:?}");
    let mut no_lineage = plan.clone();
    no_lineage.lineage = None;
    let actions = p.resolve_result_columns(&d.rule_id, &no_lineage, &three[..2]);
    assert!(actions.iter().all(|a| short(a) == "redact"), "{actions:?}");
}

#[test]
fn directive_for_tag_picks_the_strictest() {
    let p = policy();
    let d = decide(&p, "SELECT ssn FROM patients");
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    let ssn = p.directive_for_tag(plan, "phi.ssn").expect("ssn directive");
    assert_eq!(
        (ssn.keep_last, ssn.rule_id.as_str()),
        (Some(4), "masked-reads")
    );
    assert!(p.directive_for_tag(plan, "phi.unknown").is_none());
    let mut two = plan.clone();
    let mut stricter = ssn.clone();
    stricter.method = tollgate_policy::MaskMethod::Null;
    stricter.keep_last = None;
    two.directives.push(stricter);
    assert_eq!(
        p.directive_for_tag(&two, "phi.ssn").unwrap().method,
        tollgate_policy::MaskMethod::Null
    );
}

#[test]
fn decisions_carry_the_lineage() {
    let d = decide(&policy(), "SELECT ssn FROM patients");
    let Action::Mask { plan } = &d.action else {
        panic!("{d:?}")
    };
    assert!(matches!(plan.lineage, Some(StatementLineage::Known(_))));
    assert_eq!(plan.fallback, None);
    // The plan serialises (it is recorded with the decision).
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains("CLINICAL.EHR.PATIENTS.SSN"), "{json}");
}

// --- Properties ----------------------------------------------------------------------------

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Expression wrappers; `true` when the wrapper leaves the value untouched (alias, cast,
    /// parentheses).
    const WRAPPERS: &[(&str, bool)] = &[
        ("UPPER({})", false),
        ("HEX_ENCODE({})", false),
        ("BASE64_ENCODE({})", false),
        ("SUBSTR({}, 1, 3)", false),
        ("LEFT({}, 2)", false),
        ("CONCAT('a', {})", false),
        ("{} || 'x'", false),
        ("COALESCE({}, 'n')", false),
        ("CASE WHEN {} IS NULL THEN 'a' ELSE 'b' END", false),
        ("IFF({} > '5', 1, 0)", false),
        ("MD5({})", false),
        ("SHA2({}, 256)", false),
        ("TO_CHAR({})", false),
        ("MAX({})", false),
        ("REVERSE(TRIM({}))", false),
        ("FIRST_VALUE({}) OVER (ORDER BY 1)", false),
        ("({})", true),
        ("{}::VARCHAR", true),
        ("CAST({} AS VARCHAR)", true),
        ("TRY_CAST({} AS VARCHAR)", true),
    ];

    /// Query-level wrappers around `SELECT <expr> AS c FROM …` (the inner query is `{q}`,
    /// its column `C`).
    const QUERIES: &[&str] = &[
        "SELECT c FROM ({q})",
        "SELECT t.c AS c FROM ({q}) t",
        "WITH w AS ({q}) SELECT c FROM w",
        "WITH w AS ({q}) SELECT * FROM w",
        "SELECT c FROM ({q}) UNION ALL SELECT id FROM visits",
        "SELECT id AS c FROM visits UNION SELECT c FROM ({q})",
        "SELECT c AS c FROM (SELECT * FROM ({q}))",
    ];

    const COLUMNS: &[&str] = &["ssn", "p.ssn", "patients.ssn", "clinical.ehr.patients.ssn"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn wrapped_classified_columns_are_never_kept(
            column in 0..COLUMNS.len(),
            wrappers in proptest::collection::vec(0..WRAPPERS.len(), 0..5),
            queries in proptest::collection::vec(0..QUERIES.len(), 0..4),
        ) {
            let mut expr = COLUMNS[column].to_owned();
            let mut pure = true;
            for &w in &wrappers {
                expr = WRAPPERS[w].0.replace("{}", &expr);
                pure &= WRAPPERS[w].1;
            }
            let from = if COLUMNS[column].starts_with("p.") { "patients p" } else { "clinical.ehr.patients" };
            let mut sql = format!("SELECT {expr} AS c FROM {from}");
            for &q in &queries {
                sql = QUERIES[q].replace("{q}", &sql);
            }
            let p = policy();
            let d = decide(&p, &sql);
            let Action::Mask { plan } = &d.action else {
                return Err(TestCaseError::fail(format!("{sql}: {d:?}")));
            };
            let actions = p.resolve_result_columns(&d.rule_id, plan, &[meta("C")]);
            let action = short(&actions[0]);
            prop_assert_ne!(&action, "keep", "{}", sql);
            if !pure {
                prop_assert_eq!(&action, "redact", "{}", sql);
            } else if !queries.iter().any(|&q| QUERIES[q].contains("UNION")) {
                prop_assert_eq!(&action, "partial4", "{}", sql);
            }
        }
    }

    fn query() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "SELECT ssn FROM patients",
            "SELECT * FROM patients",
            "SELECT p.*, v.note FROM patients p JOIN visits v ON p.mrn = v.mrn",
            "SELECT 1 AS id",
            "SELECT f.value AS id FROM patients p, LATERAL FLATTEN(input => p.tags) f",
            "SELECT * FROM (VALUES (1, 2))",
            "SELECT id, name FROM patients WHERE dob > ? ORDER BY 2",
        ])
        .prop_map(String::from);
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|q| format!("SELECT * FROM ({q})")),
                inner
                    .clone()
                    .prop_map(|q| format!("WITH c AS ({q}) SELECT * FROM c")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} UNION ALL {b}")),
                inner.clone().prop_map(|q| format!(
                    "SELECT ssn, (SELECT COUNT(*) FROM ({q})) AS n FROM patients"
                )),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!(
                    "SELECT * FROM ({a}) x JOIN ({b}) y ON x.id = y.id"
                )),
                inner.prop_map(|q| format!(
                    "SELECT id FROM patients WHERE id IN (SELECT id FROM ({q}))"
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn generated_queries_are_traced_deterministically_and_never_panic(
            sql in query(),
            names in proptest::collection::vec(
                prop::sample::select(vec!["ID", "SSN", "NAME", "NOTE", "N", "ONE"]), 0..6),
        ) {
            let a1 = analyze(&sql, &ctx());
            let a2 = analyze(&sql, &ctx());
            prop_assert_eq!(&a1, &a2);
            let p = policy();
            let d = decide(&p, &sql);
            prop_assert_eq!(&d, &decide(&p, &sql));
            if let Action::Mask { plan } = &d.action {
                let cols: Vec<ResultColumnMeta<'_>> = names.iter().map(|n| meta(n)).collect();
                let actions = p.resolve_result_columns(&d.rule_id, plan, &cols);
                prop_assert_eq!(actions.len(), cols.len());
                // A column called SSN straight out of a wildcard over PATIENTS is masked.
                if let Some(StatementLineage::Known(l)) = &plan.lineage {
                    if let [OutputItem::Wildcard { tables, .. }] = l.items.as_slice() {
                        if tables.iter().any(|t| t.table == "PATIENTS") {
                            for (n, a) in names.iter().zip(&actions) {
                                if *n == "SSN" {
                                    prop_assert_ne!(short(a), "keep", "{}", sql);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
