//! The module picture holds: imports between the crate's top-level modules
//! (read from the `crate::…` paths in `src/`) form no cycle, and nothing
//! below `http` (but the composition root and the binary) imports it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules allowed to import `http`: the composition root, the binary and
/// the CLI that starts it.
const ABOVE_HTTP: [&str; 4] = ["app", "cli", "main", "lib"];

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which top-level modules each one names in `crate::…` paths (outside
/// comments and unit-test modules).
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let tops = top_level_modules(src);
    let path_re = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    let group_re = regex::Regex::new(r"crate::\{([^}]*)\}").unwrap();
    let word_re = regex::Regex::new(r"\b([a-z_]+)\b").unwrap();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = tops.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for file in files {
        let top = file.strip_prefix(src).unwrap().components().next().unwrap();
        let top = top.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named: Vec<String> = path_re.captures_iter(&code).map(|c| c[1].to_owned()).collect();
        for group in group_re.captures_iter(&code) {
            named.extend(word_re.captures_iter(&group[1]).map(|c| c[1].to_owned()));
        }
        for m in named {
            if m != top && tops.contains(&m) {
                deps.get_mut(&top).unwrap().insert(m);
            }
        }
    }
    deps
}

fn reachable(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        for d in &deps[&m] {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn the_crates_top_level_modules_import_each_other_without_a_cycle() {
    let deps = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));

    let cycles: Vec<(String, String)> = deps
        .iter()
        .flat_map(|(m, ds)| ds.iter().map(move |d| (m.clone(), d.clone())))
        .filter(|(m, d)| reachable(&deps, d).contains(m))
        .collect();

    assert!(
        deps["credentials"].contains("store"),
        "the reading found the imports: {deps:?}"
    );
    assert!(
        cycles.is_empty(),
        "imports that close a cycle (module → import): {cycles:?}"
    );
}

#[test]
fn nothing_below_http_imports_it() {
    let deps = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));

    let upward: Vec<&String> = deps
        .iter()
        .filter(|(m, ds)| ds.contains("http") && !ABOVE_HTTP.contains(&m.as_str()))
        .map(|(m, _)| m)
        .collect();

    assert!(deps["app"].contains("http"), "the reading found the imports: {deps:?}");
    assert!(upward.is_empty(), "modules below http that import it: {upward:?}");
}

/// Migrations that only one database has, and why.
const ONE_DATABASE_ONLY: [(&str, &str); 3] = [
    (
        "postgres/0015_name_trigrams.sql",
        "a pg_trgm index for name searches; SQLite scans the names",
    ),
    (
        "postgres/0026_event_org_checks.sql",
        "events' organizations checked once per statement, not per row; SQLite keeps its foreign keys",
    ),
    (
        "postgres/0028_event_org_checks_once.sql",
        "the check of 0026 in one query",
    ),
];

#[test]
fn both_migration_trees_hold_the_same_numbers_but_the_listed_ones() {
    let numbers = |dialect: &str| -> BTreeSet<String> {
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dialect))
            .unwrap()
            .map(|e| format!("{dialect}/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|name| !ONE_DATABASE_ONLY.iter().any(|(only, _)| only == name))
            .map(|name| name.split('/').nth(1).unwrap().to_owned())
            .collect()
    };

    let (postgres, sqlite) = (numbers("postgres"), numbers("sqlite"));

    let only_postgres: Vec<_> = postgres.difference(&sqlite).collect();
    let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
    assert!(
        only_postgres.is_empty() && only_sqlite.is_empty(),
        "{only_postgres:?} {only_sqlite:?}"
    );
    for (only, _) in ONE_DATABASE_ONLY {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(only)
                .exists(),
            "{only}"
        );
    }
}

/// Within each module directory, which sibling files each file names
/// (`super::x`, or `crate::module::x`), `mod.rs` left out: it declares and
/// re-exports its files, and they take the module's shared items from it.
fn sibling_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut dirs = Vec::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                dirs.push(path);
            }
        }
    }
    let word_re = regex::Regex::new(r"\b([a-z_][a-z0-9_]*)\b").unwrap();
    let mut deps = BTreeMap::new();
    for dir in dirs {
        let module = dir.strip_prefix(src).unwrap().to_string_lossy().replace('/', "::");
        let siblings: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .filter(|name| name != "mod")
            .collect();
        for file in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
            if stem == "mod" || file.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut named = BTreeSet::new();
            for prefix in ["super::".to_owned(), format!("crate::{module}::")] {
                for (at, _) in code.match_indices(&prefix) {
                    let rest = &code[at + prefix.len()..];
                    let group = rest.strip_prefix('{').map(|g| &g[..g.find('}').unwrap_or(g.len())]);
                    let words: Vec<&str> = match group {
                        Some(g) => word_re.find_iter(g).map(|m| m.as_str()).collect(),
                        None => word_re.find(rest).map(|m| m.as_str()).into_iter().collect(),
                    };
                    for w in words {
                        if siblings.contains(w) && w != stem {
                            named.insert(format!("{module}::{w}"));
                        }
                    }
                }
            }
            deps.insert(format!("{module}::{stem}"), named);
        }
    }
    deps
}

#[test]
fn the_files_of_a_module_import_each_other_without_a_cycle() {
    let deps = sibling_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for d in deps.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };

    let cycles: Vec<(String, String)> = deps
        .iter()
        .flat_map(|(m, ds)| ds.iter().map(move |d| (m.clone(), d.clone())))
        .filter(|(m, d)| reach(d).contains(m))
        .collect();

    assert!(
        deps["store::creates"].contains("store::audit"),
        "the reading found the imports: {deps:?}"
    );
    assert!(
        cycles.is_empty(),
        "imports that close a cycle (file → import): {cycles:#?}"
    );
}

/// Places below `http` that hold an id as text on purpose, and why.
const RAW_IDS: [(&str, &str); 2] = [
    (
        "sessions.rs",
        "NewSession.user_id is the request's text, parsed where its error joins the others",
    ),
    (
        "credentials/access.rs",
        "deny() records the path segment as named, only once it names a credential",
    ),
];

#[test]
fn below_http_ids_are_typed_from_the_edge_to_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let untyped = regex::Regex::new(
        r"\b(org_id|credential_id|user_id)\s*:\s*(&'?[a-z]*\s*str|String|Option<&'?[a-z]*\s*str>|Option<String>)",
    )
    .unwrap();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    let mut seen_store = false;
    for file in files {
        let name = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if name.starts_with("http/") || RAW_IDS.iter().any(|(raw, _)| *raw == name) {
            continue;
        }
        seen_store |= name.starts_with("store/");
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with("//") && untyped.is_match(line) {
                found.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(seen_store, "the walk reached the store");
    assert!(found.is_empty(), "ids held as text below http: {found:#?}");
}
