//! The tag taxonomy of the categories route: data, not code.
//!
//! Each photo is scored against every tag's English prompts (CLIP zero-shot,
//! mean cosine over the tag's prompts) and the resulting groups are named by
//! the tag's Korean name. The tag set of a request is the parent categories
//! followed by the sub-categories of each concept the client asked for.
//!
//! A taxonomy is a JSON document (the built-in default is
//! `crates/ongi-core/assets/taxonomy.json`; `--taxonomy FILE` replaces it):
//!
//! ```json
//! {
//!   "version": 1,
//!   "categories": [
//!     {"id": "food", "name": "음식", "prompts": ["a photo of food", "a close-up photo of a meal"]}
//!   ],
//!   "concepts": [
//!     {
//!       "id": "travel",
//!       "name": "여행",
//!       "aliases": ["trip", "vacation"],
//!       "tags": [{"id": "travel.airport", "name": "공항·비행기", "prompts": ["a photo of an airport terminal"]}]
//!     }
//!   ]
//! }
//! ```
//!
//! Rules, checked when a taxonomy is loaded:
//! - `version` is 1; unknown fields anywhere are rejected (they are typos);
//! - `categories` is not empty; `concepts` may be left out;
//! - a tag has a non-blank `id` of ASCII letters, digits, `_`, `.` or `-`,
//!   unique over the whole file, a non-blank `name`, also unique over the whole
//!   file (groups are labelled by name, so two tags sharing one would be
//!   indistinguishable in a response), and one or more non-blank, distinct
//!   `prompts` (the shipped file has at least four per tag);
//! - a concept has a non-blank `id`, a non-blank `name`, optional `aliases`
//!   and at least one tag. A client may name a concept by its id, its name or
//!   any alias, ignoring case and surrounding spaces, so these must not collide
//!   between concepts.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in default taxonomy document (JSON), as shipped in the binary.
pub const BUILTIN_JSON: &str = include_str!("../../assets/taxonomy.json");

/// The only document version this build reads.
const SUPPORTED_VERSION: u32 = 1;

/// A tag: Korean name shown to users, English prompts scored by CLIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    /// Stable identifier, unique over the taxonomy (e.g. `food`, `travel.airport`).
    pub id: String,
    /// Korean name: the group label returned to the client (e.g. `음식`).
    pub name: String,
    /// English zero-shot prompts; the tag's similarity is their mean cosine.
    pub prompts: Vec<String>,
}

/// An album theme a client may request: its sub-categories join the parent categories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concept {
    /// Stable identifier (e.g. `travel`).
    pub id: String,
    /// Korean name (e.g. `여행`); clients may request the concept by it.
    pub name: String,
    /// Other names a client may request the concept by.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The concept's sub-categories.
    pub tags: Vec<Tag>,
}

impl Concept {
    /// Whether a client's `requested` string names this concept: its id, name
    /// or an alias, ignoring case and surrounding whitespace.
    pub fn matches(&self, requested: &str) -> bool {
        let wanted = normalize(requested);
        !wanted.is_empty() && self.keys().any(|key| key == wanted)
    }

    /// The normalised names this concept answers to (may repeat, e.g. when an
    /// alias restates the name).
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(&self.id)
            .chain(std::iter::once(&self.name))
            .chain(&self.aliases)
            .map(|key| normalize(key))
    }
}

/// Request strings and concept keys are compared trimmed and lower-cased, so
/// "Travel", " travel " and "TRAVEL" all name the same concept. Hangul has no
/// case, so Korean names compare exactly.
fn normalize(key: &str) -> String {
    key.trim().to_lowercase()
}

/// Parent categories and concepts, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taxonomy {
    /// Parent categories, scored for every request.
    pub categories: Vec<Tag>,
    /// Concepts a request may add.
    pub concepts: Vec<Concept>,
}

