//! `ongi serve`: the HTTP server, a drop-in for the original AI server.

pub mod api;
mod auth;
mod conn;
mod envelope;
mod limits;
mod listener;
mod routes;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodFilter, MethodRouter};
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;

use crate::pipeline::{self, AnalysisArgs, PipelineArgs};
use auth::{ApiKey, ApiKeys};
use limits::LimitArgs;
use listener::ConnArgs;
use ongi_core::analysis::Analyzer;
use ongi_core::pipeline::Pipeline;

/// Arguments of `ongi serve`; every flag also reads an `ONGI_*` variable.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where photos come from: a local directory, `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
    #[arg(long, env = "ONGI_IMAGES")]
    pub images: String,
    /// Address to listen on.
    #[arg(long, env = "ONGI_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// After SIGTERM/Ctrl-C, how long requests in progress may take before the
    /// server stops anyway (idle and half-sent connections are closed at once).
    #[arg(long, env = "ONGI_SHUTDOWN_GRACE_SECS", default_value_t = 30.0)]
    pub shutdown_grace_secs: f64,
    /// Key required on every `/api/*` request (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`); repeat the flag, or separate keys with commas, to accept
    /// several during a rotation. Unset: no authentication.
    #[arg(
        long = "api-key",
        env = "ONGI_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,
    /// File holding accepted API keys, one per line (blank lines and `#`
    /// comments ignored), added to `--api-key`; keeps keys out of `ps` and
    /// the environment.
    #[arg(long, env = "ONGI_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub connections: ConnArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaArgs,
    /// Serve HTTP (`off`: only the Kafka workers, with `--kafka`).
    #[arg(long, env = "ONGI_HTTP", value_enum, default_value = "on")]
    pub http: crate::kafka::OnOff,
}

/// The app's two doors over one pipeline: `http` (behind the API-key check
/// when keys are set) and `internal` (no key check) for jobs that arrive
/// another way (Kafka), which are trusted by how they arrive.
pub struct App {
    /// What the HTTP listener serves.
    pub http: Router,
    /// The same routes without the API-key check.
    pub internal: Router,
    /// What the Kafka door reports to `/health/info` (with `--kafka`).
    pub kafka: Option<Arc<crate::kafka::KafkaHealth>>,
}

/// Everything the handlers share.
pub struct AppState {
    pipeline: Pipeline,
    analyzer: Analyzer,
    /// The precision the model computes at, why, and on which kernels.
    precision: String,
    prometheus: PrometheusHandle,
    limits: LimitArgs,
    api_keys: Arc<ApiKeys>,
    kafka: Option<Arc<crate::kafka::KafkaHealth>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "ongi", description = "CLIP photo-album analysis server"),
    paths(
        routes::embedding,
        routes::duplicates,
        routes::quality,
        routes::categories,
        routes::score,
        routes::people,
        routes::search,
        routes::health,
        routes::metrics,
        routes::openapi
    ),
    components(schemas(
        api::ErrorResponse,
        crate::kafka::TaskHealth,
        crate::kafka::WorkerState
    ))
)]
struct ApiDoc;

/// The two methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verb {
    Get,
    Post,
}

/// An error answer a route can give; documented from the route table, so
/// each is described once for every route that gives it.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Invalid,
    Forbidden,
    NotEmbedded,
    Internal,
    Busy,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::Invalid => "400",
            Refusal::Forbidden => "403",
            Refusal::NotEmbedded => "428",
            Refusal::Internal => "500",
            Refusal::Busy => "503",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Refusal::Invalid => {
                "Empty list or malformed body, too many images or body over the size limit"
            }
            Refusal::Forbidden => "Missing or wrong API key (when `--api-key` is set)",
            Refusal::NotEmbedded => "`data` lists the keys lacking cached features",
            Refusal::Internal => {
                "Feature store or model failure (the cause is logged, not answered)"
            }
            Refusal::Busy => "Inference queue full; see Retry-After",
        }
    }
}

/// What a route that embeds photos can refuse.
const EMBEDS: &[Refusal] = &[
    Refusal::Invalid,
    Refusal::Forbidden,
    Refusal::Internal,
    Refusal::Busy,
];
/// What a route that reads cached features can refuse.
const READS_FEATURES: &[Refusal] = &[
    Refusal::Invalid,
    Refusal::Forbidden,
    Refusal::NotEmbedded,
    Refusal::Internal,
];

