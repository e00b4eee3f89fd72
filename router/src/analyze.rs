//! `ongi analyze`: embeds a local folder into the store and prints the album report.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ongi_core::embedding::RequestTimings;
use ongi_core::features::{hamming, FeatureRecord};
use serde::Serialize;

use crate::report::{AlbumReport, LowQuality, Thumb};
use crate::server::api::{CategoryImages, CategoryScores, ImageScore, PersonFaces};

use crate::inputs::{self, Input};
use crate::pipeline::{self, AnalysisArgs, PipelineArgs};

/// Photos sent through the pipeline per step (the progress bar moves per step).
const STEP: usize = 64;
/// Longer side of the report's thumbnails, in pixels.
const THUMBNAIL_SIDE: u32 = 160;

/// Arguments of `ongi analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Album concepts whose sub-categories join the parent categories (comma-separated, e.g. travel,family).
    #[arg(long, value_delimiter = ',')]
    pub concepts: Vec<String>,
    /// Print the photos matching this text (best first, as `POST
    /// /api/albums/search` answers) instead of the album report.
    #[arg(long)]
    pub query: Option<String>,
    /// With --query: how many photos to print at most.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Also write the album as one self-contained HTML page to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// With --html: write the thumbnails as files into this folder and link
    /// them from the page, instead of inlining them.
    #[arg(long, requires = "html")]
    pub thumbnails: Option<PathBuf>,
    /// The folder of photos (walked recursively); keys are paths relative to it.
    pub photos: PathBuf,
}

