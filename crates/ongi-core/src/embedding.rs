//! The embedding pipeline of one request: load → decode → preprocess (and the
//! pixel features) → queue → embed → store, in one pass over each photo.
//!
//! Photos that already have a feature record are not touched: each photo is
//! computed once and shared by every album task.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};

use crate::batcher::{Batcher, Slot};
use crate::faces::FaceFinder;
use crate::features::{self, FeatureRecord};
use crate::preprocess::{self, PreprocessConfig};
use crate::source::ImageSource;
use crate::store::{FeatureStore, StoreError};

/// Why a whole request could not be served (per-image problems are in [`EmbedReport::failed`]).
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The inference queue cannot take the request's images now; retry later.
    #[error("the inference queue is full")]
    Busy,
    /// The feature store failed.
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
}

/// Why one photo could not be embedded (the request goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Its bytes could not be read from the image source.
    #[error(transparent)]
    Load(#[from] crate::source::SourceError),
    /// Its bytes are not a photo that decodes (or it is too large).
    #[error(transparent)]
    Decode(#[from] preprocess::PreprocessError),
    /// The model failed on it, or the inference worker stopped.
    #[error(transparent)]
    Inference(#[from] crate::batcher::BatchError),
    /// The face models failed on it.
    #[error("face models: {0}")]
    Faces(#[from] ongi_model::ModelError),
    /// Still in flight when the request's deadline passed.
    #[error("deadline exceeded: not embedded within the request timeout of {seconds:.3} s")]
    Deadline {
        /// The request timeout.
        seconds: f64,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The decode pool dropped the work (a worker panicked).
    #[error("decode worker stopped")]
    DecodeWorkerStopped,
}

/// A key that could not be embedded, with the reason.
#[derive(Debug)]
pub struct ImageFailure {
    /// The object key as requested.
    pub key: String,
    /// Why it failed.
    pub error: ImageError,
}

/// What one embedding request did.
#[derive(Debug)]
pub struct EmbedReport {
    /// Keys that could not be loaded, decoded or embedded, in request order.
    pub failed: Vec<ImageFailure>,
    /// Keys answered from the feature store without touching pixels.
    pub cached: usize,
    /// Keys embedded and stored by this request.
    pub embedded: usize,
    /// Every record the request ended with (cached or new), in request order
    /// without repeats; failed keys are absent. Saves callers a second read.
    pub records: Vec<(String, FeatureRecord)>,
    /// Per-stage timings.
    pub timings: RequestTimings,
}

/// Total, min, average and max of one per-image stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageStats {
    /// Sum over the images.
    pub total: Duration,
    /// Fastest image.
    pub min: Duration,
    /// Mean over the images.
    pub avg: Duration,
    /// Slowest image.
    pub max: Duration,
}

impl StageStats {
    fn of(samples: impl Iterator<Item = Duration>) -> Self {
        let (mut n, mut total, mut min, mut max) =
            (0u32, Duration::ZERO, Duration::MAX, Duration::ZERO);
        for d in samples {
            n += 1;
            total += d;
            min = min.min(d);
            max = max.max(d);
        }
        if n == 0 {
            return Self::default();
        }
        Self {
            total,
            min,
            avg: total / n,
            max,
        }
    }
}

/// Per-stage timings of one request, so the stage that bounds it is visible.
#[derive(Debug, Clone, Default)]
pub struct RequestTimings {
    /// Reading the object's bytes.
    pub load: StageStats,
    /// Decoding (with EXIF orientation).
    pub decode: StageStats,
    /// CLIP preprocessing plus pHash and Laplacian variance.
    pub preprocess: StageStats,
    /// Finding and describing faces (zero without face models).
    pub faces: StageStats,
    /// Waiting in the inference queue.
    pub queue_wait: StageStats,
    /// The model time of the batch each image ran in.
    pub embed: StageStats,
    /// This request's share of the model's busy time: each batch's time
    /// divided evenly among its images, summed over this request's images.
    pub model_busy: Duration,
    /// Reading and writing the feature store.
    pub store: Duration,
    /// The whole request.
    pub total: Duration,
}

/// Timings of one image through the per-image stages.
#[derive(Debug, Clone, Copy)]
struct ImageTimings {
    load: Duration,
    decode: Duration,
    preprocess: Duration,
    faces: Duration,
    queue_wait: Duration,
    embed: Duration,
    /// `embed` divided by the batch's size.
    model_share: Duration,
}

/// What the embedding pipeline is made of.
pub struct ServiceParts {
    /// Where photo bytes come from.
    pub source: Arc<ImageSource>,
    /// Where records go.
    pub store: Arc<dyn FeatureStore>,
    /// The inference worker.
    pub batcher: Batcher,
    /// Threads decoding and preprocessing photos.
    pub decode_pool: Arc<rayon::ThreadPool>,
    /// The model's image preprocessing.
    pub preprocess: Arc<PreprocessConfig>,
    /// The identity records are stored under.
    pub model_id: String,
}

/// Shared state of the embedding pipeline.
pub struct EmbeddingService {
    parts: ServiceParts,
    fetch_permits: Arc<Semaphore>,
    max_pixels: u64,
    decode_mode: preprocess::DecodeMode,
    request_timeout: Option<Duration>,
    thumbnails: Option<u32>,
    faces: Option<Arc<FaceFinder>>,
}

/// Name of a photo's thumbnail blob in the store.
fn thumbnail_blob(key: &str) -> String {
    format!("thumb:v1:{key}")
}

/// Settings of the pipeline besides its parts.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Object fetches in flight at once across all requests.
    pub max_concurrent_fetches: usize,
    /// Most pixels a photo may declare in its header (decompression-bomb guard,
    /// see [`preprocess::decode_image_with_limit`]).
    pub max_pixels: u64,
    /// Full-size or DCT-reduced JPEG decoding (see [`preprocess::DecodeMode`]).
    pub decode_mode: preprocess::DecodeMode,
    /// Deadline of one [`EmbeddingService::embed`] call: photos not embedded by
    /// then fail with "deadline exceeded" and the finished ones are kept.
    pub request_timeout: Option<Duration>,
    /// Also store a JPEG thumbnail of each newly embedded photo, at most this
    /// many pixels on its longer side, made from the pixels decoded for the
    /// model (see [`EmbeddingService::thumbnails`]).
    pub thumbnails: Option<u32>,
    /// Also find the faces of each photo (in the same pass, on the same
    /// pixels). Records made without faces then count as missing.
    pub faces: Option<Arc<FaceFinder>>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_fetches: 64,
            max_pixels: preprocess::DEFAULT_MAX_PIXELS,
            decode_mode: preprocess::DecodeMode::default(),
            request_timeout: None,
            thumbnails: None,
            faces: None,
        }
    }
}

