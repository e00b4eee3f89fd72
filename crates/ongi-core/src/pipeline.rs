//! Assembles the embedding pipeline from a model directory and settings:
//! model, image source, feature store, decode workers, batcher and face
//! models; and, over it, the album analyzer. Every command that embeds
//! photos opens it the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use ongi_model::clip::ClipModel;
use ongi_model::face::FaceOptions;
use ongi_model::{ModelDir, ModelError, Precision};

use crate::analysis::quality::QualityConfig;
use crate::analysis::score::{ScoreHead, ScoreHeadError};
use crate::analysis::taxonomy::{Taxonomy, TaxonomyError};
use crate::analysis::{AnalysisConfig, AnalysisError, Analyzer};
use crate::batcher::{Batcher, BatcherConfig};
use crate::embedding::{EmbeddingService, PipelineConfig, ServiceParts};
use crate::encoder::{ClipImageEncoder, ClipTextEncoder};
use crate::faces::FaceFinder;
use crate::preprocess::{DecodeMode, PreprocessConfig, PreprocessError};
use crate::source::{ImageSource, SourceError, SourceLimits};
use crate::store::{FeatureStore, StoreError};
use crate::text_cache::{TextEmbeddings, TextError};
use crate::tokenize::{ClipTokenizer, TokenizeError};

/// How to open a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Where photos come from: a local folder, `s3://bucket/prefix` or
    /// `gs://bucket/prefix`.
    pub images: String,
    /// Size, symlink and hard-link limits of the image source.
    pub source_limits: SourceLimits,
    /// The feature store: a file path (embedded redb) or a Redis URL.
    pub store: String,
    /// Time to live of cached records (`None`: forever).
    pub cache_ttl: Option<Duration>,
    /// The identity features are cached under; `None` derives it from the
    /// checkpoint, the decode mode and the precision.
    pub model_id: Option<String>,
    pub device: Device,
    pub precision: Precision,
    /// Threads decoding and preprocessing photos.
    pub decode_workers: usize,
    pub decode_mode: DecodeMode,
    pub batcher: BatcherConfig,
    /// Object fetches in flight at once.
    pub max_concurrent_fetches: usize,
    /// Most pixels a photo may declare.
    pub max_pixels: u64,
    /// Deadline of one embedding call (`None`: none).
    pub request_timeout: Option<Duration>,
    /// Also store a thumbnail of this many pixels per newly embedded photo.
    pub thumbnails: Option<u32>,
    /// Face models: photos are embedded with their faces.
    pub face_model: Option<PathBuf>,
}

impl PipelineOptions {
    /// Photos from `images` into the store `store`, on `device` at
    /// `precision`; everything else at the server's defaults (one decode
    /// worker, fast decoding, batches of up to 16 within 5 ms, 1,024 queued
    /// images, 64 fetches in flight, no deadline, no thumbnails, no faces).
    pub fn new(
        images: impl Into<String>,
        store: impl Into<String>,
        device: Device,
        precision: Precision,
    ) -> Self {
        Self {
            images: images.into(),
            source_limits: SourceLimits::default(),
            store: store.into(),
            cache_ttl: None,
            model_id: None,
            device,
            precision,
            decode_workers: 1,
            decode_mode: DecodeMode::Fast,
            batcher: BatcherConfig {
                max_batch_size: 16,
                max_wait: Duration::from_millis(5),
                queue_capacity: 1024,
            },
            max_concurrent_fetches: 64,
            max_pixels: crate::preprocess::DEFAULT_MAX_PIXELS,
            request_timeout: None,
            thumbnails: None,
            face_model: None,
        }
    }
}

/// The analysis files; absent ones take the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct AnalysisOptions {
    /// Analysis constants (JSON).
    pub config: Option<PathBuf>,
    /// Tag taxonomy (JSON) replacing the built-in one.
    pub taxonomy: Option<PathBuf>,
    /// Highlight score head (safetensors).
    pub score_head: Option<PathBuf>,
}