/// Runs the command: prints `{"duplicates", "low_quality", "categories",
/// "scores", "people" (with `--face-model`), "failed"}`, or with `--query` the search's `[{"image", "score"}]`.
pub fn run(args: AnalyzeArgs) -> Result<ExitCode> {
    if !args.photos.is_dir() {
        bail!("{} is not a directory", args.photos.display());
    }
    let query = args
        .query
        .as_deref()
        .map(ongi_core::analysis::search_query)
        .transpose()
        .map_err(|reason| anyhow::anyhow!("--query: {reason}"))?;
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
    let thumbnails = args.html.is_some().then_some(THUMBNAIL_SIDE);
    let report = pipeline::runtime()?.block_on(async {
        let run_started = Instant::now();
        let options = args.pipeline.options(images, &compute, thumbnails)?;
        let pipeline = pipeline::open(&args.pipeline.model, options, &compute).await?;
        let analyzer = pipeline.analyzer(&args.analysis.options()).await?;
        let mut timings = vec![("load model, open store".to_string(), run_started.elapsed())];
        let progress = crate::progress::bar(keys.len() as u64, "photos");
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut records: Vec<(String, FeatureRecord)> = Vec::with_capacity(keys.len());
        let mut stages = StageTotals::default();
        for chunk in keys.chunks(STEP) {
            let report = pipeline.embedding.embed(chunk).await?;
            stages.add(&report.timings);
            records.extend(report.records);
            failed.extend(
                report
                    .failed
                    .into_iter()
                    .map(|f| (f.key, f.error.to_string())),
            );
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        tracing::info!(
            photos = keys.len(),
            wall_s = format_args!("{:.2}", stages.wall.as_secs_f64()),
            decode_s = format_args!("{:.2}", stages.decode.as_secs_f64()),
            preprocess_s = format_args!("{:.2}", stages.preprocess.as_secs_f64()),
            faces_s = format_args!("{:.2}", stages.faces.as_secs_f64()),
            model_s = format_args!("{:.2}", stages.embed.as_secs_f64()),
            "embedded (stage times summed over photos)"
        );
        timings.extend(stages.rows());
        let analyzer = &analyzer;
        if let Some(query) = query {
            let embedding = pipeline.texts.query(query).await?;
            let top_k = usize::try_from(args.top_k).unwrap_or(usize::MAX);
            let ranked: Vec<ImageScore> = ongi_core::analysis::search(&records, &embedding, top_k)
                .into_iter()
                .map(|(image, score)| ImageScore { image, score })
                .collect();
            return anyhow::Ok((serde_json::to_string_pretty(&ranked)?, failed.len()));
        }
        let t = Instant::now();
        let duplicates = analyzer.duplicates(&records);
        timings.push(("duplicates".into(), t.elapsed()));
        let t = Instant::now();
        let low_quality = analyzer.low_quality(&records);
        timings.push(("quality".into(), t.elapsed()));
        let t = Instant::now();
        let categories = analyzer.categories(&records, &args.concepts)?;
        timings.push(("categories".into(), t.elapsed()));
        let people = pipeline.embedding.finds_faces().then(|| {
            let t = Instant::now();
            let people = analyzer.people(&records);
            timings.push(("people".into(), t.elapsed()));
            people
        });
        let t = Instant::now();
        let by_key: HashMap<&str, &FeatureRecord> =
            records.iter().map(|(k, r)| (k.as_str(), r)).collect();
        let score_of: HashMap<&str, f32> = records
            .iter()
            .map(|(k, r)| (k.as_str(), analyzer.score(r)))
            .collect();
        timings.push(("highlight scores".into(), t.elapsed()));
        let scores: Vec<CategoryScores> = categories
            .iter()
            .map(|(category, images)| CategoryScores {
                category: category.clone(),
                images: images
                    .iter()
                    .map(|k| ImageScore {
                        image: k.clone(),
                        score: score_of.get(k.as_str()).copied().unwrap_or(0.0),
                    })
                    .collect(),
            })
            .collect();
        if let Some(html) = &args.html {
            let t = Instant::now();
            let present: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
            let mut stored = pipeline.embedding.thumbnails(&present).await?;
            let lacking: Vec<String> = present
                .iter()
                .zip(&stored)
                .filter(|(_, t)| t.is_none())
                .map(|(k, _)| k.clone())
                .collect();
            if !lacking.is_empty() {
                // Cached before thumbnails were asked for: decoded once more.
                for f in pipeline
                    .embedding
                    .make_thumbnails(&lacking, THUMBNAIL_SIDE)
                    .await?
                {
                    tracing::warn!(key = %f.key, reason = %f.error, "no thumbnail");
                }
                stored = pipeline.embedding.thumbnails(&present).await?;
            }
            timings.push(("thumbnails".into(), t.elapsed()));
            let thumbs = place_thumbnails(
                present.into_iter().zip(stored),
                html,
                args.thumbnails.as_deref(),
            )?;
            let quality = analyzer.quality_config();
            timings.push(("total before writing".into(), run_started.elapsed()));
            let page = AlbumReport {
                title: args.photos.display().to_string(),
                model: pipeline.embedding.model_id().to_string(),
                photos: keys.len(),
                thumbs,
                duplicates: duplicates
                    .iter()
                    .map(|group| {
                        let first = group
                            .first()
                            .and_then(|k| by_key.get(k.as_str()))
                            .map_or(0, |r| r.phash);
                        group
                            .iter()
                            .map(|k| {
                                (
                                    k.clone(),
                                    by_key
                                        .get(k.as_str())
                                        .map_or(0, |r| hamming(first, r.phash)),
                                )
                            })
                            .collect()
                    })
                    .collect(),
                low_quality: low_quality
                    .iter()
                    .filter_map(|k| by_key.get(k.as_str()).map(|r| (k, r)))
                    .map(|(k, r)| {
                        let iqa = analyzer.iqa(r);
                        let (sharp, good) = (f64::from(iqa.sharp), f64::from(iqa.good));
                        LowQuality {
                            key: k.clone(),
                            blur: (f64::from(r.laplacian_var), quality.laplacian_threshold),
                            sharp: (sharp, quality.sharp_threshold),
                            combined: (0.75 * sharp + 0.25 * good, quality.combined_threshold),
                        }
                    })
                    .collect(),
                categories: categories
                    .iter()
                    .map(|(name, images)| {
                        let mut scored: Vec<(String, f32)> = images
                            .iter()
                            .map(|k| (k.clone(), score_of.get(k.as_str()).copied().unwrap_or(0.0)))
                            .collect();
                        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
                        (name.clone(), scored)
                    })
                    .collect(),
                failed: failed.clone(),
                timings,
            };
            std::fs::write(html, page.render())
                .with_context(|| format!("writing {}", html.display()))?;
            tracing::info!(file = %html.display(), "album report written");
        }
        let failures = failed.len();
        let output = Output {
            duplicates,
            low_quality,
            categories: categories
                .into_iter()
                .map(|(category, images)| CategoryImages { category, images })
                .collect(),
            scores,
            people: people.map(|p| p.into_iter().map(PersonFaces::from).collect()),
            failed: failed
                .into_iter()
                .map(|(key, reason)| Failure { key, reason })
                .collect(),
        };
        anyhow::Ok((serde_json::to_string_pretty(&output)?, failures))
    })?;
    println!("{}", report.0);
    // As `ongi embed`: 1 when a photo could not be analysed (the output is
    // still complete and lists it).
    Ok(if report.1 > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `ongi analyze` prints, in the HTTP routes' own types, so scores
/// print as the f32 they are (as the routes print them), not widened to f64.
#[derive(Serialize)]
struct Output {
    duplicates: Vec<Vec<String>>,
    low_quality: Vec<String>,
    categories: Vec<CategoryImages>,
    scores: Vec<CategoryScores>,
    /// With `--face-model` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    people: Option<Vec<PersonFaces>>,
    failed: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    key: String,
    reason: String,
}

/// The embedding stages' time summed over the steps of a run.
#[derive(Default)]
struct StageTotals {
    load: Duration,
    decode: Duration,
    preprocess: Duration,
    faces: Duration,
    embed: Duration,
    store: Duration,
    wall: Duration,
}

impl StageTotals {
    fn add(&mut self, t: &RequestTimings) {
        self.load += t.load.total;
        self.decode += t.decode.total;
        self.preprocess += t.preprocess.total;
        self.faces += t.faces.total;
        self.embed += t.embed.total;
        self.store += t.store;
        self.wall += t.total;
    }

    /// Report rows: the per-photo stages are summed over photos (they overlap
    /// in time), then the embedding's wall-clock time.
    fn rows(&self) -> Vec<(String, Duration)> {
        vec![
            ("load (sum over photos)".into(), self.load),
            ("decode (sum over photos)".into(), self.decode),
            (
                "preprocess + pixel features (sum over photos)".into(),
                self.preprocess,
            ),
            ("faces (sum over photos)".into(), self.faces),
            ("model (sum over photos)".into(), self.embed),
            ("feature store".into(), self.store),
            ("embedding, wall clock".into(), self.wall),
        ]
    }
}

/// The page's thumbnails: inline, or with `dir` written there as files and
/// linked relative to the page.
fn place_thumbnails(
    stored: impl Iterator<Item = (String, Option<Vec<u8>>)>,
    html: &Path,
    dir: Option<&Path>,
) -> Result<HashMap<String, Thumb>> {
    let Some(dir) = dir else {
        return Ok(stored
            .filter_map(|(k, t)| t.map(|jpeg| (k, Thumb::Inline(jpeg))))
            .collect());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let page_dir = html
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = relative_path(page_dir, dir)?;
    let mut out = HashMap::new();
    for (i, (key, jpeg)) in stored.enumerate() {
        let Some(jpeg) = jpeg else { continue };
        // Numbered names: keys may hold characters no file name should.
        let name = format!("{:05}.jpg", i + 1);
        let path = dir.join(&name);
        std::fs::write(&path, jpeg).with_context(|| format!("writing {}", path.display()))?;
        out.insert(key, Thumb::Link(format!("{prefix}{name}")));
    }
    Ok(out)
}

/// `to` as a URL path relative to `from` (both directories), ending in `/`.
fn relative_path(from: &Path, to: &Path) -> Result<String> {
    let canon = |p: &Path| {
        p.canonicalize()
            .with_context(|| format!("resolving {}", p.display()))
    };
    let (from, to) = (canon(from)?, canon(to)?);
    let (a, b): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); a.len() - common];
    for c in &b[common..] {
        parts.push(c.as_os_str().to_string_lossy().into_owned());
    }
    Ok(parts.iter().map(|p| format!("{p}/")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_folders() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            root.path().join("x/page"),
            root.path().join("x/thumbs/small"),
        );
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(relative_path(&a, &b).unwrap(), "../thumbs/small/");
        assert_eq!(relative_path(&a, &a).unwrap(), "");
        assert_eq!(relative_path(&b, &a).unwrap(), "../../page/");
    }
}
