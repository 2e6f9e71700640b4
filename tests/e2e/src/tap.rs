//! The receive tap: every decrypted byte an agent received, parsed back into HTTP responses.
//!
//! Masking tests must show that a PHI value never appears in *any* byte an agent receives, not
//! just in the rows the driver hands back. With [`crate::snowflake::AgentEnv::tap`] set, the
//! agent runs with a tap preloaded (the agent scripts stay unmodified):
//!
//! - Python: `tests/drivers/tap/sitecustomize.py`, on `PYTHONPATH`, wraps pyOpenSSL's
//!   `Connection.recv`/`recv_into`/`read` (what snowflake-connector-python's vendored urllib3
//!   reads through) and `ssl.SSLSocket.read`/`ssl.SSLObject.read` (the standard library);
//! - Node: `tests/drivers/tap/tap.js`, through `NODE_OPTIONS=--require`, wraps
//!   `tls.TLSSocket.prototype.push`, through which every decrypted chunk reaches the socket's
//!   readers (axios/http and the parallel chunk downloads alike).
//!
//! Both write one file per TLS connection into the tap directory (`py-<pid>-<n>.bin`,
//! `node-<pid>-<n>.bin`), the plaintext in the order received. [`received_payloads`] parses
//! each file as a sequence of HTTP/1.1 responses, undoes `Content-Encoding` (gzip, deflate; and
//! gzip sniffed by its magic, as the drivers do for result chunks), and adds derived views:
//! the Arrow IPC bytes of `data.rowsetBase64` (Arrow keeps UTF-8 strings raw, so a byte search
//! finds them), the string values of every Arrow IPC stream one per line (Arrow lays strings
//! back to back, so `\b`-anchored regexes need this view) and the unescaped string values of
//! JSON bodies (so `\u002d`-style escaping cannot hide a value). Numbers, dates and timestamps
//! in Arrow results are binary and not rendered as text: search those through the driver's
//! output. Bytes that do not parse as HTTP are kept as a payload of their own:
//! nothing received escapes the search. [`find_needles`] and [`find_regex`] search every
//! payload's headers and body; [`find_urls`] lists the `https://` URLs received;
//! [`tapped_bytes`] tells a test the tap saw traffic at all, so an empty search is not vacuous.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use regex::bytes::Regex;

/// The environment variable naming the tap directory (read by both tap scripts).
pub const TAP_DIR_ENV: &str = "TOLLGATE_TAP_DIR";

/// `tests/drivers/tap`: the tap scripts (and nothing else, since it goes on `PYTHONPATH`).
pub fn tap_scripts_dir() -> PathBuf {
    crate::snowflake::drivers_dir().join("tap")
}

/// The environment variables that turn the tap on for an agent of `kind` (`"python"` or
/// `"node"`) writing into `dir`: `TOLLGATE_TAP_DIR`, plus `PYTHONPATH` and
/// `PYTHONDONTWRITEBYTECODE=1` (Python) or `NODE_OPTIONS=--require "<tap.js>"` (Node). Meant
/// for a cleared environment, as the agent runner uses: the values replace whatever was there.
pub fn tap_env(kind: &str, dir: &Path) -> Vec<(&'static str, OsString)> {
    let scripts = tap_scripts_dir();
    let mut env = vec![(TAP_DIR_ENV, dir.as_os_str().to_owned())];
    if kind == "python" {
        env.push(("PYTHONPATH", scripts.into_os_string()));
        // Or the import would leave a __pycache__ in the source tree.
        env.push(("PYTHONDONTWRITEBYTECODE", OsString::from("1")));
    } else {
        let mut opt = OsString::from("--require \"");
        opt.push(scripts.join("tap.js"));
        opt.push("\"");
        env.push(("NODE_OPTIONS", opt));
    }
    env
}

