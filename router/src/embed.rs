//! `ongi embed`: embeds image files or strings and prints one JSON object per line.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use ongi_core::batcher::BatcherConfig;
use ongi_core::features::FeatureRecord;
use ongi_core::pipeline::PipelineOptions;
use ongi_core::source::SourceLimits;
use ongi_core::store::MEMORY_SPEC;
use ongi_core::tokenize::ClipTokenizer;
use ongi_model::clip::ClipModel;
use serde::Serialize;

use crate::compute::{Compute, ComputeArgs};
use crate::inputs::{self, Input};
use crate::pipeline::DecodeArgs;

/// Arguments of `ongi embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// CLIP model: a directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face hub id `org/name[@revision]`,
    /// fetched once into the Hugging Face cache (`HF_HOME`, `HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_OFFLINE`).
    #[arg(long, env = "ONGI_MODEL")]
    pub model: PathBuf,
    /// Inference batch size.
    #[arg(long, default_value_t = 16, env = "ONGI_BATCH_SIZE")]
    pub batch_size: usize,
    /// Threads decoding and preprocessing images (default: the compute thread count).
    #[arg(long, env = "ONGI_DECODE_WORKERS")]
    pub decode_workers: Option<usize>,
    /// L2-normalise each embedding (default: the raw projected features).
    #[arg(long)]
    pub normalize: bool,
    /// Treat the inputs as strings to embed with the text tower.
    #[arg(long)]
    pub text: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Face models (as `ongi serve --face-model`): each image's line also
    /// lists its faces (score, box, descriptor).
    #[arg(long, env = "ONGI_FACE_MODEL")]
    pub face_model: Option<PathBuf>,
    /// Image files or directories (walked recursively), or strings with --text.
    #[arg(required = true)]
    pub inputs: Vec<String>,
}

/// One output line.
#[derive(Serialize)]
#[serde(untagged)]
enum Line<'a> {
    Ok {
        input: &'a str,
        embedding: &'a [f32],
        /// With `--face-model`: the faces found, best first.
        #[serde(skip_serializing_if = "Option::is_none")]
        faces: Option<Vec<Face<'a>>>,
    },
    Err {
        input: &'a str,
        error: &'a str,
    },
}

/// Runs the command; the exit status is 1 when any input failed.
pub fn run(args: EmbedArgs) -> Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let compute = args.compute.resolve()?;
    let mut out = std::io::stdout().lock();
    let failures = if args.text {
        embed_texts(&args, &compute, &mut out)?
    } else {
        embed_images(&args, &compute, &mut out)?
    };
    out.flush()?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A face of an image's line.
#[derive(Serialize)]
struct Face<'a> {
    score: f32,
    /// `[x1, y1, x2, y2]` in pixels of the upright, full-size photo.
    #[serde(rename = "box")]
    bbox: [i32; 4],
    /// The face descriptor (128 values, not normalised).
    descriptor: &'a [f32],
}