impl EmbeddingService {
    /// Assembles the pipeline from its parts.
    pub fn new(parts: ServiceParts, config: &PipelineConfig) -> Self {
        Self {
            parts,
            fetch_permits: Arc::new(Semaphore::new(config.max_concurrent_fetches.max(1))),
            max_pixels: config.max_pixels,
            decode_mode: config.decode_mode,
            request_timeout: config.request_timeout,
            thumbnails: config.thumbnails,
            faces: config.faces.clone(),
        }
    }

    /// The model identity under which records are stored.
    pub fn model_id(&self) -> &str {
        &self.parts.model_id
    }

    /// The inference batcher.
    pub fn batcher(&self) -> &Batcher {
        &self.parts.batcher
    }

    /// Whether photos are embedded with their faces.
    pub fn finds_faces(&self) -> bool {
        self.faces.is_some()
    }

    /// Whether `record` has everything this pipeline computes.
    pub fn is_complete(&self, record: &FeatureRecord) -> bool {
        self.faces.is_none() || record.faces.is_some()
    }

    /// Feature records of `keys` in order (`None` where missing).
    pub async fn records(&self, keys: &[String]) -> Result<Vec<Option<FeatureRecord>>, EmbedError> {
        Ok(self
            .parts
            .store
            .get_many(&self.parts.model_id, keys)
            .await?)
    }

