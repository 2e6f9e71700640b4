//! Any text must give an analysis or an error, never a panic; the shipped HIPAA policy must
//! decide it, deterministically; text that cannot be analysed must never be allowed; and the
//! audit forms must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_policy::{
    analyze, fingerprint, redact_literals, Action, EvalInput, Identity, NameContext, Policy,
    SnowflakeIdentity,
};

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Policy::compile(include_str!("../../policies/hipaa.yaml"), "hipaa.yaml")
            .expect("shipped policy compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = NameContext::new("CLINICAL", "PUBLIC");
    let analysis = analyze(sql, &ctx);
    assert_eq!(analysis, analyze(sql, &ctx), "analysis is deterministic");
    let identity = Identity {
        snowflake: SnowflakeIdentity {
            role: Some("AGENT_FUZZ".into()),
            user: Some("FUZZ".into()),
            ..SnowflakeIdentity::default()
        },
        ..Identity::default()
    };
    let input = EvalInput {
        identity: &identity,
        analysis: analysis.as_ref(),
    };
    let decision = policy().evaluate(&input);
    assert_eq!(
        decision,
        policy().evaluate(&input),
        "evaluation is deterministic"
    );
    if analysis.is_err() {
        assert!(
            matches!(decision.action, Action::Deny { .. }),
            "{decision:?}"
        );
    }
    let _ = fingerprint(sql);
    let _ = redact_literals(sql);
});