/// One thing an agent received, searchable as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Where it came from: the tap file name and the response's index in it (`py-1-0.bin#2`),
    /// with a suffix for derived views (`#2/rowsetBase64`, `#2/rowsetBase64/arrow-strings`,
    /// `#2/arrow-strings`, `#2/json-strings`) and `#unparsed@<offset>` for bytes that were not
    /// HTTP.
    pub source: String,
    /// The response's headers in order, names lower-cased (empty for derived views).
    pub headers: Vec<(String, String)>,
    /// The body with transfer and content encodings undone (or the derived bytes).
    pub body: Vec<u8>,
}

/// One HTTP/1.1 response parsed from a tap file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as sent (chunked framing removed, content encoding still applied).
    pub body: Vec<u8>,
    /// Whether the file ended before the response did (body or headers cut short).
    pub truncated: bool,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What [`parse_responses`] makes of a byte stream: the responses, and where the bytes stopped
/// being HTTP (if they did).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Responses in order.
    pub responses: Vec<Response>,
    /// Offset and bytes of a remainder that did not start with a status line.
    pub unparsed: Option<(usize, Vec<u8>)>,
}

/// Parses `raw` (the plaintext of one connection) as consecutive HTTP/1.1 responses. Bodies are
/// delimited by `Transfer-Encoding: chunked`, else `Content-Length`, else the end of the data;
/// 1xx, 204 and 304 have none. A last response cut short is kept with `truncated` set. Bytes
/// between responses that are not a status line end the parse and are returned as `unparsed`.
pub fn parse_responses(raw: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut pos = 0;
    loop {
        while pos < raw.len() && matches!(raw[pos], b'\r' | b'\n') {
            pos += 1;
        }
        if pos >= raw.len() {
            return out;
        }
        let rest = &raw[pos..];
        let is_status = rest.starts_with(b"HTTP/")
            || (rest.len() < 5 && b"HTTP/".starts_with(rest) && !rest.is_empty());
        if !is_status {
            out.unparsed = Some((pos, rest.to_vec()));
            return out;
        }
        let (resp, used) = parse_one(rest);
        let truncated = resp.truncated;
        out.responses.push(resp);
        pos += used;
        if truncated {
            return out;
        }
    }
}

/// Finds the end of the header block: the offset just past the blank line, and the header text.
fn header_block(data: &[u8]) -> Option<(usize, &[u8])> {
    let mut i = 0;
    while let Some(nl) = data[i..].iter().position(|&b| b == b'\n') {
        let line_end = i + nl;
        let line = &data[i..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && i > 0 {
            return Some((line_end + 1, &data[..i]));
        }
        i = line_end + 1;
    }
    None
}

fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    block
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

fn parse_one(data: &[u8]) -> (Response, usize) {
    let Some((body_start, block)) = header_block(data) else {
        // Headers cut short: keep what there is.
        let mut ls = lines(data);
        let status = ls.next().map(status_of).unwrap_or(0);
        let headers = ls.filter_map(header_line).collect();
        return (
            Response {
                status,
                headers,
                body: Vec::new(),
                truncated: true,
            },
            data.len(),
        );
    };
    let mut ls = lines(block);
    let status = ls.next().map(status_of).unwrap_or(0);
    let headers: Vec<(String, String)> = ls.filter_map(header_line).collect();
    let rest = &data[body_start..];
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let (body, used, truncated) = if no_body {
        (Vec::new(), 0, false)
    } else if chunked {
        dechunk(rest)
    } else if let Some(n) = length {
        if rest.len() >= n {
            (rest[..n].to_vec(), n, false)
        } else {
            (rest.to_vec(), rest.len(), true)
        }
    } else {
        (rest.to_vec(), rest.len(), false)
    };
    (
        Response {
            status,
            headers,
            body,
            truncated,
        },
        body_start + used,
    )
}

fn status_of(line: &[u8]) -> u16 {
    line.split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header_line(line: &[u8]) -> Option<(String, String)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = String::from_utf8_lossy(&line[..colon])
        .trim()
        .to_ascii_lowercase();
    let value = String::from_utf8_lossy(&line[colon + 1..])
        .trim()
        .to_string();
    Some((name, value))
}

/// Removes chunked framing: (body, bytes used, truncated).
fn dechunk(data: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
            return (body, data.len(), true);
        };
        let line = &data[pos..pos + nl];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else {
            // Not a chunk-size line: the framing is broken; keep the rest as body.
            body.extend_from_slice(&data[pos..]);
            return (body, data.len(), true);
        };
        pos += nl + 1;
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
                    return (body, data.len(), !data[pos..].is_empty());
                };
                let line = &data[pos..pos + nl];
                pos += nl + 1;
                if line.strip_suffix(b"\r").unwrap_or(line).is_empty() {
                    return (body, pos, false);
                }
            }
        }
        if data.len() - pos < size {
            body.extend_from_slice(&data[pos..]);
            return (body, data.len(), true);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size;
        // The CRLF after the chunk data.
        if data[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else if data[pos..].starts_with(b"\n") {
            pos += 1;
        }
    }
}

