//! Policy evaluation and SQL analysis timings, printed as a markdown table.
//!
//! `cargo bench -p tollgate-policy`. Evaluation: a generated 200-rule policy whose matching
//! rule is the last one a SELECT can reach (the worst case for first-match), against a trivial
//! 1-rule policy in the same run. Analysis: per statement for a mix of shapes. Each sample
//! times one call with `Instant` (~20-30 ns of the figure is the clock itself).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tollgate_policy::{
    analyze, EvalInput, Identity, NameContext, Policy, ProcessIdentity, SnowflakeIdentity,
};

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

fn time<F: FnMut()>(iterations: usize, mut f: F) -> (Duration, Duration) {
    for _ in 0..iterations / 10 {
        f();
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        f();
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn generated_policy(rules: usize) -> Policy {
    let mut text = String::from(
        "version: 1\nclassifications:\n  - columns: [\"CLINICAL.*.PATIENTS.SSN\"]\n    tags: [phi.ssn]\nrules:\n",
    );
    for i in 0..rules.saturating_sub(1) {
        // Same statement kind as the benchmark input, so the kind index cannot skip them; a
        // role that never matches, and table/column/tag conditions to exercise the globs.
        text += &format!(
            "  - id: r{i}\n    match:\n      snowflake: {{ role: [\"ROLE_{i}_*\"], user: [\"svc-{i}\"] }}\n      process: {{ comm: [\"python3\"], cgroup: [\"/agents.slice/*\"] }}\n      statements: [select]\n      tables: [\"CLINICAL.S{i}.*\", \"*.*.T{i}\"]\n      tags: [\"phi.*\"]\n    action: {}\n{}",
            if i % 2 == 0 { "deny" } else { "allow" },
            if i % 2 == 0 { "    reason: generated\n" } else { "" }
        );
    }
    text += "  - id: last\n    match:\n      snowflake: { role: [ANALYST] }\n      statements: [select]\n      tables: [\"CLINICAL.*.*\"]\n    action: allow\n";
    Policy::compile(&text, "generated.yaml").expect("generated policy compiles")
}

fn main() {
    let ctx = NameContext::new("CLINICAL", "PUBLIC");
    let identity = Identity {
        snowflake: SnowflakeIdentity {
            account: Some("ACME".into()),
            user: Some("svc-analytics".into()),
            role: Some("ANALYST".into()),
            ..SnowflakeIdentity::default()
        },
        process: Some(ProcessIdentity {
            comm: "python3".into(),
            cgroup_path: Some("/agents.slice/a.scope".into()),
            uid: 1000,
            ..ProcessIdentity::default()
        }),
        ..Identity::default()
    };
    let select = "SELECT p.id, e.admit_date FROM patients p JOIN ehr.encounters e ON p.id = e.patient_id WHERE p.id = ?";
    let analysis = analyze(select, &ctx).expect("parses");

    let big = generated_policy(200);
    let trivial = generated_policy(1);
    assert_eq!(big.rule_count(), 200);
    let input = EvalInput {
        identity: &identity,
        analysis: Ok(&analysis),
    };
    assert_eq!(big.evaluate(&input).rule_id, "last");
    assert_eq!(trivial.evaluate(&input).rule_id, "last");

    let iterations = 20_000;
    let (eval_big_50, eval_big_99) = time(iterations, || {
        black_box(big.evaluate(black_box(&input)));
    });
    let (eval_one_50, eval_one_99) = time(iterations, || {
        black_box(trivial.evaluate(black_box(&input)));
    });

    let cases = [
        ("simple select", "SELECT name, dob FROM patients WHERE mrn = ?".to_string()),
        (
            "join + CTE",
            "WITH recent AS (SELECT patient_id, max(admit_date) AS last FROM ehr.encounters GROUP BY 1) \
             SELECT p.name, d.icd10_code, r.last FROM patients p JOIN recent r ON r.patient_id = p.id \
             LEFT JOIN ehr.diagnoses d ON d.patient_id = p.id WHERE p.id IN (SELECT patient_id FROM billing.claims WHERE amount > 100)"
                .to_string(),
        ),
        (
            "multi-statement (3)",
            "USE SCHEMA ehr; SELECT count(*) FROM encounters; INSERT INTO analytics.daily SELECT current_date, count(*) FROM diagnoses".to_string(),
        ),
        ("COPY INTO @stage", "COPY INTO @exports/p/ FROM (SELECT * FROM patients) FILE_FORMAT = (TYPE = CSV)".to_string()),
    ];
    let mut analysis_rows = Vec::new();
    for (name, sql) in &cases {
        let statements = analyze(sql, &ctx).expect("parses").statements.len();
        let (p50, p99) = time(5_000, || {
            black_box(analyze(black_box(sql), &ctx).ok());
        });
        analysis_rows.push((name, statements, p50, p99));
    }

    println!(
        "## tollgate-policy ({iterations} evaluations per policy, 5000 analyses per statement)\n"
    );
    println!("| measurement | p50 | p99 |");
    println!("|---|---:|---:|");
    println!("| evaluate, 1-rule policy (baseline) | {eval_one_50:?} | {eval_one_99:?} |");
    println!(
        "| evaluate, 200-rule policy, match at rule 200 | {eval_big_50:?} | {eval_big_99:?} |"
    );
    for (name, statements, p50, p99) in analysis_rows {
        let per = |d: Duration| d / u32::try_from(statements).unwrap_or(1);
        println!(
            "| analyze: {name} (per statement, {statements} stmt) | {:?} | {:?} |",
            per(p50),
            per(p99)
        );
    }
}
