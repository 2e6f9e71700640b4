//! The layout the architecture promises, checked on the sources: the layer's modules import
//! each other without cycles (phases read in order, leaves depend on nothing), the generic
//! proxy names no Snowflake type, and the identity types (`tollgate-identity`) and the audit
//! trail sit below the data path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out
}

/// `crate::x` paths a module names (outside comments).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn the_layer_s_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph: BTreeMap<String, BTreeSet<String>> = sources(&src)
        .into_iter()
        .filter(|(name, _)| name != "lib")
        .map(|(name, text)| {
            let mut deps = imports(&text);
            deps.remove(&name);
            (name, deps)
        })
        .collect();
    assert!(graph.len() > 10, "the phases are modules: {graph:?}");
    // Kahn's algorithm: whatever is left over sits on a cycle.
    let mut left = graph.clone();
    loop {
        let ready: Vec<String> = left
            .iter()
            .filter(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in ready {
            left.remove(&n);
        }
    }
    assert!(left.is_empty(), "modules on an import cycle: {left:?}");
    // Leaves stay leaves.
    for leaf in ["reply", "plan", "config", "pool", "sync"] {
        assert!(graph[leaf].is_empty(), "{leaf} imports {:?}", graph[leaf]);
    }
}

#[test]
fn the_generic_proxy_names_no_snowflake_type() {
    let proxy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tollgate-proxy/src");
    for (name, text) in sources(&proxy) {
        for forbidden in [
            "tollgate_snowflake",
            "tollgate_wire::snowflake",
            "tollgate_policy",
            "tollgate_audit",
            "tollgate_mask",
        ] {
            assert!(
                !text.contains(forbidden),
                "tollgate-proxy/src/{name}.rs names {forbidden}"
            );
        }
    }
    let manifest = std::fs::read_to_string(proxy.join("../Cargo.toml")).unwrap();
    for dep in [
        "tollgate-snowflake",
        "tollgate-policy",
        "tollgate-audit",
        "tollgate-mask",
    ] {
        assert!(!manifest.contains(dep), "tollgate-proxy depends on {dep}");
    }
}

/// The Tollgate crates a manifest depends on (any dependency table), by package name.
fn tollgate_deps(manifest: &str) -> BTreeSet<String> {
    manifest
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("tollgate-") && l.contains('='))
        .map(|l| l.split(['=', ' ', '.']).next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn the_identity_types_depend_on_no_other_tollgate_crate() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tollgate-identity");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let deps = tollgate_deps(&manifest);
    assert!(deps.is_empty(), "tollgate-identity depends on {deps:?}");
    for (name, text) in sources(&crate_dir.join("src")) {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect();
        assert!(
            !code.contains("tollgate_"),
            "tollgate-identity/src/{name}.rs names another Tollgate crate"
        );
    }
    // And the layers above share it rather than their own copies.
    for user in [
        "tollgate-proxy",
        "tollgate-policy",
        "tollgate-audit",
        "tollgate-snowflake",
    ] {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../{user}/Cargo.toml")),
        )
        .unwrap();
        assert!(
            tollgate_deps(&manifest).contains("tollgate-identity"),
            "{user} does not depend on tollgate-identity"
        );
    }
}

#[test]
fn the_audit_trail_depends_on_no_data_path_crate() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tollgate-audit/Cargo.toml"),
    )
    .unwrap();
    let deps = tollgate_deps(&manifest);
    assert_eq!(
        deps,
        BTreeSet::from(["tollgate-identity".to_owned()]),
        "tollgate-audit's Tollgate dependencies"
    );
}