/// Why a pipeline could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The settings contradict themselves or the model.
    #[error("{0}")]
    Invalid(String),
    #[error("loading the model from {dir}")]
    Model {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
    #[error("hashing the checkpoint in {dir}")]
    ModelId {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the face models from {dir}")]
    Faces {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("starting the decode workers")]
    DecodeWorkers(#[from] rayon::ThreadPoolBuildError),
    #[error("starting the inference worker")]
    InferenceWorker(#[source] std::io::Error),
    #[error("opening the image source {spec}")]
    Source {
        spec: String,
        #[source]
        source: SourceError,
    },
    #[error("opening the feature store {spec}")]
    Store {
        spec: String,
        // Boxed: the store's errors are large and this one is rare.
        #[source]
        source: Box<StoreError>,
    },
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
    #[error(transparent)]
    ScoreHead(#[from] ScoreHeadError),
    #[error("embedding the taxonomy's prompts")]
    Prompts(#[from] TextError),
}

/// An open pipeline: photos in, feature records in the store.
pub struct Pipeline {
    /// The per-request embedding pipeline.
    pub embedding: EmbeddingService,
    /// Text embeddings (prompts, search queries) through the store's cache.
    pub texts: TextEmbeddings,
    /// The feature store (also inside `embedding`).
    pub store: Arc<dyn FeatureStore>,
    /// Where photos come from, as clients may be told (no local path, no endpoint).
    pub source_public: String,
    /// The image source, described for the operator's log.
    pub source_description: String,
    model: Arc<ClipModel>,
}

impl Pipeline {
    /// Loads the model, opens source and store, and starts the decode
    /// workers and the inference worker. Must run inside a tokio runtime.
    pub async fn open(dir: &ModelDir, options: PipelineOptions) -> Result<Self, PipelineError> {
        let invalid = |why: &str| Err(PipelineError::Invalid(why.to_string()));
        if options.batcher.max_batch_size == 0 {
            return invalid("the batch size must be at least 1");
        }
        if options.source_limits.max_bytes == 0 || options.max_pixels == 0 {
            return invalid("the image byte and pixel limits must be at least 1");
        }
        let model =
            ClipModel::load(dir.path(), &options.device, options.precision).map_err(|source| {
                PipelineError::Model {
                    dir: dir.path().to_path_buf(),
                    source,
                }
            })?;
        let model = Arc::new(model);
        let preprocess = PreprocessConfig::from_model_dir(dir.path())?;
        let size = model.image_size() as u32;
        if preprocess.crop_height != size || preprocess.crop_width != size {
            return Err(PipelineError::Invalid(format!(
                "{} crops to {}x{} but the model's vision_config.image_size is {size}",
                ModelDir::PREPROCESSOR_CONFIG,
                preprocess.crop_width,
                preprocess.crop_height
            )));
        }
        // Fast and exact embeddings differ by more than the parity bar, so a
        // derived identity keeps them apart; an explicit one is the
        // operator's namespace and is used as given.
        let model_id = match &options.model_id {
            Some(id) => id.clone(),
            None => crate::model_id::model_identity(dir.path())
                .map(|id| crate::model_id::with_decode_mode(&id, options.decode_mode))
                .map(|id| crate::model_id::with_precision(&id, options.precision))
                .map_err(|source| PipelineError::ModelId {
                    dir: dir.path().to_path_buf(),
                    source,
                })?,
        };
        let faces = match &options.face_model {
            None => None,
            Some(face_dir) => Some(Arc::new(
                FaceFinder::load(face_dir, FaceOptions::default()).map_err(|source| {
                    PipelineError::Faces {
                        dir: face_dir.clone(),
                        source,
                    }
                })?,
            )),
        };
        let decode_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.decode_workers.max(1))
            .thread_name(|i| format!("ongi-decode-{i}"))
            .build()?;
        let batcher = Batcher::spawn(ClipImageEncoder::new(model.clone()), options.batcher)
            .map_err(PipelineError::InferenceWorker)?;
        let source =
            ImageSource::from_spec(&options.images, options.source_limits).map_err(|source| {
                PipelineError::Source {
                    spec: options.images.clone(),
                    source,
                }
            })?;
        let store = crate::store::open_store(&options.store, options.cache_ttl)
            .await
            .map_err(|source| PipelineError::Store {
                spec: options.store.clone(),
                source: Box::new(source),
            })?;
        let text = Arc::new(ClipTextEncoder::new(
            model.clone(),
            ClipTokenizer::from_model_dir(dir.path())?,
        ));
        let texts = TextEmbeddings::new(text, store.clone(), model_id.clone());
        let source_description = source.describe();
        let source_public = source.public_description();
        let parts = ServiceParts {
            source: Arc::new(source),
            store: store.clone(),
            batcher,
            decode_pool: Arc::new(decode_pool),
            preprocess: Arc::new(preprocess),
            model_id,
        };
        let embedding = EmbeddingService::new(
            parts,
            &PipelineConfig {
                max_concurrent_fetches: options.max_concurrent_fetches,
                max_pixels: options.max_pixels,
                decode_mode: options.decode_mode,
                request_timeout: options.request_timeout,
                thumbnails: options.thumbnails,
                faces,
            },
        );
        Ok(Self {
            embedding,
            texts,
            store,
            source_public,
            source_description,
            model,
        })
    }

    /// The album analyzer over this pipeline's records: the analysis
    /// constants, taxonomy and score head, and the taxonomy's prompts
    /// embedded (through the store's cache).
    pub async fn analyzer(&self, options: &AnalysisOptions) -> Result<Analyzer, PipelineError> {
        let config = match &options.config {
            Some(path) => AnalysisConfig::from_file(path)?,
            None => AnalysisConfig::default(),
        };
        let vision = &self.model.config().vision;
        let quality = config.quality.unwrap_or_else(|| {
            QualityConfig::for_vision_tower(vision.hidden_size, vision.patch_size)
        });
        let taxonomy = match &options.taxonomy {
            Some(path) => Taxonomy::from_file(path)?,
            None => Taxonomy::builtin()?,
        };
        let score_head = options
            .score_head
            .as_deref()
            .map(ScoreHead::from_file)
            .transpose()?;
        let prompts = self
            .texts
            .prompts(&Analyzer::prompts_needed(&taxonomy))
            .await?;
        Ok(Analyzer::new(
            config, quality, taxonomy, score_head, prompts,
        )?)
    }
}
