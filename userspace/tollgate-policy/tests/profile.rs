//! The `safe_harbor` mask profile: `mask: [{ profile: safe_harbor }]` expands into directives
//! over the 18 HIPAA Safe Harbor identifiers; explicit entries override it for their tags.

use std::collections::BTreeMap;

use tollgate_policy::{
    analyze, safe_harbor_method, Action, ColumnAction, EvalInput, Identity, MaskMethod, MaskPlan,
    NameContext, Policy, PolicyError, ResultColumnMeta, SAFE_HARBOR_TAGS,
};

/// `__MASK__` is replaced by the rule's `mask` entries (one per line, already indented).
const POLICY: &str = r#"version: 1
classifications:
  - columns: ["CLINICAL.EHR.PATIENTS.DOB"]
    tags: [phi.dob]
  - columns: ["CLINICAL.EHR.PATIENTS.LAST_IP"]
    tags: [phi.ip]
  - columns: ["CLINICAL.EHR.PATIENTS.MRN"]
    tags: [phi.mrn]
  - columns: ["CLINICAL.EHR.PATIENTS.ZIP"]
    tags: [phi.zip]
  - columns: ["CLINICAL.EHR.PATIENTS.ICD10"]
    tags: [phi.icd10]
rules:
  - id: safe-harbor-reads
    match:
      statements: [select]
    action: mask
    mask:
__MASK__
"#;

fn policy(mask: &str) -> Result<Policy, PolicyError> {
    Policy::compile(&POLICY.replace("__MASK__", mask), "test.yaml")
}

fn plan(p: &Policy, sql: &str) -> (String, MaskPlan) {
    let analysis = analyze(sql, &NameContext::new("CLINICAL", "EHR"));
    let d = p.evaluate(&EvalInput {
        identity: &Identity::default(),
        analysis: analysis.as_ref(),
    });
    match d.action {
        Action::Mask { plan } => (d.rule_id, plan),
        other => panic!("{sql}: expected mask, got {other:?}"),
    }
}

/// Tag → (method, rule id) of every tag directive in the plan; a tag twice is a failure.
fn tag_methods(plan: &MaskPlan) -> BTreeMap<String, (MaskMethod, String)> {
    let mut out = BTreeMap::new();
    for d in &plan.directives {
        assert!(d.columns.is_empty(), "{d:?}");
        for t in &d.tags {
            let old = out.insert(t.clone(), (d.method, d.rule_id.clone()));
            assert!(old.is_none(), "tag {t} in two directives: {plan:?}");
        }
    }
    out
}

fn err(mask: &str) -> String {
    policy(mask).expect_err("should fail").to_string()
}

#[test]
fn safe_harbor_profile_compiles_to_the_18_identifiers() {
    let p = policy("      - { profile: safe_harbor }").unwrap_or_else(|e| panic!("{e}"));
    let (_, plan) = plan(&p, "SELECT dob FROM patients");
    let got = tag_methods(&plan);
    // Written out independently of SAFE_HARBOR_TAGS, so a wrong vocabulary fails here.
    let generalize = ["phi.address", "phi.zip", "phi.date", "phi.dob", "phi.age"];
    let redact = [
        "phi.name",
        "phi.phone",
        "phi.fax",
        "phi.email",
        "phi.ssn",
        "phi.mrn",
        "phi.health_plan",
        "phi.account",
        "phi.license",
        "phi.vehicle",
        "phi.device",
        "phi.url",
        "phi.ip",
        "phi.biometric",
        "phi.photo",
        "phi.other_id",
    ];
    let mut expected = BTreeMap::new();
    for t in generalize {
        expected.insert(
            t.to_string(),
            (MaskMethod::Generalize, "safe-harbor-reads".to_string()),
        );
    }
    for t in redact {
        expected.insert(
            t.to_string(),
            (MaskMethod::Redact, "safe-harbor-reads".to_string()),
        );
    }
    assert_eq!(got, expected);
    assert!(got.len() >= 18);
    // The public vocabulary says the same, and covers every one of the 18 identifiers.
    assert_eq!(SAFE_HARBOR_TAGS.len(), expected.len());
    for (tag, identifier) in SAFE_HARBOR_TAGS {
        assert_eq!(
            safe_harbor_method(tag),
            Some(expected[*tag].0),
            "{tag}: {identifier}"
        );
    }
    let numbered: std::collections::BTreeSet<&str> = SAFE_HARBOR_TAGS
        .iter()
        .filter_map(|(_, text)| text.strip_prefix('(')?.split(')').next())
        .collect();
    assert_eq!(numbered.len(), 18, "{numbered:?}");
    assert_eq!(safe_harbor_method("phi.icd10"), None);
}

