//! The Snowflake layer in process, without root: every exchange goes through the layer's
//! phases exactly as the proxy drives them (`exchange` → `request_filter` → the upstream →
//! `response_filter`), with a stand-in answering for Snowflake, a loopback TLS server for cloud
//! storage, and a real audit spool whose events are read back.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tollgate_audit::{Event, EventKind, HostKey, Spool, SpoolOptions};
use tollgate_policy::Policy;
use tollgate_proxy::{
    ConnectionContext, ExchangeHooks, ProcessIdentity, ProxyBody, RequestAction, UpstreamTls,
};
use tollgate_snowflake::{
    Auditor, SnowflakeConfig, SnowflakeHooks, StorageClient, StorageConfig, UnknownEndpoints,
    TOLLGATE_DENIED_CODE,
};

const HOST: &str = "acct.snowflakecomputing.com";

const POLICY: &str = r#"
version: 1
defaults:
  unparseable_sql: deny
  unknown_statement: deny
  unresolved_bindings: deny
  no_rule_matched: deny
classifications:
  - { columns: ["CLINICAL.EHR.PATIENTS.NAME"], tags: [phi.name] }
  - { columns: ["CLINICAL.EHR.PATIENTS.SSN"], tags: [phi.ssn] }
rules:
  - id: deny-visits
    match: { tables: ["CLINICAL.EHR.VISITS"] }
    action: deny
    reason: "visit records are off limits"
  - id: writes-need-approval
    match: { statements: [insert, update, delete] }
    action: require_approval
    reason: "writes are approved by a human"
  - id: patients-masked
    match:
      statements: [select]
      tables: ["CLINICAL.EHR.PATIENTS"]
    action: mask
    mask:
      - { tags: [phi.ssn], method: partial, keep_last: 4 }
      - { tags: [phi.name], method: redact }
  - id: events-open
    match:
      statements: [select]
      tables: ["CLINICAL.EHR.EVENTS"]
    action: allow
  - id: session
    match: { statements: [use, show] }
    action: allow
"#;

/// The layer with a spool in a temporary directory.
struct Layer {
    hooks: Arc<SnowflakeHooks>,
    spool: Spool,
    dir: tempfile::TempDir,
}

fn policy(text: &str) -> Arc<Policy> {
    Arc::new(Policy::compile(text, "test.yaml").expect("the test policy compiles"))
}

impl Layer {
    fn new(config: SnowflakeConfig) -> Self {
        Self::build(config, None)
    }

    fn build(config: SnowflakeConfig, storage: Option<StorageClient>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = SpoolOptions::new(dir.path().join("spool"), "test-host");
        opts.sync = false;
        // A segment per commit: removing the directory then makes the next commit fail.
        opts.segment_bytes = 1;
        let (spool, _) = Spool::open(opts, HostKey::generate()).unwrap();
        let mut hooks =
            SnowflakeHooks::new(config, policy(POLICY)).with_audit(Auditor::new(spool.clone()));
        if let Some(storage) = storage {
            hooks = hooks.with_storage(storage);
        }
        Layer {
            hooks: Arc::new(hooks),
            spool,
            dir,
        }
    }

    /// Every event so far (after the writer caught up).
    async fn events(&self) -> Vec<Event> {
        self.spool.flush().await;
        tollgate_audit::spool::read_all(&self.dir.path().join("spool")).unwrap()
    }

    async fn events_of(&self, kind: EventKind) -> Vec<Event> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    /// Drives one exchange: the layer's request phases, `upstream` standing in for Snowflake
    /// when the request is forwarded, the response phases. Returns the answer and whether the
    /// request reached the upstream.
    async fn exchange(
        &self,
        conn: &ConnectionContext,
        request: Request<ProxyBody>,
        upstream: impl FnOnce(Request<Bytes>) -> Response<Bytes>,
    ) -> (Response<Bytes>, bool) {
        let mut filter = self.hooks.clone().exchange(conn, 0);
        match filter.request_filter(conn, request).await {
            RequestAction::Respond(resp) => (collect(resp).await, false),
            RequestAction::Forward(req) => {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let answer = upstream(Request::from_parts(parts, body));
                let answer = answer.map(|b| Full::new(b).map_err(|never| match never {}).boxed());
                let resp = filter.response_filter(conn, answer).await;
                (collect(resp).await, true)
            }
        }
    }