/// Reads a decoder to its end or its first error, keeping what it produced (a truncated
/// stream still yields its prefix).
fn drain(mut r: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    let out = drain(flate2::read::MultiGzDecoder::new(b));
    (!out.is_empty()).then_some(out)
}

fn inflate(b: &[u8]) -> Option<Vec<u8>> {
    let out = drain(flate2::read::ZlibDecoder::new(b));
    if !out.is_empty() {
        return Some(out);
    }
    let out = drain(flate2::read::DeflateDecoder::new(b));
    (!out.is_empty()).then_some(out)
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// Undoes `Content-Encoding` (listed codings undone last-first); a body that still starts with
/// the gzip magic is gunzipped too (the drivers sniff result chunks the same way). A coding that
/// fails to decode leaves the bytes as they were.
pub fn decode_body(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    if let Some(ce) = header(headers, "content-encoding") {
        for coding in ce.rsplit(',').map(|c| c.trim().to_ascii_lowercase()) {
            let decoded = match coding.as_str() {
                "gzip" | "x-gzip" => gunzip(&out),
                "deflate" => inflate(&out),
                _ => None,
            };
            if let Some(d) = decoded {
                out = d;
            }
        }
    }
    if out.starts_with(GZIP_MAGIC) {
        if let Some(d) = gunzip(&out) {
            out = d;
        }
    }
    out
}

/// Parses a JSON body; chunk bodies of JSON results are rows without the outer `[]`.
fn parse_json(body: &[u8]) -> Option<serde_json::Value> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' && *first != b'[' {
        return None;
    }
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    if *first == b'[' {
        let mut wrapped = Vec::with_capacity(body.len() + 2);
        wrapped.push(b'[');
        wrapped.extend_from_slice(body);
        wrapped.push(b']');
        return serde_json::from_slice(&wrapped).ok();
    }
    None
}

fn json_strings(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::String(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(b'\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.extend_from_slice(k.as_bytes());
            out.push(b'\n');
            json_strings(x, out);
        }),
        _ => {}
    }
}

const ARROW_CONTINUATION: &[u8] = &[0xff, 0xff, 0xff, 0xff];

/// The string and binary values of an Arrow IPC stream, one per line (nested, list and
/// dictionary values included), or None when `ipc` is not one. Arrow lays a column's strings out
/// back to back (`700-10-1000700-10-1001…`), where a `\b`-anchored regex finds nothing; this view
/// separates them. A stream cut short yields the batches before the cut.
pub fn arrow_strings(ipc: &[u8]) -> Option<Vec<u8>> {
    if !ipc.starts_with(ARROW_CONTINUATION) {
        return None;
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).ok()?;
    let mut out = Vec::new();
    for batch in reader {
        let Ok(batch) = batch else { break };
        for col in batch.columns() {
            strings_of(col.as_ref(), &mut out);
        }
    }
    Some(out)
}

