//! Per-model settings from a TOML file, so that each model can get its own
//! ONNX Runtime threads, optimisation level, warm-up and admission limit:
//!
//! ```toml
//! [[model]]
//! spec = "iris:Production"      # name:Stage, name@alias or name/version
//! sessions = 1
//! intra_threads = 2             # 0 = one per core
//! throughput_sessions = 2        # single-threaded sessions for busy periods; 0 = off
//! inter_threads = 1
//! optimization_level = 3
//! warmup_runs = 2
//! max_in_flight = 128
//! max_batch_rows = 64            # 1 turns request stacking off
//! max_queue_delay_us = 500
//!
//! [[model]]
//! spec = "llm@champion"
//! remote = true                  # forward to the registered model's ferry.remote_endpoint
//! ```
//!
//! Settings left out take the command-line defaults.

use std::path::Path;

use serde::Deserialize;

use crate::{serving::ModelSettings, spec::ModelSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "model")]
    models: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    spec: String,
    #[serde(default)]
    remote: bool,
    sessions: Option<usize>,
    intra_threads: Option<usize>,
    throughput_sessions: Option<usize>,
    inter_threads: Option<usize>,
    optimization_level: Option<u8>,
    warmup_runs: Option<usize>,
    max_in_flight: Option<usize>,
    max_batch_rows: Option<usize>,
    max_queue_delay_us: Option<u64>,
}

/// Reads the file; every entry starts from `defaults`.
pub(crate) fn load(path: &Path, defaults: ModelSettings) -> Result<Vec<(ModelSpec, ModelSettings)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, defaults).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(text: &str, defaults: ModelSettings) -> Result<Vec<(ModelSpec, ModelSettings)>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    file.models
        .into_iter()
        .map(|e| {
            let mut spec: ModelSpec = e.spec.parse()?;
            spec.remote = e.remote;
            let mut s = defaults;
            s.session.sessions = e.sessions.unwrap_or(s.session.sessions);
            s.session.intra_threads = match e.intra_threads {
                Some(0) => crate::engine::cores(),
                Some(n) => n,
                None => s.session.intra_threads,
            };
            s.session.throughput_sessions = e.throughput_sessions.or(s.session.throughput_sessions);
            s.session.inter_threads = e.inter_threads.unwrap_or(s.session.inter_threads);
            s.session.optimization_level = e.optimization_level.unwrap_or(s.session.optimization_level);
            s.warmup_runs = e.warmup_runs.unwrap_or(s.warmup_runs);
            s.max_in_flight = e.max_in_flight.unwrap_or(s.max_in_flight);
            s.session.batch.max_rows = e.max_batch_rows.map_or(s.session.batch.max_rows, |r| r.max(1));
            s.session.batch.max_delay =
                e.max_queue_delay_us.map_or(s.session.batch.max_delay, std::time::Duration::from_micros);
            Ok((spec, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SessionOptions;

    #[test]
    fn entries_override_defaults() {
        let defaults = ModelSettings {
            session: SessionOptions {
                sessions: 2,
                intra_threads: 1,
                throughput_sessions: None,
                inter_threads: 1,
                optimization_level: 3,
                batch: crate::BatchPolicy::OFF,
                inline_below: std::time::Duration::ZERO,
                spinning: false,
            },
            warmup_runs: 1,
            max_in_flight: 256,
        };
        let text = "[[model]]\nspec = \"iris:Production\"\nsessions = 4\nmax_in_flight = 8\nmax_batch_rows = 32\n\n[[model]]\nspec = \"big@champion\"\nremote = true\n";
        let m = parse(text, defaults).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].1.session.sessions, m[0].1.max_in_flight, m[0].1.warmup_runs), (4, 8, 1));
        assert!(m[1].0.remote && m[1].1.session.sessions == 2);
        assert_eq!((m[0].1.session.batch.max_rows, m[1].1.session.batch.max_rows), (32, 1));
        assert!(parse("[[model]]\nspec = \"iris\"\n", defaults).is_err());
        assert!(parse("[[model]]\nspec = \"iris:Production\"\nthreads = 3\n", defaults).is_err());
    }
}
