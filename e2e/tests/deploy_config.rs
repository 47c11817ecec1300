//! The deployment files configure the same processes the native tests run:
//! every environment variable they give a Ferry service is one the binary
//! reads (a typo would otherwise be silently ignored), and MLflow gets the
//! settings the tests give it for webhooks.

use std::{collections::BTreeSet, process::Command};

use anyhow::{Context, bail, ensure};
use ferry_e2e::{MlflowOptions, bin_dir, python, repo_root};
use serde_json::Value;

/// The environment variables a Ferry binary reads, from its `--help`.
fn env_vars(bin: &str) -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new(bin_dir().join(bin)).arg("--help").output().with_context(|| format!("running {bin}"))?;
    let help = String::from_utf8(out.stdout)?;
    let vars: BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|s| s.split(['=', ']']).next()).map(str::to_owned).collect();
    ensure!(vars.len() > 10, "{bin} --help lists too few variables:\n{help}");
    Ok(vars)
}

/// YAML documents as JSON values (PyYAML resolves anchors and merge keys as Compose does).
fn yaml(rel: &str) -> anyhow::Result<Vec<Value>> {
    let path = repo_root().join(rel);
    let json = python(
        &format!(
            "import json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open('{}')) if d is not None]))",
            path.display()
        ),
        &[],
    )?;
    Ok(serde_json::from_str(&json)?)
}

/// Names of an env list (`[{name|key: ...}]`) or map.
fn names(env: &Value, key: &str) -> Vec<String> {
    match env {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a.iter().filter_map(|e| e[key].as_str().map(str::to_owned)).collect(),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Vec::new(),
    }
}

fn check(file: &str, service: &str, given: &[String], known: &BTreeSet<String>) -> anyhow::Result<usize> {
    let ours: Vec<&String> =
        given.iter().filter(|n| n.starts_with("FERRY_") || n.starts_with("MLFLOW_") || n.starts_with("ORT_")).collect();
    for name in &ours {
        if !known.contains(name.as_str()) {
            bail!("{file}: {service} sets {name}, which it does not read (known: {known:?})");
        }
    }
    Ok(ours.len())
}

#[test]
fn deployment_files_use_the_variables_the_binaries_read() -> anyhow::Result<()> {
    let registry = env_vars("ferry-registry")?;
    let inference = env_vars("ferry-inference")?;
    let known = |svc: &str| if svc.contains("registry") { &registry } else { &inference };
    let mut checked = 0;

    // docker-compose.yml
    let compose = yaml("docker-compose.yml")?.remove(0);
    for svc in ["registry", "inference"] {
        let env = names(&compose["services"][svc]["environment"], "name");
        checked += check("docker-compose.yml", svc, &env, known(svc))?;
    }
    // MLflow gets what the tests give it for webhooks (the cache TTL is a test-only speed-up).
    let mlflow_env = names(&compose["services"]["mlflow"]["environment"], "name");
    for (k, _) in MlflowOptions::default().with_webhooks()?.env {
        ensure!(
            k == "MLFLOW_WEBHOOK_CACHE_TTL" || mlflow_env.contains(&k),
            "docker-compose.yml: MLflow lacks {k}, which the tests set"
        );
    }
    let command = compose["services"]["mlflow"]["command"].to_string();
    for flag in ["--backend-store-uri=postgresql+psycopg2://", "--artifacts-destination=s3://", "--allowed-hosts="] {
        ensure!(command.contains(flag), "docker-compose.yml: MLflow's command lacks {flag}");
    }

    // Kubernetes manifests.
    for file in ["deploy/k8s/base/registry.yaml", "deploy/k8s/base/inference.yaml"] {
        for doc in yaml(file)? {
            if doc["kind"] != "Deployment" {
                continue;
            }
            for c in doc["spec"]["template"]["spec"]["containers"].as_array().context("containers")? {
                let name = c["name"].as_str().unwrap_or_default();
                checked += check(file, name, &names(&c["env"], "name"), known(name))?;
            }
        }
    }

    // The TLS component: its patches set variables the binaries read, replace
    // each probe whole (one handler each: gRPC probes cannot speak TLS), and
    // mount only Secrets its certificates write.
    let certs = yaml("deploy/k8s/components/tls/certificates.yaml")?;
    let secrets: Vec<&str> = certs
        .iter()
        .filter(|d| d["kind"] == "Certificate")
        .map(|d| d["spec"]["secretName"].as_str().context("secretName"))
        .collect::<anyhow::Result<_>>()?;
    for file in ["registry-patch.yaml", "inference-patch.yaml", "mlflow-patch.yaml"] {
        let path = format!("deploy/k8s/components/tls/{file}");
        for doc in yaml(&path)? {
            let spec = &doc["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().context("containers")? {
                let name = c["name"].as_str().unwrap_or_default();
                if name != "mlflow" {
                    checked += check(&path, name, &names(&c["env"], "name"), known(name))?;
                }
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    let Some(p) = c[probe].as_object() else { continue };
                    ensure!(
                        p.get("$patch") == Some(&Value::from("replace")),
                        "{path}: {probe} must replace the base's"
                    );
                    let handlers =
                        ["grpc", "httpGet", "tcpSocket", "exec"].iter().filter(|h| p.contains_key(**h)).count();
                    ensure!(handlers == 1 && p["httpGet"]["scheme"] == "HTTPS", "{path}: {probe} over HTTPS");
                }
            }
            for v in spec["volumes"].as_array().context("volumes")? {
                if let Some(secret) = v["secret"]["secretName"].as_str() {
                    ensure!(secrets.contains(&secret), "{path}: Secret {secret} is written by no Certificate");
                }
            }
        }
    }

    // App Platform.
    let app = yaml("deploy/digitalocean/app.yaml")?.remove(0);
    for s in app["services"].as_array().context("services")? {
        let name = s["name"].as_str().unwrap_or_default();
        if name.contains("registry") || name.contains("inference") {
            checked += check("app.yaml", name, &names(&s["envs"], "key"), known(name))?;
        }
    }
    ensure!(checked >= 30, "only {checked} variables checked");
    Ok(())
}

/// The image's build stage builds the whole workspace (`cargo build --bins`
/// reads every member's manifest), so it copies every member's folder.
#[test]
fn the_image_build_copies_every_workspace_member() -> anyhow::Result<()> {
    let manifest = repo_root().join("Cargo.toml");
    let members = python(
        &format!(
            "import json, tomllib; print(json.dumps(tomllib.load(open('{}', 'rb'))['workspace']['members']))",
            manifest.display()
        ),
        &[],
    )?;
    let members: Vec<String> = serde_json::from_str(&members)?;
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    let build = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.lines().next().is_some_and(|l| l.ends_with(" AS build")))
        .context("the Dockerfile has no stage named build")?;
    // `COPY src dst` lines (the last word is the destination).
    let copied: Vec<&str> = build
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    ensure!(members.len() > 5, "too few workspace members: {members:?}");
    for m in &members {
        let top = m.split('/').next().unwrap_or_default();
        let ok =
            if m == "." { copied.contains(&"Cargo.toml") && copied.contains(&"src") } else { copied.contains(&top) };
        ensure!(ok, "the Dockerfile's build stage does not copy workspace member {m:?} (copies {copied:?})");
    }
    Ok(())
}
