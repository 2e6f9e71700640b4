//! Every captured Snowflake exchange (Python 4.8 and Node 3.3 drivers) through the wire model:
//! the full set in `../shared/fixtures/snowflake` and the copy in `tests/fixtures/snowflake`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tollgate_wire::snowflake::{
    classify, classify_target, decode_body, parse_authorization, BodyLimits, Endpoint, Envelope,
    LoginRequest, LoginResponse, MonitoringResponse, QueryParams, QueryRequest, QueryResponse,
    TokenRequest, TokenResponse, WireError,
};

const SHARED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/snowflake"
);
const LOCAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/snowflake");

/// One raw HTTP/1.1 message as captured.
struct Raw {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn parse(bytes: &[u8], file: &Path) -> Raw {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{}: no end of headers", file.display()));
        let head = std::str::from_utf8(&bytes[..split]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let body = bytes[split + 4..].to_vec();
        let raw = Raw {
            start,
            headers,
            body,
        };
        if let Some(len) = raw.header("content-length") {
            assert_eq!(
                len.parse::<usize>().unwrap(),
                raw.body.len(),
                "{}: Content-Length",
                file.display()
            );
        }
        raw
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Exchange {
    name: String,
    req: Raw,
    req_json: Option<Value>,
    resp: Option<Raw>,
    resp_json: Option<Value>,
}

fn load(root: &Path) -> Vec<Exchange> {
    assert!(
        root.is_dir(),
        "Snowflake captures not found at {} — expected the shared fixtures folder \
         (../shared/fixtures/snowflake next to the repository)",
        root.display()
    );
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut reqs: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".req.http"))
            .collect();
        reqs.sort();
        for req_path in reqs {
            let stem = req_path
                .to_string_lossy()
                .trim_end_matches(".req.http")
                .to_owned();
            let json = |suffix: &str| {
                fs::read(format!("{stem}{suffix}"))
                    .ok()
                    .map(|b| serde_json::from_slice::<Value>(&b).expect("fixture .json"))
            };
            let resp_path = PathBuf::from(format!("{stem}.resp.http"));
            out.push(Exchange {
                name: req_path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches(".req.http")
                    .to_owned(),
                req: Raw::parse(&fs::read(&req_path).unwrap(), &req_path),
                req_json: json(".req.json"),
                resp: fs::read(&resp_path)
                    .ok()
                    .map(|b| Raw::parse(&b, &resp_path)),
                resp_json: json(".resp.json"),
            });
        }
    }
    assert!(!out.is_empty(), "no captures under {}", root.display());
    out
}

/// Every string value in a JSON document under one of `keys` (credentials to look for).
fn strings_at(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if keys.contains(&k.as_str()) {
                    if let Value::String(s) = v {
                        out.push(s.clone());
                    }
                }
                strings_at(v, keys, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| strings_at(v, keys, out)),
        _ => {}
    }
}

fn assert_no_secret_in(debug: &str, doc: &Value, keys: &[&str], ctx: &str) {
    let mut secrets = Vec::new();
    strings_at(doc, keys, &mut secrets);
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        assert!(
            !debug.contains(s.as_str()),
            "{ctx}: Debug leaks a {keys:?} value"
        );
    }
}

const SECRET_KEYS: &[&str] = &[
    "PASSWORD",
    "TOKEN",
    "PROOF_KEY",
    "PASSCODE",
    "token",
    "masterToken",
    "idToken",
    "sessionToken",
    "oldSessionToken",
    "qrmk",
    "url",
];