    /// Embeds every key that has no record yet and stores the records.
    pub async fn embed(&self, keys: &[String]) -> Result<EmbedReport, EmbedError> {
        let started = Instant::now();
        let mut seen = HashSet::new();
        let unique: Vec<String> = keys
            .iter()
            .filter(|k| seen.insert(k.as_str()))
            .cloned()
            .collect();

        let store_started = Instant::now();
        // A record made before faces were enabled is computed again.
        let existing: Vec<Option<FeatureRecord>> = self
            .parts
            .store
            .get_many(&self.parts.model_id, &unique)
            .await?
            .into_iter()
            .map(|r| r.filter(|r| self.is_complete(r)))
            .collect();
        let mut store_time = store_started.elapsed();
        let missing: Vec<String> = unique
            .iter()
            .zip(&existing)
            .filter(|(_, r)| r.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let cached = unique.len() - missing.len();
        metrics::counter!("ongi_cache_hits_total").increment(cached as u64);
        metrics::counter!("ongi_cache_misses_total").increment(missing.len() as u64);

        // reserve refuses only for lack of room
        let slots = self
            .parts
            .batcher
            .reserve(missing.len())
            .map_err(|_| EmbedError::Busy)?;
        // The deadline runs from the start of the request; an image still in
        // flight then is dropped (its queue slot is released) and reported failed.
        let deadline = self
            .request_timeout
            .map(|t| tokio::time::Instant::from_std(started) + t);
        let results = futures_util::future::join_all(missing.iter().zip(slots).map(
            |(key, slot)| async move {
                let work = self.process(key, slot);
                match deadline {
                    None => work.await,
                    Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
                        Ok(result) => result,
                        Err(_) => {
                            metrics::counter!("ongi_images_deadline_exceeded_total").increment(1);
                            Err(ImageError::Deadline {
                                seconds: self.request_timeout.unwrap_or_default().as_secs_f64(),
                            })
                        }
                    },
                }
            },
        ))
        .await;

        let mut failed = Vec::new();
        let mut records = Vec::new();
        let mut thumbnails = Vec::new();
        let mut per_image = Vec::new();
        for (key, result) in missing.iter().zip(results) {
            match result {
                Ok((record, thumbnail, t)) => {
                    records.push((key.clone(), record));
                    thumbnails.extend(thumbnail.map(|jpeg| (thumbnail_blob(key), jpeg)));
                    per_image.push(t);
                }
                Err(error) => failed.push(ImageFailure {
                    key: key.clone(),
                    error,
                }),
            }
        }
        let store_started = Instant::now();
        if !records.is_empty() {
            self.parts
                .store
                .put_many(&self.parts.model_id, &records)
                .await?;
        }
        for (name, jpeg) in &thumbnails {
            self.parts
                .store
                .put_blob(&self.parts.model_id, name, jpeg)
                .await?;
        }
        store_time += store_started.elapsed();

        let timings = RequestTimings {
            load: StageStats::of(per_image.iter().map(|t| t.load)),
            decode: StageStats::of(per_image.iter().map(|t| t.decode)),
            preprocess: StageStats::of(per_image.iter().map(|t| t.preprocess)),
            faces: StageStats::of(per_image.iter().map(|t| t.faces)),
            queue_wait: StageStats::of(per_image.iter().map(|t| t.queue_wait)),
            embed: StageStats::of(per_image.iter().map(|t| t.embed)),
            model_busy: per_image.iter().map(|t| t.model_share).sum(),
            store: store_time,
            total: started.elapsed(),
        };
        record_metrics(&per_image, &timings, records.len());
        let embedded = records.len();
        let mut fresh: std::collections::HashMap<String, FeatureRecord> =
            records.into_iter().collect();
        let records = unique
            .into_iter()
            .zip(existing)
            .filter_map(|(key, cached)| {
                let record = cached.or_else(|| fresh.remove(&key))?;
                Some((key, record))
            })
            .collect();
        Ok(EmbedReport {
            failed,
            cached,
            embedded,
            records,
            timings,
        })
    }