/// One route: the router is built from these tables, and a test compares
/// them with the OpenAPI document, so neither can miss a route.
struct Route {
    /// Also in `handler`; kept to document the route and to compare with the document.
    verb: Verb,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
    /// Its error answers, added to the document where its annotation has none.
    refusals: &'static [Refusal],
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: axum::handler::Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = match verb {
        Verb::Get => MethodFilter::GET,
        Verb::Post => MethodFilter::POST,
    };
    Route {
        verb,
        path,
        handler: axum::routing::on(filter, handler),
        refusals: &[],
    }
}

impl Route {
    fn refusing(self, refusals: &'static [Refusal]) -> Route {
        Route { refusals, ..self }
    }
}

/// The album routes (behind the API key and the body-size check).
fn api_routes() -> Vec<Route> {
    vec![
        route(Verb::Post, "/api/albums/embedding", routes::embedding).refusing(EMBEDS),
        route(Verb::Post, "/api/albums/duplicates", routes::duplicates).refusing(EMBEDS),
        route(Verb::Post, "/api/albums/quality", routes::quality).refusing(READS_FEATURES),
        route(Verb::Post, "/api/albums/categories", routes::categories).refusing(READS_FEATURES),
        route(Verb::Post, "/api/albums/score", routes::score).refusing(READS_FEATURES),
        route(Verb::Post, "/api/albums/people", routes::people).refusing(READS_FEATURES),
        route(Verb::Post, "/api/albums/search", routes::search).refusing(READS_FEATURES),
    ]
}

/// The open routes.
fn open_routes() -> Vec<Route> {
    vec![
        route(Verb::Get, "/health/info", routes::health),
        route(Verb::Get, "/metrics", routes::metrics),
        route(Verb::Get, "/openapi.json", routes::openapi),
    ]
}

/// The OpenAPI document served at `/openapi.json`, built once.
pub fn openapi_doc() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::LazyLock<utoipa::openapi::OpenApi> =
        std::sync::LazyLock::new(build_openapi_doc);
    &DOC
}

fn build_openapi_doc() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let mut doc = ApiDoc::openapi();
    for route in api_routes().into_iter().chain(open_routes()) {
        let item = doc.paths.paths.get_mut(route.path);
        let operation = match route.verb {
            Verb::Get => item.and_then(|i| i.get.as_mut()),
            Verb::Post => item.and_then(|i| i.post.as_mut()),
        };
        let Some(operation) = operation else { continue };
        for refusal in route.refusals {
            let response = ResponseBuilder::new()
                .description(refusal.description())
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorResponse"))),
                )
                .build();
            operation
                .responses
                .responses
                .entry(refusal.status().into())
                .or_insert_with(|| response.into());
        }
    }
    doc
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
        .inspect(|_| telemetry::describe())
}

/// The app: the pipeline built from `args`, behind every route. What
/// [`run`] serves, and what tests drive in-process (with a
/// `PrometheusHandle` of their own). Must run inside a tokio runtime.
pub async fn app(
    args: &ServeArgs,
    compute: crate::compute::Compute,
    prometheus: PrometheusHandle,
) -> Result<App> {
    args.limits.validate()?;
    let mut keys = args.api_keys.clone();
    if let Some(path) = &args.api_key_file {
        keys.extend(auth::read_key_file(path)?);
    }
    let api_keys = Arc::new(ApiKeys::new(&keys));
    if api_keys.enabled() {
        tracing::info!(
            keys = api_keys.len(),
            "API key authentication on for /api/*"
        );
    } else {
        tracing::warn!("no --api-key set: /api/* is open to anyone who can reach the server");
    }
    let options = args.pipeline.options(&args.images, &compute, None)?;
    let pipeline = pipeline::open(&args.pipeline.model, options, &compute).await?;
    let analyzer = pipeline.analyzer(&args.analysis.options()).await?;
    let kafka = args.kafka.brokers.is_some().then(Arc::default);
    let state = Arc::new(AppState {
        pipeline,
        analyzer,
        precision: compute.describe_precision(),
        prometheus,
        limits: args.limits.clone(),
        api_keys,
        kafka: kafka.clone(),
    });
    Ok(App {
        http: router(state.clone(), true),
        internal: router(state, false),
        kafka,
    })
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    args.limits.validate()?;
    let conn_limits = args.connections.limits()?;
    let cap = args.connections.connection_cap()?;
    let compute = args.pipeline.resolve_compute()?;
    let prometheus = install_metrics()?;
    let runtime = pipeline::runtime()?;
    use crate::kafka::OnOff;
    if args.http == OnOff::Off && args.kafka.brokers.is_none() {
        anyhow::bail!("--http off needs --kafka: there would be nothing to serve");
    }
    let result = runtime.block_on(async move {
        let app = app(&args, compute, prometheus).await?;
        // One shutdown signal for both doors.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let on_signal = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = on_signal.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let kafka = app.kafka.clone().map(|health| {
            let door = crate::kafka::serve(
                app.internal.clone(),
                args.kafka.clone(),
                health,
                stopped(stop_rx.clone()),
            );
            let stop_all = stop_tx.clone();
            tokio::spawn(async move {
                let result = door.await;
                // A failed door (a fenced producer, a lost group) stops the
                // whole server, so a supervisor restarts it whole.
                if result.is_err() {
                    let _ = stop_all.send(true);
                }
                result
            })
        });
        if args.http == OnOff::On {
            let listener = tokio::net::TcpListener::bind(args.bind)
                .await
                .with_context(|| format!("binding {}", args.bind))?;
            tracing::info!(
                addr = %listener.local_addr()?,
                max_connections = cap,
                header_timeout_secs = conn_limits.header_timeout.as_secs_f64(),
                body_timeout_secs = conn_limits.body_timeout.as_secs_f64(),
                idle_timeout_secs = conn_limits.idle_timeout.as_secs_f64(),
                "ongi listening"
            );
            let grace = Duration::from_secs_f64(args.shutdown_grace_secs.max(0.0));
            listener::serve(
                listener,
                app.http,
                conn_limits,
                cap,
                stopped(stop_rx.clone()),
                grace,
            )
            .await;
        }
        if let Some(kafka) = kafka {
            kafka.await.context("the Kafka door panicked")??;
        }
        // Every store write was durable when it returned: nothing to flush.
        anyhow::Ok(())
    });
    // A blocking task (a photo read, a store call) may still be running:
    // wait for it briefly, never without bound.
    runtime.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("ongi stopped");
    result
}

