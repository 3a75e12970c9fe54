//! The runtime's modules import one way, in the direction the data flows
//! (docs/ARCHITECTURE.md, "Modules"): this reads every `crate::<module>` reference in `src/`
//! (imports, paths and doc links alike) and fails on a cycle between top-level modules, and on
//! an import from a layer below (the layers are the groups of `mod` lines in `lib.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The top-level module of a file under `src/`, or `None` for `lib.rs`.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_owned()),
        None => Some(first),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::name` in `source` where `name` is one of `modules`, grouped imports
/// (`crate::{a, b::c}`) included.
fn references(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => {
                // The names at the group's top level: depth 0 between its braces.
                let mut depth = 0;
                let end = group
                    .find(|c| {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => return true,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        false
                    })
                    .unwrap_or(group.len());
                let mut depth = 0;
                group[..end]
                    .split(|c| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            ',' if depth == 0 => return true,
                            _ => {}
                        }
                        false
                    })
                    .collect()
            }
            None => vec![rest],
        };
        for name in names {
            let name: String = name
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn grouped_imports_are_read() {
    let modules: BTreeSet<String> = ["api", "scope", "error"].map(String::from).into();
    let found = references("use crate::{api::x, scope::{a, b}, other};", &modules);
    assert_eq!(found, ["api", "scope"].map(String::from).into());
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file.strip_prefix(&src).unwrap()) else {
            continue;
        };
        let source = fs::read_to_string(file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for target in references(&source, &modules) {
            if target != module {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle through `start`, as the list of modules on it.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in graph.get(at).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(cycle) = cycle_from(graph, start, next, path, seen) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn the_runtime_modules_import_one_way() {
    let graph = graph();
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    let mut cycles = Vec::new();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(cycle) = cycle_from(&graph, module, module, &mut path, &mut BTreeSet::new()) {
            cycles.push(cycle.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn testing_support_sits_on_top() {
    let graph = graph();
    let users: Vec<&String> = graph
        .iter()
        .filter(|(_, edges)| edges.contains("testing"))
        .map(|(module, _)| module)
        .collect();
    assert!(
        users.is_empty(),
        "the core must not import testing: {users:?}"
    );
}

/// The groups of `mod` declarations in `lib.rs`, top to bottom (blank lines separate them).
fn layers() -> Vec<BTreeSet<String>> {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut layers = vec![BTreeSet::new()];
    for line in lib.lines().map(str::trim) {
        if line.is_empty() {
            if !layers.last().unwrap().is_empty() {
                layers.push(BTreeSet::new());
            }
        } else if let Some(name) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'))
        {
            layers.last_mut().unwrap().insert(name.to_owned());
        }
    }
    layers.retain(|layer| !layer.is_empty());
    layers
}

#[test]
fn each_module_imports_only_from_its_own_layer_or_those_above() {
    let graph = graph();
    let layers = layers();
    let layer_of = |module: &str| layers.iter().position(|l| l.contains(module));
    assert!(
        layers.len() >= 5,
        "lib.rs lists its modules in layers: {layers:?}"
    );
    let mut upward = Vec::new();
    for (module, edges) in &graph {
        let from = layer_of(module).unwrap_or_else(|| panic!("{module} is not in lib.rs"));
        for target in edges {
            let to = layer_of(target).unwrap_or_else(|| panic!("{target} is not in lib.rs"));
            if to > from {
                upward.push(format!("{module} (layer {from}) -> {target} (layer {to})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer of lib.rs:\n{}",
        upward.join("\n")
    );
}