    /// Logs `agent1` in; returns the session token.
    async fn login(&self, conn: &ConnectionContext) -> &'static str {
        let body = json!({"data": {
            "ACCOUNT_NAME": "acct", "LOGIN_NAME": "agent1", "AUTHENTICATOR": "SNOWFLAKE",
            "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "3.12",
            "PASSWORD": "hunter2"
        }});
        let (resp, forwarded) = self
            .exchange(
                conn,
                post(
                    "/session/v1/login-request?databaseName=CLINICAL",
                    None,
                    &body,
                ),
                |_| {
                    ok_json(
                        json!({"success": true, "code": null, "message": null, "data": {
                        "token": "st-1", "masterToken": "mt-1",
                        "validityInSeconds": 3600, "masterValidityInSeconds": 14400,
                        "sessionInfo": {"databaseName": "CLINICAL", "schemaName": "EHR",
                                        "warehouseName": "WH", "roleName": "ANALYST"}}}),
                    )
                },
            )
            .await;
        assert!(forwarded);
        assert_eq!(resp.status(), StatusCode::OK);
        "st-1"
    }
}

async fn collect(resp: Response<ProxyBody>) -> Response<Bytes> {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("the answer's body").to_bytes();
    Response::from_parts(parts, bytes)
}

fn body_of(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn post(target: &str, token: Option<&str>, body: &Value) -> Request<ProxyBody> {
    let mut r = Request::post(target)
        .header(http::header::HOST, HOST)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(
            http::header::AUTHORIZATION,
            format!("Snowflake Token=\"{t}\""),
        );
    }
    r.body(body_of(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

fn get(target: &str, token: Option<&str>) -> Request<ProxyBody> {
    let mut r = Request::get(target).header(http::header::HOST, HOST);
    if let Some(t) = token {
        r = r.header(
            http::header::AUTHORIZATION,
            format!("Snowflake Token=\"{t}\""),
        );
    }
    r.body(body_of(Bytes::new())).unwrap()
}

fn query(sql: &str, token: &str) -> Request<ProxyBody> {
    post(
        "/queries/v1/query-request?requestId=8b5e4f2c-0000-4000-8000-000000000001",
        Some(token),
        &json!({"sqlText": sql, "asyncExec": false, "sequenceId": 1}),
    )
}

fn ok_json(v: Value) -> Response<Bytes> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

fn json_of(resp: &Response<Bytes>) -> Value {
    serde_json::from_slice(resp.body()).expect("a JSON answer")
}

fn conn() -> ConnectionContext {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = "192.0.2.10:443".parse().unwrap();
    ConnectionContext::new("c-1", client, dst, HOST).with_process(process(4242))
}

fn process(tgid: u32) -> ProcessIdentity {
    ProcessIdentity {
        pid: tgid,
        tgid,
        uid: 1000,
        comm: "python3".into(),
        cgroup_id: 77,
        cgroup_path: Some("/agents.slice".into()),
        netns_cookie: 1,
        ..Default::default()
    }
}

fn patients_result(rows: Value, chunks: Value) -> Value {
    json!({"success": true, "code": null, "message": null, "data": {
        "queryId": "01b0-patients", "queryResultFormat": "json",
        "rowtype": [
            {"name": "NAME", "type": "text", "database": "CLINICAL", "schema": "EHR", "table": "PATIENTS", "nullable": true, "length": 100},
            {"name": "SSN", "type": "text", "database": "CLINICAL", "schema": "EHR", "table": "PATIENTS", "nullable": true, "length": 11}
        ],
        "rowset": rows, "total": 1, "returned": 1, "chunks": chunks,
        "finalDatabaseName": "CLINICAL", "finalSchemaName": "EHR"
    }})
}

#[tokio::test]
async fn a_masked_statement_is_decided_recorded_forwarded_and_its_result_masked() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    let logins = layer.events_of(EventKind::Login).await;
    assert_eq!(
        logins
            .iter()
            .map(|e| e.decision.as_str())
            .collect::<Vec<_>>(),
        ["attempt", "ok"]
    );
    assert_eq!(logins[1].sf_user, "agent1");
    assert_eq!(logins[1].pid, Some(4242));
    let (resp, forwarded) = layer
        .exchange(
            &c,
            query("select name, ssn from patients where name = 'Alice'", token),
            |req| {
                let sent: Value = serde_json::from_slice(req.body()).unwrap();
                assert_eq!(
                    sent["sqlText"],
                    "select name, ssn from patients where name = 'Alice'"
                );
                ok_json(patients_result(
                    json!([["Alice", "123-45-6789"]]),
                    json!([]),
                ))
            },
        )
        .await;
    // A masked column in a predicate is denied by default; without a predicate it is served.
    assert!(
        !forwarded,
        "a filter on a masked column never reaches Snowflake"
    );
    assert_eq!(json_of(&resp)["code"], TOLLGATE_DENIED_CODE);
    let (resp, forwarded) = layer
        .exchange(&c, query("select name, ssn from patients", token), |_| {
            ok_json(patients_result(
                json!([["Alice", "123-45-6789"]]),
                json!([]),
            ))
        })
        .await;
    assert!(forwarded);
    let v = json_of(&resp);
    assert_eq!(v["success"], true);
    let row = &v["data"]["rowset"][0];
    assert_ne!(row[0], "Alice", "the name is redacted");
    assert!(row[1].as_str().unwrap().ends_with("6789"), "{row}");
    assert!(!row[1].as_str().unwrap().contains("123-45"), "{row}");
    let body = String::from_utf8_lossy(resp.body()).to_string();
    assert!(!body.contains("Alice") && !body.contains("123-45"));
    let results = layer.events_of(EventKind::Result).await;
    let last = results.last().unwrap();
    assert_eq!(last.decision, "ok");
    assert_eq!(last.rule_id, "patients-masked");
    assert_eq!(last.query_id, "01b0-patients");
    let masked: Vec<(&str, u64)> = last
        .masked
        .iter()
        .map(|m| (m.column.as_str(), m.values))
        .collect();
    assert_eq!(masked, [("NAME", 1), ("SSN", 1)]);
    let decisions = layer.events_of(EventKind::Decision).await;
    assert_eq!(decisions.last().unwrap().decision, "mask");
    // The statement's query, decision and result events share one key (the query event's id),
    // by which recovery finds a forwarded statement whose result was never recorded.
    let queries = layer.events_of(EventKind::Query).await;
    let q = queries.last().unwrap();
    let key = q.attrs.get(tollgate_audit::STATEMENT_ATTR).unwrap();
    assert_eq!(key, &q.event_id.to_string());
    assert_eq!(
        decisions
            .last()
            .unwrap()
            .attrs
            .get(tollgate_audit::STATEMENT_ATTR),
        Some(key)
    );
    assert_eq!(last.attrs.get(tollgate_audit::STATEMENT_ATTR), Some(key));
    // Literals never reach the trail.
    for e in layer.events().await {
        assert!(!e.sql.contains("Alice"), "{:?}", e.sql);
        assert!(!format!("{:?}", e.attrs).contains("hunter2"));
    }
}

#[tokio::test]
async fn denied_and_held_statements_never_reach_snowflake_and_say_why() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    for (sql, rule, words, action) in [
        (
            "select * from visits",
            "deny-visits",
            "visit records are off limits",
            "deny",
        ),
        (
            "insert into events values (1)",
            "writes-need-approval",
            "approval required: writes are approved by a human",
            "require_approval",
        ),
    ] {
        let (resp, forwarded) = layer
            .exchange(&c, query(sql, token), |_| {
                unreachable!("refused statements stay here")
            })
            .await;
        assert!(!forwarded);
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "drivers read refusals from 200s"
        );
        assert_eq!(resp.headers()["x-tollgate-decision"], "refused");
        let v = json_of(&resp);
        assert_eq!(v["success"], false);
        assert_eq!(v["data"]["sqlState"], "42501");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("rule {rule}")) && msg.contains(words),
            "{msg}"
        );
        let d = layer.events_of(EventKind::Decision).await;
        assert_eq!(d.last().unwrap().decision, action);
        assert_eq!(d.last().unwrap().rule_id, rule);
    }
    assert!(layer.events_of(EventKind::Result).await.is_empty());
    let stats = layer.hooks.stats();
    assert_eq!((stats.denied, stats.held, stats.allowed), (1, 1, 0));
}

