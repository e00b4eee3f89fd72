//! `ongi analyze --html`: the album answers as one self-contained HTML page a
//! person can look at (no network: thumbnails are inline JPEGs, or relative
//! links with `--thumbnails DIR`).
//!
//! Written by hand with `format!`: the page is a few fixed sections, and a
//! template engine would add a dependency for less than the escaping below.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;

/// Where a photo's thumbnail is.
pub enum Thumb {
    /// JPEG bytes, inlined as a `data:` URL.
    Inline(Vec<u8>),
    /// A path relative to the page.
    Link(String),
}

/// Why a photo counts as low quality, with the numbers that decided it.
pub struct LowQuality {
    /// Object key.
    pub key: String,
    /// Laplacian variance of the 300 px greyscale copy, and the threshold below which it is blurry.
    pub blur: (f64, f64),
    /// CLIP-IQA `sharp` share and its threshold.
    pub sharp: (f64, f64),
    /// `0.75·sharp + 0.25·good` and its threshold.
    pub combined: (f64, f64),
}

/// Everything the page shows.
pub struct AlbumReport {
    /// Page title (the album folder).
    pub title: String,
    /// Model identity the features belong to.
    pub model: String,
    /// Photos asked for.
    pub photos: usize,
    /// Thumbnails by key (a photo without one shows a placeholder).
    pub thumbs: HashMap<String, Thumb>,
    /// Duplicate groups: each key with its pHash Hamming distance to the group's first photo.
    pub duplicates: Vec<Vec<(String, u32)>>,
    /// Low-quality photos, in album order.
    pub low_quality: Vec<LowQuality>,
    /// Categories with their photos and highlight scores, best first.
    pub categories: Vec<(String, Vec<(String, f32)>)>,
    /// Photos that could not be analysed, with the reason.
    pub failed: Vec<(String, String)>,
    /// How long each stage of the run took.
    pub timings: Vec<(String, Duration)>,
}