fn push_all<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = Option<&'a [u8]>>) {
    for v in values.flatten() {
        out.extend_from_slice(v);
        out.push(b'\n');
    }
}

fn strings_of(a: &dyn arrow_array::Array, out: &mut Vec<u8>) {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType as T;
    match a.data_type() {
        T::Utf8 => push_all(
            out,
            a.as_string::<i32>().iter().map(|v| v.map(str::as_bytes)),
        ),
        T::LargeUtf8 => push_all(
            out,
            a.as_string::<i64>().iter().map(|v| v.map(str::as_bytes)),
        ),
        T::Utf8View => push_all(out, a.as_string_view().iter().map(|v| v.map(str::as_bytes))),
        T::Binary => push_all(out, a.as_binary::<i32>().iter()),
        T::LargeBinary => push_all(out, a.as_binary::<i64>().iter()),
        T::BinaryView => push_all(out, a.as_binary_view().iter()),
        T::FixedSizeBinary(_) => push_all(out, a.as_fixed_size_binary().iter()),
        T::Struct(_) => a
            .as_struct()
            .columns()
            .iter()
            .for_each(|c| strings_of(c.as_ref(), out)),
        T::List(_) => strings_of(a.as_list::<i32>().values().as_ref(), out),
        T::LargeList(_) => strings_of(a.as_list::<i64>().values().as_ref(), out),
        T::FixedSizeList(..) => strings_of(a.as_fixed_size_list().values().as_ref(), out),
        T::Map(..) => strings_of(a.as_map().entries(), out),
        T::Dictionary(..) => strings_of(a.as_any_dictionary().values().as_ref(), out),
        _ => {}
    }
}

/// The payloads of one connection's plaintext (`name` prefixes their sources): one per
/// response (decoded body), plus where they apply `/rowsetBase64` (the decoded Arrow IPC
/// bytes), `/rowsetBase64/arrow-strings` and `/arrow-strings` (see [`arrow_strings`]; the
/// latter for Arrow bodies such as result chunks) and `/json-strings` (every JSON string value
/// and key, unescaped, one per line), plus `#unparsed@<offset>` for bytes that were not HTTP.
pub fn payloads_of(name: &str, raw: &[u8]) -> Vec<Payload> {
    let parsed = parse_responses(raw);
    let mut out = Vec::new();
    for (i, r) in parsed.responses.into_iter().enumerate() {
        let source = format!("{name}#{i}");
        let body = decode_body(&r.headers, &r.body);
        if let Some(json) = parse_json(&body) {
            if let Some(b64) = json.pointer("/data/rowsetBase64").and_then(|v| v.as_str()) {
                let cleaned: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
                if let Ok(arrow) = base64::engine::general_purpose::STANDARD.decode(cleaned) {
                    if let Some(strings) = arrow_strings(&arrow) {
                        out.push(Payload {
                            source: format!("{source}/rowsetBase64/arrow-strings"),
                            headers: Vec::new(),
                            body: strings,
                        });
                    }
                    out.push(Payload {
                        source: format!("{source}/rowsetBase64"),
                        headers: Vec::new(),
                        body: arrow,
                    });
                }
            }
            let mut strings = Vec::new();
            json_strings(&json, &mut strings);
            out.push(Payload {
                source: format!("{source}/json-strings"),
                headers: Vec::new(),
                body: strings,
            });
        } else if let Some(strings) = arrow_strings(&body) {
            out.push(Payload {
                source: format!("{source}/arrow-strings"),
                headers: Vec::new(),
                body: strings,
            });
        }
        out.push(Payload {
            source,
            headers: r.headers,
            body,
        });
    }
    if let Some((offset, rest)) = parsed.unparsed {
        out.push(Payload {
            source: format!("{name}#unparsed@{offset}"),
            headers: Vec::new(),
            body: rest,
        });
    }
    out
}