#[tokio::test]
async fn requests_the_layer_cannot_read_are_refused_with_their_kind() {
    let layer = Layer::new(SnowflakeConfig {
        request_limits: tollgate_wire::snowflake::BodyLimits {
            max_compressed: 4096,
            ..Default::default()
        },
        ..SnowflakeConfig::default()
    });
    let c = conn();
    let token = layer.login(&c).await;
    let never = |_: Request<Bytes>| -> Response<Bytes> { unreachable!("refused before Snowflake") };
    // An ambiguous path: refused, recorded as an error event naming it.
    let (resp, fwd) = layer
        .exchange(
            &c,
            post("/queries/v1/query%2Frequest", Some(token), &json!({})),
            never,
        )
        .await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "0A000");
    // A body over its cap: refused, and the connection closes (the client may still send).
    let big = json!({"sqlText": "x".repeat(5000)});
    let (resp, fwd) = layer
        .exchange(
            &c,
            post("/queries/v1/query-request", Some(token), &big),
            never,
        )
        .await;
    assert!(!fwd);
    assert_eq!(resp.headers()[http::header::CONNECTION], "close");
    assert_eq!(json_of(&resp)["data"]["sqlState"], "54000");
    // A gzip bomb under the cap.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 3 << 20]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let req = Request::post("/queries/v1/query-request")
        .header(http::header::HOST, HOST)
        .header(http::header::CONTENT_ENCODING, "gzip")
        .header(
            http::header::AUTHORIZATION,
            format!("Snowflake Token=\"{token}\""),
        )
        .body(body_of(Bytes::from(bomb)))
        .unwrap();
    let (resp, fwd) = layer.exchange(&c, req, never).await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "54000");
    // A query request that is not one.
    let (resp, fwd) = layer
        .exchange(
            &c,
            post(
                "/queries/v1/query-request",
                Some(token),
                &json!({"nope": 1}),
            ),
            never,
        )
        .await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "42601");
    // A login that is not one.
    let (resp, fwd) = layer
        .exchange(
            &c,
            post("/session/v1/login-request", None, &json!([1])),
            never,
        )
        .await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "08004");
    // An endpoint the wire model does not know: denied by default.
    let (resp, fwd) = layer
        .exchange(&c, get("/v9/whatever", Some(token)), never)
        .await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "0A000");
    // A pre-signed download on the Snowflake host.
    let (resp, fwd) = layer
        .exchange(
            &c,
            get(
                "/stage/results/x/main/data_0_0_0?X-Amz-Signature=abc&X-Amz-Credential=k",
                None,
            ),
            never,
        )
        .await;
    assert!(!fwd);
    assert_eq!(json_of(&resp)["data"]["sqlState"], "42501");
    let errors: Vec<String> = layer
        .events_of(EventKind::Error)
        .await
        .iter()
        .map(|e| e.attrs["endpoint"].clone())
        .collect();
    assert_eq!(errors, ["ambiguous_path", "unknown", "result_chunk"]);
}

