//! Login, external-browser step 1, and session renewal.

use std::fmt;

use base64::Engine as _;
use serde_json::Value;

use super::endpoint::QueryParams;
use super::json::{parse_object, Obj};
use super::{Secret, WireError};

/// How a login authenticates (`data.AUTHENTICATOR`, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authenticator {
    /// `SNOWFLAKE` or absent: user name and `PASSWORD` (plus an optional MFA `PASSCODE`).
    Snowflake,
    /// `OAUTH`: an OAuth access token in `TOKEN`.
    OAuth,
    /// `SNOWFLAKE_JWT`: a key-pair JWT (RS256) in `TOKEN`.
    SnowflakeJwt,
    /// `PROGRAMMATIC_ACCESS_TOKEN`: a PAT in `TOKEN`.
    ProgrammaticAccessToken,
    /// `EXTERNALBROWSER`: step 2 of a browser SSO, with the SAML `TOKEN` and the `PROOF_KEY`.
    ExternalBrowser,
    /// `USERNAME_PASSWORD_MFA`: password plus MFA (`PASSCODE` or push).
    UsernamePasswordMfa,
    /// Any other value (Okta URLs, workload identity, future authenticators), as sent.
    Other(String),
}

impl Authenticator {
    /// Interprets an `AUTHENTICATOR` value.
    pub fn from_wire(name: Option<&str>) -> Self {
        let Some(name) = name else {
            return Authenticator::Snowflake;
        };
        match name.to_ascii_uppercase().as_str() {
            "SNOWFLAKE" | "" => Authenticator::Snowflake,
            "OAUTH" => Authenticator::OAuth,
            "SNOWFLAKE_JWT" => Authenticator::SnowflakeJwt,
            "PROGRAMMATIC_ACCESS_TOKEN" => Authenticator::ProgrammaticAccessToken,
            "EXTERNALBROWSER" => Authenticator::ExternalBrowser,
            "USERNAME_PASSWORD_MFA" => Authenticator::UsernamePasswordMfa,
            _ => Authenticator::Other(name.to_owned()),
        }
    }

    /// The canonical wire name (`Other` as sent).
    pub fn as_wire(&self) -> &str {
        match self {
            Authenticator::Snowflake => "SNOWFLAKE",
            Authenticator::OAuth => "OAUTH",
            Authenticator::SnowflakeJwt => "SNOWFLAKE_JWT",
            Authenticator::ProgrammaticAccessToken => "PROGRAMMATIC_ACCESS_TOKEN",
            Authenticator::ExternalBrowser => "EXTERNALBROWSER",
            Authenticator::UsernamePasswordMfa => "USERNAME_PASSWORD_MFA",
            Authenticator::Other(name) => name,
        }
    }
}

/// Claims of a JWT read **without verifying its signature**: identity hints only, never proof.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtClaims {
    /// `iss`; for key-pair logins `ACCOUNT.USER.SHA256:<public key fingerprint>`.
    pub iss: Option<String>,
    /// `sub`; for key-pair logins `ACCOUNT.USER`.
    pub sub: Option<String>,
    /// `iat`, seconds since the epoch.
    pub iat: Option<i64>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<i64>,
}

impl JwtClaims {
    /// Decodes the payload of a compact JWT (`header.payload.signature`); `None` if the token
    /// is not shaped like one.
    pub fn decode_unverified(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        let obj = value.as_object()?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |k: &str| obj.get(k).and_then(Value::as_i64);
        Some(Self {
            iss: s("iss"),
            sub: s("sub"),
            iat: n("iat"),
            exp: n("exp"),
        })
    }
}