/// The tap files in `dir` (`*.bin`), sorted by name.
pub fn tap_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading tap dir {} (did the tap run?)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Total plaintext bytes tapped in `dir` (all files): a test asserts this is non-zero (and
/// large enough for what it fetched) so that finding nothing means something.
pub fn tapped_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for f in tap_files(dir)? {
        n += fs::metadata(&f)
            .with_context(|| format!("stat {}", f.display()))?
            .len();
    }
    Ok(n)
}

/// Every payload the agent(s) tapped into `dir` received (see [`payloads_of`]), files in name
/// order, responses in the order received.
pub fn received_payloads(dir: &Path) -> Result<Vec<Payload>> {
    let mut out = Vec::new();
    for f in tap_files(dir)? {
        let raw = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.extend(payloads_of(&name, &raw));
    }
    Ok(out)
}

/// The searchable parts of a payload: each header as `name: value`, then the body.
fn haystacks(p: &Payload) -> impl Iterator<Item = std::borrow::Cow<'_, [u8]>> {
    p.headers
        .iter()
        .map(|(k, v)| std::borrow::Cow::Owned(format!("{k}: {v}").into_bytes()))
        .chain(std::iter::once(std::borrow::Cow::Borrowed(
            p.body.as_slice(),
        )))
}

/// Which needles occur in which payloads (headers or body): `(source, needle)` per payload and
/// needle found, the needle lossily as text. Empty means none of them was received.
pub fn find_needles(payloads: &[Payload], needles: &[&[u8]]) -> Vec<(String, String)> {
    let finders: Vec<(Regex, String)> = needles
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| {
            let escaped: String = n.iter().map(|&b| format!("\\x{b:02x}")).collect();
            let re = Regex::new(&format!("(?-u){escaped}")).expect("escaped bytes are a regex");
            (re, String::from_utf8_lossy(n).into_owned())
        })
        .collect();
    let mut out = Vec::new();
    for p in payloads {
        for (re, text) in &finders {
            if haystacks(p).any(|h| re.is_match(&h)) {
                out.push((p.source.clone(), text.clone()));
            }
        }
    }
    out
}

/// Every match of `re` in every payload (headers or body): `(source, match)`, the match lossily
/// as text.
pub fn find_regex(payloads: &[Payload], re: &Regex) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in payloads {
        for h in haystacks(p) {
            for m in re.find_iter(&h) {
                out.push((
                    p.source.clone(),
                    String::from_utf8_lossy(m.as_bytes()).into_owned(),
                ));
            }
        }
    }
    out
}

