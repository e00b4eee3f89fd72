//! `ongi-bench --pipeline`: photos per second from JPEG bytes to stored
//! feature records, through the serving path (source, decode workers, pixel
//! features, batcher, model, store), per total thread budget, with each
//! stage's busy time so the stage that bounds the run is visible.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use ongi_core::embedding::EmbedReport;
use ongi_core::pipeline::{Pipeline, PipelineOptions};
use ongi_model::ModelDir;
use ongi_router::compute::ComputeArgs;
use serde::Serialize;

use crate::proc_stats::ThreadClocks;
use crate::tower::{child_command, read_checked_files, timed, BenchArgs, Timing};

/// One thread budget's run (one `--json` line).
#[derive(Serialize, Debug)]
struct PipelineResult {
    mode: &'static str,
    /// Threads the run may use in all: the model's compute threads.
    threads: usize,
    /// Threads decoding and preprocessing photos.
    decode_workers: usize,
    /// How the decode worker count was chosen.
    decode_workers_from: &'static str,
    decode: &'static str,
    /// The precision the model ran at, and why.
    precision: String,
    files: usize,
    failed: usize,
    #[serde(flatten)]
    timing: Timing,
    stages: Stages,
    /// `None` where the kernel keeps no per-thread scheduler counters.
    cores: Option<Cores>,
    /// What bounds the run: `cores` when no core was left idle (then the
    /// side named after it used the larger share of them and is the one to
    /// make cheaper), else the stage with the highest busy share.
    bound: &'static str,
}

/// Busy seconds of each stage during the timed run, and each as a share of
/// the threads that serve it (1.0: never idle).
#[derive(Serialize, Debug)]
struct Stages {
    /// Reading object bytes (async, off the decode workers).
    load_s: f64,
    /// The serving decode (decode workers): the colour at the model's scale,
    /// and in `fast` mode also the full-size luma of the same pass.
    decode_s: f64,
    /// Model input, greyscale pixels (a decode of their own where the serving
    /// decode kept none), pHash and blur (decode workers).
    pixel_features_s: f64,
    /// Faces (decode workers; zero without face models).
    faces_s: f64,
    /// The model's batches (compute threads).
    model_s: f64,
    /// Store reads and writes.
    store_s: f64,
    /// `(decode + pixel features + faces) / (wall × decode workers)`.
    decode_workers_busy: f64,
    /// `model / wall`.
    model_busy: f64,
}

impl Stages {
    fn of(report: &EmbedReport, wall: f64, decode_workers: usize) -> Self {
        let t = &report.timings;
        let s = |d: std::time::Duration| d.as_secs_f64();
        let pixel_work = s(t.decode.total) + s(t.preprocess.total) + s(t.faces.total);
        Stages {
            load_s: s(t.load.total),
            decode_s: s(t.decode.total),
            pixel_features_s: s(t.preprocess.total),
            faces_s: s(t.faces.total),
            model_s: s(t.model_busy),
            store_s: s(t.store),
            decode_workers_busy: pixel_work / (wall * decode_workers as f64),
            model_busy: s(t.model_busy) / wall,
        }
    }

    fn bound(&self, cores: Option<&Cores>) -> &'static str {
        // Decoders and the compute team share the cores, so a side's busy
        // share of the wall time includes the time it sat preempted by the
        // other: once the cores are full, only CPU time says which side the
        // run is paying for.
        if let Some(cores) = cores.filter(|c| c.busy >= CORES_FULL) {
            if cores.decode_cpu_s >= cores.model_cpu_s {
                "cores: decode"
            } else {
                "cores: model"
            }
        } else if self.decode_workers_busy >= self.model_busy {
            "decode"
        } else {
            "model"
        }
    }
}

/// The cores' share above which a run counts as bound by them.
const CORES_FULL: f64 = 0.9;

/// Where the cores went during the timed run, from the scheduler's
/// per-thread counters: seconds on a CPU per side, and seconds each side's
/// threads were runnable but queued behind another thread.
#[derive(Serialize, Debug)]
struct Cores {
    /// Decode workers (`ongi-decode-*`): decode, pixel features, faces.
    decode_cpu_s: f64,
    /// The compute team (`ongi-inference`, `ongi-vision-*`), its spinning
    /// between passes included.
    model_cpu_s: f64,
    /// Every other thread (async runtime, store, this bench's sampler).
    other_cpu_s: f64,
    decode_wait_s: f64,
    model_wait_s: f64,
    /// All threads' CPU seconds / (threads × wall): 1.0 when no core idled.
    busy: f64,
}

