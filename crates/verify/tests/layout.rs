//! The verifier's modules use each other one way: no cycle, however long.
//!
//! Rust allows modules of one crate to import each other in a circle; we
//! keep the rule Go enforces by hand, and by this test. It reads `src/`
//! (one file per module, no folders), takes every `crate::x` and `super::x`
//! in code outside `#[cfg(test)]` (comments and doc links do not count:
//! they import nothing), and fails naming the first cycle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crate's modules and the modules each one uses, by name; `lib.rs`
/// (which declares them all) and `main.rs` (another crate) are left out.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_stem().and_then(|stem| stem.to_str());
        match name {
            Some("lib" | "main") | None => continue,
            Some(name) if path.extension().is_some_and(|ext| ext == "rs") => {
                let text = std::fs::read_to_string(&path).expect("a module is readable");
                sources.insert(name.to_owned(), code_outside_tests(&text));
            }
            Some(_) => continue,
        }
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .into_iter()
        .map(|(name, code)| {
            let used = used_modules(&code, &modules)
                .into_iter()
                .filter(|used| *used != name)
                .collect();
            (name, used)
        })
        .collect()
}

/// `text` up to its `#[cfg(test)]` module, without `//` comments (doc
/// comments included). Good enough for our sources: no `//` in a string
/// literal names a module.
fn code_outside_tests(text: &str) -> String {
    let end = text.find("\n#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|line| line.find("//").map_or(line, |comment| &line[..comment]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names in `modules` that `code` reaches by `crate::` or `super::`,
/// directly (`super::check::Checker`) or in a group (`super::{check, line}`).
fn used_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let names = match rest.strip_prefix('{') {
                Some(group) => &group[..group.find('}').unwrap_or(group.len())],
                None => rest,
            };
            for word in names.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if modules.contains(word) {
                    used.insert(word.to_owned());
                }
                if rest.starts_with('{') {
                    continue;
                }
                // Outside a group only the first path segment is a module.
                break;
            }
        }
    }
    used
}

/// A cycle in `graph`, as the modules along it (the first repeated at the
/// end), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    /// Depth-first from `module`; `path` is the current chain, `done` the
    /// modules fully explored (no cycle through them).
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for used in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(used, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_use_each_other_one_way() {
    let graph = module_graph();
    assert!(graph.len() > 10, "found only {:?}", graph.keys());
    // The edges the reader of lib.rs's layout expects, as a sanity check
    // that the scan sees imports at all.
    assert!(graph["source"].contains("opening"), "{graph:?}");
    assert!(graph["session"].contains("check"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(name, used)| {
        let used = used.into_iter().map(str::to_owned).collect();
        (name.to_owned(), used)
    })
    .collect();
    assert_eq!(
        find_cycle(&graph).map(|cycle| cycle.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
    let modules: BTreeSet<String> = ["check", "line", "shared"].map(str::to_owned).into();
    let code = "use super::{check::Checker, line};\nuse crate::shared::Shared;\nx::line";
    assert_eq!(used_modules(code, &modules), modules);
}