    /// One photo through load, decode, preprocess and the model.
    async fn process(
        &self,
        key: &str,
        slot: Slot,
    ) -> Result<(FeatureRecord, Option<Vec<u8>>, ImageTimings), ImageError> {
        let started = Instant::now();
        let bytes = {
            let _permit = self
                .fetch_permits
                .acquire()
                .await
                .map_err(|_| ImageError::ShuttingDown)?;
            self.parts.source.fetch(key).await?
        };
        let load = started.elapsed();

        let cfg = self.parts.preprocess.clone();
        let max_pixels = self.max_pixels;
        let faces = self.faces.clone();
        // One decode serves CLIP and the faces: it keeps what both need.
        let min_edge = self
            .decode_mode
            .min_decode_size(&cfg)
            .map(|m| match &faces {
                Some(_) => preprocess::MinDecodeSize {
                    longest_edge: m.longest_edge.max(FaceFinder::MIN_LONG_SIDE),
                    ..m
                },
                None => m,
            });
        let thumbnail_side = self.thumbnails;
        let mode = self.decode_mode;
        let decoded = self.on_decode_pool(move || {
            let t = Instant::now();
            preprocess::decode_for_mode(&bytes, max_pixels, min_edge, mode).and_then(|mut d| {
                let decode = t.elapsed();
                let t = Instant::now();
                let pixels = preprocess::preprocess_decoded(&d, &cfg);
                // pHash and blur run on OpenCV's full-size greyscale pixels:
                // the luma the exact or fast decode kept (a greyscale decode
                // of their own where it kept none); in reduced mode, on the
                // reduced decode's luma.
                let grey = preprocess::feature_grey(&bytes, max_pixels, &mut d)?;
                let pixel_features = features::PixelFeatures {
                    width: d.width,
                    height: d.height,
                    ..features::pixel_features(&grey)
                };
                let thumbnail = thumbnail_side
                    .map(|side| preprocess::thumbnail_jpeg(&d, side))
                    .transpose()?;
                let preprocess = t.elapsed();
                let t = Instant::now();
                let faces = faces.map(|f| f.faces(&d));
                Ok((
                    pixels,
                    pixel_features,
                    thumbnail,
                    faces,
                    decode,
                    preprocess,
                    t.elapsed(),
                ))
            })
        });
        let (pixels, px, thumbnail, faces, decode, preprocess, faces_time) = decoded.await?;
        let faces = faces.transpose()?;

        let embedded = slot.embed(pixels).await?;
        let record = FeatureRecord {
            embedding: embedded.embedding,
            phash: px.phash,
            laplacian_var: px.laplacian_var,
            width: px.width,
            height: px.height,
            faces,
        };
        let timings = ImageTimings {
            load,
            decode,
            preprocess,
            faces: faces_time,
            queue_wait: embedded.queue_wait,
            embed: embedded.embed_time,
            model_share: embedded.embed_time
                / u32::try_from(embedded.batch_size.max(1)).unwrap_or(u32::MAX),
        };
        Ok((record, thumbnail, timings))
    }

    /// Runs pixel work on the bounded decode pool (it is CPU work, never for
    /// the async runtime's threads) and awaits its answer.
    fn on_decode_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, preprocess::PreprocessError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, ImageError>> {
        let (tx, rx) = oneshot::channel();
        self.parts.decode_pool.spawn(move || {
            let _ = tx.send(work());
        });
        async move { Ok(rx.await.map_err(|_| ImageError::DecodeWorkerStopped)??) }
    }

