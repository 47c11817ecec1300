//! Generated documentation stays true: `docs/configuration.md` is the
//! binaries' own `--help` (from their clap definitions), `docs/api.md` and
//! the Python stubs are what `proto/` generates, and every metric the example
//! alert rules use is one the services export. CI fails when
//! either is stale; `FERRY_BLESS=1 cargo nextest run -p ferry-e2e --test docs`
//! rewrites the configuration reference.

use std::{collections::BTreeSet, process::Command};

use anyhow::{Context, ensure};
use ferry_e2e::{bin_dir, repo_root};

const BINARIES: [(&str, &str); 3] = [
    ("ferry-registry", "The control plane: fronts MLflow, streams changes, decides rollouts."),
    ("ferry-inference", "The data plane: follows the registry, loads and serves models."),
    ("ferryctl", "The command-line client."),
];

fn reference() -> anyhow::Result<String> {
    let mut doc = String::from(
        "# Configuration reference\n\n\
         Every flag has an environment variable (`[env: ...]`); flags win. Generated from the\n\
         binaries' clap definitions by `e2e/tests/docs.rs` — do not edit by hand; regenerate with\n\
         `FERRY_BLESS=1 cargo nextest run -p ferry-e2e --test docs` (CI fails when this file is stale).\n",
    );
    for (bin, what) in BINARIES {
        // A clean environment: help shows defaults, never a value from the caller's shell.
        let out = Command::new(bin_dir().join(bin))
            .arg("--help")
            .env_clear()
            .env("COLUMNS", "100")
            .output()
            .with_context(|| format!("running {bin}"))?;
        ensure!(out.status.success(), "{bin} --help: {}", String::from_utf8_lossy(&out.stderr));
        let help = String::from_utf8(out.stdout)?;
        doc.push_str(&format!("\n## {bin}\n\n{what}\n\n```text\n{}\n```\n", help.trim_end()));
    }
    Ok(doc)
}

#[test]
fn the_configuration_reference_is_the_binaries_help() -> anyhow::Result<()> {
    let path = repo_root().join("docs/configuration.md");
    let want = reference()?;
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &want)?;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    ensure!(
        have == want,
        "docs/configuration.md is stale: run FERRY_BLESS=1 cargo nextest run -p ferry-e2e --test docs"
    );
    Ok(())
}

#[test]
fn the_api_reference_and_python_stubs_match_proto() -> anyhow::Result<()> {
    for script in ["docs/gen_proto_reference.py", "clients/python/generate.py"] {
        let out =
            Command::new(ferry_e2e::venv().join("bin/python")).arg(repo_root().join(script)).arg("--check").output()?;
        ensure!(out.status.success(), "{script} --check: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[test]
fn alert_rules_use_metrics_the_services_export() -> anyhow::Result<()> {
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yaml"))?;
    let mut exported = String::new();
    for dir in ["services/inference/src", "services/registry/src", "crates/mlflow/src"] {
        for entry in walk(&repo_root().join(dir)) {
            exported.push_str(&std::fs::read_to_string(entry)?);
        }
    }
    let used: BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ferry_"))
        .map(|w| w.trim_end_matches("_bucket"))
        .collect();
    ensure!(used.len() >= 8, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|m| !exported.contains(&format!("\"{m}"))).collect();
    ensure!(missing.is_empty(), "alert rules use metrics no service exports: {missing:?}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}