#[tokio::test]
async fn results_without_a_decision_are_withheld_and_unknown_endpoints_can_be_forwarded() {
    let layer = Layer::new(SnowflakeConfig {
        unknown_endpoints: UnknownEndpoints::Forward,
        ..SnowflakeConfig::default()
    });
    let c = conn();
    let token = layer.login(&c).await;
    let (resp, fwd) = layer
        .exchange(&c, get("/queries/01b0-unseen/result", Some(token)), |_| {
            ok_json(patients_result(
                json!([["Alice", "123-45-6789"]]),
                json!([]),
            ))
        })
        .await;
    assert!(fwd);
    let v = json_of(&resp);
    assert_eq!(v["success"], false);
    assert!(!String::from_utf8_lossy(resp.body()).contains("Alice"));
    assert_eq!(resp.headers()["x-tollgate-decision"], "withheld");
    // An unknown endpoint forwarded by configuration still withholds a Snowflake-shaped result.
    let (resp, fwd) = layer
        .exchange(&c, get("/v9/whatever", Some(token)), |_| {
            ok_json(patients_result(
                json!([["Alice", "123-45-6789"]]),
                json!([]),
            ))
        })
        .await;
    assert!(fwd);
    assert!(!String::from_utf8_lossy(resp.body()).contains("Alice"));
    let withheld: Vec<String> = layer
        .events_of(EventKind::Result)
        .await
        .iter()
        .map(|e| format!("{}: {}", e.decision, e.reason))
        .collect();
    assert_eq!(
        withheld,
        [
            "withheld: no decision known for this query id",
            "withheld: no decision known for this query id"
        ]
    );
    assert_eq!(layer.hooks.stats().results_withheld, 2);
}

