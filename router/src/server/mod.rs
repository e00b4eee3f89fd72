//! `ongi serve`: the HTTP server, a drop-in for the original AI server.

mod api;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ongi_core::batcher::{Batcher, BatcherConfig};
use ongi_core::embedding::{EmbeddingService, PipelineConfig};
use ongi_core::encoder::ClipImageEncoder;
use ongi_core::preprocess::PreprocessConfig;
use ongi_core::source::{ImageSource, SourceLimits};
use ongi_model::clip::ClipModel;
use utoipa::OpenApi;

use crate::compute::ComputeArgs;

/// Arguments of `ongi serve`; every flag also reads an `ONGI_*` variable.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Hugging Face CLIP model directory.
    #[arg(long, env = "ONGI_MODEL")]
    pub model: PathBuf,
    /// Where photos come from: a local directory, `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
    #[arg(long, env = "ONGI_IMAGES")]
    pub images: String,
    /// Feature store: a file path (embedded redb store) or `redis://host:port/db`.
    #[arg(long, env = "ONGI_STORE", default_value = "ongi-features.redb")]
    pub store: String,
    /// Address to listen on.
    #[arg(long, env = "ONGI_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
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
    /// Time to live of cached feature records, in seconds (default: forever).
    #[arg(long, env = "ONGI_CACHE_TTL")]
    pub cache_ttl: Option<u64>,
    /// Overrides the model identity under which features are cached.
    #[arg(long, env = "ONGI_MODEL_ID")]
    pub model_id: Option<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Everything the handlers share.
pub struct AppState {
    embedding: EmbeddingService,
    prometheus: PrometheusHandle,
    source_description: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ongi", description = "CLIP photo-album analysis server"),
    paths(routes::embedding, routes::health, routes::metrics),
    components(schemas(
        api::ImagesRequest,
        api::EmbeddingResponse,
        api::ErrorResponse,
        api::HealthResponse
    ))
)]
struct ApiDoc;

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

fn install_metrics() -> Result<PrometheusHandle> {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("ongi_batch_size".into()), BATCH)?
        .set_buckets_for_metric(Matcher::Full("ongi_batch_requests".into()), BATCH)?
        .install_recorder()
        .context("installing the Prometheus recorder")
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let compute = args.compute.resolve()?;
    let prometheus = install_metrics()?;
    let model = Arc::new(
        ClipModel::load(&args.model, &compute.device, compute.dtype)
            .with_context(|| format!("loading the model from {}", args.model.display()))?,
    );
    let preprocess = PreprocessConfig::from_model_dir(&args.model)?;
    let model_id = match &args.model_id {
        Some(id) => id.clone(),
        None => ongi_core::model_id::model_identity(&args.model)
            .with_context(|| format!("hashing the checkpoint in {}", args.model.display()))?,
    };
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
    let source = ImageSource::from_spec(&args.images, SourceLimits::default())
        .with_context(|| format!("opening the image source {}", args.images))?;
    let source_description = source.describe();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ongi-http")
        .build()?;
    runtime.block_on(async move {
        let store =
            ongi_core::store::open_store(&args.store, args.cache_ttl.map(Duration::from_secs))
                .await
                .with_context(|| format!("opening the feature store {}", args.store))?;
        let embedding = EmbeddingService::new(
            Arc::new(source),
            store.clone(),
            batcher,
            Arc::new(decode_pool),
            Arc::new(preprocess),
            model_id.clone(),
            &PipelineConfig {
                max_concurrent_fetches: args.max_concurrent_fetches,
            },
        );
        let state = Arc::new(AppState {
            embedding,
            prometheus,
            source_description: source_description.clone(),
        });
        let app = router(state);
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let local = listener.local_addr()?;
        tracing::info!(
            addr = %local,
            model = %args.model.display(),
            model_id = %model_id,
            images = %source_description,
            store = %store.describe(),
            threads = compute.threads,
            decode_workers,
            batch_size = args.batch_size,
            "ongi listening"
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        store.flush().await.context("flushing the feature store")?;
        tracing::info!("ongi stopped");
        Ok(())
    })
}

/// All routes.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/albums/embedding", post(routes::embedding))
        .route("/health/info", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi))
        .with_state(state)
}

/// Resolves on SIGTERM or Ctrl-C: stop accepting, finish in-flight requests.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