impl Cores {
    fn of(before: &ThreadClocks, after: &ThreadClocks, wall: f64, threads: usize) -> Self {
        let groups = after.since(before, |name| {
            if name.starts_with("ongi-decode-") {
                "decode"
            } else if name == "ongi-inference" || name.starts_with("ongi-vision-") {
                "model"
            } else {
                "other"
            }
        });
        let get = |g: &str| groups.get(g).copied().unwrap_or_default();
        let (decode, model, other) = (get("decode"), get("model"), get("other"));
        Cores {
            decode_cpu_s: decode.on_cpu_s,
            model_cpu_s: model.on_cpu_s,
            other_cpu_s: other.on_cpu_s,
            decode_wait_s: decode.waiting_s,
            model_wait_s: model.waiting_s,
            busy: (decode.on_cpu_s + model.on_cpu_s + other.on_cpu_s) / (wall * threads as f64),
        }
    }
}

/// Runs one child process per thread budget (the compute pool is sized once
/// per process) and prints their lines as they come.
pub fn bench_pipeline(args: &BenchArgs) -> Result<()> {
    if args.in_process {
        return bench_in_process(args);
    }
    let exe = std::env::current_exe().context("locating the ongi-bench binary")?;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "ongi-bench --pipeline: {} decode, model {}, batches of {}, JPEG bytes in memory ({}), >= {} photos per budget after {} warm-up photo(s)",
            args.decode.mode,
            args.model.display(),
            args.batch_size,
            SCRATCH_ROOT,
            args.images,
            args.warmup
        )?;
        writeln!(
            out,
            "{:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>11} {:>11} {:>13}  precision",
            "threads",
            "decoders",
            "photos",
            "photos/s",
            "CPU avg %",
            "decode s",
            "pixels s",
            "model s",
            "busy d/m",
            "CPU d/m s",
            "queued d/m s",
            "bound"
        )?;
        out.flush()?;
    }
    for &threads in &args.threads {
        let mut cmd = child_command(&exe, args, threads);
        cmd.arg("--pipeline")
            .args(&args.pipeline)
            .arg("--batch-size")
            .arg(args.batch_size.to_string())
            .arg("--decode")
            .arg(args.decode.mode.as_str());
        if let Some(n) = args.decode_workers {
            cmd.arg("--decode-workers").arg(n.to_string());
        }
        let output = cmd
            .spawn()
            .context("starting the bench process")?
            .wait_with_output()
            .context("waiting for the bench process")?;
        if !output.status.success() {
            bail!(
                "pipeline bench with --threads {threads} failed ({})",
                output.status
            );
        }
        let line = String::from_utf8_lossy(&output.stdout);
        let line = line.trim();
        if args.json {
            writeln!(out, "{line}")?;
        } else {
            let r: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("unexpected bench process output: {line}"))?;
            let f = |k: &str| r["stages"][k].as_f64().unwrap_or(f64::NAN);
            let c = |k: &str| r["cores"][k].as_f64().unwrap_or(f64::NAN);
            writeln!(
                out,
                "{:>7} {:>7} {:>6} {:>9.2} {:>9.0} {:>9.2} {:>8.2} {:>8.2} {:>4.2}/{:<4.2} {:>5.2}/{:<5.2} {:>5.2}/{:<5.2} {:>13}  {}",
                r["threads"].as_u64().unwrap_or(0),
                r["decode_workers"].as_u64().unwrap_or(0),
                r["images"].as_u64().unwrap_or(0),
                r["images_per_sec"].as_f64().unwrap_or(f64::NAN),
                r["cpu_avg_pct"].as_f64().unwrap_or(f64::NAN),
                f("decode_s"),
                f("pixel_features_s"),
                f("model_s"),
                f("decode_workers_busy"),
                f("model_busy"),
                c("decode_cpu_s"),
                c("model_cpu_s"),
                c("decode_wait_s"),
                c("model_wait_s"),
                r["bound"].as_str().unwrap_or("?"),
                r["precision"].as_str().unwrap_or("?"),
            )?;
        }
        out.flush()?;
    }
    if !args.json {
        writeln!(
            out,
            "decode s: serving decode (colour at the model's scale; fast: with the full-size luma); \
             pixels s: model input + greyscale pixels + pHash + blur; \
             model s: batch time shared among its photos; busy d/m: decode workers' and model's busy share of the wall time; \
             CPU d/m s: seconds on a core of the decode workers and of the compute team (its spinning included); \
             queued d/m s: seconds they were runnable but waiting for a core; \
             bound: \"cores: X\" when the cores were >= 90 % busy (X used more of them), else the busiest stage."
        )?;
    }
    Ok(())
}