/// `POST /session/v1/login-request`: body `{"data": {...}}` plus the query string.
#[derive(Clone)]
pub struct LoginRequest {
    /// `request_id` / `requestId` from the query string.
    pub request_id: Option<String>,
    /// `ACCOUNT_NAME`.
    pub account: Option<String>,
    /// `LOGIN_NAME`.
    pub login_name: Option<String>,
    /// `CLIENT_APP_ID` (`PythonConnector`, `JavaScript`, `Go`, …).
    pub client_app_id: Option<String>,
    /// `CLIENT_APP_VERSION`.
    pub client_app_version: Option<String>,
    /// `databaseName` query parameter, else `SESSION_PARAMETERS.DATABASE`.
    pub database: Option<String>,
    /// `schemaName` query parameter, else `SESSION_PARAMETERS.SCHEMA`.
    pub schema: Option<String>,
    /// `warehouse` query parameter, else `SESSION_PARAMETERS.WAREHOUSE`.
    pub warehouse: Option<String>,
    /// `roleName` query parameter, else `SESSION_PARAMETERS.ROLE`.
    pub role: Option<String>,
    /// `AUTHENTICATOR` (absent means password).
    pub authenticator: Authenticator,
    /// `PASSWORD`.
    pub password: Option<Secret>,
    /// `PASSCODE` (MFA).
    pub passcode: Option<Secret>,
    /// `TOKEN` (OAuth access token, key-pair JWT, PAT or SAML token).
    pub token: Option<Secret>,
    /// `PROOF_KEY` (external browser).
    pub proof_key: Option<Secret>,
    /// Unverified claims of `TOKEN` when it is a JWT (key-pair logins, JWT-shaped OAuth tokens).
    pub jwt_claims: Option<JwtClaims>,
    json: Value,
}

fn session_param(params: &Obj<'_>, name: &str) -> Option<String> {
    params.map.and_then(|m| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    })
}

impl LoginRequest {
    /// Parses a login request; `body_json` is the decoded body (see [`decode_body`]).
    ///
    /// [`decode_body`]: super::decode_body
    pub fn parse(query: &QueryParams, body_json: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "login request";
        let json = parse_object(WHAT, body_json)?;
        let root = Obj::new(WHAT, &json);
        if !root.has("data") {
            return Err(WireError::MissingField {
                what: WHAT,
                field: "data",
            });
        }
        let data = root.obj("data")?;
        let params = data.obj("SESSION_PARAMETERS")?;
        let authenticator = Authenticator::from_wire(data.str("AUTHENTICATOR")?);
        let token = data.secret("TOKEN")?;
        let jwt_claims = match authenticator {
            Authenticator::SnowflakeJwt | Authenticator::OAuth => token
                .as_ref()
                .and_then(|t| JwtClaims::decode_unverified(t.expose())),
            _ => None,
        };
        let pick =
            |q: Option<&str>, p: &str| q.map(str::to_owned).or_else(|| session_param(&params, p));
        Ok(Self {
            request_id: query.request_id().map(str::to_owned),
            account: data.string("ACCOUNT_NAME")?,
            login_name: data.string("LOGIN_NAME")?,
            client_app_id: data.string("CLIENT_APP_ID")?,
            client_app_version: data.string("CLIENT_APP_VERSION")?,
            database: pick(query.database_name(), "DATABASE"),
            schema: pick(query.schema_name(), "SCHEMA"),
            warehouse: pick(query.warehouse(), "WAREHOUSE"),
            role: pick(query.role_name(), "ROLE"),
            authenticator,
            password: data.secret("PASSWORD")?,
            passcode: data.secret("PASSCODE")?,
            token,
            proof_key: data.secret("PROOF_KEY")?,
            jwt_claims,
            json,
        })
    }

    /// Whether any credential (password, token) is present.
    pub fn has_credential(&self) -> bool {
        self.password.is_some() || self.token.is_some()
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Re-serialises the body (every field kept, including ones this model does not know).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("request_id", &self.request_id)
            .field("account", &self.account)
            .field("login_name", &self.login_name)
            .field("client_app_id", &self.client_app_id)
            .field("client_app_version", &self.client_app_version)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("warehouse", &self.warehouse)
            .field("role", &self.role)
            .field("authenticator", &self.authenticator)
            .field("password", &self.password)
            .field("passcode", &self.passcode)
            .field("token", &self.token)
            .field("proof_key", &self.proof_key)
            .field("jwt_claims", &self.jwt_claims)
            .finish_non_exhaustive()
    }
}