fn check_exchange(ex: &Exchange, seen: &mut BTreeMap<&'static str, usize>) {
    let ctx = ex.name.as_str();
    let limits = BodyLimits::default();
    let mut parts = ex.req.start.split(' ');
    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
    if let Some(j) = &ex.req_json {
        assert_eq!(j["method"], method, "{ctx}");
        assert_eq!(j["target"], target, "{ctx}");
    }
    let endpoint = classify(method, target);
    assert!(
        !matches!(endpoint, Endpoint::Unknown { .. }),
        "{ctx}: {method} {target} did not classify"
    );
    // Drivers send canonical targets: the normalized target forwarded is byte-identical.
    let classified = classify_target(method, target).unwrap();
    assert_eq!(classified.endpoint, endpoint, "{ctx}");
    assert!(classified.path.was_canonical(), "{ctx}: {target}");
    assert_eq!(classified.canonical_target(), target, "{ctx}");
    *seen.entry(endpoint.name()).or_default() += 1;
    let query = QueryParams::from_target(target);

    let enc = ex.req.header("content-encoding");
    let decoded = decode_body(enc, &ex.req.body, &limits)
        .unwrap_or_else(|e| panic!("{ctx}: request body: {e}"));
    if enc == Some("gzip") && !ex.req.body.is_empty() {
        assert!(decoded.was_gzip, "{ctx}: gzip body not recognised");
    }
    let body_json = ex.req_json.as_ref().map(|j| &j["body"]);
    if let Some(expected) = body_json.filter(|b| !b.is_null()) {
        let got: Value = serde_json::from_slice(&decoded.bytes).unwrap();
        assert_eq!(
            &got, expected,
            "{ctx}: decoded body differs from the capture's view"
        );
    }

    if let Some(auth) = ex.req.header("authorization") {
        let parsed = parse_authorization(auth);
        if auth == r#"Snowflake Token="None""# {
            assert!(parsed.is_none(), "{ctx}: Token=\"None\" is no token");
        } else {
            let token = parsed.unwrap_or_else(|| panic!("{ctx}: Authorization not understood"));
            assert!(auth.contains(token.secret().expose()));
            assert!(!format!("{token:?}").contains(token.secret().expose()));
        }
    }

    match &endpoint {
        Endpoint::Login => {
            let login = LoginRequest::parse(&query, &decoded.bytes)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(
                login.account.is_some() && login.login_name.is_some(),
                "{ctx}"
            );
            assert!(login.has_credential(), "{ctx}: credential not found");
            assert!(login.request_id.is_some(), "{ctx}: request id");
            let again = LoginRequest::parse(&query, &login.to_json_bytes()).unwrap();
            assert_eq!(again.json(), login.json(), "{ctx}: round trip");
            let original: Value = serde_json::from_slice(&decoded.bytes).unwrap();
            assert_eq!(login.json(), &original, "{ctx}: round trip");
            assert_no_secret_in(&format!("{login:?}"), &original, SECRET_KEYS, ctx);
        }
        Endpoint::QueryRequest => {
            let q = QueryRequest::parse(&query, &decoded.bytes)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let original: Value = serde_json::from_slice(&decoded.bytes).unwrap();
            assert_eq!(original["sqlText"], q.sql_text.as_str());
            assert!(q.request_id.is_some(), "{ctx}: requestId");
            let again = QueryRequest::parse(&query, &q.to_json_bytes()).unwrap();
            assert_eq!(again.json(), &original, "{ctx}: round trip");
            let mut edited = q.clone();
            edited.set_sql_text("select 'tollgate'");
            let mut expected = original.clone();
            expected["sqlText"] = Value::from("select 'tollgate'");
            assert_eq!(
                serde_json::from_slice::<Value>(&edited.to_json_bytes()).unwrap(),
                expected
            );
            if q.sql_text.len() >= 8 {
                assert!(
                    !format!("{q:?}").contains(&q.sql_text),
                    "{ctx}: SQL in Debug"
                );
            }
            if let Some(b) = original.get("bindings") {
                assert_eq!(q.bindings.len(), b.as_object().unwrap().len());
            }
        }
        Endpoint::TokenRequest => {
            let t = TokenRequest::parse(&query, &decoded.bytes).unwrap();
            assert!(t.is_renew() && t.old_session_token.is_some(), "{ctx}");
            let original: Value = serde_json::from_slice(&decoded.bytes).unwrap();
            assert_no_secret_in(&format!("{t:?}"), &original, SECRET_KEYS, ctx);
        }
        Endpoint::SessionDelete | Endpoint::Heartbeat | Endpoint::Telemetry => {
            if !decoded.bytes.is_empty() {
                serde_json::from_slice::<Value>(&decoded.bytes)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            }
        }
        _ => assert!(decoded.bytes.is_empty(), "{ctx}: unexpected request body"),
    }

    let Some(resp) = &ex.resp else { return };
    let status: u16 = resp.start.split(' ').nth(1).unwrap().parse().unwrap();
    let decoded = decode_body(resp.header("content-encoding"), &resp.body, &limits)
        .unwrap_or_else(|e| panic!("{ctx}: response body: {e}"));
    let is_json = resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"));
    if !is_json {
        if matches!(endpoint, Endpoint::ResultChunk) {
            assert!(
                decoded.was_gzip && !decoded.bytes.is_empty(),
                "{ctx}: chunk"
            );
            if let Some(Value::String(s)) = ex.resp_json.as_ref().map(|j| &j["body"]) {
                if let Ok(text) = std::str::from_utf8(&decoded.bytes) {
                    assert_eq!(text, s, "{ctx}: JSON chunk");
                }
            }
        } else {
            // Stand-in errors (500 traceback, 404 text): not JSON, and said so clearly.
            assert_ne!(status, 200, "{ctx}");
            let err = Envelope::parse(&decoded.bytes).unwrap_err();
            assert!(matches!(err, WireError::Json { .. }), "{ctx}: {err}");
        }
        return;
    }
    let original: Value = serde_json::from_slice(&decoded.bytes).unwrap();
    if let Some(j) = &ex.resp_json {
        assert_eq!(j["body"], original, "{ctx}: response view");
    }
    let debug = match &endpoint {
        Endpoint::Login => {
            let r = LoginResponse::parse(&decoded.bytes).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(r.success && r.token.is_some(), "{ctx}");
            assert_eq!(
                r.session_info.database_name.as_deref(),
                original["data"]["sessionInfo"]["databaseName"].as_str()
            );
            assert_eq!(
                r.parameters.len(),
                original["data"]["parameters"].as_array().unwrap().len()
            );
            format!("{r:?}")
        }
        Endpoint::QueryRequest | Endpoint::QueryResult { .. } => {
            let r = QueryResponse::parse(&decoded.bytes).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let data = &original["data"];
            assert_eq!(r.success, original["success"] == true, "{ctx}");
            assert_eq!(r.code.as_deref(), original["code"].as_str(), "{ctx}");
            assert_eq!(r.query_id.as_deref(), data["queryId"].as_str(), "{ctx}");
            assert_eq!(r.sql_state.as_deref(), data["sqlState"].as_str(), "{ctx}");
            assert_eq!(r.rowset_base64(), data["rowsetBase64"].as_str(), "{ctx}");
            assert_eq!(r.has_rowset, data.get("rowset").is_some(), "{ctx}");
            assert_eq!(
                r.rowtype.len(),
                data["rowtype"].as_array().map_or(0, Vec::len)
            );
            assert_eq!(
                r.chunks.len(),
                data["chunks"].as_array().map_or(0, Vec::len)
            );
            assert_eq!(r.qrmk.is_some(), data.get("qrmk").is_some(), "{ctx}");
            if r.is_in_progress() {
                let url = r.get_result_url.as_deref().expect("getResultUrl");
                assert!(matches!(classify("GET", url), Endpoint::QueryResult { .. }));
            }
            if !r.success {
                assert!(r.message.is_some(), "{ctx}");
            }
            if let Some(b64) = r.rowset_base64().filter(|s| s.len() > 16) {
                assert!(
                    !format!("{r:?}").contains(b64),
                    "{ctx}: rowsetBase64 in Debug"
                );
            }
            format!("{r:?}")
        }
        Endpoint::TokenRequest => {
            let r = TokenResponse::parse(&decoded.bytes).unwrap();
            assert!(r.success && r.session_token.is_some() && r.master_token.is_some());
            assert!(r.validity_in_seconds.is_some() && r.master_validity_in_seconds.is_some());
            format!("{r:?}")
        }
        Endpoint::MonitoringQuery { .. } => {
            let r = MonitoringResponse::parse(&decoded.bytes).unwrap();
            assert!(
                !r.queries.is_empty() && r.queries[0].status.is_some(),
                "{ctx}"
            );
            format!("{r:?}")
        }
        _ => format!("{:?}", Envelope::parse(&decoded.bytes).unwrap()),
    };
    assert_no_secret_in(&debug, &original, SECRET_KEYS, ctx);
}

