//! `ongi analyze`: embeds a local folder into the store and prints the album report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ongi_core::features::FeatureRecord;
use serde_json::json;

use crate::inputs::{self, Input};
use crate::pipeline::{self, AnalysisArgs, PipelineArgs};

/// Photos sent through the pipeline per step (the progress bar moves per step).
const STEP: usize = 64;

/// Arguments of `ongi analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Album concepts whose sub-categories join the parent categories (comma-separated, e.g. travel,family).
    #[arg(long, value_delimiter = ',')]
    pub concepts: Vec<String>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// The folder of photos (walked recursively); keys are paths relative to it.
    pub photos: PathBuf,
}

/// Runs the command: prints `{"duplicates", "low_quality", "categories", "scores", "failed"}`.
pub fn run(args: AnalyzeArgs) -> Result<()> {
    if !args.photos.is_dir() {
        bail!("{} is not a directory", args.photos.display());
    }
    let compute = args.pipeline.resolve_compute()?;
    let keys: Vec<String> = inputs::expand(std::slice::from_ref(&args.photos))
        .into_iter()
        .filter_map(|input| match input {
            Input::File(path) => path.strip_prefix(&args.photos).ok().map(|rel| {
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            }),
            Input::Error(path, err) => {
                tracing::warn!(path = %path.display(), error = %err, "skipped");
                None
            }
        })
        .collect();
    if keys.is_empty() {
        bail!(
            "no .jpg/.jpeg/.png/.webp photos under {}",
            args.photos.display()
        );
    }
    let images = args
        .photos
        .to_str()
        .context("the photo folder's path is not UTF-8")?;
    let report = pipeline::runtime()?.block_on(async {
        let pipeline = pipeline::build(&args.pipeline, &args.analysis, images, compute).await?;
        let progress = crate::progress::bar(keys.len() as u64, "photos");
        let mut failed = Vec::new();
        let mut records: Vec<(String, FeatureRecord)> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(STEP) {
            let report = pipeline.embedding.embed(chunk).await?;
            records.extend(report.records);
            failed.extend(report.failed.into_iter().map(|f| json!({"key": f.key, "reason": f.reason})));
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        let analyzer = &pipeline.analyzer;
        let categories = analyzer.categories(&records, &args.concepts)?;
        let by_key: std::collections::HashMap<&str, &FeatureRecord> =
            records.iter().map(|(k, r)| (k.as_str(), r)).collect();
        let scores: Vec<serde_json::Value> = categories
            .iter()
            .map(|(category, images)| {
                let images: Vec<serde_json::Value> = images
                    .iter()
                    .map(|k| json!({"image": k, "score": by_key.get(k.as_str()).map_or(0.0, |r| analyzer.score(r))}))
                    .collect();
                json!({"category": category, "images": images})
            })
            .collect();
        let categories: Vec<serde_json::Value> = categories
            .into_iter()
            .map(|(category, images)| json!({"category": category, "images": images}))
            .collect();
        anyhow::Ok(json!({
            "duplicates": analyzer.duplicates(&records),
            "low_quality": analyzer.low_quality(&records),
            "categories": categories,
            "scores": scores,
            "failed": failed,
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