fn write_line(out: &mut impl Write, line: &Line<'_>) -> Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes one embedding line, normalised if asked.
fn write_embedding(
    out: &mut impl Write,
    name: &str,
    mut row: Vec<f32>,
    normalize: bool,
) -> Result<()> {
    if normalize {
        l2_normalize(&mut row);
    }
    write_line(
        out,
        &Line::Ok {
            input: name,
            embedding: &row,
            faces: None,
        },
    )
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn embed_texts(args: &EmbedArgs, compute: &Compute, out: &mut impl Write) -> Result<usize> {
    tracing::info!(precision = %compute.describe_precision(), "loading the model");
    let model = ClipModel::load(&args.model, &compute.device, compute.precision)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let tokenizer = ClipTokenizer::from_model_dir(&args.model)?;
    for chunk in args.inputs.chunks(args.batch_size) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (ids, batch, seq_len) = tokenizer.encode_batch_padded(&texts)?;
        let ids = Tensor::from_vec(ids, (batch, seq_len), model.device())?;
        let rows = model.text_features(&ids)?.to_vec2::<f32>()?;
        for (text, row) in texts.iter().zip(rows) {
            write_embedding(out, text, row, args.normalize)?;
        }
    }
    Ok(0)
}

/// Photos sent through the pipeline per step: well within its queue, and
/// the progress bar moves per step.
const STEP: usize = 256;

/// Embeds the image inputs through the same pipeline as `ongi serve`
/// (decode workers, batcher, face models), over the whole file system as
/// its image root and a store in memory: the files named are the user's
/// own, and may change between runs.
fn embed_images(args: &EmbedArgs, compute: &Compute, out: &mut impl Write) -> Result<usize> {
    let paths: Vec<PathBuf> = args.inputs.iter().map(PathBuf::from).collect();
    let inputs: Vec<(String, Result<String, String>)> = inputs::expand(&paths)
        .into_iter()
        .map(|input| match input {
            Input::Error(path, err) => (path.display().to_string(), Err(err)),
            Input::File(path) => (path.display().to_string(), root_key(&path)),
        })
        .collect();
    let defaults =
        PipelineOptions::new("/", MEMORY_SPEC, compute.device.clone(), compute.precision);
    let options = PipelineOptions {
        decode_workers: crate::pipeline::decode_workers(args.decode_workers, compute.threads),
        decode_mode: args.decode.mode,
        batcher: BatcherConfig {
            max_batch_size: args.batch_size,
            queue_capacity: 4 * STEP,
            ..defaults.batcher.clone()
        },
        // Hard links are refused in a server's image root because they can
        // name files outside it; here every file is the user's own choice.
        source_limits: SourceLimits {
            allow_hard_links: true,
            ..SourceLimits::default()
        },
        face_model: args.face_model.clone(),
        ..defaults
    };
    let progress = crate::progress::bar(inputs.len() as u64, "images");
    let failures = crate::pipeline::runtime()?.block_on(async {
        let pipeline = crate::pipeline::open(&args.model, options, compute).await?;
        let mut failures = 0;
        for chunk in inputs.chunks(STEP) {
            let keys: Vec<String> = chunk
                .iter()
                .filter_map(|(_, key)| key.as_ref().ok().cloned())
                .collect();
            let report = pipeline.embedding.embed(&keys).await?;
            let records: HashMap<&str, &FeatureRecord> = report
                .records
                .iter()
                .map(|(k, r)| (k.as_str(), r))
                .collect();
            let errors: HashMap<&str, String> = report
                .failed
                .iter()
                .map(|f| (f.key.as_str(), f.error.to_string()))
                .collect();
            for (name, key) in chunk {
                let found = key.as_deref().map(|k| (records.get(k), errors.get(k)));
                match found {
                    Ok((Some(record), _)) => write_record(out, name, record, args.normalize)?,
                    Ok((None, error)) => {
                        failures += 1;
                        let error = error.map_or("not embedded", String::as_str);
                        write_line(out, &Line::Err { input: name, error })?;
                    }
                    Err(error) => {
                        failures += 1;
                        write_line(out, &Line::Err { input: name, error })?;
                    }
                }
            }
            progress.inc(chunk.len() as u64);
        }
        anyhow::Ok(failures)
    })?;
    progress.finish_and_clear();
    Ok(failures)
}

/// The key of a file under the image root `/`: its absolute path without
/// symbolic links, less the leading slash.
fn root_key(path: &Path) -> Result<String, String> {
    let absolute = std::fs::canonicalize(path).map_err(|e| format!("cannot read file: {e}"))?;
    let text = absolute
        .to_str()
        .ok_or_else(|| "the path is not UTF-8".to_string())?;
    Ok(text.trim_start_matches('/').to_string())
}

/// One image's line: its embedding and, with face models, its faces.
fn write_record(
    out: &mut impl Write,
    name: &str,
    record: &FeatureRecord,
    normalize: bool,
) -> Result<()> {
    let embedding = if normalize {
        let mut row = record.embedding.clone();
        l2_normalize(&mut row);
        std::borrow::Cow::Owned(row)
    } else {
        std::borrow::Cow::Borrowed(record.embedding.as_slice())
    };
    let faces: Option<Vec<Face<'_>>> = record.faces.as_ref().map(|faces| {
        faces
            .iter()
            .map(|f| Face {
                score: f.score,
                bbox: f.bbox,
                descriptor: &f.embedding,
            })
            .collect()
    });
    write_line(
        out,
        &Line::Ok {
            input: name,
            embedding: &embedding,
            faces,
        },
    )
}