fn check_all(root: &str) -> BTreeMap<&'static str, usize> {
    let mut seen = BTreeMap::new();
    for ex in load(Path::new(root)) {
        check_exchange(&ex, &mut seen);
    }
    eprintln!("{root}: {seen:?}");
    seen
}

#[test]
fn every_shared_capture_parses() {
    let seen = check_all(SHARED);
    for name in [
        "login",
        "query_request",
        "query_result",
        "monitoring_query",
        "token_request",
        "heartbeat",
        "session_delete",
        "telemetry",
        "result_chunk",
    ] {
        assert!(
            seen.contains_key(name),
            "no {name} exchange in the captures"
        );
    }
}

#[test]
fn every_local_capture_parses() {
    check_all(LOCAL);
}

fn local(name: &str) -> Exchange {
    load(Path::new(LOCAL))
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no local fixture {name}"))
}

fn req_body(ex: &Exchange) -> Vec<u8> {
    decode_body(
        ex.req.header("content-encoding"),
        &ex.req.body,
        &BodyLimits::default(),
    )
    .unwrap()
    .bytes
}

fn resp_body(ex: &Exchange) -> Vec<u8> {
    let r = ex.resp.as_ref().unwrap();
    decode_body(
        r.header("content-encoding"),
        &r.body,
        &BodyLimits::default(),
    )
    .unwrap()
    .bytes
}