/// Why a taxonomy could not be loaded, or a request's concepts not resolved.
#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    /// The taxonomy file could not be read.
    #[error("cannot read taxonomy file {}: {reason}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The document is malformed or breaks a rule of the format.
    #[error("invalid taxonomy {origin}: {reason}")]
    Invalid {
        /// Where the document came from (a path, or "built-in").
        origin: String,
        /// What is wrong, naming the offending entry and field.
        reason: String,
    },
    /// A request named a concept the taxonomy does not define.
    #[error("unknown concept {concept:?}; known concepts: {}", .known.join(", "))]
    UnknownConcept {
        /// The concept as the client sent it.
        concept: String,
        /// The known concepts, each as `id (name)`.
        known: Vec<String>,
    },
}

/// The on-disk document: the taxonomy plus its format version.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    categories: Vec<Tag>,
    #[serde(default)]
    concepts: Vec<Concept>,
}

impl Taxonomy {
    /// The built-in default taxonomy ([`BUILTIN_JSON`]).
    ///
    /// The document is fixed at build time and a unit test checks that it
    /// loads, so this cannot fail in a tested build; it still returns a
    /// `Result` rather than panicking, and callers load it once at start-up.
    pub fn builtin() -> Result<Self, TaxonomyError> {
        Self::from_json(BUILTIN_JSON, "built-in")
    }

    /// Loads and validates the taxonomy file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, TaxonomyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TaxonomyError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses and validates a taxonomy document; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, TaxonomyError> {
        let invalid = |reason: String| TaxonomyError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        // The message names the faulty field, or the line and column of a
        // syntax error.
        let doc: Document =
            ongi_model::config::from_json(text).map_err(|e| invalid(e.to_string()))?;
        if doc.version != SUPPORTED_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (expected {SUPPORTED_VERSION})",
                doc.version
            )));
        }
        let taxonomy = Taxonomy {
            categories: doc.categories,
            concepts: doc.concepts,
        };
        taxonomy.validate().map_err(invalid)?;
        Ok(taxonomy)
    }

    /// Checks every rule of the format (see the module docs); the error names
    /// the offending entry and field.
    fn validate(&self) -> Result<(), String> {
        if self.categories.is_empty() {
            return Err("\"categories\" is empty: at least one parent category is needed".into());
        }
        // Tag id and name → where it was first defined, to name both places
        // in a duplicate error.
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut names: HashMap<String, String> = HashMap::new();
        let mut check_tag = |tag: &Tag, place: String| -> Result<(), String> {
            check_id(&tag.id, &place)?;
            if tag.name.trim().is_empty() {
                return Err(format!("{place}: \"name\" is empty"));
            }
            if tag.prompts.is_empty() {
                return Err(format!(
                    "{place}: \"prompts\" is empty (at least one prompt is needed)"
                ));
            }
            let mut prompts = HashSet::new();
            for (i, prompt) in tag.prompts.iter().enumerate() {
                if prompt.trim().is_empty() {
                    return Err(format!("{place}: prompt {i} is empty"));
                }
                // A repeated prompt would silently weigh double in the mean.
                if !prompts.insert(prompt.as_str()) {
                    return Err(format!("{place}: prompt {prompt:?} is listed twice"));
                }
            }
            if let Some(first) = ids.insert(tag.id.clone(), place.clone()) {
                return Err(format!(
                    "{place}: id {:?} is already used by {first}",
                    tag.id
                ));
            }
            if let Some(first) = names.insert(tag.name.clone(), place.clone()) {
                return Err(format!(
                    "{place}: name {:?} is already used by {first} (groups are labelled by name)",
                    tag.name
                ));
            }
            Ok(())
        };
        for (i, tag) in self.categories.iter().enumerate() {
            check_tag(tag, format!("category {}", label(i, &tag.id)))?;
        }
        // Normalised concept key → the concept that owns it.
        let mut keys: HashMap<String, String> = HashMap::new();
        for (i, concept) in self.concepts.iter().enumerate() {
            let place = format!("concept {}", label(i, &concept.id));
            check_id(&concept.id, &place)?;
            if concept.name.trim().is_empty() {
                return Err(format!("{place}: \"name\" is empty"));
            }
            if let Some(j) = concept.aliases.iter().position(|a| a.trim().is_empty()) {
                return Err(format!("{place}: alias {j} is empty"));
            }
            if concept.tags.is_empty() {
                return Err(format!(
                    "{place}: \"tags\" is empty (at least one tag is needed)"
                ));
            }
            // A concept may restate its own name among its aliases; only
            // collisions between concepts make a request ambiguous.
            let own: HashSet<String> = concept.keys().collect();
            for key in own {
                if let Some(other) = keys.get(&key) {
                    return Err(format!(
                        "{place}: {key:?} (id, name or alias, ignoring case) already names {other}"
                    ));
                }
                keys.insert(key, place.clone());
            }
            for (j, tag) in concept.tags.iter().enumerate() {
                check_tag(tag, format!("{place}, tag {}", label(j, &tag.id)))?;
            }
        }
        Ok(())
    }

    /// The concept a client's string names (id, name or alias, ignoring case).
    pub fn concept(&self, requested: &str) -> Option<&Concept> {
        self.concepts.iter().find(|c| c.matches(requested))
    }

    /// Tags for a request: the parent categories followed by the sub-categories
    /// of each requested concept (in request order, deduplicated by tag id).
    ///
    /// An unknown concept is an error naming it and listing the known ones
    /// (the HTTP layer answers 400 with that text).
    pub fn tags_for(&self, concepts: &[String]) -> Result<Vec<&Tag>, TaxonomyError> {
        let mut tags: Vec<&Tag> = self.categories.iter().collect();
        let mut seen: HashSet<&str> = tags.iter().map(|t| t.id.as_str()).collect();
        for requested in concepts {
            let concept = self
                .concept(requested)
                .ok_or_else(|| TaxonomyError::UnknownConcept {
                    concept: requested.clone(),
                    known: self
                        .concepts
                        .iter()
                        .map(|c| format!("{} ({})", c.id, c.name))
                        .collect(),
                })?;
            // The same concept may be requested twice, e.g. as "travel" and "여행".
            tags.extend(concept.tags.iter().filter(|t| seen.insert(t.id.as_str())));
        }
        Ok(tags)
    }

    /// Every distinct prompt of the taxonomy, in file order (for precomputing
    /// text embeddings once per model).
    pub fn all_prompts(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.categories
            .iter()
            .chain(self.concepts.iter().flat_map(|c| &c.tags))
            .flat_map(|t| &t.prompts)
            .map(String::as_str)
            .filter(|p| seen.insert(*p))
            .collect()
    }
}

