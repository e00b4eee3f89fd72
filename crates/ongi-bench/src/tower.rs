//! `ongi-bench`: times the CLIP image tower on synthetic inputs, or decode +
//! preprocess alone (`--preprocess`), and reports throughput, CPU and memory.
//!
//! Thread settings are honest: each `--threads N` runs in its own child process
//! (this binary re-executed with a hidden flag) with `RAYON_NUM_THREADS` and
//! `CANDLE_NUM_THREADS` set to N, and the timed loop runs inside a dedicated
//! rayon pool of N threads. candle-core 0.11 sizes its gemm parallelism from
//! `RAYON_NUM_THREADS` at call time (on the current rayon pool), but its
//! element-wise "candle-bp" barrier pool is a process-wide `OnceLock` sized once
//! (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, minus the caller): only a
//! fresh process per thread count gives exactly N threads computing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use ongi_core::preprocess::{self, PreprocessConfig};
use ongi_model::clip::ClipModel;
use ongi_model::Precision;
use serde::{Deserialize, Serialize};

use ongi_router::compute::DTypeArg;
use ongi_router::inputs::{self, Input};
use ongi_router::pipeline::DecodeArgs;

use crate::proc_stats::{cpu_seconds, peak_rss_kb, reset_peak_rss, rss_kb};

/// Arguments of `ongi-bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// CLIP model: a directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face hub id `org/name[@revision]`,
    /// fetched once into the Hugging Face cache (`HF_HOME`, `HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_OFFLINE`).
    #[arg(long, env = "ONGI_MODEL")]
    pub model: PathBuf,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,32")]
    pub batch_sizes: Vec<usize>,
    /// Compute thread counts to time, comma-separated (each in its own process).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Images timed per setting (rounded up to whole batches; with --preprocess,
    /// at least every file once).
    #[arg(long, default_value_t = 64)]
    pub images: usize,
    /// Untimed warm-up batches per setting (with --preprocess: warm-up images).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Print one JSON object per line per setting instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Numeric precision of the model (`auto`: as `ongi serve` picks it).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DTypeArg,
    /// Time decode + preprocess alone (single thread) over these image files or
    /// directories instead of the model.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub preprocess: Vec<PathBuf>,
    // The JPEG decoding mode that --preprocess times.
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Time the whole embedding path instead (JPEG bytes in memory to stored
    /// feature records: decode workers, pixel features, batcher, model,
    /// store) over these image files or directories, per `--threads` budget.
    #[arg(long, num_args = 1.., value_name = "PATH", conflicts_with = "preprocess")]
    pub pipeline: Vec<PathBuf>,
    /// With --pipeline: decode workers (default: as `ongi serve` sizes them).
    #[arg(long)]
    pub decode_workers: Option<usize>,
    /// With --pipeline: the batcher's largest batch (as `ongi serve --batch-size`).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// With --preprocess: also compute the pixel features (greyscale decode,
    /// pHash, blur variance), as the server does for every photo.
    #[arg(long)]
    pub pixel_features: bool,
    /// Also write each batch's image features to DIR/b{batch}_t{threads}.f32
    /// (raw little-endian f32), for accuracy checks against other engines.
    #[arg(long, value_name = "DIR")]
    pub save_features: Option<PathBuf>,
    /// Internal: run the single thread setting in this process.
    #[arg(long, hide = true)]
    pub in_process: bool,
}

/// What every timed loop reports (flattened into its `--json` line).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Timing {
    pub(crate) images: usize,
    pub(crate) images_per_sec: f64,
    ms_per_image: f64,
    cpu_avg_pct: f64,
    cpu_peak_pct: f64,
    peak_rss_mb: f64,
    /// `VmHWM` (reset per setting) or `VmRSS` (sampled, when the reset is unavailable).
    peak_rss_source: String,
}

impl Timing {
    /// The table columns images, images/s, ms/image, CPU avg and peak %, peak RSS MB.
    fn columns(&self) -> String {
        format!(
            "{:>6} {:>9.2} {:>9.2} {:>9.0} {:>10.0} {:>12.0}",
            self.images,
            self.images_per_sec,
            self.ms_per_image,
            self.cpu_avg_pct,
            self.cpu_peak_pct,
            self.peak_rss_mb
        )
    }
}