#[test]
fn explicit_entries_override_the_profile_for_their_tags() {
    // Before the profile and after it: either way the explicit method stands.
    for mask in [
        "      - { tags: [phi.mrn], method: token }\n      - { profile: safe_harbor }",
        "      - { profile: safe_harbor }\n      - { tags: [phi.mrn], method: token }",
    ] {
        let p = policy(mask).unwrap_or_else(|e| panic!("{e}"));
        let (rule_id, plan) = plan(&p, "SELECT mrn, last_ip FROM patients");
        let got = tag_methods(&plan);
        assert_eq!(got["phi.mrn"].0, MaskMethod::Token, "{mask}");
        assert_eq!(got["phi.ip"].0, MaskMethod::Redact, "{mask}");
        assert_eq!(got.len(), SAFE_HARBOR_TAGS.len(), "{mask}");
        assert_eq!(
            p.directive_for_tag(&plan, "phi.mrn").map(|d| d.method),
            Some(MaskMethod::Token)
        );
        let actions = p.resolve_result_columns(
            &rule_id,
            &plan,
            &[
                ResultColumnMeta {
                    name: "MRN",
                    ..Default::default()
                },
                ResultColumnMeta {
                    name: "LAST_IP",
                    ..Default::default()
                },
            ],
        );
        let methods: Vec<_> = actions
            .iter()
            .map(|a| match a {
                ColumnAction::Mask { method, .. } => Some(*method),
                _ => None,
            })
            .collect();
        assert_eq!(
            methods,
            [Some(MaskMethod::Token), Some(MaskMethod::Redact)],
            "{mask}"
        );
    }
    // A weaker explicit method for a generalised tag stands too (partial DOB is the
    // policy author's call), and the other generalised tags keep theirs.
    let p = policy(
        "      - { profile: safe_harbor }\n      - { tags: [phi.dob], method: partial, keep_last: 2 }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, plan) = plan(&p, "SELECT dob FROM patients");
    let got = tag_methods(&plan);
    assert_eq!(got["phi.dob"].0, MaskMethod::Partial);
    assert_eq!(got["phi.zip"].0, MaskMethod::Generalize);
}

#[test]
fn column_entries_combine_with_the_profile_strictest_wins() {
    let p = policy(
        "      - { profile: safe_harbor }\n      - { columns: [\"CLINICAL.EHR.PATIENTS.DOB\"], method: \"null\" }\n      - { columns: [\"CLINICAL.EHR.PATIENTS.LAST_IP\"], method: partial, keep_last: 3 }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (rule_id, plan) = plan(&p, "SELECT dob, last_ip FROM patients");
    let actions = p.resolve_result_columns(
        &rule_id,
        &plan,
        &[
            ResultColumnMeta {
                name: "DOB",
                ..Default::default()
            },
            ResultColumnMeta {
                name: "LAST_IP",
                ..Default::default()
            },
        ],
    );
    assert!(
        matches!(
            &actions[..],
            [
                ColumnAction::Mask {
                    method: MaskMethod::Null,
                    ..
                },
                ColumnAction::Mask {
                    method: MaskMethod::Redact,
                    keep_last: None,
                    ..
                }
            ]
        ),
        "{actions:?}"
    );
}

#[test]
fn resolve_result_columns_through_the_profile() {
    let p = policy("      - { profile: safe_harbor }").unwrap_or_else(|e| panic!("{e}"));
    let sql = "SELECT dob, last_ip, zip, icd10, id, YEAR(dob) AS y FROM patients";
    let (rule_id, plan) = plan(&p, sql);
    assert_eq!(rule_id, "safe-harbor-reads");
    let names = ["DOB", "LAST_IP", "ZIP", "ICD10", "ID", "Y"];
    let metas: Vec<ResultColumnMeta<'_>> = names
        .iter()
        .map(|n| ResultColumnMeta {
            name: n,
            ..Default::default()
        })
        .collect();
    let actions = p.resolve_result_columns(&rule_id, &plan, &metas);
    let shown: Vec<(Option<MaskMethod>, Option<String>, Vec<String>)> = actions
        .iter()
        .map(|a| match a {
            ColumnAction::Mask {
                method,
                rule_id,
                tags,
                ..
            } => (Some(*method), Some(rule_id.clone()), tags.clone()),
            ColumnAction::Keep => (None, None, Vec::new()),
            ColumnAction::Detect { .. } => panic!("{a:?}"),
        })
        .collect();
    let rule = || Some("safe-harbor-reads".to_string());
    assert_eq!(
        shown,
        vec![
            (
                Some(MaskMethod::Generalize),
                rule(),
                vec!["phi.dob".to_string()]
            ),
            (Some(MaskMethod::Redact), rule(), vec!["phi.ip".to_string()]),
            (
                Some(MaskMethod::Generalize),
                rule(),
                vec!["phi.zip".to_string()]
            ),
            // Not one of the 18 identifiers, but classified: redacted (fail closed).
            (
                Some(MaskMethod::Redact),
                rule(),
                vec!["phi.icd10".to_string()]
            ),
            (None, None, Vec::new()),
            // A transformed date escalates generalize to redact.
            (
                Some(MaskMethod::Redact),
                rule(),
                vec!["phi.dob".to_string()]
            ),
        ]
    );
}

#[test]
fn unknown_profile_is_an_error_with_its_line() {
    let e = err("      - { tags: [phi.mrn], method: token }\n      - { profile: safe_harbour }");
    assert!(
        e.contains(
            "test.yaml:20: rules[0].mask[1].profile: unknown mask profile `safe_harbour`; \
             known profiles: safe_harbor"
        ),
        "{e}"
    );
    // Block style.
    let e = err("      - profile: hipaa\n");
    assert!(
        e.contains("test.yaml:19: rules[0].mask[0].profile: unknown mask profile `hipaa`"),
        "{e}"
    );
}

#[test]
fn profile_mixed_with_a_directive_is_an_error_with_its_line() {
    let e = err(
        "      - { tags: [phi.dob], method: generalize }\n      - { profile: safe_harbor, tags: [phi.mrn], method: token }",
    );
    assert!(
        e.contains(
            "test.yaml:20: rules[0].mask[1]: `profile` stands alone in its entry; it cannot be \
             combined with `tags`, `method`"
        ),
        "{e}"
    );
    let e = err("      - profile: safe_harbor\n        columns: [\"*.*.PATIENTS.SSN\"]\n");
    assert!(
        e.contains("test.yaml:19: rules[0].mask[0]: `profile` stands alone")
            && e.contains("combined with `columns`"),
        "{e}"
    );
    let e = err("      - { profile: safe_harbor, keep_last: 4 }");
    assert!(
        e.contains("test.yaml:19: rules[0].mask[0]: `profile` stands alone")
            && e.contains("combined with `keep_last`"),
        "{e}"
    );
}

#[test]
fn an_entry_without_method_or_profile_is_an_error_with_its_line() {
    let e = err("      - { profile: safe_harbor }\n      - { tags: [phi.mrn] }");
    assert!(
        e.contains("test.yaml:20: rules[0].mask[1].method: name a `method`")
            && e.contains("safe_harbor"),
        "{e}"
    );
}

#[test]
fn profile_tags_need_no_classification_but_explicit_tags_do() {
    // phi.fax is not declared: fine in the profile, an error in an explicit entry.
    assert!(policy("      - { profile: safe_harbor }").is_ok());
    let e = err("      - { profile: safe_harbor }\n      - { tags: [phi.fax], method: token }");
    assert!(
        e.contains("test.yaml:20: rules[0].mask[1].tags[0]: tag `phi.fax` is not declared"),
        "{e}"
    );
}

#[test]
fn only_mask_rules_take_a_profile() {
    let text = "version: 1\nrules:\n  - id: a\n    action: allow\n    mask:\n      - { profile: safe_harbor }\n";
    let e = Policy::compile(text, "t.yaml").unwrap_err().to_string();
    assert!(
        e.contains("t.yaml:5: rules[0].mask: only mask rules take `mask` directives"),
        "{e}"
    );
}
