//! DESIGN.md's architecture, checked: the crate graph has exactly the arrows of its "Crates"
//! table, and the pure crates (`block_manager`, `scheduler`) use no threads, files, clocks or
//! locks, so the simulator and the engine run the very same scheduling code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace crates each crate's `[dependencies]` name (dev-dependencies are tests').
fn workspace_deps(manifest: &Path, members: &BTreeSet<&str>) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or_default()
            .trim();
        if members.contains(name) {
            deps.insert(name.to_string());
        }
    }
    deps
}

#[test]
fn the_crate_graph_is_the_design() {
    // (folder, name the others use, the workspace crates it may depend on) per DESIGN.md.
    // No crate may depend on `server` or `tools`: only the binary (`runtime/cli`) sees all.
    let design: [(&str, &str, &[&str]); 7] = [
        ("block_manager", "block_manager", &[]),
        ("scheduler", "scheduler", &["block_manager"]),
        ("kernels", "kernels", &[]),
        (
            "runtime/engine",
            "engine",
            &["block_manager", "scheduler", "kernels"],
        ),
        ("runtime/models", "models", &["engine"]),
        ("runtime/server", "server", &["engine", "models"]),
        ("runtime/tools", "tools", &["engine", "models", "scheduler"]),
    ];
    let members: BTreeSet<&str> = design.iter().map(|d| d.1).collect();
    let mut wrong = BTreeMap::new();
    for (folder, name, allowed) in design {
        let deps = workspace_deps(&repo().join(folder).join("Cargo.toml"), &members);
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let extra: Vec<&String> = deps.difference(&allowed).collect();
        if !extra.is_empty() {
            wrong.insert(name, format!("{extra:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "crates depend on what DESIGN.md says they must not know: {wrong:?}"
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn block_manager_and_scheduler_are_pure() {
    // What would make scheduling depend on the machine it runs on: threads, files, clocks,
    // locks (and their usual crates).
    let forbidden = [
        "std::thread",
        "std::fs",
        "std::time",
        "Instant::now",
        "SystemTime",
        "std::sync::Mutex",
        "std::sync::RwLock",
        "parking_lot",
        "crossbeam",
        "rayon",
        "tokio",
        "std::net",
        "std::process",
    ];
    let mut found = Vec::new();
    for krate in ["block_manager/src", "scheduler/src"] {
        let mut files = Vec::new();
        rust_files(&repo().join(krate), &mut files);
        assert!(!files.is_empty(), "no sources under {krate}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for pat in forbidden {
                    if code.contains(pat) {
                        found.push(format!("{}:{}: {pat}", f.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "impure code in the pure crates:\n{}",
        found.join("\n")
    );
}
