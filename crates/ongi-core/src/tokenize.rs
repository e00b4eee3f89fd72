//! CLIP text tokenization over a Hugging Face `tokenizer.json`.
//!
//! The `tokenizer.json` of a CLIP checkpoint (as `CLIPTokenizerFast` saves
//! it) carries the whole pipeline: normalisation, the BPE merges and the
//! post-processor that wraps every text in `<|startoftext|>` …
//! `<|endoftext|>`. This wrapper only fixes the two things the model needs
//! regardless of what the file says: truncation to the context length (the
//! EOS is kept, as `CLIPTokenizer(truncation=True, max_length=77)` does) and
//! padding after the EOS with the pad token.

use std::path::{Path, PathBuf};

use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// CLIP's context length (text positions of every released checkpoint).
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

/// The token CLIP pads with: its end-of-text token. Padding with EOS is right
/// for both of transformers' pooling rules (see `ongi_model::ClipModel::text_features`).
const CLIP_PAD_TOKEN: &str = "<|endoftext|>";

/// Errors of [`ClipTokenizer`]; each names the tokenizer file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The file could not be read or parsed as a tokenizer.
    #[error("cannot load tokenizer {path}: {source}")]
    Load {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },

    /// The tokenizer cannot be used as asked.
    #[error("tokenizer {path}: {message}")]
    Config {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Encoding a text failed.
    #[error("tokenizer {path}: cannot encode {text:?}: {source}")]
    Encode {
        /// The tokenizer file.
        path: PathBuf,
        /// The text (as given).
        text: String,
        /// The tokenizers crate's error.
        #[source]
        source: tokenizers::Error,
    },
}

/// A CLIP tokenizer: BOS/EOS added, truncated to the context length.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    context_length: usize,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Loads `dir/tokenizer.json` with the default context length (77).
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizeError> {
        Self::from_file(
            &ongi_model::ModelDir::new(dir).tokenizer(),
            DEFAULT_CONTEXT_LENGTH,
        )
    }

    /// Loads a `tokenizer.json`; encodings are truncated to `context_length`
    /// ids, special tokens included.
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, TokenizeError> {
        let config_err = |message: String| TokenizeError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(|source| TokenizeError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        // The crate subtracts the special tokens from max_length unchecked;
        // refuse lengths that leave no room for a single text token.
        let specials = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if context_length <= specials {
            return Err(config_err(format!(
                "context length {context_length} leaves no room beside {specials} special tokens"
            )));
        }
        // Padding is done here, after EOS, whatever the file asks for.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|e| config_err(format!("cannot set truncation: {e}")))?;
        let pad_id = tokenizer
            .token_to_id(CLIP_PAD_TOKEN)
            .ok_or_else(|| config_err(format!("has no pad token {CLIP_PAD_TOKEN}")))?;
        Ok(Self {
            tokenizer,
            path: path.to_path_buf(),
            context_length,
            pad_id,
        })
    }

    /// The maximum number of ids an encoding holds.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The id rows are padded with.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of one text, BOS and EOS included, unpadded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let encoding =
            self.tokenizer
                .encode(text, true)
                .map_err(|source| TokenizeError::Encode {
                    path: self.path.clone(),
                    text: text.to_string(),
                    source,
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes every text and pads the rows to the longest with
    /// [`Self::pad_id`], after each row's EOS. Returns `(ids, batch, seq_len)`
    /// with `ids` row-major `[batch, seq_len]`; an empty input gives
    /// `(vec![], 0, 0)`.
    pub fn encode_batch_padded<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<(Vec<u32>, usize, usize), TokenizeError> {
        let rows = texts
            .iter()
            .map(|t| self.encode(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        for row in &rows {
            ids.extend_from_slice(row);
            ids.resize(ids.len() + seq_len - row.len(), self.pad_id);
        }
        Ok((ids, rows.len(), seq_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal CLIP-like tokenizer.json: a word-level vocabulary and the
    /// BOS/EOS template, enough to exercise truncation and padding.
    const TOY: &str = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": null,
                  "pad_id": 0, "pad_type_id": 0, "pad_token": "a"},
      "added_tokens": [
        {"id": 3, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 4, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
          "<|startoftext|>": {"id": "<|startoftext|>", "ids": [3], "tokens": ["<|startoftext|>"]},
          "<|endoftext|>": {"id": "<|endoftext|>", "ids": [4], "tokens": ["<|endoftext|>"]}
        }
      },
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"a": 0, "photo": 1, "cat": 2, "<|startoftext|>": 3, "<|endoftext|>": 4},
                "unk_token": "a"}
    }"#;

    fn toy(context_length: usize) -> (tempdir::Dir, Result<ClipTokenizer, TokenizeError>) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("tokenizer.json");
        std::fs::write(&path, TOY).unwrap();
        let tok = ClipTokenizer::from_file(&path, context_length);
        (dir, tok)
    }

    /// A throwaway directory removed on drop (ongi-core has no tempfile dependency).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ongi-tok-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn adds_specials_and_pads_after_eos() {
        let (_d, tok) = toy(77);
        let tok = tok.unwrap();
        assert_eq!(tok.pad_id(), 4);
        assert_eq!(tok.encode("a photo").unwrap(), vec![3, 0, 1, 4]);
        let (ids, batch, seq_len) = tok.encode_batch_padded(&["cat", "a photo cat"]).unwrap();
        assert_eq!((batch, seq_len), (2, 5));
        assert_eq!(ids, vec![3, 2, 4, 4, 4, 3, 0, 1, 2, 4]);
        let empty = tok.encode_batch_padded::<&str>(&[]).unwrap();
        assert_eq!(empty, (vec![], 0, 0));
    }

    #[test]
    fn truncation_keeps_eos() {
        let (_d, tok) = toy(4);
        let ids = tok.unwrap().encode("cat cat cat cat cat").unwrap();
        assert_eq!(ids, vec![3, 2, 2, 4]);
    }

    #[test]
    fn tiny_context_is_an_error_not_a_panic() {
        let (_d, tok) = toy(2);
        let e = tok.unwrap_err().to_string();
        assert!(
            e.contains("tokenizer.json") && e.contains("context length"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = ClipTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), 77)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