/// Every `https://…` URL in any payload (headers or body; in JSON also with `\/` escaping
/// undone, through the `/json-strings` views): `(source, url)`, each distinct pair once, in the
/// order found.
pub fn find_urls_with_source(payloads: &[Payload]) -> Vec<(String, String)> {
    let re = Regex::new(r#"(?-u)https://[^\x00-\x20\x7f-\xff"'<>\\]+"#).expect("valid regex");
    let mut seen = std::collections::HashSet::new();
    find_regex(payloads, &re)
        .into_iter()
        .filter(|x| seen.insert(x.clone()))
        .collect()
}

/// Every distinct `https://…` URL any payload carries (see [`find_urls_with_source`]), in the
/// order found. Tests use it to show that no cloud-storage URL reached the agent.
pub fn find_urls(payloads: &[Payload]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    find_urls_with_source(payloads)
        .into_iter()
        .map(|(_, u)| u)
        .filter(|u| seen.insert(u.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tap")
            .join(name);
        fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_chunk_fixture_decodes_to_arrow() {
        // python-plus: a result chunk served gzip'd, as S3 would.
        let raw = fixture("py-chunk-gzip.resp.http");
        let parsed = parse_responses(&raw);
        assert_eq!(parsed.responses.len(), 1);
        assert!(parsed.unparsed.is_none());
        let r = &parsed.responses[0];
        assert_eq!(r.status, 200);
        assert!(!r.truncated);
        assert_eq!(r.header("Content-Encoding"), Some("gzip"));
        assert_eq!(r.body.len(), 6618);
        let p = payloads_of("f.bin", &raw);
        let sources: Vec<&str> = p.iter().map(|p| p.source.as_str()).collect();
        assert_eq!(sources, ["f.bin#0/arrow-strings", "f.bin#0"]);
        // An Arrow IPC stream (continuation marker), strings raw and back to back.
        let body = &p[1].body;
        assert!(body.starts_with(&[0xff, 0xff, 0xff, 0xff]));
        assert!(body.len() > 6618);
        assert!(find_needles(&p[1..], &[b"name-1000name-1001"]).len() == 1);
        // The strings view: one value per line, rows 1000..1999 of column S.
        let lines: Vec<&[u8]> = p[0].body.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 1001);
        assert_eq!(lines[0], b"name-1000");
        assert_eq!(lines[999], b"name-1999");
        let re = Regex::new(r"\bname-1999\b").unwrap();
        assert_eq!(
            find_regex(&p, &re),
            vec![("f.bin#0/arrow-strings".into(), "name-1999".into())]
        );
    }

    #[test]
    fn concatenated_fixtures_parse_in_order_and_rowset_is_decoded() {
        // One connection's plaintext: a login, an inline Arrow result, a gzip'd chunk.
        let mut raw = fixture("py-login.resp.http");
        raw.extend(fixture("py-query-arrow.resp.http"));
        raw.extend(fixture("py-chunk-gzip.resp.http"));
        let parsed = parse_responses(&raw);
        assert_eq!(parsed.responses.len(), 3);
        assert!(parsed
            .responses
            .iter()
            .all(|r| r.status == 200 && !r.truncated));
        let p = payloads_of("py-1-0.bin", &raw);
        let sources: Vec<&str> = p.iter().map(|p| p.source.as_str()).collect();
        assert!(
            sources.contains(&"py-1-0.bin#1/rowsetBase64"),
            "{sources:?}"
        );
        assert!(sources.contains(&"py-1-0.bin#1/rowsetBase64/arrow-strings"));
        assert!(sources.contains(&"py-1-0.bin#2/arrow-strings"));
        let re = Regex::new(r"\bname-(0|999|1000|1999)\b").unwrap();
        let found: Vec<String> = find_regex(&p, &re).into_iter().map(|(_, m)| m).collect();
        assert_eq!(found, ["name-0", "name-999", "name-1000", "name-1999"]);
        assert!(sources.contains(&"py-1-0.bin#1/json-strings"));
        assert!(sources.contains(&"py-1-0.bin#2"));
        let arrow = &p
            .iter()
            .find(|p| p.source == "py-1-0.bin#1/rowsetBase64")
            .unwrap()
            .body;
        assert!(arrow.starts_with(&[0xff, 0xff, 0xff, 0xff]));
        // The masterToken is in the login response.
        assert!(find_needles(&p, &[b"masterToken"])
            .iter()
            .any(|(s, _)| s.starts_with("py-1-0.bin#0")));
        // The inline result lists chunk URLs (plain http in this capture, so not https ones).
        let re = Regex::new(r"http://127\.0\.0\.1:\d+/fsp-chunks/[^\x22]+").unwrap();
        let chunk_urls = find_regex(&p, &re);
        assert!(
            chunk_urls.iter().any(|(s, _)| s == "py-1-0.bin#1"),
            "{chunk_urls:?}"
        );
        assert!(find_urls(&p).is_empty(), "{:?}", find_urls(&p));
    }

    #[test]
    fn node_json_fixtures() {
        let raw = fixture("node-query-json.resp.http");
        let p = payloads_of("node-1-0.bin", &raw);
        let json = p.iter().find(|p| p.source == "node-1-0.bin#0").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(v["data"]["queryResultFormat"], "json");
        assert!(p.iter().any(|p| p.source == "node-1-0.bin#0/json-strings"));
        assert!(!p.iter().any(|p| p.source.ends_with("/rowsetBase64")));
        // A JSON result chunk: rows without the outer [], gzip'd.
        let raw = fixture("node-chunk-json-gzip.resp.http");
        let p = payloads_of("c.bin", &raw);
        let body = &p.iter().find(|p| p.source == "c.bin#0").unwrap().body;
        assert!(body.starts_with(b"["), "{:?}", &body[..20.min(body.len())]);
        assert!(p.iter().any(|p| p.source == "c.bin#0/json-strings"));
    }

    #[test]
    fn synthetic_chunked_encoding_with_extensions_and_trailers() {
        let body = b"{\"data\":{\"x\":\"900-00-0001\"}}";
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n".to_vec();
        raw.extend(b"5;ext=1\r\n");
        raw.extend(&body[..5]);
        raw.extend(b"\r\n");
        raw.extend(format!("{:X}\r\n", body.len() - 5).as_bytes());
        raw.extend(&body[5..]);
        raw.extend(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
        raw.extend(b"HTTP/1.1 204 No Content\r\n\r\n");
        raw.extend(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        let parsed = parse_responses(&raw);
        assert_eq!(parsed.responses.len(), 3);
        assert_eq!(parsed.responses[0].body, body);
        assert_eq!(parsed.responses[1].status, 204);
        assert!(parsed.responses[1].body.is_empty());
        assert_eq!(parsed.responses[2].body, b"abc");
        assert!(parsed.unparsed.is_none());
        let p = payloads_of("s.bin", &raw);
        let hits = find_needles(&p, &[b"900-00-0001", b"not-there"]);
        assert_eq!(
            hits,
            vec![
                (
                    "s.bin#0/json-strings".to_string(),
                    "900-00-0001".to_string()
                ),
                ("s.bin#0".to_string(), "900-00-0001".to_string()),
            ]
        );
    }

    #[test]
    fn chunked_gzip_body_and_truncated_last_response() {
        let inner: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("row {i}: secret-value-{}\n", i * 7919 % 10007).into_bytes())
            .collect();
        let gz = gzip(&inner);
        let mut raw =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n"
                .to_vec();
        for part in gz.chunks(7) {
            raw.extend(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend(part);
            raw.extend(b"\r\n");
        }
        raw.extend(b"0\r\n\r\n");
        // A second response cut off mid-body (the agent was killed, or the proxy cut it).
        raw.extend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial 900-00-0002");
        let parsed = parse_responses(&raw);
        assert_eq!(parsed.responses.len(), 2);
        assert!(!parsed.responses[0].truncated);
        assert!(parsed.responses[1].truncated);
        let p = payloads_of("t.bin", &raw);
        assert_eq!(p[0].body, inner);
        let hits = find_needles(&p, &[b"row 19999: ", b"900-00-0002"]);
        assert_eq!(hits.len(), 2, "{hits:?}");
        // A truncated gzip stream still yields its prefix.
        let mut cut =
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 99999\r\n\r\n".to_vec();
        cut.extend(&gz[..gz.len() / 2]);
        let p = payloads_of("u.bin", &cut);
        assert!(p[0].body.starts_with(b"row 0: secret-value-0\n"));
        assert!(p[0].body.len() > inner.len() / 4 && p[0].body.len() < inner.len());
    }

    #[test]
    fn truncated_chunked_and_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-seven";
        let parsed = parse_responses(raw);
        assert!(parsed.responses[0].truncated);
        assert_eq!(parsed.responses[0].body, b"only-seven");
        let raw = b"HTTP/1.1 200 OK\r\nContent-Ty";
        let parsed = parse_responses(raw);
        assert_eq!(parsed.responses.len(), 1);
        assert!(parsed.responses[0].truncated);
        assert_eq!(parsed.responses[0].status, 200);
    }

    #[test]
    fn deflate_and_sniffed_gzip() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(b"zlib-needle").unwrap();
        let z = z.finish().unwrap();
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
            z.len()
        )
        .into_bytes();
        raw.extend(&z);
        let g = gzip(b"sniffed-needle");
        raw.extend(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: binary/octet-stream\r\nContent-Length: {}\r\n\r\n",
                g.len()
            )
            .as_bytes(),
        );
        raw.extend(&g);
        let p = payloads_of("d.bin", &raw);
        assert_eq!(p[0].body, b"zlib-needle");
        assert_eq!(p[1].body, b"sniffed-needle");
    }

    #[test]
    fn non_http_bytes_are_kept() {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        raw.extend(b"\x00\x01garbage 900-00-0003");
        let p = payloads_of("g.bin", &raw);
        assert_eq!(p.last().unwrap().source, "g.bin#unparsed@40");
        assert_eq!(find_needles(&p, &[b"900-00-0003"]).len(), 1);
    }

    #[test]
    fn json_escaping_cannot_hide_a_value() {
        let body = br#"{"data":{"rowset":[["900\u002d00\u002d0001"]],"u":"https:\/\/sfc-results.s3.amazonaws.com\/x"}}"#;
        let mut raw =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        raw.extend(body);
        let p = payloads_of("j.bin", &raw);
        let hits = find_needles(&p, &[b"900-00-0001"]);
        assert_eq!(
            hits,
            vec![("j.bin#0/json-strings".into(), "900-00-0001".into())]
        );
        assert_eq!(
            find_urls_with_source(&p),
            vec![(
                "j.bin#0/json-strings".to_string(),
                "https://sfc-results.s3.amazonaws.com/x".to_string()
            )]
        );
        assert_eq!(
            find_urls(&p),
            vec!["https://sfc-results.s3.amazonaws.com/x"]
        );
        let re = Regex::new(r"\d{3}-\d{2}-\d{4}").unwrap();
        assert_eq!(find_regex(&p, &re).len(), 1);
    }

    #[test]
    fn headers_are_searched() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Leak: 900-00-0009\r\nContent-Length: 0\r\n\r\n";
        let p = payloads_of("h.bin", raw);
        assert_eq!(find_needles(&p, &[b"900-00-0009"]).len(), 1);
    }

    #[test]
    fn directory_reading_and_env() {
        let dir = std::env::temp_dir().join(format!("tollgate-tap-unit-{}", crate::unique_tag()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("py-1-0.bin"), fixture("py-login.resp.http")).unwrap();
        fs::write(
            dir.join("node-2-0.bin"),
            fixture("node-query-json.resp.http"),
        )
        .unwrap();
        fs::write(dir.join("ignored.txt"), b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let n = tapped_bytes(&dir).unwrap();
        let expected =
            fixture("py-login.resp.http").len() + fixture("node-query-json.resp.http").len();
        assert_eq!(n, expected as u64);
        let p = received_payloads(&dir).unwrap();
        assert!(p[0].source.starts_with("node-2-0.bin#0"));
        assert!(p.iter().any(|p| p.source == "py-1-0.bin#0"));
        fs::remove_dir_all(&dir).unwrap();
        assert!(received_payloads(&dir).is_err());

        let py = tap_env("python", Path::new("/tmp/t"));
        assert_eq!(py[0], (TAP_DIR_ENV, OsString::from("/tmp/t")));
        assert!(Path::new(&py[1].1).join("sitecustomize.py").is_file());
        let node = tap_env("node", Path::new("/tmp/t"));
        let opt = node[1].1.to_string_lossy().into_owned();
        assert!(
            opt.starts_with("--require \"/") && opt.ends_with("tap.js\""),
            "{opt}"
        );
    }
}