#[tokio::test]
async fn a_result_fetched_by_query_id_keeps_its_decision_and_use_moves_the_session() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    // Still running: the driver polls the result URL; the plan is remembered for it.
    let (resp, _) = layer
        .exchange(&c, query("select name, ssn from patients", token), |_| {
            ok_json(json!({"success": true, "code": "333334", "data": {
                "queryId": "01b0-patients", "getResultUrl": "/queries/01b0-patients/result"}}))
        })
        .await;
    assert_eq!(json_of(&resp)["code"], "333334");
    let (resp, _) = layer
        .exchange(
            &c,
            get("/queries/01b0-patients/result", Some(token)),
            |_| {
                ok_json(patients_result(
                    json!([["Alice", "123-45-6789"]]),
                    json!([]),
                ))
            },
        )
        .await;
    let v = json_of(&resp);
    assert_eq!(v["success"], true);
    assert_ne!(v["data"]["rowset"][0][0], "Alice");
    let results = layer.events_of(EventKind::Result).await;
    assert_eq!(
        results
            .iter()
            .map(|e| e.decision.as_str())
            .collect::<Vec<_>>(),
        ["running", "ok"]
    );
    assert_eq!(results[1].rule_id, "patients-masked");
    // USE: the next statement is analysed in the new schema.
    layer
        .exchange(&c, query("use schema other", token), |_| {
            ok_json(json!({"success": true, "data": {"finalSchemaName": "OTHER"}}))
        })
        .await;
    let (resp, fwd) = layer
        .exchange(&c, query("select * from patients", token), |_| {
            unreachable!("OTHER.PATIENTS matches no rule")
        })
        .await;
    assert!(!fwd);
    assert!(json_of(&resp)["message"]
        .as_str()
        .unwrap()
        .contains("Tollgate denied"));
}

#[tokio::test]
async fn nothing_is_served_when_the_audit_spool_cannot_be_written() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    std::fs::remove_dir_all(layer.dir.path().join("spool")).unwrap();
    let (resp, fwd) = layer
        .exchange(&c, query("select * from events", token), |_| {
            unreachable!("no statement without its audit record")
        })
        .await;
    assert!(!fwd);
    let v = json_of(&resp);
    assert_eq!(v["data"]["sqlState"], "58030");
    assert!(v["message"].as_str().unwrap().contains("cannot be audited"));
}

#[tokio::test]
async fn upstream_failures_and_logouts_are_recorded() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    let mut filter = layer.hooks.clone().exchange(&c, 0);
    let action = filter
        .request_filter(&c, query("select * from events", token))
        .await;
    assert!(matches!(action, RequestAction::Forward(_)));
    // The proxy could not reach Snowflake: the statement's result says so.
    let failure = connect_failure().await;
    filter.upstream_failed(&c, &failure);
    let r = layer.events_of(EventKind::Result).await;
    assert_eq!(r.last().unwrap().decision, "upstream_failed");
    let q = layer.events_of(EventKind::Query).await;
    assert_eq!(
        r.last().unwrap().attrs.get(tollgate_audit::STATEMENT_ATTR),
        q.last().unwrap().attrs.get(tollgate_audit::STATEMENT_ATTR),
        "an upstream failure closes its statement for recovery"
    );
    assert_eq!(r.last().unwrap().error_code, "502");
    assert_eq!(r.last().unwrap().rule_id, "events-open");
    // Logout ends the session: its token is no longer known.
    layer
        .exchange(
            &c,
            post("/session?delete=true", Some(token), &json!({})),
            |_| ok_json(json!({"success": true, "data": null})),
        )
        .await;
    assert_eq!(
        layer.events_of(EventKind::SessionEnd).await.len(),
        1,
        "the logout is recorded"
    );
    assert!(layer.hooks.sessions().get(token).is_none());
}