/// Where the photo copies are written: memory-backed where the system has it.
const SCRATCH_ROOT: &str = "/dev/shm";

/// The child: one thread budget, one JSON line.
fn bench_in_process(args: &BenchArgs) -> Result<()> {
    let [threads] = args.threads[..] else {
        bail!("--in-process takes exactly one --threads value");
    };
    // The budget is enforced, not only asked for: decode workers, compute
    // threads and the runtime all share `threads` CPUs.
    pin_to_cpus(threads)?;
    let compute = ComputeArgs {
        threads: Some(threads),
        dtype: args.dtype,
        device: "cpu".into(),
    }
    .resolve()?;
    let dir = ModelDir::new(&args.model);
    let cfg = ongi_core::preprocess::PreprocessConfig::from_model_dir(dir.path())?;
    let files = read_checked_files(&args.pipeline, &cfg, args.decode.mode)?;
    // Every photo gets a key of its own (a cached key would skip its work),
    // written where reading it costs no disk.
    let scratch = tempfile::Builder::new()
        .prefix("ongi-bench-")
        .tempdir_in(Path::new(SCRATCH_ROOT))
        .or_else(|_| tempfile::tempdir())
        .context("creating a scratch directory for the photos")?;
    let images = args.images.max(files.len());
    let write = |prefix: &str, n: usize| -> Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let key = format!("{prefix}{i:05}.jpg");
                std::fs::write(scratch.path().join(&key), &files[i % files.len()])?;
                Ok(key)
            })
            .collect()
    };
    let warm = write("warm_", args.warmup)?;
    let timed_keys = write("photo_", images)?;

    let decode_workers =
        ongi_router::pipeline::decode_workers(args.decode_workers, compute.threads);
    let decode_workers_from = match args.decode_workers {
        Some(_) => "--decode-workers",
        None => "default",
    };
    let mut options = PipelineOptions::new(
        scratch.path().to_string_lossy(),
        ongi_core::store::MEMORY_SPEC,
        Device::Cpu,
        compute.precision,
    );
    options.decode_workers = decode_workers;
    options.decode_mode = args.decode.mode;
    options.batcher.max_batch_size = args.batch_size;
    options.batcher.queue_capacity = options.batcher.queue_capacity.max(images);

    let runtime = ongi_router::pipeline::runtime()?;
    let pipeline = runtime.block_on(Pipeline::open(&dir, options))?;
    let embed = |keys: &[String]| -> Result<EmbedReport> {
        Ok(runtime.block_on(pipeline.embedding.embed(keys))?)
    };
    let mut report = None;
    let mut clocks = None;
    let timing = timed(
        images,
        || {
            if !warm.is_empty() {
                embed(&warm)?;
            }
            Ok(())
        },
        || {
            let before = ThreadClocks::now();
            report = Some(embed(&timed_keys)?);
            clocks = Some((before, ThreadClocks::now()));
            Ok(())
        },
    )?;
    let report = report.context("the timed run made no report")?;
    if report.embedded + report.failed.len() != images {
        bail!(
            "expected {images} photos embedded or failed, got {} and {}",
            report.embedded,
            report.failed.len()
        );
    }
    let wall = images as f64 / timing.images_per_sec;
    let stages = Stages::of(&report, wall, decode_workers);
    let cores = match clocks {
        Some((Ok(before), Ok(after))) => Some(Cores::of(&before, &after, wall, threads)),
        Some((Err(e), _) | (_, Err(e))) => {
            eprintln!("ongi-bench: no per-thread CPU split (CPU d/m, queued d/m): {e:#}");
            None
        }
        None => bail!("the timed run read no thread clocks"),
    };
    let result = PipelineResult {
        mode: "pipeline",
        threads,
        decode_workers,
        decode_workers_from,
        decode: args.decode.mode.as_str(),
        precision: compute.describe_precision(),
        files: files.len(),
        failed: report.failed.len(),
        bound: stages.bound(cores.as_ref()),
        stages,
        cores,
        timing,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &result)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Restricts this process to the first `n` CPUs it may run on.
fn pin_to_cpus(n: usize) -> Result<()> {
    // SAFETY: `cpu_set_t` is plain bits, valid all-zero; the calls get its
    // true size and a pointer to it, and report failure through their result.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut chosen: libc::cpu_set_t = std::mem::zeroed();
        let mut taken = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if taken < n && libc::CPU_ISSET(cpu, &allowed) {
                libc::CPU_SET(cpu, &mut chosen);
                taken += 1;
            }
        }
        if taken < n {
            bail!("--threads {n}, but this process may run on only {taken} CPUs");
        }
        if libc::sched_setaffinity(0, size, &chosen) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