/// One measured setting of the image tower (one `--json` line).
#[derive(Serialize, Deserialize, Debug)]
struct ModelResult {
    batch_size: usize,
    threads: usize,
    /// The precision computed at (`auto` resolved) and its kernel.
    #[serde(default)]
    precision: String,
    #[serde(flatten)]
    timing: Timing,
}

/// The `--preprocess` measurement (one `--json` line).
#[derive(Serialize, Debug)]
struct PreprocessResult {
    mode: &'static str,
    /// JPEG decoding mode (`exact` or `fast`).
    decode: &'static str,
    /// Whether the pixel features were computed too.
    pixel_features: bool,
    files: usize,
    #[serde(flatten)]
    timing: Timing,
}

/// Times `run` (which processes `images` images) after the untimed `warmup`:
/// wall time, this process's CPU time and CPU peaks, and the peak RSS since the
/// reset taken before the warm-up.
pub(crate) fn timed(
    images: usize,
    warmup: impl FnOnce() -> Result<()>,
    run: impl FnOnce() -> Result<()>,
) -> Result<Timing> {
    let rss_reset = reset_peak_rss();
    let sampler = Sampler::start(Duration::from_millis(50));
    warmup()?;
    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    sampler.mark_start();
    run()?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu0;
    let stats = sampler.stop();
    let (peak_rss_mb, peak_rss_source) = peak_rss(rss_reset, stats.max_rss_kb)?;
    let cpu_avg_pct = 100.0 * cpu / wall;
    Ok(Timing {
        images,
        images_per_sec: images as f64 / wall,
        ms_per_image: 1000.0 * wall / images as f64,
        cpu_avg_pct,
        cpu_peak_pct: stats.peak_cpu_pct.unwrap_or(cpu_avg_pct),
        peak_rss_mb,
        peak_rss_source,
    })
}

/// Runs the command.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must list batch sizes of at least 1");
    }
    if args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--threads must list thread counts of at least 1");
    }
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    if !args.preprocess.is_empty() {
        return bench_preprocess(&args);
    }
    if !args.pipeline.is_empty() {
        if args.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        return crate::pipeline::bench_pipeline(&args);
    }
    if args.in_process {
        return bench_in_process(&args);
    }
    bench_model(&args)
}

/// Runs one child process per thread count and prints its settings as they come.
fn bench_model(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the ongi-bench binary")?;
    let batch_sizes = args
        .batch_sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut out = std::io::stdout().lock();
    if !args.json {
        let (precision, why) = args.dtype.resolve(&Device::Cpu);
        let dtype = format!("{precision} ({why})");
        writeln!(
            out,
            "ongi-bench: image tower of {}, {dtype}, synthetic inputs, >= {} images per setting after {} warm-up batch(es)",
            args.model.display(),
            args.images,
            args.warmup
        )?;
        writeln!(
            out,
            "{:>7} {:>5} {:>6} {:>9} {:>9} {:>9} {:>10} {:>12}",
            "threads",
            "batch",
            "images",
            "images/s",
            "ms/image",
            "CPU avg %",
            "CPU peak %",
            "peak RSS MB"
        )?;
        out.flush()?;
    }
    let mut rss_sources = Vec::new();
    for &threads in &args.threads {
        let mut cmd = child_command(&exe, args, threads);
        cmd.arg("--batch-sizes").arg(&batch_sizes).arg("--json");
        if let Some(dir) = &args.save_features {
            cmd.arg("--save-features").arg(dir);
        }
        let mut child = cmd.spawn().context("starting the bench process")?;
        let stdout = child.stdout.take().context("bench process stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the bench process output")?;
            let r: ModelResult = serde_json::from_str(&line)
                .with_context(|| format!("unexpected bench process output: {line}"))?;
            if args.json {
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{:>7} {:>5} {}",
                    r.threads,
                    r.batch_size,
                    r.timing.columns()
                )?;
                if !rss_sources.contains(&r.timing.peak_rss_source) {
                    rss_sources.push(r.timing.peak_rss_source.clone());
                }
            }
            out.flush()?;
        }
        let status = child.wait().context("waiting for the bench process")?;
        if !status.success() {
            bail!("bench with --threads {threads} failed ({status})");
        }
    }
    if !args.json {
        writeln!(out, "{}", footnote(&rss_sources))?;
    }
    Ok(())
}

