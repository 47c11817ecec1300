//! `ferry-load`: one scenario per concurrency level, a table row each.
//!
//! ```text
//! ferry-load --target rest --url http://127.0.0.1:8080 -c 1,16,64 --duration 10
//! ferry-load --target oip --url http://127.0.0.1:50052 --model medium --width 512 --batch 32 -c 64
//! ferry-load --target in-process --model-file medium.onnx --ort-library libonnxruntime.so --width 512
//! ```

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use ferry_load::{Report, Scenario, Target};

// Ferry's own heap, so that the do-nothing floors served from here and the
// in-process ceiling pay for a request's allocations what Ferry pays.
#[global_allocator]
static HEAP: ferry_heap::Heap = ferry_heap::Heap;

#[derive(Debug, Parser)]
#[command(name = "ferry-load", version, about = "Load generator for Ferry (and peers) with exact latency percentiles")]
struct Args {
    #[arg(long, value_enum, required_unless_present = "serve_floor")]
    target: Option<Target>,
    /// Serve a do-nothing floor server instead (prints its address, runs until killed).
    #[arg(long, value_enum)]
    serve_floor: Option<Floor>,
    /// Server base URL (gRPC or HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A model, or several separated by commas (each caller sends to them in turn).
    #[arg(long, default_value = "iris")]
    model: String,
    /// Model input name.
    #[arg(long, default_value = "input")]
    input: String,
    /// Features per row.
    #[arg(long, default_value_t = 4)]
    width: usize,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrency levels, one run each.
    #[arg(short = 'c', long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded seconds before each run.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: requests per second (closed loop when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// gRPC connections (default: one per 16 callers, at most 4).
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long)]
    model_file: Option<PathBuf>,
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Intra-op threads per in-process session (0 = ONNX Runtime's default).
    #[arg(long, default_value_t = 1)]
    intra_threads: usize,
    /// In-process sessions as Ferry builds them for a model it runs inline:
    /// no CPU memory arena, no memory patterns.
    #[arg(long)]
    small_tensors: bool,
    /// In process: an output each call asks for (repeat for more; none: all
    /// of them), as a server asks for those its request names.
    #[arg(long = "output")]
    outputs: Vec<String>,
    /// The server's pid, for CPU per 1k requests and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free text naming the system in the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Load-generator threads (1 keeps it to one core, like `wrk -t1`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Floor {
    /// HTTP/1.1 answered by a blocking thread per connection: the network path alone.
    Http,
    /// axum (hyper) answering `POST /predict`: Ferry's REST stack doing nothing.
    Axum,
    /// tonic answering `Predict`: Ferry's gRPC stack doing nothing.
    Grpc,
}

fn main() -> anyhow::Result<()> {
    // The in-process ceiling loads ONNX Runtime; keep its usage reporting (and
    // the files it keeps under ~/.cache/Microsoft) off, as ferry-inference does.
    // SAFETY: no other thread exists yet to read the environment concurrently.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    let a = Args::parse();
    if let Some(floor) = a.serve_floor {
        let addr = match floor {
            Floor::Http => ferry_load::floor::spawn()?,
            Floor::Axum => ferry_load::floor::spawn_axum()?,
            Floor::Grpc => ferry_load::floor::spawn_grpc()?,
        };
        println!("{addr}");
        std::io::stdout().flush()?;
        loop {
            std::thread::park();
        }
    }
    let target = a.target.context("--target is required")?;
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads).enable_all().build()?
    };
    println!("label\ttarget\tmodel\tbatch\tconc\t{}", Report::header());
    for &c in &a.concurrency {
        let s = Scenario {
            target,
            url: a.url.clone(),
            model: a.model.clone(),
            input: a.input.clone(),
            width: a.width,
            batch: a.batch,
            concurrency: c,
            duration: Duration::from_secs_f64(a.duration),
            warmup: Duration::from_secs_f64(a.warmup),
            rate: a.rate,
            connections: a.connections.unwrap_or(c.div_ceil(16).clamp(1, 4)),
            model_file: a.model_file.clone(),
            ort_library: a.ort_library.clone(),
            intra_threads: a.intra_threads,
            small_tensors: a.small_tensors,
            outputs: a.outputs.clone(),
            server_pid: a.server_pid,
        };
        let r = rt.block_on(ferry_load::run(&s))?;
        println!("{}\t{target:?}\t{}\t{}\t{c}\t{}", a.label, a.model, a.batch, r.row());
        if let Some(e) = &r.first_error {
            eprintln!("  first error: {e}");
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}
