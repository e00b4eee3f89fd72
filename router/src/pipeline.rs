//! The flags of the embedding pipeline and the analyzer, shared by `ongi
//! serve`, `ongi analyze` and `ongi embed`, and the pipeline they open.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ongi_core::batcher::BatcherConfig;
use ongi_core::pipeline::{AnalysisOptions, Pipeline, PipelineOptions};
use ongi_core::preprocess::DecodeMode;
use ongi_core::source::SourceLimits;
use ongi_model::ModelDir;

use crate::compute::{Compute, ComputeArgs};

/// Model, cache and batching flags.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    /// CLIP model: a directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face hub id `org/name[@revision]`,
    /// fetched once into the Hugging Face cache (`HF_HOME`, `HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_OFFLINE`).
    #[arg(long, env = "ONGI_MODEL")]
    pub model: PathBuf,
    /// Feature store: a file path (embedded redb store) or `redis://host:port/db`
    /// (default: features.redb in the user's cache directory,
    /// `$XDG_CACHE_HOME/ongi` or `~/.cache/ongi`).
    #[arg(long, env = "ONGI_STORE", default_value_t = default_store())]
    pub store: String,
    /// Time to live of cached feature records, in seconds (default: forever).
    #[arg(long, env = "ONGI_CACHE_TTL")]
    pub cache_ttl: Option<u64>,
    /// Overrides the model identity under which features are cached.
    #[arg(long, env = "ONGI_MODEL_ID")]
    pub model_id: Option<String>,
    /// Largest inference batch.
    #[arg(long, env = "ONGI_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "ONGI_MAX_BATCH_WAIT_MS", default_value_t = 5)]
    pub max_batch_wait_ms: u64,
    /// Threads decoding and preprocessing photos (default: the compute thread count).
    #[arg(long, env = "ONGI_DECODE_WORKERS")]
    pub decode_workers: Option<usize>,
    /// Images that may wait for inference at once; a request that does not fit gets 503.
    #[arg(long, env = "ONGI_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Object fetches in flight at once.
    #[arg(long, env = "ONGI_MAX_CONCURRENT_FETCHES", default_value_t = 64)]
    pub max_concurrent_fetches: usize,
    /// Largest photo accepted, in bytes; a larger one fails that key only.
    #[arg(long, env = "ONGI_MAX_IMAGE_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_image_bytes: u64,
    /// Most pixels (width × height, read from the file's header before decoding)
    /// a photo may declare; a larger one (e.g. a decompression bomb) fails that key only.
    #[arg(long, env = "ONGI_MAX_IMAGE_PIXELS", default_value_t = ongi_core::preprocess::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// Deadline of one embedding request, in seconds (fractions allowed): photos not
    /// embedded by then fail with "deadline exceeded"; the finished ones are kept.
    #[arg(long, env = "ONGI_REQUEST_TIMEOUT_SECS", default_value_t = 120.0)]
    pub request_timeout_secs: f64,
    /// Read local photos that have more than one hard link. Off by default: a
    /// hard link in the image root can name any file on the same file system,
    /// so such files fail with "hard links" unless every link is trusted.
    #[arg(long, env = "ONGI_ALLOW_HARD_LINKS")]
    pub allow_hard_links: bool,
    /// Face models (face-api's SSD-MobileNetV1, 68-point landmarks and
    /// recognition net, as laid out by `scripts/fetch-face-models.sh DIR`):
    /// photos are embedded with their faces, and `people` is answered.
    /// Without it the people route answers 400.
    #[arg(long, env = "ONGI_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// JPEG decoding mode, a flag of every command that decodes photos.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DecodeArgs {
    /// JPEG decoding: `fast` decodes large photos at 1/2–1/8 scale in libjpeg's
    /// DCT domain (several times faster; tensors within 0.02 mean absolute
    /// difference of exact); `exact` decodes at full size, bit-identical to PIL.
    #[arg(long = "decode", env = "ONGI_DECODE", value_enum, default_value_t = DecodeMode::Fast)]
    pub mode: DecodeMode,
}

/// The embedded store's default file: in the user's cache directory, not
/// wherever the command happens to run.
fn default_store() -> String {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("ongi")
        .join("features.redb")
        .to_string_lossy()
        .into_owned()
}