/// A real connect failure (a port nothing listens on).
async fn connect_failure() -> tollgate_proxy::UpstreamFailure {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    tollgate_proxy::upstream::connect(addr, None, Duration::from_secs(2))
        .await
        .expect_err("nothing listens there")
}

#[tokio::test]
async fn sql_api_handles_are_bound_to_the_token_that_submitted_them() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let submit = |bearer: &str, sql: &str| {
        Request::post("/api/v2/statements")
            .header(http::header::HOST, HOST)
            .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
            .header("x-snowflake-authorization-token-type", "OAUTH")
            .body(body_of(Bytes::from(
                serde_json::to_vec(
                    &json!({"statement": sql, "database": "CLINICAL", "schema": "EHR"}),
                )
                .unwrap(),
            )))
            .unwrap()
    };
    let (resp, fwd) = layer
        .exchange(&c, submit("tok-a", "select * from events"), |_| {
            ok_json(json!({"statementHandle": "01b0-h1", "data": [["1"]]}))
        })
        .await;
    assert!(fwd, "{:?}", resp.body());
    let status = |bearer: &str| {
        Request::get("/api/v2/statements/01b0-h1")
            .header(http::header::HOST, HOST)
            .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
            .body(body_of(Bytes::new()))
            .unwrap()
    };
    let (_, fwd) = layer
        .exchange(&c, status("tok-a"), |_| ok_json(json!({"data": []})))
        .await;
    assert!(fwd, "the submitting token may read its handle");
    let (resp, fwd) = layer
        .exchange(&c, status("tok-b"), |_| {
            unreachable!("another token's handle")
        })
        .await;
    assert!(!fwd);
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A statement whose result must be masked: not served through the SQL API.
    let (resp, fwd) = layer
        .exchange(&c, submit("tok-a", "select name from patients"), |_| {
            unreachable!("masking applies to driver sessions only")
        })
        .await;
    assert!(!fwd);
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(resp.body()).contains("masked or capped"));
}

#[tokio::test]
async fn a_policy_swapped_in_decides_the_next_statement() {
    let layer = Layer::new(SnowflakeConfig::default());
    let c = conn();
    let token = layer.login(&c).await;
    let (_, fwd) = layer
        .exchange(&c, query("select * from events", token), |_| {
            ok_json(json!({"success": true, "data": {"queryId": "q"}}))
        })
        .await;
    assert!(fwd);
    layer
        .hooks
        .set_policy(policy(&POLICY.replace("id: events-open\n    match:\n      statements: [select]\n      tables: [\"CLINICAL.EHR.EVENTS\"]\n    action: allow", "id: events-open\n    match:\n      statements: [select]\n      tables: [\"CLINICAL.EHR.EVENTS\"]\n    action: deny\n    reason: closed")));
    let (resp, fwd) = layer
        .exchange(&c, query("select * from events", token), |_| {
            unreachable!("denied now")
        })
        .await;
    assert!(!fwd);
    assert!(json_of(&resp)["message"]
        .as_str()
        .unwrap()
        .contains("closed"));
}

// --- chunks, through a loopback TLS storage stand-in -------------------------------------

