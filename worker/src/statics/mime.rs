//! Content types by file extension: a small table of the types a web app serves (no
//! crate: `mime_guess`'s table has ~1,500 entries, most of which a static mount never
//! holds). Text types get `charset=utf-8`; anything unknown is
//! `application/octet-stream`, which browsers download rather than guess at.

use http::HeaderValue;

/// `(extension, type)`, extensions in lower case. Text types carry their charset here.
const TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    // RFC 9239: JavaScript is text/javascript.
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("cjs", "text/javascript; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("text", "text/plain; charset=utf-8"),
    ("md", "text/markdown; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("tsv", "text/tab-separated-values; charset=utf-8"),
    ("xml", "text/xml; charset=utf-8"),
    ("vtt", "text/vtt; charset=utf-8"),
    ("ics", "text/calendar; charset=utf-8"),
    // JSON is UTF-8 by definition (RFC 8259): no charset parameter.
    ("json", "application/json"),
    ("map", "application/json"),
    ("jsonld", "application/ld+json"),
    ("webmanifest", "application/manifest+json"),
    ("wasm", "application/wasm"),
    ("pdf", "application/pdf"),
    ("zip", "application/zip"),
    ("gz", "application/gzip"),
    ("tgz", "application/gzip"),
    ("br", "application/x-brotli"),
    ("zst", "application/zstd"),
    ("tar", "application/x-tar"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("toml", "application/toml"),
    ("rss", "application/rss+xml"),
    ("atom", "application/atom+xml"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("apng", "image/apng"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
    ("ico", "image/vnd.microsoft.icon"),
    ("bmp", "image/bmp"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("ttf", "font/ttf"),
    ("otf", "font/otf"),
    ("eot", "application/vnd.ms-fontobject"),
    ("mp4", "video/mp4"),
    ("m4v", "video/mp4"),
    ("webm", "video/webm"),
    ("ogv", "video/ogg"),
    ("mov", "video/quicktime"),
    ("mp3", "audio/mpeg"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("oga", "audio/ogg"),
    ("ogg", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("wav", "audio/wav"),
    ("flac", "audio/flac"),
];

const DEFAULT: &str = "application/octet-stream";

/// The `Content-Type` of a file named `name` (its last segment is looked at).
pub(crate) fn content_type(name: &[u8]) -> HeaderValue {
    let base = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
    let ext = match base.iter().rposition(|b| *b == b'.') {
        Some(at) if at + 1 < base.len() => &base[at + 1..],
        _ => return HeaderValue::from_static(DEFAULT),
    };
    let found = TYPES
        .iter()
        .find(|(known, _)| known.as_bytes().eq_ignore_ascii_case(ext));
    HeaderValue::from_static(found.map_or(DEFAULT, |(_, t)| t))
}

/// Whether a file of this type is worth compressing, so worth looking for a `.br` or
/// `.gz` sibling of: text, JSON, XML, SVG, JavaScript, WebAssembly and the uncompressed
/// font and icon formats. Images, media, archives, WOFF fonts and unknown types are
/// compressed already (or not known to compress), so their siblings are not looked for
/// (two `openat2` calls saved on most static hits).
pub(crate) fn compressible(content_type: &HeaderValue) -> bool {
    let t = content_type.as_bytes();
    t.starts_with(b"text/")
        || t.ends_with(b"json")
        || t.ends_with(b"+xml")
        || [
            &b"application/wasm"[..],
            b"application/yaml",
            b"application/toml",
            b"font/ttf",
            b"font/otf",
            b"application/vnd.ms-fontobject",
            b"image/vnd.microsoft.icon",
            b"image/bmp",
        ]
        .contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_by_extension() {
        let cases: &[(&[u8], &str)] = &[
            (b"index.html", "text/html; charset=utf-8"),
            (b"a/b/APP.JS", "text/javascript; charset=utf-8"),
            (b"data.json", "application/json"),
            (b"logo.svg", "image/svg+xml"),
            (b"font.woff2", "font/woff2"),
            (b"archive.tar.gz", "application/gzip"),
            (b"README", DEFAULT),
            (b"dir.css/file", DEFAULT),
            (b"trailing.", DEFAULT),
            (b"x.unknown", DEFAULT),
        ];
        for (name, want) in cases {
            assert_eq!(
                content_type(name),
                *want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let compressible = |name: &[u8]| compressible(&content_type(name));
        for name in [
            &b"a.css"[..],
            b"a.js",
            b"a.json",
            b"a.map",
            b"a.svg",
            b"a.wasm",
            b"a.html",
            b"a.xml",
            b"a.ico",
            b"a.webmanifest",
            b"a.ttf",
        ] {
            assert!(compressible(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"a.png"[..],
            b"a.jpg",
            b"a.woff2",
            b"a.mp4",
            b"a.gz",
            b"a.zip",
            b"a.bin",
            b"README",
        ] {
            assert!(!compressible(name), "{}", String::from_utf8_lossy(name));
        }
        for (ext, t) in TYPES {
            assert_eq!(ext.to_ascii_lowercase(), *ext);
            assert_eq!(t.starts_with("text/"), t.contains("charset=utf-8"), "{ext}");
        }
    }
}