/// Analysis flags.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalysisArgs {
    /// Tag taxonomy JSON replacing the built-in one.
    #[arg(long, env = "ONGI_TAXONOMY")]
    pub taxonomy: Option<PathBuf>,
    /// Highlight score head (safetensors linear/MLP over the normalised embedding).
    #[arg(long, env = "ONGI_SCORE_HEAD")]
    pub score_head: Option<PathBuf>,
    /// JSON file overriding analysis constants (duplicates, quality, categories, people).
    #[arg(long, env = "ONGI_ANALYSIS_CONFIG")]
    pub analysis_config: Option<PathBuf>,
}

impl AnalysisArgs {
    pub fn options(&self) -> AnalysisOptions {
        AnalysisOptions {
            config: self.analysis_config.clone(),
            taxonomy: self.taxonomy.clone(),
            score_head: self.score_head.clone(),
        }
    }
}

impl PipelineArgs {
    /// The pipeline these flags describe, over the image source `images`;
    /// with `thumbnails`, newly embedded photos also get a stored thumbnail
    /// of that many pixels.
    pub fn options(
        &self,
        images: &str,
        compute: &Compute,
        thumbnails: Option<u32>,
    ) -> Result<PipelineOptions> {
        let request_timeout = Duration::try_from_secs_f64(self.request_timeout_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--request-timeout-secs must be a positive number of seconds")?;
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.max_image_bytes == 0 || self.max_image_pixels == 0 {
            bail!("--max-image-bytes and --max-image-pixels must be at least 1");
        }
        Ok(PipelineOptions {
            images: images.to_string(),
            source_limits: SourceLimits {
                max_bytes: self.max_image_bytes,
                allow_hard_links: self.allow_hard_links,
                ..SourceLimits::default()
            },
            store: self.store.clone(),
            cache_ttl: self.cache_ttl.map(Duration::from_secs),
            model_id: self.model_id.clone(),
            device: compute.device.clone(),
            precision: compute.precision,
            decode_workers: decode_workers(self.decode_workers, compute.threads),
            decode_mode: self.decode.mode,
            batcher: BatcherConfig {
                max_batch_size: self.batch_size,
                max_wait: Duration::from_millis(self.max_batch_wait_ms),
                queue_capacity: self.queue_capacity,
            },
            max_concurrent_fetches: self.max_concurrent_fetches,
            max_pixels: self.max_image_pixels,
            request_timeout: Some(request_timeout),
            thumbnails,
            face_model: self.face_model.clone(),
        })
    }

    /// Resolves compute settings (sizes the global compute pool).
    pub fn resolve_compute(&self) -> Result<Compute> {
        self.compute.resolve()
    }
}

/// Decode workers for `threads` compute threads: `given` (`--decode-workers`,
/// at least 1), else as many as the threads. The decode pool and the compute team then share
/// the cores, and the kernel's scheduler hands each core to whichever side
/// has work, so neither idles while the other waits. Every split measured
/// (2 cores, 12-MP photos, each decode mode and precision, decoding 30–60 %
/// of the CPU per photo) ran slower with fewer workers than threads.
pub fn decode_workers(given: Option<usize>, threads: usize) -> usize {
    given.unwrap_or(threads).max(1)
}

/// Opens the pipeline `options` describe and logs what it runs with. Must
/// run inside a tokio runtime.
pub async fn open(model: &Path, options: PipelineOptions, compute: &Compute) -> Result<Pipeline> {
    let (decode_workers, decode_mode) = (options.decode_workers, options.decode_mode);
    let batch_size = options.batcher.max_batch_size;
    let pipeline = Pipeline::open(&ModelDir::new(model), options).await?;
    tracing::info!(
        model = %model.display(),
        model_id = %pipeline.embedding.model_id(),
        precision = %compute.describe_precision(),
        cpu_features = %ongi_model::CpuFeatures::get().flags(),
        images = %pipeline.source_description,
        store = %pipeline.store.describe(),
        threads = compute.threads,
        decode_workers,
        decode = %decode_mode,
        faces = pipeline.embedding.finds_faces(),
        batch_size,
        "pipeline ready"
    );
    Ok(pipeline)
}

/// A multi-threaded tokio runtime for the HTTP side; compute runs on its own threads.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ongi-io")
        .build()?)
}