/// A storage server on loopback: serves `body` (gzip'd) at every path, over TLS with a
/// certificate for `storage.test` from its own root.
struct Storage {
    addr: SocketAddr,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

async fn storage(body: Vec<u8>) -> Storage {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["storage.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&body).unwrap();
    let gz = Bytes::from(enc.finish().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let gz = gz.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let gz = gz.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header(http::header::CONTENT_ENCODING, "gzip")
                                .body(Full::new(gz))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Storage {
        addr,
        root,
        _dir: dir,
        connections,
    }
}

#[tokio::test]
async fn chunks_are_served_masked_to_the_process_that_logged_in_over_pooled_connections() {
    let chunk = br#"["Bob", "987-65-4321"], ["Carol", "555-12-3456"]"#.to_vec();
    let st = storage(chunk).await;
    let tls = UpstreamTls::from_pem_file(&st.root).unwrap();
    let mut config = StorageConfig::default();
    config.resolve.insert("storage.test".into(), st.addr.ip());
    let client = StorageClient::new(&tls, None, config);
    let layer = Layer::build(SnowflakeConfig::default(), Some(client.clone()));
    let c = conn();
    let token = layer.login(&c).await;
    let url = format!(
        "https://storage.test:{}/results/chunk0?sig=secret",
        st.addr.port()
    );
    let chunks = json!([
        {"url": url, "rowCount": 2, "uncompressedSize": 64, "compressedSize": 40},
        {"url": url, "rowCount": 2, "uncompressedSize": 64, "compressedSize": 40}
    ]);
    let mut result = patients_result(json!([["Alice", "123-45-6789"]]), chunks);
    result["data"]["total"] = json!(5);
    result["data"]["qrmk"] = json!("storage-key");
    let (resp, _) = layer
        .exchange(&c, query("select name, ssn from patients", token), |_| {
            ok_json(result)
        })
        .await;
    let text = String::from_utf8_lossy(resp.body()).to_string();
    assert!(
        !text.contains("storage.test") && !text.contains("secret") && !text.contains("storage-key"),
        "{text}"
    );
    let v = json_of(&resp);
    let handed: Vec<String> = v["data"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(handed.len(), 2);
    let path_of = |u: &str| {
        u.strip_prefix(&format!("https://{HOST}"))
            .unwrap()
            .to_owned()
    };
    for u in &handed {
        let (resp, fwd) = layer
            .exchange(&c, get(&path_of(u), Some(token)), |_| {
                unreachable!("served by Tollgate")
            })
            .await;
        assert!(!fwd);
        assert_eq!(resp.status(), StatusCode::OK);
        let served = String::from_utf8_lossy(resp.body()).to_string();
        assert!(
            served.contains("4321") && !served.contains("Bob") && !served.contains("987-65"),
            "{served}"
        );
    }
    // Both fetches went over one verified keep-alive connection.
    assert_eq!(st.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Another process of the same workload may not use the tickets.
    let other = ConnectionContext::new(
        "c-2",
        "127.0.0.1:40001".parse().unwrap(),
        "192.0.2.10:443".parse().unwrap(),
        HOST,
    )
    .with_process(process(5555));
    let (resp, _) = layer
        .exchange(&other, get(&path_of(&handed[0]), None), |_| unreachable!())
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The chunk events carry the masked counts (typed, from the masker).
    let served = wait_for_events(&layer, EventKind::Chunk, 2).await;
    for e in &served {
        assert_eq!(e.decision, "served");
        let counts: Vec<(&str, u64)> = e
            .masked
            .iter()
            .map(|m| (m.column.as_str(), m.values))
            .collect();
        assert_eq!(counts, [("NAME", 2), ("SSN", 2)]);
    }
    assert_eq!(layer.hooks.stats().chunks_served, 2);
    // After logout the tickets are gone.
    layer
        .exchange(
            &c,
            post("/session?delete=true", Some(token), &json!({})),
            |_| ok_json(json!({"success": true, "data": null})),
        )
        .await;
    let (resp, _) = layer
        .exchange(&c, get(&path_of(&handed[0]), None), |_| unreachable!())
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Chunk events are recorded when the stream ends, after the response: wait for them — woken by
/// the spool each time more events are durable (`Spool::durable`), never by a timer.
async fn wait_for_events(layer: &Layer, kind: EventKind, n: usize) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut durable = layer.spool.durable();
    loop {
        // Seen before reading: events made durable after this point wake the wait below.
        durable.borrow_and_update();
        let found: Vec<Event> = tollgate_audit::spool::read_all(&layer.dir.path().join("spool"))
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect();
        if found.len() >= n {
            return found;
        }
        match tokio::time::timeout_at(deadline, durable.changed()).await {
            Ok(changed) => changed.expect("the spool writer stopped"),
            Err(_) => panic!("only {} {kind:?} events after 10 s", found.len()),
        }
    }
}
