//! The router's own test support: the app built in-process from `ongi
//! serve`'s arguments, and the Kafka plumbing. Everything that does not need
//! the router's types (servers, fixtures, the binary) is in
//! `ongi-test-support`, re-exported here.

#![allow(dead_code, unused_imports)] // each test file uses a different subset

pub mod kafka;

pub use ongi_test_support::fixtures::{photo_dir, photo_names, tiny_model};
pub use ongi_test_support::numeric::cosine;
pub use ongi_test_support::ongi::{
    cli_embeddings, metric_value, run as ongi_run, stdout as ongi_stdout, OngiServer,
};
pub use ongi_test_support::{fixtures::dir as fixtures, free_port};

/// `ongi serve` arguments over a copy of the fixture photos, a fresh
/// embedded store and the tiny model, then `extra` flags; the folders live
/// as long as the returned guard.
pub fn serve_args(
    extra: &[&str],
) -> (
    ongi_router::server::ServeArgs,
    (tempfile::TempDir, tempfile::TempDir),
) {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        serve: ongi_router::server::ServeArgs,
    }
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let (model, store_file) = (tiny_model(), store.path().join("f.redb"));
    let mut argv = vec![
        "test",
        "--model",
        model.to_str().unwrap(),
        "--images",
        photos.path().to_str().unwrap(),
        "--store",
        store_file.to_str().unwrap(),
    ];
    argv.extend(extra);
    let args = <Args as clap::Parser>::parse_from(argv).serve;
    (args, (photos, store))
}

/// An app built in-process (as `ongi serve` builds it) from [`serve_args`].
pub async fn in_process_app(
    extra: &[&str],
) -> (
    ongi_router::server::App,
    ongi_router::server::ServeArgs,
    (tempfile::TempDir, tempfile::TempDir),
) {
    let (args, dirs) = serve_args(extra);
    let compute = args.pipeline.resolve_compute().unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let app = ongi_router::server::app(&args, compute, metrics)
        .await
        .unwrap();
    (app, args, dirs)
}
