//! The layer rule, checked: the layer list at the top of `lib.rs` is read as written, and
//! every file under `src/` is scanned for the crate modules it names (`crate::m`,
//! `use crate::{m, ..}`, and `super::m` where `super` is the crate root).
//!
//! A list in a comment is only worth reading if it is true, and import circles grow back one
//! convenient `use` at a time; this keeps both in view on every `cargo test`. Test modules
//! inside a file are skipped: what tests reach for does not shape the architecture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One layer of the list.
#[derive(Debug)]
struct Layer {
    number: usize,
    name: String,
    /// Its modules do not import one another.
    alone: bool,
    modules: Vec<String>,
}

fn is_ident(word: &str) -> bool {
    !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !word.starts_with(|c: char| c.is_ascii_digit())
}

/// The layers in `lib`'s comment: lines `// N. name[, alone]: m, m (what it is), ...;`,
/// continued on indented comment lines. Items that are not one word are prose.
fn layers(lib: &str) -> Vec<Layer> {
    let mut entries: Vec<String> = Vec::new();
    let mut in_list = false;
    for line in lib.lines() {
        let Some(text) = line.trim_start().strip_prefix("//") else {
            if in_list {
                break;
            }
            continue;
        };
        if text.trim_start().starts_with("The layers, bottom up") {
            in_list = true;
            continue;
        }
        if !in_list {
            continue;
        }
        let trimmed = text.trim_start();
        let numbered = trimmed
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<usize>().is_ok());
        if numbered {
            entries.push(trimmed.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    entries
        .iter()
        .map(|entry| {
            let (number, rest) = entry.split_once(". ").unwrap();
            let (name, list) = rest
                .split_once(':')
                .unwrap_or_else(|| panic!("layer {number} has no ':' before its modules"));
            let (name, alone) = match name.strip_suffix(", alone") {
                Some(name) => (name, true),
                None => (name, false),
            };
            // Drop the parenthesised notes, then keep the one-word items.
            let mut plain = String::new();
            let mut depth = 0usize;
            for c in list.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    _ if depth == 0 => plain.push(c),
                    _ => {}
                }
            }
            let modules = plain
                .split([',', ';'])
                .map(|item| item.trim().trim_end_matches('.'))
                .filter(|item| is_ident(item))
                .map(str::to_string)
                .collect();
            Layer {
                number: number.parse().unwrap(),
                name: name.trim().to_string(),
                alone,
                modules,
            }
        })
        .collect()
}

/// The modules `lib` declares (`mod m;`, `pub mod m;`).
fn declared(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            is_ident(name).then(|| name.to_string())
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without comment lines and without the modules under a `#[cfg(..test..)]`.
fn strip(text: &str) -> String {
    let text: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .flat_map(|line| [line, "\n"])
        .collect();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(") {
        out.push_str(&rest[..at]);
        let attr_end = rest[at..].find(']').map_or(rest.len(), |e| at + e + 1);
        let attr = &rest[at..attr_end];
        let after = rest[attr_end..].trim_start();
        let is_test = attr
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word == "test");
        let module = after.strip_prefix("pub ").unwrap_or(after);
        // `mod name;`: a module in a file of its own (see `test_module_files`).
        let declaration = module
            .find(';')
            .filter(|&semi| module.find('{').is_none_or(|brace| semi < brace));
        if let Some(semi) = declaration.filter(|_| is_test && module.starts_with("mod ")) {
            // `module` is a suffix of `rest`: skip the declaration.
            rest = &rest[rest.len() - module.len() + semi + 1..];
        } else if is_test && module.starts_with("mod ") {
            // Skip to the brace that closes the module.
            let open = attr_end + rest[attr_end..].find('{').unwrap();
            let mut depth = 0usize;
            let mut end = rest.len();
            for (i, c) in rest[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            rest = &rest[end..];
        } else {
            out.push_str(attr);
            rest = &rest[attr_end..];
        }
    }
    out.push_str(rest);
    out
}

/// The files of the test modules that `text`, the file at `path`, declares out of line
/// (`#[cfg(test)] mod tests;`): `dir/tests.rs` and everything under `dir/tests/`, where `dir`
/// is where `path`'s own submodules live.
fn test_module_files(path: &Path, text: &str) -> Vec<PathBuf> {
    let dir = match path.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "mod.rs") => path.parent().unwrap().to_path_buf(),
        _ => path.with_extension(""),
    };
    let mut found = Vec::new();
    // Whether the attributes just read include a `cfg` naming `test`.
    let mut test_attr = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[") {
            test_attr |= line.starts_with("#[cfg(")
                && line
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .any(|word| word == "test");
            continue;
        }
        if line.starts_with("//") {
            continue;
        }
        let item = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(name) = item.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            if test_attr && is_ident(name) {
                found.push(dir.join(format!("{name}.rs")));
                found.push(dir.join(name));
            }
        }
        test_attr = false;
    }
    found
}

/// The first path segment of each item of the `{..}` group `text` starts with.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item = String::new();
    let mut at_start = true;
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth > 1 {
                    at_start = false;
                }
            }
            '}' | ',' if depth == 1 => {
                if !item.is_empty() {
                    heads.push(std::mem::take(&mut item));
                }
                at_start = true;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            c if depth == 1 && at_start => {
                if c.is_ascii_alphanumeric() || c == '_' {
                    item.push(c);
                } else if !item.is_empty() {
                    at_start = false;
                }
            }
            _ => {}
        }
    }
    heads
}