/// All routes: `/api/*` behind the API-key check (when keys are set) and the
/// body-size limit; health, metrics and the OpenAPI document open.
fn router(state: Arc<AppState>, check_keys: bool) -> Router {
    let max_body = state.limits.max_body_bytes;
    let mut api = api_routes()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .route_layer(axum::middleware::from_fn_with_state(
            max_body,
            envelope::refuse_oversized_body,
        ));
    // The key check wraps the size check: an unauthorised client learns nothing.
    if check_keys && state.api_keys.enabled() {
        api = api.route_layer(axum::middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_api_key,
        ));
    }
    open_routes()
        .into_iter()
        .fold(Router::new().merge(api), |r, route| {
            r.route(route.path, route.handler)
        })
        .fallback(envelope::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(envelope::envelope_errors))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The OpenAPI document describes exactly the routes the router serves,
    /// with the same methods.
    #[test]
    fn openapi_documents_every_route() {
        let doc = openapi_doc();
        let documented: BTreeSet<(Verb, String)> = doc
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                [
                    item.get.as_ref().map(|_| (Verb::Get, path.clone())),
                    item.post.as_ref().map(|_| (Verb::Post, path.clone())),
                ]
                .into_iter()
                .flatten()
            })
            .collect();
        let routed: BTreeSet<(Verb, String)> = api_routes()
            .into_iter()
            .chain(open_routes())
            .map(|r| (r.verb, r.path.to_string()))
            .collect();
        assert_eq!(routed.len(), 10, "{routed:?}");
        assert_eq!(documented, routed);
        // The API-key check's 403 is documented on exactly its routes.
        let guarded: BTreeSet<String> = api_routes().iter().map(|r| r.path.to_string()).collect();
        assert_eq!(guarded.len(), 7, "{guarded:?}");
        for (path, item) in &doc.paths.paths {
            let ops = [item.get.as_ref(), item.post.as_ref()];
            for op in ops.into_iter().flatten() {
                let has = op.responses.responses.contains_key("403");
                assert_eq!(has, guarded.contains(path), "403 on {path}");
            }
        }
        // Every route documents each error answer its table entry names.
        let mut checked = 0;
        for route in api_routes() {
            let op = doc.paths.paths[route.path].post.as_ref().unwrap();
            for refusal in route.refusals {
                let status = refusal.status();
                assert!(
                    op.responses.responses.contains_key(status),
                    "{status} on {}",
                    route.path
                );
                checked += 1;
            }
            assert!(op.responses.responses.contains_key("201"), "{}", route.path);
        }
        assert_eq!(checked, 7 * 4);
        // Every schema a documented body refers to is in the document.
        let json = serde_json::to_string(&doc).unwrap();
        let schemas = doc.components.as_ref().map(|c| &c.schemas).unwrap();
        for name in json.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "schema {name} is referenced but missing"
            );
        }
    }
}