fn target(ex: &Exchange) -> QueryParams {
    QueryParams::from_target(ex.req.start.split(' ').nth(1).unwrap())
}

#[test]
fn python_password_login() {
    use tollgate_wire::snowflake::Authenticator;
    let ex = local("python/001-session_v1_login_request");
    assert!(ex.req.body.starts_with(&[0x1f, 0x8b]));
    let login = LoginRequest::parse(&target(&ex), &req_body(&ex)).unwrap();
    assert_eq!(login.account.as_deref(), Some("acme-xy12345"));
    assert_eq!(login.login_name.as_deref(), Some("agent1"));
    assert_eq!(login.client_app_id.as_deref(), Some("PythonConnector"));
    assert_eq!(login.client_app_version.as_deref(), Some("4.8.1"));
    assert_eq!(login.database.as_deref(), Some("DEMO"));
    assert_eq!(login.schema.as_deref(), Some("PUBLIC"));
    assert_eq!(login.warehouse.as_deref(), Some("WH"));
    assert_eq!(login.role.as_deref(), Some("ANALYST"));
    assert_eq!(login.authenticator, Authenticator::Snowflake);
    assert_eq!(login.password.as_ref().unwrap().expose(), "secret-pw");
    assert_eq!(
        login.request_id.as_deref(),
        Some("d5e6966e-c23a-48b2-8637-15bf8a8c1a9e")
    );
    let debug = format!("{login:?}");
    assert!(!debug.contains("secret-pw"), "{debug}");
    assert!(debug.contains("<redacted>"));

    let resp = LoginResponse::parse(&resp_body(&ex)).unwrap();
    assert_eq!(
        resp.token.as_ref().unwrap().expose(),
        "05kAqwuT0O0_30llMcjg9std8gIZRdKdTJzQatPDLvg"
    );
    assert!(!format!("{resp:?}").contains("05kAqwuT0O0_30llMcjg9std8gIZRdKdTJzQatPDLvg"));
}

#[test]
fn node_login_and_full_login_response() {
    use tollgate_wire::snowflake::Authenticator;
    let ex = local("node/001-session_v1_login_request");
    assert!(ex.req.header("authorization").is_none());
    let body = req_body(&ex);
    assert_eq!(body, ex.req.body, "Node sends plain JSON");
    let login = LoginRequest::parse(&target(&ex), &body).unwrap();
    assert_eq!(login.authenticator, Authenticator::Snowflake);
    assert_eq!(login.client_app_id.as_deref(), Some("JavaScript"));
    assert_eq!(login.warehouse.as_deref(), Some("WH"));
    assert_eq!(login.role.as_deref(), Some("ANALYST"));

    let r = LoginResponse::parse(&resp_body(&ex)).unwrap();
    assert!(r.success);
    assert_eq!(
        r.master_token.as_ref().unwrap().expose(),
        "69BLA-AwiiztVcx0pLak-ldN8K7Ox6qFHIaA8rMUbaE"
    );
    assert_eq!(r.validity_in_seconds, Some(3600));
    assert_eq!(r.master_validity_in_seconds, Some(14400));
    assert_eq!(r.session_id, Some(117517604583708));
    assert_eq!(r.display_user_name.as_deref(), Some("agent1"));
    assert_eq!(r.session_info.warehouse_name.as_deref(), Some("WH"));
    assert_eq!(r.session_info.role_name.as_deref(), Some("ANALYST"));
    assert_eq!(r.parameters[0].name, "AUTOCOMMIT");
    assert_eq!(r.parameters[0].value, Value::Bool(true));
    let debug = format!("{r:?}");
    for s in ["69BLA-AwiiztVcx0pLak", "JoCp_3NB3LJou2uLzgfRHlB"] {
        assert!(!debug.contains(s), "{debug}");
    }
}

