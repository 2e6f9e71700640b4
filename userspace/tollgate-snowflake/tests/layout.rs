//! The layout the architecture promises, checked on the sources: the layer's modules import
//! each other without cycles (phases read in order, leaves depend on nothing), and the generic
//! proxy names no Snowflake type.

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