/// The crate's top-level modules that `text`, a file `depth` modules below the crate root,
/// names.
fn imports(text: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident_before = |at: usize| {
        at > 0 && {
            let c = bytes[at - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b':'
        }
    };
    let mut take = |rest: &str| {
        if rest.starts_with('{') {
            found.extend(group_heads(rest));
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(word);
        }
    };
    for (at, _) in text.match_indices("crate::") {
        if !ident_before(at) {
            take(&text[at + "crate::".len()..]);
        }
    }
    for (at, _) in text.match_indices("super::") {
        if ident_before(at) {
            continue;
        }
        let mut rest = &text[at..];
        let mut n = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            n += 1;
        }
        if n == depth {
            take(rest);
        }
    }
    found
}

#[test]
fn the_layer_list_names_every_module_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let layers = layers(&lib);
    assert!(
        layers.len() >= 5,
        "the layer list was not found: {layers:?}"
    );
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer.number, i + 1, "layers are numbered 1, 2, ...");
    }
    let declared = declared(&lib);
    let mut seen = BTreeMap::new();
    for layer in &layers {
        for module in &layer.modules {
            assert!(
                declared.contains(module),
                "layer {} names `{module}`, which lib.rs does not declare",
                layer.number
            );
            if let Some(other) = seen.insert(module.clone(), layer.number) {
                panic!("`{module}` is in layers {other} and {}", layer.number);
            }
        }
    }
    let listed: BTreeSet<String> = seen.into_keys().collect();
    let missing: Vec<_> = declared.difference(&listed).collect();
    assert!(missing.is_empty(), "not in the layer list: {missing:?}");
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let layers = layers(&lib);
    let layer_of: BTreeMap<&str, &Layer> = layers
        .iter()
        .flat_map(|layer| layer.modules.iter().map(move |m| (m.as_str(), layer)))
        .collect();
    let mut violations = Vec::new();
    for file in scan() {
        let (rel, top) = (file.rel.display(), file.top.as_str());
        let Some(own) = layer_of.get(top) else {
            violations.push(format!("src/{rel}: `{top}` is in no layer"));
            continue;
        };
        for target in &file.imports {
            let Some(other) = layer_of.get(target.as_str()) else {
                continue; // not a module: a macro, a type at the root, `self`
            };
            let above = other.number > own.number;
            let beside = other.number == own.number && own.alone && target != top;
            if above || beside {
                violations.push(format!(
                    "src/{rel}: `{top}` ({} {}) imports `{target}` ({} {})",
                    own.number, own.name, other.number, other.name,
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layer list in lib.rs:\n{}",
        violations.join("\n")
    );
}

/// Within a layer that is not "alone" modules may import one another; this keeps that from
/// closing a circle (`../shared/tools/cycles.py src` prints the same graph's cycles).
#[test]
fn no_import_cycle_between_modules() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let modules = declared(&std::fs::read_to_string(src().join("lib.rs")).unwrap());
    for file in scan() {
        let edges = graph.entry(file.top.clone()).or_default();
        edges.extend(
            file.imports
                .into_iter()
                .filter(|m| *m != file.top && modules.contains(m)),
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
}

/// A cycle in `graph` (module -> modules it imports), as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn a_cycle_is_found_and_a_tree_is_not() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    };
    let cycle = find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
    assert_eq!(cycle.unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("a", "c"), ("b", "c")])),
        None
    );
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One file under `src/` outside test modules: its path below `src/`, the top-level module
/// it belongs to, and the top-level names it imports.
struct Scanned {
    rel: PathBuf,
    top: String,
    imports: BTreeSet<String>,
}

fn scan() -> Vec<Scanned> {
    let root = src();
    let mut paths = Vec::new();
    files(&root, &mut paths);
    let test_only: Vec<PathBuf> = paths
        .iter()
        .flat_map(|path| test_module_files(path, &std::fs::read_to_string(path).unwrap()))
        .collect();
    let mut scanned = Vec::new();
    for path in paths {
        if test_only.iter().any(|t| path.starts_with(t)) {
            continue; // what tests reach for does not shape the architecture
        }
        let rel = path.strip_prefix(&root).unwrap().to_path_buf();
        let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
        let top = parts[0].trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod.rs"));
        let text = strip(&std::fs::read_to_string(&path).unwrap());
        let imports = imports(&text, depth);
        scanned.push(Scanned { rel, top, imports });
    }
    scanned
}

#[test]
fn the_scan_sees_every_form_of_import() {
    let text = "use crate::a::X;\nuse crate::{b, c::{D, e}, f::G};\nlet x = crate::h::y();\n\
                use super::i;\nuse super::super::j;\nmy_crate::k();\n// crate::l\n\
                #[cfg(test)]\nmod tests {\n    use crate::m;\n}\n";
    let found = imports(&strip(text), 1);
    let found: Vec<_> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["a", "b", "c", "f", "h", "i"]);
    assert!(imports(&strip(text), 2).contains("j"));
    let out_of_line = "#[cfg(test)]\nmod tests;\nuse crate::n;\n";
    let found = imports(&strip(out_of_line), 1);
    assert_eq!(found.iter().map(String::as_str).collect::<Vec<_>>(), ["n"]);
}

#[test]
fn test_modules_in_files_of_their_own_are_found() {
    let text = "/// Property tests.\n#[cfg(test)]\nmod fuzz;\n#[cfg(test)]\n#[allow(x)]\n\
                mod tests;\n#[cfg(berth_loom)]\npub mod loom_models;\nmod inner;\n";
    let found = test_module_files(Path::new("src/proxy.rs"), text);
    let expected = [
        "src/proxy/fuzz.rs",
        "src/proxy/fuzz",
        "src/proxy/tests.rs",
        "src/proxy/tests",
    ];
    assert_eq!(found, expected.map(PathBuf::from));
    let found = test_module_files(Path::new("src/tls/mod.rs"), "#[cfg(test)]\nmod tests;\n");
    assert_eq!(
        found,
        ["src/tls/tests.rs", "src/tls/tests"].map(PathBuf::from)
    );
}
