//! `ongi embed`: embeds image files or strings and prints one JSON object per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use ongi_core::encoder::ClipImageEncoder;
use ongi_core::preprocess::{self, DecodeMode, PreprocessConfig};
use ongi_core::tokenize::ClipTokenizer;
use ongi_model::clip::ClipModel;
use rayon::prelude::*;
use serde::Serialize;

use crate::compute::ComputeArgs;
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
    let precision = compute.describe_precision();
    tracing::info!(precision = %precision, "loading the model");
    let model = Arc::new(
        ClipModel::load(&args.model, &compute.device, compute.precision)
            .with_context(|| format!("loading the model from {}", args.model.display()))?,
    );
    let mut out = std::io::stdout().lock();
    let failures = if args.text {
        embed_texts(&args, &model, &mut out)?
    } else {
        let workers = args.decode_workers.unwrap_or(compute.threads).max(1);
        embed_images(&args, &model, workers, &mut out)?
    };
    out.flush()?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
        },
    )
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

fn embed_texts(args: &EmbedArgs, model: &ClipModel, out: &mut impl Write) -> Result<usize> {
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

/// A preprocessed batch travelling from the decode thread to the model.
struct DecodedBatch {
    names: Vec<String>,
    pixels: Vec<Result<Vec<f32>, String>>,
}

fn embed_images(
    args: &EmbedArgs,
    model: &Arc<ClipModel>,
    workers: usize,
    out: &mut impl Write,
) -> Result<usize> {
    let cfg = PreprocessConfig::from_model_dir(&args.model)?;
    let size = model.image_size();
    if cfg.crop_height as usize != size || cfg.crop_width as usize != size {
        bail!(
            "preprocessor_config.json crops to {}x{} but the model's vision_config.image_size is {size}",
            cfg.crop_width,
            cfg.crop_height
        );
    }
    let paths: Vec<PathBuf> = args.inputs.iter().map(PathBuf::from).collect();
    let inputs = inputs::expand(&paths);
    let progress = crate::progress::bar(inputs.len() as u64, "images");
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("ongi-decode-{i}"))
        .build()?;

    // Decoding of batch n+1 overlaps inference of batch n; the channel bound
    // keeps at most two preprocessed batches in memory.
    let (tx, rx) = mpsc::sync_channel::<DecodedBatch>(1);
    let batch_size = args.batch_size;
    let encoder = ClipImageEncoder::new(model.clone());
    let mode = args.decode.mode;
    let mut failures = 0;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            for chunk in inputs.chunks(batch_size) {
                let decoded = decode_pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|input| decode_one(input, &cfg, mode))
                        .collect::<Vec<_>>()
                });
                let (names, pixels) = decoded.into_iter().unzip();
                if tx.send(DecodedBatch { names, pixels }).is_err() {
                    break; // the consumer failed and stopped listening
                }
            }
            // Closing the channel ends the consumer's loop.
            drop(tx);
        });
        for batch in rx {
            failures += run_batch(&batch, &encoder, args.normalize, out)?;
            progress.inc(batch.names.len() as u64);
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    Ok(failures)
}

fn decode_one(
    input: &Input,
    cfg: &PreprocessConfig,
    mode: DecodeMode,
) -> (String, Result<Vec<f32>, String>) {
    match input {
        Input::Error(path, err) => (path.display().to_string(), Err(err.clone())),
        Input::File(path) => {
            let pixels = std::fs::read(path)
                .map_err(|e| format!("cannot read file: {e}"))
                .and_then(|bytes| {
                    preprocess::load_and_preprocess(&bytes, cfg, mode).map_err(|e| e.to_string())
                });
            (path.display().to_string(), pixels)
        }
    }
}

/// Embeds the decodable images of one batch and prints every line in input order.
fn run_batch(
    batch: &DecodedBatch,
    encoder: &ClipImageEncoder,
    normalize: bool,
    out: &mut impl Write,
) -> Result<usize> {
    let ok: Vec<&[f32]> = batch
        .pixels
        .iter()
        .filter_map(|p| p.as_deref().ok())
        .collect();
    let rows = if ok.is_empty() {
        Vec::new()
    } else {
        encoder.encode_batch(&ok).map_err(anyhow::Error::msg)?
    };
    let mut rows = rows.into_iter();
    let mut failures = 0;
    for (name, pixels) in batch.names.iter().zip(&batch.pixels) {
        match pixels {
            Ok(_) => {
                let row = rows
                    .next()
                    .context("model returned fewer rows than images")?;
                write_embedding(out, name, row, normalize)?;
            }
            Err(error) => {
                failures += 1;
                write_line(out, &Line::Err { input: name, error })?;
            }
        }
    }
    Ok(failures)
}