fn footnote(rss_sources: &[String]) -> String {
    let rss = if rss_sources.iter().all(|s| s == "VmHWM") {
        "VmHWM, reset at the start of each setting (after loading; warm-up included)"
    } else {
        "the highest VmRSS sampled every 50 ms (VmHWM reset unavailable)"
    };
    format!(
        "CPU %: this process's utime+stime, 100 % = one core; avg over the timed loop, \
         peak over 250 ms windows sampled every 50 ms. Peak RSS: {rss}. MB = 10^6 bytes."
    )
}

/// `f32`, or `bf16 (avx512-bf16)`: the precision and the kernel it ran on.
fn precision_label(p: Precision) -> String {
    match p {
        Precision::Bf16 | Precision::Int8 => format!("{p} ({})", p.cpu_kernel()),
        Precision::F32 | Precision::F16 => p.to_string(),
    }
}

pub(crate) fn dtype_name(d: DTypeArg) -> String {
    use clap::ValueEnum;
    d.to_possible_value()
        .map_or_else(|| format!("{d:?}"), |v| v.get_name().to_string())
}

/// The child: times every batch size at the one thread count, printing JSON lines.
fn bench_in_process(args: &BenchArgs) -> Result<()> {
    let [threads] = args.threads[..] else {
        bail!("--in-process takes exactly one --threads value");
    };
    // Read by candle at call time (gemm) and at first use (barrier pool); the
    // parent sets them too, before this process starts.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ongi-bench-{i}"))
        .build()
        .context("building the compute thread pool")?;
    let device = Device::Cpu;
    let (precision, _) = args.dtype.resolve(&device);
    let model = pool
        .install(|| ClipModel::load(&args.model, &device, precision))
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let cfg = PreprocessConfig::from_model_dir(&args.model)?;
    let size = model.image_size();
    let mut out = std::io::stdout().lock();
    for &batch_size in &args.batch_sizes {
        let pixels = synthetic_pixels(batch_size, size, &cfg)?;
        let batches = args.images.div_ceil(batch_size);
        let run_batches = |n: usize| {
            pool.install(|| -> Result<()> {
                for _ in 0..n {
                    std::hint::black_box(model.image_features(&pixels)?.to_vec2::<f32>()?);
                }
                Ok(())
            })
        };
        let timing = timed(
            batches * batch_size,
            || run_batches(args.warmup),
            || run_batches(batches),
        )?;
        if let Some(dir) = &args.save_features {
            let features = pool.install(|| model.image_features(&pixels))?;
            let values = features.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("b{batch_size}_t{threads}.f32"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        let result = ModelResult {
            batch_size,
            threads,
            precision: precision_label(precision),
            timing,
        };
        serde_json::to_writer(&mut out, &result)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

/// Deterministic pseudo-random pixels in [0, 1), normalised with the model's
/// mean/std: `[batch, 3, size, size]` f32.
fn synthetic_pixels(batch: usize, size: usize, cfg: &PreprocessConfig) -> Result<Tensor> {
    let plane = size * size;
    let mut state = 0x0123_4567_89ab_cdef_u64 ^ batch as u64;
    let mut data = Vec::with_capacity(batch * 3 * plane);
    for _ in 0..batch {
        for c in 0..3 {
            for _ in 0..plane {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                data.push((u - cfg.image_mean[c]) / cfg.image_std[c]);
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (batch, 3, size, size),
        &Device::Cpu,
    )?)
}

/// The child process that times one thread budget: `args`' model, images,
/// warm-up and precision, exactly `threads` threads for rayon and candle, its
/// output piped back.
pub(crate) fn child_command(exe: &Path, args: &BenchArgs, threads: usize) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--model")
        .arg(&args.model)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--images")
        .arg(args.images.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string())
        .arg("--dtype")
        .arg(dtype_name(args.dtype))
        .arg("--in-process")
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("CANDLE_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// The bytes of every image file under `paths` that decodes; one that cannot
/// be read or decoded is left out of the timing, with a line saying so
/// (checked untimed, here).
pub(crate) fn read_checked_files(
    paths: &[PathBuf],
    cfg: &PreprocessConfig,
    decode: ongi_core::preprocess::DecodeMode,
) -> Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for input in inputs::expand(paths) {
        match input {
            Input::File(path) => {
                let checked = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        preprocess::load_and_preprocess(&bytes, cfg, decode)
                            .map(|_| bytes)
                            .map_err(|e| e.to_string())
                    });
                match checked {
                    Ok(bytes) => files.push(bytes),
                    Err(reason) => eprintln!("skipped {}: {reason}", path.display()),
                }
            }
            Input::Error(path, err) => eprintln!("skipped {}: {err}", path.display()),
        }
    }
    if files.is_empty() {
        bail!("no image files found");
    }
    Ok(files)
}

/// `--preprocess`: decode + preprocess of in-memory files, one thread.
fn bench_preprocess(args: &BenchArgs) -> Result<()> {
    let cfg = PreprocessConfig::from_model_dir(&args.model)?;
    let decode = args.decode.mode;
    let files = read_checked_files(&args.preprocess, &cfg, decode)?;
    let images = args.images.max(files.len());
    let max_pixels = preprocess::DEFAULT_MAX_PIXELS;
    let min_size = decode.min_decode_size(&cfg);
    let run_images = |n: usize| -> Result<()> {
        for bytes in files.iter().cycle().take(n) {
            // The server's steps: one decode serves the features where the
            // mode says so, and a PNG's or WebP's RGB serves its grey.
            let mut decoded = if args.pixel_features {
                preprocess::decode_for_mode(bytes, max_pixels, min_size, decode)?
            } else {
                preprocess::decode_image_scaled(bytes, max_pixels, min_size)?
            };
            std::hint::black_box(preprocess::preprocess_decoded(&decoded, &cfg));
            if args.pixel_features {
                let grey = preprocess::feature_grey(bytes, max_pixels, &mut decoded)?;
                std::hint::black_box(ongi_core::features::pixel_features(&grey));
            }
        }
        Ok(())
    };
    let r = PreprocessResult {
        mode: "preprocess",
        decode: decode.as_str(),
        pixel_features: args.pixel_features,
        files: files.len(),
        timing: timed(images, || run_images(args.warmup), || run_images(images))?,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &r)?;
        out.write_all(b"\n")?;
    } else {
        writeln!(
            out,
            "ongi-bench --preprocess: {} decode + preprocess ({}x{} crop){}, 1 thread, files read into memory first",
            decode,
            cfg.crop_width,
            cfg.crop_height,
            if args.pixel_features {
                " + pixel features (grey decode, pHash, blur)"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "{:>5} {:>6} {:>9} {:>9} {:>9} {:>10} {:>12}",
            "files", "images", "images/s", "ms/image", "CPU avg %", "CPU peak %", "peak RSS MB"
        )?;
        writeln!(out, "{:>5} {}", r.files, r.timing.columns())?;
        writeln!(out, "{}", footnote(&[r.timing.peak_rss_source]))?;
    }
    out.flush()?;
    Ok(())
}

/// Peak RSS in MB (10^6 bytes) and where it came from.
fn peak_rss(reset: bool, sampled_kb: u64) -> Result<(f64, String)> {
    let now = rss_kb(None).unwrap_or(0);
    let (kb, source) = match peak_rss_kb() {
        Some(hwm) if reset => (hwm, "VmHWM"),
        _ => (sampled_kb.max(now), "VmRSS"),
    };
    if kb == 0 {
        bail!("cannot read this process's RSS from /proc/self/status");
    }
    Ok((kb as f64 * 1024.0 / 1e6, source.to_string()))
}

/// What the sampler thread saw.
struct SamplerStats {
    /// Highest CPU % over any window of at least [`PEAK_WINDOW`] within the timed
    /// part; `None` if the timed part was too short for two samples.
    peak_cpu_pct: Option<f64>,
    /// Highest `VmRSS` sampled, in kB.
    max_rss_kb: u64,
}

/// CPU peaks are taken over windows this long: utime/stime tick every 10 ms, so
/// a single 50 ms interval would be ±20 % quantisation noise per thread.
const PEAK_WINDOW: Duration = Duration::from_millis(250);

/// Samples this process's CPU time and RSS on its own thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    timed: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<(Instant, f64)>, u64)>,
}

impl Sampler {
    fn start(every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let timed = Arc::new(AtomicBool::new(false));
        let (s, t) = (stop.clone(), timed.clone());
        let handle = std::thread::Builder::new()
            .name("ongi-bench-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut max_rss = 0;
                loop {
                    let done = s.load(Ordering::Acquire);
                    max_rss = max_rss.max(rss_kb(None).unwrap_or(0));
                    if t.load(Ordering::Acquire) {
                        if let Ok(cpu) = cpu_seconds() {
                            samples.push((Instant::now(), cpu));
                        }
                    }
                    if done {
                        break;
                    }
                    std::thread::park_timeout(every);
                }
                (samples, max_rss)
            })
            .expect("spawning the sampler thread");
        Self {
            stop,
            timed,
            handle,
        }
    }

    /// The timed part begins: CPU samples are kept from here on.
    fn mark_start(&self) {
        self.timed.store(true, Ordering::Release);
        self.handle.thread().unpark();
    }

    fn stop(self) -> SamplerStats {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let (samples, max_rss_kb) = self.handle.join().unwrap_or_default();
        SamplerStats {
            peak_cpu_pct: peak_cpu_pct(&samples),
            max_rss_kb,
        }
    }
}

/// Highest CPU % over windows of at least [`PEAK_WINDOW`] (or the whole span if
/// shorter).
fn peak_cpu_pct(samples: &[(Instant, f64)]) -> Option<f64> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.0.duration_since(first.0);
    if samples.len() < 2 || span.is_zero() {
        return None;
    }
    let window = PEAK_WINDOW.min(span);
    let mut peak: f64 = 0.0;
    let mut j = 0;
    for (i, &(ti, ci)) in samples.iter().enumerate() {
        j = j.max(i + 1);
        while j < samples.len() && samples[j].0.duration_since(ti) < window {
            j += 1;
        }
        let Some(&(tj, cj)) = samples.get(j) else {
            break;
        };
        peak = peak.max(100.0 * (cj - ci) / tj.duration_since(ti).as_secs_f64());
    }
    Some(peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_cpu_uses_windows() {
        let t = Instant::now();
        let ms = |m| t + Duration::from_millis(m);
        // 1 core busy for 300 ms, then 2 cores for 300 ms.
        let samples = [
            (ms(0), 0.0),
            (ms(100), 0.1),
            (ms(300), 0.3),
            (ms(400), 0.5),
            (ms(600), 0.9),
        ];
        let peak = peak_cpu_pct(&samples).unwrap();
        assert!((peak - 200.0).abs() < 1e-6, "{peak}");
        assert_eq!(peak_cpu_pct(&samples[..1]), None);
    }

    #[test]
    fn synthetic_pixels_are_deterministic_and_normalised() {
        let cfg = PreprocessConfig::default();
        let a = synthetic_pixels(2, 8, &cfg).unwrap();
        let b = synthetic_pixels(2, 8, &cfg).unwrap();
        assert_eq!(a.dims(), &[2, 3, 8, 8]);
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        let lo = (0.0 - cfg.image_mean[0]) / cfg.image_std[0];
        let hi = (1.0 - cfg.image_mean[2]) / cfg.image_std[2];
        assert!(a.iter().all(|&v| v >= lo - 0.1 && v <= hi + 0.1));
    }
}
