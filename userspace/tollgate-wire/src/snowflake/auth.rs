//! The `Authorization` header of Snowflake requests.

use super::Secret;

/// A credential carried in an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthToken {
    /// `Snowflake Token="<token>"`: the session token on most calls, the master token on
    /// `/session/token-request`.
    Snowflake(Secret),
    /// `Bearer <token>`: the SQL API (OAuth, key-pair JWT or PAT, told apart by the
    /// `X-Snowflake-Authorization-Token-Type` header).
    Bearer(Secret),
}

impl AuthToken {
    /// The token, whichever the scheme.
    pub fn secret(&self) -> &Secret {
        match self {
            AuthToken::Snowflake(s) | AuthToken::Bearer(s) => s,
        }
    }
}

/// Parses an `Authorization` header value.
///
/// Returns `None` for no usable credential: an empty token, any other scheme, and Python's
/// `Snowflake Token="None"` on login (the driver formats its not-yet-existing token).
pub fn parse_authorization(value: &str) -> Option<AuthToken> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(|c: char| c.is_ascii_whitespace())?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("Snowflake") {
        let (key, token) = rest.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("Token") {
            return None;
        }
        let token = token.trim();
        let token = token
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(token);
        if token.is_empty() || token == "None" || token.contains('"') {
            return None;
        }
        Some(AuthToken::Snowflake(Secret::new(token)))
    } else if scheme.eq_ignore_ascii_case("Bearer") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return None;
        }
        Some(AuthToken::Bearer(Secret::new(rest)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let t = parse_authorization(r#"Snowflake Token="abc_DEF-1""#).unwrap();
        assert_eq!(t, AuthToken::Snowflake(Secret::new("abc_DEF-1")));
        assert_eq!(parse_authorization(r#"Snowflake Token="None""#), None);
        assert_eq!(parse_authorization(r#"Snowflake Token="""#), None);
        assert_eq!(
            parse_authorization("snowflake token=xyz"),
            Some(AuthToken::Snowflake(Secret::new("xyz")))
        );
        assert_eq!(
            parse_authorization("Bearer eyJ.a.b"),
            Some(AuthToken::Bearer(Secret::new("eyJ.a.b")))
        );
        assert_eq!(parse_authorization("Bearer "), None);
        assert_eq!(parse_authorization("Basic dXNlcjpwYXNz"), None);
        assert_eq!(parse_authorization(""), None);
        assert_eq!(parse_authorization(r#"Snowflake Other="x""#), None);
    }
}
