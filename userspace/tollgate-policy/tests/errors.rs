//! Policy errors name the file, the line and the field, and say what is expected.

use tollgate_policy::{Policy, PolicyError};

fn err(text: &str) -> String {
    Policy::compile(text, "test.yaml")
        .expect_err("should fail")
        .to_string()
}

#[test]
fn invalid_glob_names_file_line_and_field() {
    let text = "version: 1
rules:
  - id: first
    action: allow
  - id: second
    match:
      statements: [select]
      tables: [\"CLINICAL.PUBLIC\"]
    action: allow
";
    let e = err(text);
    assert!(e.contains("test.yaml:8: rules[1].match.tables[0]: invalid glob `CLINICAL.PUBLIC`: expected 3 dot-separated segments"), "{e}");
}

#[test]
fn unknown_fields_and_variants_come_from_serde_with_a_line() {
    let e = err("version: 1\nrules:\n  - id: a\n    action: allow\n    matchh: {}\n");
    assert!(e.starts_with("test.yaml:5:"), "{e}");
    assert!(e.contains("unknown field `matchh`"), "{e}");
    let e = err("version: 1\nrules:\n  - id: a\n    action: permit\n");
    assert!(
        e.starts_with("test.yaml:4:") && e.contains("unknown variant `permit`"),
        "{e}"
    );
    let e = err("version: 1\ndefaults: { unparseable_sql: mask }\n");
    assert!(e.contains("unknown variant `mask`"), "{e}");
    let e = err("version: 1\ndefaults:\n  unknown_lineage: allow\n");
    assert!(
        e.starts_with("test.yaml:3:")
            && e.contains("unknown variant `allow`, expected one of `deny`, `mask_all`, `detect`"),
        "{e}"
    );
    let e = err("version: 1\ndefaults:\n  masked_predicates: mask\n");
    assert!(
        e.starts_with("test.yaml:3:") && e.contains("expected `deny` or `allow`"),
        "{e}"
    );
    let e = err("version: 1\ndefaults:\n  classified_copies: require_approval\n");
    assert!(
        e.starts_with("test.yaml:3:") && e.contains("expected `deny` or `allow`"),
        "{e}"
    );
    let e = err("version: 1\nrules:\n  - action: allow\n");
    assert!(e.contains("missing field `id`"), "{e}");
}

#[test]
fn all_validation_problems_are_listed() {
    let text = "version: 2
classifications:
  - columns: [\"A.B.C\"]
    tags: [PHI]
rules:
  - id: no-reason
    action: deny
  - id: dup
    match:
      statements: [selectt]
      snowflake: { role: [] }
    action: allow
  - id: dup
    match:
      tags: [\"phi.nothing\"]
    action: mask
    mask:
      - { tags: [phi.undeclared], method: partial }
";
    let Err(PolicyError::Invalid { issues, .. }) = Policy::compile(text, "t.yaml") else {
        panic!("expected Invalid")
    };
    let got: Vec<String> = issues.iter().map(ToString::to_string).collect();
    let expect = [
        "1: version: unsupported version 2",
        "3: classifications[0].columns[0]: invalid column glob `A.B.C`",
        "4: classifications[0].tags[0]: invalid tag `PHI`",
        "7: rules[0].reason: deny and require_approval rules need a `reason`",
        "10: rules[1].match.statements[0]: unknown statement kind `selectt`",
        "11: rules[1].match.snowflake.role: an empty list matches nothing",
        "13: rules[2].id: duplicate rule id `dup`",
        "15: rules[2].match.tags[0]: `phi.nothing` matches no tag",
        "18: rules[2].mask[0].tags[0]: tag `phi.undeclared` is not declared",
        "18: rules[2].mask[0].keep_last: method partial needs keep_last",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing `{e}` in {got:#?}"
        );
    }
}

#[test]
fn load_reports_missing_files() {
    let e = tollgate_policy::load(std::path::Path::new("/nonexistent/p.yaml")).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/p.yaml"));
}

/// The chain as a reporter prints it (anyhow's `{:#}`: each message, then its source's), with
/// no de-duplication: the os error must be in it once, after the file.
#[test]
fn a_missing_file_prints_its_os_error_once_in_the_chain() {
    let e = tollgate_policy::load(std::path::Path::new("/nonexistent/p.yaml")).unwrap_err();
    let chain: Vec<String> =
        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect();
    let text = chain.join(": ");
    assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    assert!(
        text.starts_with("cannot read policy file /nonexistent/p.yaml: No such file"),
        "{text}"
    );
}

#[test]
fn a_minimal_policy_compiles() {
    let p = Policy::compile("version: 1\n", "min.yaml").unwrap();
    assert_eq!(p.rule_count(), 0);
}

#[test]
fn byte_caps_parse_units_and_refuse_nonsense() {
    let ok = "version: 1
rules:
  - id: small
    action: allow
    max_bytes: 64 MiB
  - id: tiny
    match: { statements: [show] }
    action: allow
    max_bytes: 4096
";
    Policy::compile(ok, "test.yaml").expect("sizes with and without units compile");
    let e = err("version: 1\nrules:\n  - id: a\n    action: allow\n    max_bytes: 12 parsecs\n");
    assert!(
        e.starts_with("test.yaml:5:") && e.contains("unknown unit \"parsecs\""),
        "{e}"
    );
    let e = err("version: 1\nrules:\n  - id: a\n    action: allow\n    max_bytes: 0\n");
    assert!(
        e.contains("rules[0].max_bytes") && e.contains("at least 1 byte"),
        "{e}"
    );
    let e = err(
        "version: 1\nrules:\n  - id: a\n    action: deny\n    reason: no\n    max_bytes: 1 KiB\n",
    );
    assert!(e.contains("remove max_bytes"), "{e}");
}

#[test]
fn audit_settings_are_checked() {
    let ok = "version: 1
rules:
  - id: a
    action: allow
    audit: { sql: full, results: masked, max_result_rows: 20 }
";
    Policy::compile(ok, "test.yaml").expect("compiles");
    let e = err("version: 1\nrules:\n  - id: a\n    action: allow\n    audit: { sql: verbatim }\n");
    assert!(e.contains("unknown variant `verbatim`"), "{e}");
    let e = err(
        "version: 1\nrules:\n  - id: a\n    action: deny\n    reason: no\n    audit: { results: masked }\n",
    );
    assert!(e.contains("rules[0].audit.results"), "{e}");
    let e = err(
        "version: 1\nrules:\n  - id: a\n    action: allow\n    audit: { max_result_rows: 5 }\n",
    );
    assert!(e.contains("only used with `results: masked`"), "{e}");
}