#[test]
fn token_authenticators() {
    use tollgate_wire::snowflake::Authenticator;
    let cases = [
        (
            "features/016-session_v1_login_request",
            Authenticator::OAuth,
            "my-oauth-access-token",
        ),
        (
            "features/020-session_v1_login_request",
            Authenticator::ProgrammaticAccessToken,
            "pat-xyz",
        ),
    ];
    for (name, auth, token) in cases {
        let ex = local(name);
        let login = LoginRequest::parse(&target(&ex), &req_body(&ex)).unwrap();
        assert_eq!(login.authenticator, auth);
        assert_eq!(login.token.as_ref().unwrap().expose(), token);
        assert!(login.password.is_none());
        assert!(!format!("{login:?}").contains(token));
    }

    let ex = local("features/018-session_v1_login_request");
    let login = LoginRequest::parse(&target(&ex), &req_body(&ex)).unwrap();
    assert_eq!(login.authenticator, Authenticator::SnowflakeJwt);
    let claims = login.jwt_claims.as_ref().expect("JWT claims");
    assert_eq!(claims.sub.as_deref(), Some("ACME-XY12345.AGENT1"));
    assert!(claims
        .iss
        .as_deref()
        .unwrap()
        .starts_with("ACME-XY12345.AGENT1.SHA256:"));
    assert_eq!(claims.iat, Some(1795634122));
    assert_eq!(claims.exp, Some(1795634182));
    let jwt = login.token.as_ref().unwrap().expose();
    assert!(jwt.starts_with("eyJ"));
    assert!(!format!("{login:?}").contains(jwt));
}

#[test]
fn bindings_scalar_and_array() {
    use tollgate_wire::snowflake::BindingValue;
    let ex = local("features/025-queries_v1_query_request");
    let q = QueryRequest::parse(&target(&ex), &req_body(&ex)).unwrap();
    assert_eq!(q.sql_text, "insert into t values (?, ?)");
    assert_eq!(q.bindings["1"].type_, "FIXED");
    assert_eq!(
        q.bindings["1"].value,
        BindingValue::Array(vec![Some("2".into()), Some("3".into())])
    );
    assert_eq!(q.bindings["2"].type_, "TEXT");
    assert_eq!(q.sequence_id, Some(3));
    assert!(!q.async_exec && !q.describe_only);
    assert!(q.parameters().is_some() && q.query_context().is_some());
    let debug = format!("{q:?}");
    assert!(!debug.contains("insert into"), "{debug}");

    let ex = local("node/010-queries_v1_query_request");
    let q = QueryRequest::parse(&target(&ex), &req_body(&ex)).unwrap();
    assert_eq!(q.bindings["1"].value, BindingValue::Scalar("0".into()));
    assert_eq!(q.sequence_id, None, "Node sends no sequenceId");
    let r = QueryResponse::parse(&resp_body(&ex)).unwrap();
    assert_eq!(r.rowtype.len(), 5);
    assert_eq!(r.rowtype[4].name, "BALANCE");
    assert_eq!(
        (r.rowtype[4].precision, r.rowtype[4].scale),
        (Some(10), Some(2))
    );
    assert_eq!(r.rowtype[0].table, "", "fakesnow leaves lineage empty");
    assert_eq!(r.rowset().unwrap().len(), 1);
    assert!(
        !format!("{r:?}").contains("111-22-3333"),
        "rows stay out of Debug"
    );
}

