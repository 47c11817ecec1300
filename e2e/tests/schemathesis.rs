//! Schemathesis (from PyPI) against the inference service's own OpenAPI
//! document, on a real stack serving the sample model: it generates requests
//! for every documented operation — valid ones and ones the schema forbids —
//! and checks that no answer is a server error and that every answer (status,
//! content type, headers, body) is one the document describes.

use std::{process::Command, time::Duration};

use anyhow::{Context, ensure};
use ferry_e2e::{serve_iris, venv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = serve_iris(dir.path(), &[]).await?;
    // Twice: with the names schemathesis makes up (unknown models: 404s), and
    // with the model that serves (`iris`, version 1), so that the decoders and
    // the model see every generated body.
    let served = dir.path().join("served.toml");
    std::fs::write(&served, "[parameters]\n\"path.name\" = \"iris\"\n\"path.version\" = \"1\"\n")?;
    let empty = dir.path().join("none.toml");
    std::fs::write(&empty, "")?;
    for config in [empty, served] {
        schemathesis(&stack.inference.http, &config).await?;
    }
    // The service is still serving after all of it.
    ferry_e2e::wait_serving(&stack.inference.client, "iris", "1", &[5.1, 3.5, 1.4, 0.2], Duration::from_secs(5))
        .await?;
    Ok(())
}

async fn schemathesis(base: &str, config: &std::path::Path) -> anyhow::Result<()> {
    let (base, config) = (base.to_owned(), config.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        let scratch = config.parent().map(std::path::Path::to_owned).unwrap_or_default();
        Command::new(venv().join("bin/schemathesis"))
            // It keeps a cache in the folder it runs in: the test's, not the repository.
            .current_dir(scratch)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{base}/openapi.json"), "--url", &base])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "40",
                "--workers",
                "1",
                "--seed",
                "20261203",
                "--request-timeout",
                "10",
                "--no-color",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
    })
    .await?
    .context("running schemathesis")?;
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    ensure!(out.status.success(), "schemathesis found answers the document does not describe:\n{report}");
    ensure!(report.contains("passed"), "schemathesis ran no operation:\n{report}");
    Ok(())
}
