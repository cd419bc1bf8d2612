//! The crate's layout, as `src/lib.rs` states it, checked against the code:
//! every top-level module of `src/` is in the Layout list, each module uses
//! only its own folder and what the list puts below it, and no modules
//! import each other in a circle, in the server or in the verifier.
//!
//! Reads source text, so it sees `crate::` paths (in `use` lines and in
//! code) and the relative `use` lines of a folder's `mod.rs`. Test modules
//! (from a column-0 `#[cfg(test)]` to the end of a file, and files named
//! `tests.rs`) may use anything, and comments are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate's modules: each module's path (`fanout::registry`; a folder's
/// `mod.rs` is the folder's path) and the modules its code names.
type Imports = BTreeMap<String, BTreeSet<String>>;

/// The numbered Layout list of `lib.rs`'s crate doc: the first name in
/// backticks of each item, top first.
fn layout_order(lib: &str) -> Vec<String> {
    let mut order = Vec::new();
    let mut in_layout = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        // Items start one space in; deeper lines continue an item.
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with('#') {
            in_layout = doc.trim() == "# Layout";
            continue;
        }
        let numbered = doc
            .split_once(". ")
            .filter(|(number, _)| number.parse::<u32>().is_ok());
        if let (true, Some((_, item))) = (in_layout, numbered) {
            let name = item.split('`').nth(1).expect("a name in backticks");
            order.push(name.to_owned());
        }
    }
    order
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The module path of `file` under `root` (`src/fanout/mod.rs` is
/// `fanout`, `src/fanout/table.rs` is `fanout::table`).
fn module_of(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("under the root");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file that is not tests, without its comments.
fn code_of(text: &str) -> String {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` (of module `module`) names: by `crate::` paths, and
/// (in a folder's `mod.rs`, `folder` true) relative `use child::...` lines. A path is taken as deep
/// as it names modules known to exist (`crate::fanout::Registry` names
/// `fanout`, `crate::fanout::table::Sink` names `fanout::table`).
fn imports_of(
    code: &str,
    module: &str,
    folder: bool,
    modules: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut paths: Vec<String> = code
        .match_indices("crate::")
        .map(|(at, _)| path_at(&code[at + "crate::".len()..]))
        .collect();
    // `super::` is the parent module: the crate root for a top-level one.
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    for (at, _) in code.match_indices("super::") {
        let path = path_at(&code[at + "super::".len()..]);
        paths.push(if parent.is_empty() {
            path
        } else {
            format!("{parent}::{path}")
        });
    }
    for line in code.lines().filter(|_| folder) {
        let Some((_, rest)) = line.trim().split_once("use ") else {
            continue;
        };
        paths.push(format!("{module}::{}", path_at(rest)));
    }
    for path in paths {
        let segments: Vec<&str> = path.split("::").collect();
        let deepest = (1..=segments.len())
            .rev()
            .map(|depth| segments[..depth].join("::"))
            .find(|candidate| modules.contains(candidate));
        if let Some(target) = deepest.filter(|target| target != module) {
            named.insert(target);
        }
    }
    named
}

/// The `a::b::c` path at the start of `text`.
fn path_at(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

/// Every module of the crate at `root` (its `lib.rs` or `main.rs` aside,
/// and test files), with what each names.
fn imports(root: &Path) -> Imports {
    let files: Vec<PathBuf> = sources(root)
        .into_iter()
        .filter(|file| {
            let name = file.file_name().and_then(|name| name.to_str());
            !matches!(name, Some("lib.rs" | "main.rs" | "tests.rs"))
        })
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|file| module_of(root, file)).collect();
    files
        .iter()
        .map(|file| {
            let module = module_of(root, file);
            let text = std::fs::read_to_string(file).expect("readable source");
            let folder = file.file_name().is_some_and(|name| name == "mod.rs");
            let named = imports_of(&code_of(&text), &module, folder, &modules);
            (module, named)
        })
        .collect()
}

/// A cycle among `imports`, as the modules along it, if there is one.
fn find_cycle(imports: &Imports) -> Option<Vec<String>> {
    /// Depth-first search; `path` is the current chain.
    fn visit<'a>(
        module: &'a str,
        imports: &'a Imports,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[start..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in imports.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, imports, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    imports
        .keys()
        .find_map(|module| visit(module, imports, &mut Vec::new(), &mut done))
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_top_level_module_is_in_the_layout_list() {
    let root = manifest_dir().join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let order = layout_order(&lib);
    assert!(
        order.len() >= 10,
        "lib.rs's Layout list was not found: {order:?}"
    );
    let top: BTreeSet<String> = imports(&root)
        .keys()
        .map(|module| module.split("::").next().unwrap_or_default().to_owned())
        .collect();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        top, listed,
        "src/'s top-level modules and lib.rs's Layout list differ"
    );
}

#[test]
fn imports_go_down_the_layout_list() {
    let root = manifest_dir().join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let order = layout_order(&lib);
    let rank = |module: &str| {
        let top = module.split("::").next().unwrap_or_default();
        order.iter().position(|name| name == top)
    };
    let mut against = Vec::new();
    for (module, named) in imports(&root) {
        for target in named {
            if let (Some(from), Some(to)) = (rank(&module), rank(&target)) {
                if to < from {
                    against.push(format!("{module} uses {target}"));
                }
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against lib.rs's Layout order (a module uses only its own folder and what \
         the list puts below it):\n{}",
        against.join("\n")
    );
}

#[test]
fn no_module_of_the_server_imports_itself_in_a_circle() {
    let imports = imports(&manifest_dir().join("src"));
    assert!(
        imports.contains_key("fanout::registry"),
        "{:?}",
        imports.keys()
    );
    if let Some(cycle) = find_cycle(&imports) {
        panic!(
            "an import cycle among src/'s modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn no_module_of_the_verifier_imports_itself_in_a_circle() {
    let root = manifest_dir().join("crates/verify/src");
    let imports = imports(&root);
    assert!(imports.len() > 10, "{:?}", imports.keys());
    if let Some(cycle) = find_cycle(&imports) {
        panic!(
            "an import cycle among the verifier's modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_checks_see_an_import_against_the_order_and_a_cycle() {
    let modules: BTreeSet<String> = ["fanout::router", "fanout::registry", "fanout"]
        .into_iter()
        .map(String::from)
        .collect();
    let code =
        "use crate::fanout::registry::Registry;\nlet x = crate::fanout::Stats; // crate::ops";
    let named = imports_of(code, "fanout::router", false, &modules);
    assert_eq!(
        named,
        BTreeSet::from(["fanout::registry".into(), "fanout".into()])
    );
    let mut cyclic = Imports::new();
    cyclic.insert("a".into(), BTreeSet::from(["b".into()]));
    cyclic.insert("b".into(), BTreeSet::from(["a".into()]));
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    let lib = "//! # Layout\n//!\n//! 1. `top`: x\n//! 2. [`config`]: y\n//!    3. not\n//! # Next";
    assert_eq!(layout_order(lib), ["top", "config"]);
}

#[test]
fn settings_are_a_leaf_and_config_imports_no_component() {
    let imports = imports(&manifest_dir().join("src"));
    let config: Vec<&String> = imports["config"].iter().collect();
    assert!(
        config.iter().all(|module| *module == "settings"),
        "config uses more than settings: {config:?}"
    );
    assert!(
        imports["settings"].is_empty(),
        "settings uses {:?}",
        imports["settings"]
    );
}