#[test]
fn chunked_result_and_chunk_url_rewrite() {
    use tollgate_wire::snowflake::ResultFormat;
    let ex = local("python-plus/004-queries_v1_query_request");
    let mut r = QueryResponse::parse(&resp_body(&ex)).unwrap();
    assert_eq!(r.query_result_format, Some(ResultFormat::Arrow));
    assert!(r.rowset_base64().is_some());
    assert_eq!(r.total, Some(2500));
    assert_eq!(r.returned, Some(1000));
    assert_eq!(r.chunks.len(), 2);
    assert_eq!(r.chunks[0].row_count, Some(1000));
    assert_eq!(r.chunks[1].compressed_size, Some(3487));
    let qrmk = "VVfVDo2MPxZTZ8Vh4dj27hAFquPW0nNbShGWeTc7lLo=";
    assert_eq!(r.qrmk.as_ref().unwrap().expose(), qrmk);
    let url = r.chunks[0].url.expose().to_owned();
    assert!(matches!(classify("GET", &url), Endpoint::ResultChunk));
    let debug = format!("{r:?}");
    assert!(
        !debug.contains(qrmk) && !debug.contains("X-Amz-Signature"),
        "{debug}"
    );

    r.set_chunk_url(1, "https://tollgate.local/chunks/1")
        .unwrap();
    let again = QueryResponse::parse(&r.to_json_bytes()).unwrap();
    assert_eq!(
        again.chunks[1].url.expose(),
        "https://tollgate.local/chunks/1"
    );
    assert_eq!(again.chunks[0].url.expose(), url);
    assert!(matches!(
        r.set_chunk_url(2, "x"),
        Err(WireError::NoSuchChunk {
            index: 2,
            count: 2,
            ..
        })
    ));

    let chunk = local("python-plus/005-fsp_chunks_953ae7d9_4555_4883_a113_b4c5b14b140b_0");
    let sse = chunk
        .req
        .header("x-amz-server-side-encryption-customer-key")
        .unwrap();
    assert_eq!(sse, qrmk, "qrmk travels as the SSE-C key");
}

#[test]
fn in_progress_expiry_and_renewal() {
    use tollgate_wire::snowflake::codes;
    let r = QueryResponse::parse(&resp_body(&local(
        "python-plus/007-queries_v1_query_request",
    )))
    .unwrap();
    assert_eq!(r.code.as_deref(), Some(codes::QUERY_IN_PROGRESS));
    assert!(r.success && r.is_in_progress());
    assert_eq!(
        r.get_result_url.as_deref(),
        Some("/queries/6f0b959e-13d9-4770-923a-d72df3c83acf/result")
    );
    assert_eq!(r.query_aborts_after_secs, Some(300));

    let r = QueryResponse::parse(&resp_body(&local(
        "python-plus/012-queries_v1_query_request",
    )))
    .unwrap();
    assert_eq!(r.code.as_deref(), Some(codes::QUERY_IN_PROGRESS_ASYNC));
    assert!(r.is_in_progress());

    let expired = local("python-plus/009-queries_v1_query_request");
    let r = QueryResponse::parse(&resp_body(&expired)).unwrap();
    assert!(!r.success && r.is_session_expired());
    let first = QueryRequest::parse(&target(&expired), &req_body(&expired)).unwrap();

    let renew = local("python-plus/010-session_token_request");
    let t = TokenRequest::parse(&target(&renew), &req_body(&renew)).unwrap();
    assert!(t.is_renew());
    let tr = TokenResponse::parse(&resp_body(&renew)).unwrap();
    assert_eq!(tr.validity_in_seconds, Some(3600));
    assert_eq!(tr.master_validity_in_seconds, Some(14400));
    assert_eq!(tr.session_id, Some(1));
    // The renewal is authorised by the master token, not the session token.
    let auth = parse_authorization(renew.req.header("authorization").unwrap()).unwrap();
    assert_eq!(
        auth.secret().expose(),
        "ozKtyJL6_2crQ4zs_Faa5LomWgGpRgupwekthXfbe4s"
    );
    assert!(!format!("{tr:?}{t:?}").contains("ozKtyJL6"));
    assert_eq!(
        first.request_id.as_deref(),
        Some("848842e9-2a47-4d1a-916b-9f9a14cc5832")
    );
}

#[test]
fn sql_error_response() {
    let r =
        QueryResponse::parse(&resp_body(&local("python/008-queries_v1_query_request"))).unwrap();
    assert!(!r.success);
    assert_eq!(r.code.as_deref(), Some("002003"));
    assert_eq!(r.error_code.as_deref(), Some("002003"));
    assert_eq!(r.sql_state.as_deref(), Some("42S02"));
    assert!(
        !format!("{r:?}").contains("NO_SUCH_TABLE"),
        "messages stay out of Debug"
    );
}
