//! Builds the embedding pipeline and the analyzer from flags; shared by
//! `ongi serve` and `ongi analyze`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ongi_core::analysis::quality::QualityConfig;
use ongi_core::analysis::score::ScoreHead;
use ongi_core::analysis::taxonomy::Taxonomy;
use ongi_core::analysis::{AnalysisConfig, Analyzer};
use ongi_core::batcher::{Batcher, BatcherConfig};
use ongi_core::embedding::{EmbeddingService, PipelineConfig};
use ongi_core::encoder::{ClipImageEncoder, ClipTextEncoder};
use ongi_core::faces::FaceFinder;
use ongi_core::preprocess::{DecodeMode, PreprocessConfig};
use ongi_core::source::{ImageSource, SourceLimits};
use ongi_core::store::FeatureStore;
use ongi_core::text_cache::TextEmbeddings;
use ongi_core::tokenize::ClipTokenizer;
use ongi_model::clip::ClipModel;
use ongi_model::face::FaceOptions;

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

/// Everything a command needs to embed and analyse.
pub struct Pipeline {
    /// The per-request embedding pipeline.
    pub embedding: EmbeddingService,
    /// Album analysis over the store.
    pub analyzer: Analyzer,
    /// Text embeddings (prompts, search queries) through the store's cache.
    pub texts: TextEmbeddings,
    /// The feature store (also inside `embedding`).
    pub store: Arc<dyn FeatureStore>,
    /// Where photos come from, as clients may be told (no local path, no endpoint).
    pub source_public: String,
    /// The precision the model computes at, why, and on which kernels.
    pub precision: String,
}

/// Loads the model, opens source and store, starts the inference worker and
/// prepares the analyzer; with `thumbnails`, newly embedded photos also get a
/// stored thumbnail of that many pixels. Must run inside a tokio runtime.
pub async fn build(
    args: &PipelineArgs,
    analysis: &AnalysisArgs,
    images: &str,
    compute: Compute,
    thumbnails: Option<u32>,
) -> Result<Pipeline> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.max_image_bytes == 0 || args.max_image_pixels == 0 {
        bail!("--max-image-bytes and --max-image-pixels must be at least 1");
    }
    let request_timeout = Duration::try_from_secs_f64(args.request_timeout_secs)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--request-timeout-secs must be a positive number of seconds")?;
    let model = Arc::new(
        ClipModel::load(&args.model, &compute.device, compute.precision)
            .with_context(|| format!("loading the model from {}", args.model.display()))?,
    );
    let preprocess = PreprocessConfig::from_model_dir(&args.model)?;
    let size = model.image_size() as u32;
    if preprocess.crop_height != size || preprocess.crop_width != size {
        bail!(
            "preprocessor_config.json crops to {}x{} but the model's vision_config.image_size is {size}",
            preprocess.crop_width,
            preprocess.crop_height
        );
    }
    let decode_mode = args.decode.mode;
    // Fast and exact embeddings differ by more than the parity bar, so a derived
    // identity keeps them apart; an explicit --model-id is the operator's namespace
    // and is used as given.
    let model_id = match &args.model_id {
        Some(id) => id.clone(),
        None => ongi_core::model_id::model_identity(&args.model)
            .map(|id| ongi_core::model_id::with_decode_mode(&id, decode_mode))
            .map(|id| ongi_core::model_id::with_precision(&id, compute.precision))
            .with_context(|| format!("hashing the checkpoint in {}", args.model.display()))?,
    };
    let faces = args
        .face_model
        .as_deref()
        .map(|dir| {
            FaceFinder::load(dir, FaceOptions::default())
                .map(Arc::new)
                .with_context(|| format!("loading the face models from {}", dir.display()))
        })
        .transpose()?;
    let decode_workers = args.decode_workers.unwrap_or(compute.threads).max(1);
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(decode_workers)
        .thread_name(|i| format!("ongi-decode-{i}"))
        .build()?;
    let batcher = Batcher::spawn(
        ClipImageEncoder::new(model.clone()),
        BatcherConfig {
            max_batch_size: args.batch_size,
            max_wait: Duration::from_millis(args.max_batch_wait_ms),
            queue_capacity: args.queue_capacity,
        },
    )?;
    let source_limits = SourceLimits {
        max_bytes: args.max_image_bytes,
        allow_hard_links: args.allow_hard_links,
        ..SourceLimits::default()
    };
    let source = ImageSource::from_spec(images, source_limits)
        .with_context(|| format!("opening the image source {images}"))?;
    let source_description = source.describe();
    let source_public = source.public_description();
    let store = ongi_core::store::open_store(&args.store, args.cache_ttl.map(Duration::from_secs))
        .await
        .with_context(|| format!("opening the feature store {}", args.store))?;

    let config = match &analysis.analysis_config {
        Some(path) => AnalysisConfig::from_file(path)?,
        None => AnalysisConfig::default(),
    };
    let vision = &model.config().vision;
    let quality = config
        .quality
        .unwrap_or_else(|| QualityConfig::for_vision_tower(vision.hidden_size, vision.patch_size));
    let taxonomy = match &analysis.taxonomy {
        Some(path) => Taxonomy::from_file(path)?,
        None => Taxonomy::builtin()?,
    };
    let score_head = analysis
        .score_head
        .as_deref()
        .map(ScoreHead::from_file)
        .transpose()?;
    let text = Arc::new(ClipTextEncoder::new(
        model.clone(),
        ClipTokenizer::from_model_dir(&args.model)?,
    ));
    let texts = TextEmbeddings::new(text, store.clone(), model_id.clone());
    let prompts = texts.prompts(&Analyzer::prompts_needed(&taxonomy)).await?;
    let analyzer = Analyzer::new(config, quality, taxonomy, score_head, prompts)?;

    let precision = compute.describe_precision();
    tracing::info!(
        model = %args.model.display(),
        model_id = %model_id,
        precision = %precision,
        cpu_features = %ongi_model::CpuFeatures::get().flags(),
        images = %source_description,
        store = %store.describe(),
        threads = compute.threads,
        decode_workers,
        decode = %decode_mode,
        faces = faces.is_some(),
        batch_size = args.batch_size,
        "pipeline ready"
    );
    let embedding = EmbeddingService::new(
        Arc::new(source),
        store.clone(),
        batcher,
        Arc::new(decode_pool),
        Arc::new(preprocess),
        model_id,
        &PipelineConfig {
            max_concurrent_fetches: args.max_concurrent_fetches,
            max_pixels: args.max_image_pixels,
            decode_mode,
            request_timeout: Some(request_timeout),
            thumbnails,
            faces,
        },
    );
    Ok(Pipeline {
        embedding,
        analyzer,
        texts,
        store,
        source_public,
        precision,
    })
}

/// A multi-threaded tokio runtime for the HTTP side; compute runs on its own threads.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ongi-io")
        .build()?)
}

impl PipelineArgs {
    /// Resolves compute settings (sizes the global compute pool).
    pub fn resolve_compute(&self) -> Result<Compute> {
        self.compute.resolve()
    }
}