/// How an entry is named in errors: its id, or its position when the id is blank.
fn label(index: usize, id: &str) -> String {
    if id.trim().is_empty() {
        format!("#{index}")
    } else {
        format!("{id:?}")
    }
}

/// Ids are stable keys (logs, metrics, caches): plain ASCII, no spaces.
fn check_id(id: &str, place: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{place}: \"id\" is empty"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "{place}: id {id:?} may only contain ASCII letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Taxonomy {
        Taxonomy::builtin().unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn has_hangul(s: &str) -> bool {
        s.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c))
    }

    fn ids<'a>(tags: &[&'a Tag]) -> Vec<&'a str> {
        tags.iter().map(|t| t.id.as_str()).collect()
    }

    /// A small valid document; tests break one rule at a time.
    fn doc(categories: &str, concepts: &str) -> String {
        format!(r#"{{"version": 1, "categories": [{categories}], "concepts": [{concepts}]}}"#)
    }

    const FOOD: &str = r#"{"id": "food", "name": "음식", "prompts": ["a photo of food"]}"#;

    fn invalid_reason(text: &str) -> String {
        match Taxonomy::from_json(text, "test.json") {
            Err(TaxonomyError::Invalid { origin, reason }) => {
                assert_eq!(origin, "test.json");
                reason
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn builtin_shape() {
        let t = builtin();
        assert!(
            (18..=24).contains(&t.categories.len()),
            "{} categories",
            t.categories.len()
        );
        for tag in t
            .categories
            .iter()
            .chain(t.concepts.iter().flat_map(|c| &c.tags))
        {
            assert!(
                tag.prompts.len() >= 4,
                "{} has {} prompts",
                tag.id,
                tag.prompts.len()
            );
            assert!(has_hangul(&tag.name), "{} name {:?}", tag.id, tag.name);
            for prompt in &tag.prompts {
                assert!(
                    prompt.is_ascii(),
                    "{}: prompt {prompt:?} is not plain English",
                    tag.id
                );
                // Far below CLIP's 77-token context, so nothing is truncated.
                assert!(prompt.len() <= 120, "{}: prompt {prompt:?} is long", tag.id);
            }
        }
        for required in ["travel", "family", "friends", "pets", "couple"] {
            let concept = t
                .concept(required)
                .unwrap_or_else(|| panic!("{required} missing"));
            assert_eq!(concept.id, required);
            assert!(
                concept.tags.len() >= 4,
                "{required}: {} tags",
                concept.tags.len()
            );
            assert!(
                concept.tags.len() <= 8,
                "{required}: {} tags",
                concept.tags.len()
            );
            assert!(has_hangul(&concept.name));
        }
        for concept in &t.concepts {
            assert!((4..=8).contains(&concept.tags.len()), "{}", concept.id);
            assert!(has_hangul(&concept.name), "{}", concept.id);
            // Sub-category ids are namespaced by their concept.
            for tag in &concept.tags {
                assert!(
                    tag.id.starts_with(&format!("{}.", concept.id)),
                    "{}",
                    tag.id
                );
            }
        }
    }

    #[test]
    fn builtin_matches_its_json_constant() {
        // `builtin()` is the parsed `BUILTIN_JSON`, nothing added in code.
        let parsed: serde_json::Value = serde_json::from_str(BUILTIN_JSON).unwrap();
        assert_eq!(parsed["version"], 1);
        assert_eq!(
            parsed["categories"].as_array().unwrap().len(),
            builtin().categories.len()
        );
    }

    #[test]
    fn concepts_match_by_id_name_or_alias_ignoring_case() {
        let t = builtin();
        let korean = t.tags_for(&strings(&["여행"])).unwrap();
        let english = t.tags_for(&strings(&["Travel"])).unwrap();
        assert_eq!(korean, english);
        assert_eq!(t.tags_for(&strings(&[" TRIP "])).unwrap(), korean);
        assert_eq!(t.concept("반려동물").unwrap().id, "pets");
        assert!(t.concept("").is_none());
        assert!(t.concept("   ").is_none());
    }

    #[test]
    fn tags_for_is_categories_then_concepts_in_request_order() {
        let t = builtin();
        let none = t.tags_for(&[]).unwrap();
        assert_eq!(
            ids(&none),
            t.categories
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
        );

        let both = t.tags_for(&strings(&["couple", "travel"])).unwrap();
        let n = t.categories.len();
        let couple = &t.concept("couple").unwrap().tags;
        let travel = &t.concept("travel").unwrap().tags;
        assert_eq!(both.len(), n + couple.len() + travel.len());
        assert_eq!(both[n].id, couple[0].id);
        assert_eq!(both[n + couple.len()].id, travel[0].id);
    }

    #[test]
    fn tags_for_deduplicates_repeated_concepts() {
        let t = builtin();
        let once = t.tags_for(&strings(&["travel"])).unwrap();
        let twice = t.tags_for(&strings(&["travel", "여행", "TRAVEL"])).unwrap();
        assert_eq!(once, twice);
        let mut unique: Vec<&str> = ids(&twice);
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), twice.len());
    }

    #[test]
    fn unknown_concept_names_it_and_lists_known_ids() {
        let t = builtin();
        let err = t.tags_for(&strings(&["travel", "skydiving"])).unwrap_err();
        assert!(
            matches!(&err, TaxonomyError::UnknownConcept { concept, .. } if concept == "skydiving")
        );
        let text = err.to_string();
        assert!(text.contains("\"skydiving\""), "{text}");
        for id in ["travel", "family", "friends", "pets", "couple"] {
            assert!(text.contains(id), "{text}");
        }
        assert!(text.contains("여행"), "{text}");
    }

    #[test]
    fn all_prompts_are_distinct_and_complete() {
        let t = builtin();
        let prompts = t.all_prompts();
        let unique: HashSet<&str> = prompts.iter().copied().collect();
        assert_eq!(unique.len(), prompts.len());
        for tag in t
            .categories
            .iter()
            .chain(t.concepts.iter().flat_map(|c| &c.tags))
        {
            for p in &tag.prompts {
                assert!(unique.contains(p.as_str()));
            }
        }
        // Prompts shared between tags are listed once.
        let shared = doc(
            &format!(
                r#"{FOOD}, {{"id": "meal", "name": "식사", "prompts": ["a photo of food", "a photo of a meal"]}}"#
            ),
            "",
        );
        let t = Taxonomy::from_json(&shared, "t").unwrap();
        assert_eq!(
            t.all_prompts(),
            vec!["a photo of food", "a photo of a meal"]
        );
    }

    #[test]
    fn minimal_user_file_loads() {
        // One prompt suffices in user files; concepts may be left out.
        let text = format!(r#"{{"version": 1, "categories": [{FOOD}]}}"#);
        let t = Taxonomy::from_json(&text, "mine.json").unwrap();
        assert_eq!(t.categories.len(), 1);
        assert!(t.concepts.is_empty());
        assert_eq!(t.tags_for(&[]).unwrap().len(), 1);
    }

    #[test]
    fn from_file_reads_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taxonomy.json");
        std::fs::write(&path, doc(FOOD, "")).unwrap();
        assert_eq!(
            Taxonomy::from_file(&path).unwrap().categories[0].name,
            "음식"
        );

        std::fs::write(&path, r#"{"version": 2, "categories": []}"#).unwrap();
        let text = Taxonomy::from_file(&path).unwrap_err().to_string();
        assert!(
            text.contains("taxonomy.json") && text.contains("version 2"),
            "{text}"
        );

        let missing = dir.path().join("missing.json");
        let err = Taxonomy::from_file(&missing).unwrap_err();
        assert!(matches!(err, TaxonomyError::Read { .. }));
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    #[test]
    fn malformed_json_is_reported_with_its_position() {
        let reason = invalid_reason(r#"{"version": 1, "categories": [}"#);
        assert!(reason.contains("line 1"), "{reason}");
        let reason = invalid_reason(&doc(r#"{"id": "food", "name": "음식"}"#, ""));
        assert!(reason.contains("prompts"), "{reason}");
        let reason = invalid_reason(&doc(
            r#"{"id": "food", "name": "음식", "prompts": ["x"], "promts": ["y"]}"#,
            "",
        ));
        assert!(reason.contains("promts"), "{reason}");
        // The faulty field is named by its path.
        let reason = invalid_reason(&doc(
            r#"{"id": "food", "name": "음식", "prompts": [3]}"#,
            "",
        ));
        assert!(
            reason.contains("field `categories[0].prompts[0]`"),
            "{reason}"
        );
    }

    #[test]
    fn bad_version_is_rejected() {
        let reason = invalid_reason(&doc(FOOD, "").replace("\"version\": 1", "\"version\": 2"));
        assert!(reason.contains("version 2"), "{reason}");
        let reason = invalid_reason(&format!(r#"{{"categories": [{FOOD}]}}"#));
        assert!(reason.contains("version"), "{reason}");
    }

    #[test]
    fn empty_fields_are_rejected_naming_the_tag() {
        let reason = invalid_reason(&doc(r#"{"id": "food", "name": "음식", "prompts": []}"#, ""));
        assert!(
            reason.contains("\"food\"") && reason.contains("prompts"),
            "{reason}"
        );
        let reason = invalid_reason(&doc(
            r#"{"id": "food", "name": "음식", "prompts": [" "]}"#,
            "",
        ));
        assert!(
            reason.contains("\"food\"") && reason.contains("prompt 0"),
            "{reason}"
        );
        let reason = invalid_reason(&doc(r#"{"id": "food", "name": " ", "prompts": ["x"]}"#, ""));
        assert!(
            reason.contains("\"food\"") && reason.contains("name"),
            "{reason}"
        );
        let reason = invalid_reason(&doc(r#"{"id": "", "name": "음식", "prompts": ["x"]}"#, ""));
        assert!(reason.contains("#0") && reason.contains("id"), "{reason}");
        let reason = invalid_reason(&doc(
            r#"{"id": "my food", "name": "음식", "prompts": ["x"]}"#,
            "",
        ));
        assert!(reason.contains("\"my food\""), "{reason}");
        let reason = invalid_reason(&doc(
            r#"{"id": "food", "name": "음식", "prompts": ["x", "x"]}"#,
            "",
        ));
        assert!(reason.contains("twice"), "{reason}");
        let reason = invalid_reason(&doc("", ""));
        assert!(reason.contains("categories"), "{reason}");
    }

    #[test]
    fn duplicate_tag_ids_and_names_are_rejected() {
        let concept = r#"{"id": "trip", "name": "여행", "tags": [
            {"id": "food", "name": "현지 음식", "prompts": ["x"]}]}"#;
        let reason = invalid_reason(&doc(FOOD, concept));
        assert!(
            reason.contains("\"food\"") && reason.contains("already used"),
            "{reason}"
        );
        assert!(reason.contains("concept \"trip\""), "{reason}");

        let same_name = doc(
            &format!(r#"{FOOD}, {{"id": "meal", "name": "음식", "prompts": ["y"]}}"#),
            "",
        );
        let reason = invalid_reason(&same_name);
        assert!(
            reason.contains("\"meal\"") && reason.contains("\"음식\""),
            "{reason}"
        );
    }

    #[test]
    fn concept_rules() {
        let tag = r#"{"id": "t.a", "name": "가", "prompts": ["x"]}"#;
        let tag2 = r#"{"id": "t.b", "name": "나", "prompts": ["x"]}"#;

        let no_tags = doc(FOOD, r#"{"id": "trip", "name": "여행", "tags": []}"#);
        let reason = invalid_reason(&no_tags);
        assert!(
            reason.contains("\"trip\"") && reason.contains("tags"),
            "{reason}"
        );

        let twice = doc(
            FOOD,
            &format!(
                r#"{{"id": "trip", "name": "여행", "tags": [{tag}]}},
                   {{"id": "Trip", "name": "휴가", "tags": [{tag2}]}}"#
            ),
        );
        let reason = invalid_reason(&twice);
        assert!(
            reason.contains("\"Trip\"") && reason.contains("\"trip\""),
            "{reason}"
        );

        let alias_clash = doc(
            FOOD,
            &format!(
                r#"{{"id": "trip", "name": "여행", "aliases": ["Vacation"], "tags": [{tag}]}},
                   {{"id": "holiday", "name": "휴가", "aliases": ["vacation"], "tags": [{tag2}]}}"#
            ),
        );
        let reason = invalid_reason(&alias_clash);
        assert!(
            reason.contains("\"vacation\"") && reason.contains("\"holiday\""),
            "{reason}"
        );

        let empty_alias = doc(
            FOOD,
            &format!(r#"{{"id": "trip", "name": "여행", "aliases": [""], "tags": [{tag}]}}"#),
        );
        assert!(invalid_reason(&empty_alias).contains("alias 0"));

        // Restating the concept's own id or name as an alias is fine.
        let restated = doc(
            FOOD,
            &format!(
                r#"{{"id": "trip", "name": "여행", "aliases": ["여행", "TRIP"], "tags": [{tag}]}}"#
            ),
        );
        let t = Taxonomy::from_json(&restated, "t").unwrap();
        assert_eq!(
            ids(&t.tags_for(&strings(&["Trip"])).unwrap()),
            vec!["food", "t.a"]
        );
    }
}