    /// The stored thumbnail of each key (`None` where there is none). Photos
    /// embedded while [`PipelineConfig::thumbnails`] was off have none.
    pub async fn thumbnails(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, EmbedError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(
                self.parts
                    .store
                    .get_blob(&self.parts.model_id, &thumbnail_blob(key))
                    .await?,
            );
        }
        Ok(out)
    }

    /// Makes and stores the thumbnail of each key that lacks one (photos
    /// embedded before thumbnails were asked for): fetched and decoded
    /// again, as no pixels of theirs are at hand. Returns the failures.
    pub async fn make_thumbnails(
        &self,
        keys: &[String],
        long_side: u32,
    ) -> Result<Vec<ImageFailure>, EmbedError> {
        let mut failed = Vec::new();
        for key in keys {
            let made = async {
                let bytes = self.parts.source.fetch(key).await?;
                let max_pixels = self.max_pixels;
                let min_edge = self.decode_mode.min_decode_size(&self.parts.preprocess);
                self.on_decode_pool(move || {
                    preprocess::decode_image_scaled(&bytes, max_pixels, min_edge)
                        .and_then(|d| preprocess::thumbnail_jpeg(&d, long_side))
                })
                .await
            }
            .await;
            match made {
                Ok(jpeg) => {
                    self.parts
                        .store
                        .put_blob(&self.parts.model_id, &thumbnail_blob(key), &jpeg)
                        .await?
                }
                Err(error) => failed.push(ImageFailure {
                    key: key.clone(),
                    error,
                }),
            }
        }
        Ok(failed)
    }
}

fn record_metrics(per_image: &[ImageTimings], t: &RequestTimings, embedded: usize) {
    for i in per_image {
        for (stage, d) in [
            ("load", i.load),
            ("decode", i.decode),
            ("preprocess", i.preprocess),
            ("faces", i.faces),
            ("queue_wait", i.queue_wait),
            ("embed", i.embed),
        ] {
            metrics::histogram!("ongi_stage_seconds", "stage" => stage).record(d.as_secs_f64());
        }
    }
    metrics::histogram!("ongi_stage_seconds", "stage" => "store").record(t.store.as_secs_f64());
    metrics::histogram!("ongi_stage_seconds", "stage" => "total").record(t.total.as_secs_f64());
    if embedded > 0 && !t.total.is_zero() {
        metrics::gauge!("ongi_images_per_second").set(embedded as f64 / t.total.as_secs_f64());
    }
}

/// Milliseconds to the microsecond: whole microseconds divided by 1000
/// print short (`0.155`), where nanoseconds times 1e-6 print float noise
/// (`0.15506499999999998`).
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// Logs the request's one structured timing line.
pub fn log_timings(images: usize, report: &EmbedReport) {
    let t = &report.timings;
    tracing::info!(
        images,
        cached = report.cached,
        embedded = report.embedded,
        failed = report.failed.len(),
        load_total_ms = ms(t.load.total),
        load_min_ms = ms(t.load.min),
        load_avg_ms = ms(t.load.avg),
        load_max_ms = ms(t.load.max),
        decode_total_ms = ms(t.decode.total),
        decode_min_ms = ms(t.decode.min),
        decode_avg_ms = ms(t.decode.avg),
        decode_max_ms = ms(t.decode.max),
        preprocess_total_ms = ms(t.preprocess.total),
        preprocess_min_ms = ms(t.preprocess.min),
        preprocess_avg_ms = ms(t.preprocess.avg),
        preprocess_max_ms = ms(t.preprocess.max),
        faces_total_ms = ms(t.faces.total),
        faces_avg_ms = ms(t.faces.avg),
        faces_max_ms = ms(t.faces.max),
        queue_wait_total_ms = ms(t.queue_wait.total),
        queue_wait_min_ms = ms(t.queue_wait.min),
        queue_wait_avg_ms = ms(t.queue_wait.avg),
        queue_wait_max_ms = ms(t.queue_wait.max),
        embed_total_ms = ms(t.embed.total),
        embed_min_ms = ms(t.embed.min),
        embed_avg_ms = ms(t.embed.avg),
        embed_max_ms = ms(t.embed.max),
        store_ms = ms(t.store),
        total_ms = ms(t.total),
        "embedding request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_milliseconds_print_without_float_noise() {
        assert_eq!(ms(Duration::from_nanos(155_065)).to_string(), "0.155");
        assert_eq!(ms(Duration::from_micros(6_009_438)).to_string(), "6009.438");
        assert_eq!(ms(Duration::ZERO).to_string(), "0");
    }
}
