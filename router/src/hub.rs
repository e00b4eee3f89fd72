//! `--model` by Hugging Face hub id: `org/name[@revision]` is fetched once
//! into the standard Hugging Face cache (shared with `transformers`) and read
//! from there; a local directory is used as it is.
//!
//! Honours `HF_ENDPOINT` (mirror or private hub), `HF_HOME` (cache root),
//! `HF_TOKEN` (else the cache's `token` file) and `HF_HUB_OFFLINE` (cache
//! only, no network).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// Files fetched when the repository has them.
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// A hub model reference: repository id and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    /// `org/name` (or a bare `name`).
    pub id: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
}

impl HubModel {
    /// Parses `org/name[@revision]`; `None` when `spec` cannot be a hub id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (spec, "main"),
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parts: Vec<&str> = id.split('/').collect();
        let revision_ok = !revision.is_empty()
            && !revision.contains("..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        (parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) && revision_ok).then(|| Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only operation.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The model directory `--model` names: `spec` itself when it is a local
/// directory, else the cached snapshot of the hub model it names (fetched
/// first unless cached).
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_str().unwrap_or_default();
    let Some(model) = HubModel::parse(text) else {
        bail!(
            "--model {}: no such directory, and not a hub model id (org/name[@revision])",
            spec.display()
        );
    };
    let cache = Cache::from_env();
    if offline() {
        return from_cache(&cache, &model);
    }
    fetch(cache, &model)
}

/// The cached snapshot of `model`, with no network.
fn from_cache(cache: &Cache, model: &HubModel) -> Result<PathBuf> {
    let repo = cache.repo(model.repo());
    let mut dir = None;
    for file in ongi_model::ModelDir::FILES {
        let path = repo.get(file).with_context(|| {
            format!(
                "model {}@{} is not in the Hugging Face cache at {} ({file} missing) and \
                 HF_HUB_OFFLINE is set; run once without HF_HUB_OFFLINE to download it",
                model.id,
                model.revision,
                cache.path().display()
            )
        })?;
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.context("the cache returned a file without a directory")
}

/// Downloads what the cache lacks and returns the snapshot directory.
fn fetch(cache: Cache, model: &HubModel) -> Result<PathBuf> {
    let mut builder = ApiBuilder::from_env().with_progress(std::io::stderr().is_terminal());
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token).filter(|t| !t.is_empty()));
    }
    let api = builder
        .build()
        .context("setting up the Hugging Face hub client")?;
    let repo = api.repo(model.repo());
    let describe = |file: &str, err: ApiError| -> anyhow::Error {
        let url = repo.url(file);
        match err {
            ApiError::RequestError(e) if matches!(*e, ureq::Error::Status(404, _)) => {
                anyhow::anyhow!(
                    "{url}: not found (HTTP 404): model {} has no revision {} or no {file}",
                    model.id,
                    model.revision
                )
            }
            other => anyhow::anyhow!(
                "downloading {file} of {}@{} from {url} into {}: {other}",
                model.id,
                model.revision,
                cache.path().display()
            ),
        }
    };
    let mut dir = None;
    for file in ongi_model::ModelDir::FILES {
        let path = repo.get(file).map_err(|e| describe(file, e))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    for file in OPTIONAL {
        if let Err(e) = repo.get(file) {
            tracing::debug!(file, error = %e, "optional model file not fetched");
        }
    }
    let dir = dir.context("the hub client returned a file without a directory")?;
    tracing::info!(model = %model.id, revision = %model.revision, dir = %dir.display(), "model from the Hugging Face cache");
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        let m = HubModel::parse("openai/clip-vit-base-patch32").unwrap();
        assert_eq!(
            (m.id.as_str(), m.revision.as_str()),
            ("openai/clip-vit-base-patch32", "main")
        );
        let m = HubModel::parse("org/name@v1.0").unwrap();
        assert_eq!((m.id.as_str(), m.revision.as_str()), ("org/name", "v1.0"));
        assert_eq!(HubModel::parse("gpt2").unwrap().id, "gpt2");
        for bad in [
            "",
            "/abs/path",
            "a/b/c",
            "../x",
            "org/name@",
            "org/na me",
            "./model",
            "org/x@../y",
        ] {
            assert_eq!(HubModel::parse(bad), None, "{bad}");
        }
    }
}