/// Escapes text for HTML element content and double-quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font-family:system-ui,"Noto Sans CJK KR","NanumGothic","Apple SD Gothic Neo","Malgun Gothic",sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin-bottom:.2em} .meta{color:#666;margin-top:0}
section{margin:1.5em 0;padding:1em;background:#fff;border:1px solid #ddd;border-radius:8px}
.row{display:flex;flex-wrap:wrap;gap:10px;margin:.5em 0 1em}
figure.photo{margin:0;width:170px;font-size:12px;text-align:center}
figure.photo img,.nothumb{max-width:160px;max-height:160px;border-radius:4px;display:block;margin:0 auto}
.nothumb{width:160px;height:120px;background:#eee;color:#888;line-height:120px}
figcaption{word-break:break-all;margin-top:4px} .num{color:#555} .bad{color:#b00020;font-weight:600}
table{border-collapse:collapse} td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
.empty{color:#888;font-style:italic}
"#;

/// Counts the images that failed to load into `data-broken-images` on the
/// body (and shows a banner), so a reader or a test sees a broken page.
const CHECK_SCRIPT: &str = r#"
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
  if (broken.length) {
    var p = document.createElement("p");
    p.className = "bad";
    p.textContent = broken.length + " thumbnail(s) failed to load";
    document.body.insertBefore(p, document.body.firstChild);
  }
});
"#;

impl AlbumReport {
    fn figure(&self, out: &mut String, key: &str, caption: &str) {
        let img = match self.thumbs.get(key) {
            Some(Thumb::Inline(jpeg)) => format!(
                r#"<img src="data:image/jpeg;base64,{}" alt="{}">"#,
                base64::engine::general_purpose::STANDARD.encode(jpeg),
                esc(key)
            ),
            Some(Thumb::Link(path)) => format!(r#"<img src="{}" alt="{}">"#, esc(path), esc(key)),
            None => r#"<div class="nothumb">no thumbnail</div>"#.to_string(),
        };
        let _ = write!(
            out,
            r#"<figure class="photo" data-key="{k}">{img}<figcaption>{k}{caption}</figcaption></figure>"#,
            k = esc(key)
        );
    }

    /// The whole page.
    pub fn render(&self) -> String {
        let mut body = String::new();
        let _ = write!(
            body,
            r#"<h1>{}</h1><p class="meta">{} photos · model {} · {} failed</p>"#,
            esc(&self.title),
            self.photos,
            esc(&self.model),
            self.failed.len()
        );

        body.push_str(r#"<section id="duplicates"><h2>Duplicate groups</h2>"#);
        if self.duplicates.is_empty() {
            body.push_str(r#"<p class="empty">No duplicates.</p>"#);
        }
        for (i, group) in self.duplicates.iter().enumerate() {
            let _ = write!(body, r#"<h3>Group {}</h3><div class="row group">"#, i + 1);
            for (n, (key, distance)) in group.iter().enumerate() {
                let caption = if n == 0 {
                    r#"<br><span class="num">first of the group</span>"#.to_string()
                } else {
                    format!(r#"<br><span class="num">Hamming distance {distance}</span>"#)
                };
                self.figure(&mut body, key, &caption);
            }
            body.push_str("</div>");
        }
        body.push_str("</section>");

        body.push_str(r#"<section id="low-quality"><h2>Low quality</h2>"#);
        if self.low_quality.is_empty() {
            body.push_str(r#"<p class="empty">No low-quality photos.</p>"#);
        }
        body.push_str(r#"<div class="row">"#);
        for q in &self.low_quality {
            let line = |name: &str, (value, threshold): (f64, f64)| {
                let class = if value < threshold { "bad" } else { "num" };
                format!(
                    r#"<br><span class="{class}">{name} {value:.3} (threshold {threshold:.3})</span>"#
                )
            };
            let caption = format!(
                "{}{}{}",
                line("blur (Laplacian variance)", q.blur),
                line("CLIP-IQA sharp", q.sharp),
                line("CLIP-IQA combined", q.combined)
            );
            self.figure(&mut body, &q.key, &caption);
        }
        body.push_str("</div></section>");

        body.push_str(r#"<section id="categories"><h2>Categories</h2>"#);
        for (name, photos) in &self.categories {
            let _ = write!(
                body,
                r#"<h3 class="category">{} <span class="num">({} photo{})</span></h3><div class="row">"#,
                esc(name),
                photos.len(),
                if photos.len() == 1 { "" } else { "s" }
            );
            for (key, score) in photos {
                let caption = format!(r#"<br><span class="num">highlight {score:.3}</span>"#);
                self.figure(&mut body, key, &caption);
            }
            body.push_str("</div>");
        }
        body.push_str("</section>");

        body.push_str(r#"<section id="failed"><h2>Failed photos</h2>"#);
        if self.failed.is_empty() {
            body.push_str(r#"<p class="empty">Every photo was analysed.</p>"#);
        } else {
            body.push_str("<table><tr><th>photo</th><th>reason</th></tr>");
            for (key, reason) in &self.failed {
                let _ = write!(
                    body,
                    r#"<tr class="failure" data-key="{}"><td>{}</td><td>{}</td></tr>"#,
                    esc(key),
                    esc(key),
                    esc(reason)
                );
            }
            body.push_str("</table>");
        }
        body.push_str("</section>");

        body.push_str(
            r#"<section id="timings"><h2>Timings</h2><table><tr><th>stage</th><th>ms</th></tr>"#,
        );
        for (stage, took) in &self.timings {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{:.1}</td></tr>",
                esc(stage),
                took.as_secs_f64() * 1e3
            );
        }
        body.push_str("</table></section>");

        format!(
            "<!DOCTYPE html>\n<html lang=\"ko\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{}</title><style>{STYLE}</style></head><body>{body}<script>{CHECK_SCRIPT}</script></body></html>\n",
            esc(&self.title)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AlbumReport {
        AlbumReport {
            title: "album <1>".into(),
            model: "m".into(),
            photos: 4,
            thumbs: HashMap::from([
                ("a.jpg".to_string(), Thumb::Inline(vec![0xff, 0xd8])),
                ("b\".jpg".to_string(), Thumb::Link("thumbs/0001.jpg".into())),
            ]),
            duplicates: vec![vec![("a.jpg".into(), 0), ("b\".jpg".into(), 3)]],
            low_quality: vec![LowQuality {
                key: "c<.jpg".into(),
                blur: (12.5, 80.0),
                sharp: (0.6, 0.488),
                combined: (0.6, 0.49),
            }],
            categories: vec![(
                "음식".into(),
                vec![("a.jpg".into(), 7.5), ("c<.jpg".into(), 2.0)],
            )],
            failed: vec![("bad.jpg".into(), "cannot decode <JPEG>".into())],
            timings: vec![("embedding".into(), Duration::from_millis(12))],
        }
    }

    #[test]
    fn client_text_is_escaped_everywhere() {
        let html = report().render();
        assert!(html.contains("<title>album &lt;1&gt;</title>"));
        assert!(html.contains(r#"data-key="b&quot;.jpg""#));
        assert!(html.contains(r#"data-key="c&lt;.jpg""#));
        assert!(html.contains("cannot decode &lt;JPEG&gt;"));
        assert!(!html.contains("c<.jpg") && !html.contains("<JPEG>"));
    }

    #[test]
    fn every_section_and_value_is_on_the_page() {
        let html = report().render();
        for id in [
            "duplicates",
            "low-quality",
            "categories",
            "failed",
            "timings",
        ] {
            assert!(html.contains(&format!(r#"<section id="{id}">"#)), "{id}");
        }
        assert!(html.contains("data:image/jpeg;base64,/9g="));
        assert!(html.contains(r#"src="thumbs/0001.jpg""#));
        assert!(html.contains("Hamming distance 3"));
        assert!(html.contains(
            r#"<span class="bad">blur (Laplacian variance) 12.500 (threshold 80.000)</span>"#
        ));
        assert!(html.contains("음식") && html.contains("highlight 7.500"));
        assert!(
            html.contains(r#"<div class="nothumb">"#),
            "c<.jpg has no thumbnail"
        );
        assert!(html.contains("<td>12.0</td>"));
    }
}
