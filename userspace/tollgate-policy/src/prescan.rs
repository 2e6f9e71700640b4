//! A small lexical pre-scanner: splits statement text at top-level `;` and recognises Snowflake's
//! file-transfer commands `GET` and `PUT`, which a general SQL parser does not handle well
//! (`file:///tmp/x` looks like a `//` comment to it).
//!
//! It does not pretend to parse anything else: every other piece goes to `sqlparser`. The scanner
//! only has to agree with Snowflake on where strings, quoted identifiers, `$$` blocks and
//! comments begin and end, so that a `;` inside them never splits a statement and a `;` outside
//! them always does.

/// One statement's text, as split by [`split_statements`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    /// The text, without the terminating `;`.
    pub text: &'a str,
    /// The first word, upper-cased (`SELECT`, `GET`), empty when the chunk has none.
    pub first_word: String,
}

/// Splits `sql` at top-level semicolons. Chunks holding nothing but whitespace and comments
/// are dropped. Returns `Err` with a message on an unterminated string, identifier, `$$` block or
/// block comment.
pub(crate) fn split_statements(sql: &str) -> Result<Vec<Chunk<'_>>, String> {
    let b = sql.as_bytes();
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut first_word: Option<String> = None;
    let mut has_code = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                has_code = true;
                i = skip_single_quoted(b, i).ok_or("unterminated string literal")?;
            }
            b'"' => {
                has_code = true;
                i = skip_double_quoted(b, i).ok_or("unterminated quoted identifier")?;
            }
            b'$' if b.get(i + 1) == Some(&b'$') => {
                has_code = true;
                let end = find(b, i + 2, b"$$").ok_or("unterminated $$ block")?;
                i = end + 2;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line(b, i),
            // In GET/PUT, `//` belongs to `file://…` URIs and is never a comment. Should Snowflake
            // read one as a comment, this splits more, never less: the extra pieces are decided
            // on their own.
            b'/' if b.get(i + 1) == Some(&b'/') && !is_file_transfer(first_word.as_deref()) => {
                i = skip_line(b, i)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = find(b, i + 2, b"*/").ok_or("unterminated block comment")?;
                i = end + 2;
            }
            b';' => {
                if has_code {
                    chunks.push(Chunk {
                        text: &sql[start..i],
                        first_word: first_word.take().unwrap_or_default(),
                    });
                }
                first_word = None;
                has_code = false;
                i += 1;
                start = i;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                if !has_code {
                    has_code = true;
                    let end = b[i..]
                        .iter()
                        .position(|x| !x.is_ascii_alphabetic() && *x != b'_')
                        .map_or(b.len(), |p| i + p);
                    first_word = Some(sql[i..end].to_ascii_uppercase());
                    i = end.max(i + 1);
                } else {
                    i += 1;
                }
            }
        }
    }
    if has_code {
        chunks.push(Chunk {
            text: &sql[start..],
            first_word: first_word.unwrap_or_default(),
        });
    }
    Ok(chunks)
}

fn is_file_transfer(word: Option<&str>) -> bool {
    matches!(word, Some("GET" | "PUT"))
}

/// Index after the closing quote of a `'…'` string starting at `i` (`''` and `\'` escapes).
fn skip_single_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index after the closing quote of a `"…"` identifier starting at `i` (`""` escapes).
fn skip_double_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&x| x == b'\n')
        .map_or(b.len(), |p| i + p + 1)
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > b.len() {
        return None;
    }
    b[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// `GET <stage> <file://…>` or `PUT <file://…> <stage>`, split into its two operands (quotes
/// removed). Options after them are ignored. `None` when an operand is missing.
pub(crate) fn file_transfer_operands(text: &str) -> Option<(String, String)> {
    let mut words = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && words.len() < 3 {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
            i = skip_line(b, i);
            continue;
        }
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i = find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2);
            continue;
        }
        if b[i] == b'\'' {
            let end = skip_single_quoted(b, i).unwrap_or(b.len());
            words.push(text[i + 1..end.saturating_sub(1).max(i + 1)].to_owned());
            i = end;
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|x| x.is_ascii_whitespace())
            .map_or(b.len(), |p| i + p);
        words.push(text[i..end].to_owned());
        i = end;
    }
    match words.as_slice() {
        [_, a, b] => Some((a.clone(), b.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(&str, String)> {
        split_statements(sql)
            .unwrap()
            .into_iter()
            .map(|c| (c.text.trim(), c.first_word))
            .collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let got = texts("select ';' ; -- a; b\n select \"a;b\" from t; /* ; */ ;; select $$;$$");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1, "SELECT");
        assert_eq!(got[1].0, "-- a; b\n select \"a;b\" from t");
        assert_eq!(
            got[2].0,
            "/* ; */ ;; select $$;$$".split(";;").nth(1).unwrap().trim()
        );
    }

    #[test]
    fn file_uris_are_not_comments() {
        let got = texts("GET @s/p file:///tmp/x;DROP TABLE y");
        assert_eq!(
            got,
            vec![
                ("GET @s/p file:///tmp/x", "GET".into()),
                ("DROP TABLE y", "DROP".into())
            ]
        );
        assert_eq!(
            file_transfer_operands("PUT 'file:///tmp/a b.csv' @~/in auto_compress=true"),
            Some(("file:///tmp/a b.csv".into(), "@~/in".into()))
        );
        assert_eq!(file_transfer_operands("GET @s"), None);
    }

    #[test]
    fn unterminated_is_an_error() {
        assert!(split_statements("select 'abc").is_err());
        assert!(split_statements("select /* x").is_err());
        assert!(split_statements("select $$ x").is_err());
    }
}
