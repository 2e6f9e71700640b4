//! Literal-free forms of SQL text for the audit trail: literals can be PHI (`WHERE ssn =
//! '123-45-6789'`), so what is recorded is [`redact_literals`] plus a [`fingerprint`] that is
//! the same for every statement differing only in literals, whitespace, comments or keyword case.

use sha2::{Digest, Sha256};
use sqlparser::dialect::SnowflakeDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Replaces every literal (strings, numbers, `$$` blocks) with `?` and every comment with a
/// space. Identifiers, keywords, operators and bind placeholders are kept as written. Text the
/// tokenizer rejects goes through a cruder scanner that errs on the side of redacting more.
pub fn redact_literals(sql: &str) -> String {
    literal_free(sql).redacted
}

/// A stable hash (hex, 128 bits of SHA-256) of the statement text with literals replaced by `?`,
/// comments removed, whitespace collapsed and unquoted words upper-cased.
pub fn fingerprint(sql: &str) -> String {
    literal_free(sql).fingerprint
}

/// Both literal-free forms of a statement's text, from one tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralFree {
    /// [`redact_literals`].
    pub redacted: String,
    /// [`fingerprint`].
    pub fingerprint: String,
}

/// [`redact_literals`] and [`fingerprint`] of `sql`, tokenising it once.
pub fn literal_free(sql: &str) -> LiteralFree {
    let (redacted, normalised) = match tokens(sql) {
        Some(tokens) => {
            let mut redacted = String::with_capacity(sql.len());
            let mut normalised = String::with_capacity(sql.len());
            for token in &tokens {
                push_token(&mut redacted, token, false);
                push_token(&mut normalised, token, true);
            }
            (redacted, normalised)
        }
        None => {
            let redacted = fallback_redact(sql);
            let normalised = redacted.to_uppercase();
            (redacted, normalised)
        }
    };
    let mut collapsed = String::with_capacity(normalised.len());
    for word in normalised.split_whitespace() {
        if !collapsed.is_empty() {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    let digest = Sha256::digest(collapsed.trim_end_matches([';', ' ']).as_bytes());
    let mut fingerprint = String::with_capacity(32);
    for b in &digest[..16] {
        use std::fmt::Write as _;
        let _ = write!(fingerprint, "{b:02x}");
    }
    LiteralFree {
        redacted,
        fingerprint,
    }
}

fn tokens(sql: &str) -> Option<Vec<Token>> {
    Tokenizer::new(&SnowflakeDialect {}, sql).tokenize().ok()
}

fn push_token(out: &mut String, token: &Token, normalise: bool) {
    match token {
        Token::Word(word) => {
            if normalise && word.quote_style.is_none() {
                out.push_str(&word.value.to_uppercase());
            } else {
                out.push_str(&token.to_string());
            }
        }
        Token::Placeholder(p) => out.push_str(p),
        Token::Whitespace(Whitespace::Space | Whitespace::Tab) => out.push(' '),
        Token::Whitespace(Whitespace::Newline) => out.push('\n'),
        Token::Whitespace(_) => out.push(' '),
        Token::Number(..) => out.push('?'),
        other => {
            let text = other.to_string();
            // Operators and punctuation are kept; anything carrying characters a literal is
            // made of (quotes, letters, digits, `$`) is a literal of some kind.
            if !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_punctuation() && !matches!(c, '\'' | '"' | '$' | '`'))
            {
                out.push_str(&text);
            } else {
                out.push('?');
            }
        }
    }
}

/// Redacts quoted strings, `$$` blocks and digit runs; drops comments. Used when the tokenizer
/// fails (an unterminated string, say): everything after an unterminated quote is redacted.
fn fallback_redact(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '\'' {
            i += 1;
            while i < b.len() {
                match b[i] {
                    '\\' => i += 2,
                    '\'' if b.get(i + 1) == Some(&'\'') => i += 2,
                    '\'' => break,
                    _ => i += 1,
                }
            }
            i += 1;
            out.push('?');
        } else if c == '$' && next == Some('$') {
            i += 2;
            while i < b.len() && !(b[i] == '$' && b.get(i + 1) == Some(&'$')) {
                i += 1;
            }
            i += 2;
            out.push('?');
        } else if (c == '-' && next == Some('-')) || (c == '/' && next == Some('/')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            out.push(' ');
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else if c.is_ascii_digit()
            && !out
                .chars()
                .last()
                .is_some_and(|p| p.is_alphanumeric() || p == '_')
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
            out.push('?');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_redacted() {
        let r = redact_literals(
            "SELECT name FROM patients WHERE ssn = '123-45-6789' AND age > 42 -- mrn 991\n AND x = ?",
        );
        assert!(!r.contains("123"), "{r}");
        assert!(!r.contains("42"), "{r}");
        assert!(!r.contains("991"), "{r}");
        assert!(r.contains("ssn = ?"), "{r}");
        assert!(r.contains("x = ?"), "{r}");
        assert!(r.contains("patients"), "{r}");
        let r = redact_literals("SELECT $$secret$$, 1.5e3, x'ABCD' /* note 7 */");
        assert!(
            !r.contains("secret") && !r.contains("1.5") && !r.contains("ABCD") && !r.contains('7'),
            "{r}"
        );
    }

    #[test]
    fn unterminated_text_is_still_redacted() {
        let r = redact_literals("SELECT 'John Smith 1980-01-01");
        assert!(!r.contains("John") && !r.contains("1980"), "{r}");
    }

    #[test]
    fn fingerprint_ignores_literals_case_and_spacing() {
        let a = fingerprint("select * from t where ssn = '1'");
        let b = fingerprint("SELECT *\n  FROM T WHERE ssn = '2' -- hi");
        let c = fingerprint("SELECT * FROM T WHERE mrn = '2'");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 32);
    }
}