/// `data.sessionInfo` of a login response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// `databaseName`.
    pub database_name: Option<String>,
    /// `schemaName`.
    pub schema_name: Option<String>,
    /// `warehouseName`.
    pub warehouse_name: Option<String>,
    /// `roleName`.
    pub role_name: Option<String>,
}

/// One entry of `data.parameters[]` (session parameters the server announces).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionParameter {
    /// `name`.
    pub name: String,
    /// `value`: a boolean, number or string depending on the parameter.
    pub value: Value,
}

fn parse_parameters(
    what: &'static str,
    data: &Obj<'_>,
) -> Result<Vec<SessionParameter>, WireError> {
    data.array("parameters")?
        .iter()
        .map(|p| {
            let o = Obj::new(what, p);
            Ok(SessionParameter {
                name: o.string("name")?.unwrap_or_default(),
                value: o.raw("value").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The answer to a login request: `{data, code, message, success}`.
#[derive(Clone)]
pub struct LoginResponse {
    /// `success`.
    pub success: bool,
    /// `code` (an error code when `success` is false; often absent on success).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.token`: the session token.
    pub token: Option<Secret>,
    /// `data.masterToken`: renews the session token.
    pub master_token: Option<Secret>,
    /// `data.idToken` (SSO token caching).
    pub id_token: Option<Secret>,
    /// `data.mfaToken` (MFA token caching).
    pub mfa_token: Option<Secret>,
    /// `data.validityInSeconds` of the session token.
    pub validity_in_seconds: Option<i64>,
    /// `data.masterValidityInSeconds`.
    pub master_validity_in_seconds: Option<i64>,
    /// `data.sessionId`.
    pub session_id: Option<i64>,
    /// `data.sessionInfo`.
    pub session_info: SessionInfo,
    /// `data.parameters[]`.
    pub parameters: Vec<SessionParameter>,
    /// `data.displayUserName`.
    pub display_user_name: Option<String>,
    /// `data.serverVersion`.
    pub server_version: Option<String>,
    json: Value,
}

impl LoginResponse {
    /// Parses a login response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "login response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let data = root.obj("data")?;
        let info = data.obj("sessionInfo")?;
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            message: root.string("message")?,
            token: data.secret("token")?,
            master_token: data.secret("masterToken")?,
            id_token: data.secret("idToken")?,
            mfa_token: data.secret("mfaToken")?,
            validity_in_seconds: data.int("validityInSeconds")?,
            master_validity_in_seconds: data.int("masterValidityInSeconds")?,
            session_id: data.int("sessionId")?,
            session_info: SessionInfo {
                database_name: info.string("databaseName")?,
                schema_name: info.string("schemaName")?,
                warehouse_name: info.string("warehouseName")?,
                role_name: info.string("roleName")?,
            },
            parameters: parse_parameters(WHAT, &data)?,
            display_user_name: data.string("displayUserName")?,
            server_version: data.string("serverVersion")?,
            json,
        })
    }

    /// The parsed body, unknown fields included.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Re-serialises the body.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("success", &self.success)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("token", &self.token)
            .field("master_token", &self.master_token)
            .field("id_token", &self.id_token)
            .field("mfa_token", &self.mfa_token)
            .field("validity_in_seconds", &self.validity_in_seconds)
            .field(
                "master_validity_in_seconds",
                &self.master_validity_in_seconds,
            )
            .field("session_id", &self.session_id)
            .field("session_info", &self.session_info)
            .field("parameters", &self.parameters)
            .field("display_user_name", &self.display_user_name)
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

/// `POST /session/authenticator-request` (external browser step 1): `{"data": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatorRequest {
    /// `ACCOUNT_NAME`.
    pub account: Option<String>,
    /// `LOGIN_NAME`.
    pub login_name: Option<String>,
    /// `AUTHENTICATOR`.
    pub authenticator: Authenticator,
    /// `BROWSER_MODE_REDIRECT_PORT`: the local port the browser is sent back to.
    pub redirect_port: Option<String>,
}

impl AuthenticatorRequest {
    /// Parses an authenticator request body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "authenticator request";
        let json = parse_object(WHAT, body)?;
        let data = Obj::new(WHAT, &json).obj("data")?;
        Ok(Self {
            account: data.string("ACCOUNT_NAME")?,
            login_name: data.string("LOGIN_NAME")?,
            authenticator: Authenticator::from_wire(data.str("AUTHENTICATOR")?),
            redirect_port: data.code("BROWSER_MODE_REDIRECT_PORT")?,
        })
    }
}

/// The answer to an authenticator request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatorResponse {
    /// `success`.
    pub success: bool,
    /// `code`.
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.ssoUrl`: where the browser is sent.
    pub sso_url: Option<String>,
    /// `data.proofKey`: echoed back as `PROOF_KEY` in the login.
    pub proof_key: Option<Secret>,
}

impl AuthenticatorResponse {
    /// Parses an authenticator response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "authenticator response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let data = root.obj("data")?;
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            message: root.string("message")?,
            sso_url: data.string("ssoUrl")?,
            proof_key: data.secret("proofKey")?,
        })
    }
}

/// `POST /session/token-request`: `{oldSessionToken, requestType}`, authorised by the master
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `oldSessionToken`: the expired session token.
    pub old_session_token: Option<Secret>,
    /// `requestType` (`RENEW`; `ISSUE` for some drivers).
    pub request_type: Option<String>,
    /// `requestId` / `request_id` from the query string.
    pub request_id: Option<String>,
}

impl TokenRequest {
    /// Parses a token request (decoded body).
    pub fn parse(query: &QueryParams, body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "token request";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        Ok(Self {
            old_session_token: root.secret("oldSessionToken")?,
            request_type: root.string("requestType")?,
            request_id: query.request_id().map(str::to_owned),
        })
    }

    /// Whether this renews an expired session token.
    pub fn is_renew(&self) -> bool {
        self.request_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("RENEW"))
    }
}

/// The answer to a token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// `success`.
    pub success: bool,
    /// `code` (e.g. 390114 when the master token expired too).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `data.sessionToken`.
    pub session_token: Option<Secret>,
    /// `data.masterToken`.
    pub master_token: Option<Secret>,
    /// `data.validityInSecondsST` (falling back to `validityInSeconds`).
    pub validity_in_seconds: Option<i64>,
    /// `data.validityInSecondsMT` (falling back to `masterValidityInSeconds`).
    pub master_validity_in_seconds: Option<i64>,
    /// `data.sessionId`.
    pub session_id: Option<i64>,
}

impl TokenResponse {
    /// Parses a token response body (decoded).
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "token response";
        let json = parse_object(WHAT, body)?;
        let root = Obj::new(WHAT, &json);
        let data = root.obj("data")?;
        Ok(Self {
            success: root.bool("success")?.unwrap_or(false),
            code: root.code("code")?,
            message: root.string("message")?,
            session_token: data.secret("sessionToken")?,
            master_token: data.secret("masterToken")?,
            validity_in_seconds: match data.int("validityInSecondsST")? {
                Some(v) => Some(v),
                None => data.int("validityInSeconds")?,
            },
            master_validity_in_seconds: match data.int("validityInSecondsMT")? {
                Some(v) => Some(v),
                None => data.int("masterValidityInSeconds")?,
            },
            session_id: data.int("sessionId")?,
        })
    }
}
