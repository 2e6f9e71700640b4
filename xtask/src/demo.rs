//! `cargo xtask demo`: Tollgate's main job on embedded defaults, end to end on this host.
//!
//! 1. A test host (network namespace) plays Snowflake: a TLS server for
//!    `demo-acct.snowflakecomputing.com`, and for a non-Snowflake name, `api.example.test`.
//! 2. An unmodified agent (`curl`) runs in an agents cgroup, in a private mount namespace whose
//!    /etc/hosts resolves those names to the test host. Its host trusts Tollgate's CA the way an
//!    installer sets it up (`CURL_CA_BUNDLE` = the public roots + Tollgate's CA).
//! 3. Tollgate redirects the agent's connections with eBPF, intercepts the Snowflake name (TLS
//!    terminated with a minted certificate, upstream verified), passes the other name through
//!    byte for byte, and writes a record per connection.
//! 4. Fail closed: Tollgate is SIGKILLed, the agent's next connection is refused (never direct),
//!    and a restart resumes interception with no duplicate links.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tollgate_e2e::{Cgroup, Scratch, Service, TestHost, Tollgate, TollgateOpts};

const SNOWFLAKE_HOST: &str = "demo-acct.snowflakecomputing.com";
const OTHER_HOST: &str = "api.example.test";

fn step(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

/// Runs the demo.
pub fn demo(root: &Path) -> Result<()> {
    std::env::set_var("TOLLGATE_BIN_DIR", root.join("target/debug"));
    let scratch = Scratch::new("demo")?;
    let testkit = root.join("target/debug/tollgate-testkit");

    step("A test host plays Snowflake (and one other HTTPS service)");
    let host = TestHost::create()?;
    let pki = scratch.join("testhost-pki");
    tollgate_e2e::run(Command::new(&testkit).args([
        "gen-ca",
        "--dir",
        pki.to_str().unwrap(),
        "--names",
        &format!("{SNOWFLAKE_HOST},{OTHER_HOST}"),
    ]))?;
    let mut serve = host.command(&testkit);
    serve
        .args(["serve", "--mode", "https", "--listen"])
        .arg(host.v4(443).to_string())
        .arg("--cert")
        .arg(pki.join("server.pem"))
        .arg("--key")
        .arg(pki.join("server.key"));
    let mut standin = Service::spawn(serve, &scratch.join("standin.log"))?;
    standin.wait_line(Duration::from_secs(10), |l| l.contains("listening"))?;
    println!(
        "test host {} ({}): serving {SNOWFLAKE_HOST} and {OTHER_HOST} on :443",
        host.name, host.ip4
    );

    step(
        "Tollgate starts: eBPF redirect on the agents cgroup, TLS interception for Snowflake names",
    );
    let top = Cgroup::create(&format!("tollgate-demo-{}", std::process::id()))?;
    let agents = top.child("agents")?;
    let mut tollgate = Tollgate::start(
        &scratch,
        TollgateOpts {
            cgroups: vec![agents.path.clone()],
            upstream_roots: Some(pki.join("ca.pem")),
            extra: vec!["--unknown-endpoints".into(), "forward".into()],
            ..TollgateOpts::default()
        },
    )?;
    println!(
        "tollgate pid {} listening on 127.0.0.1:{} and [::1]:{}; agents cgroup {}",
        tollgate.service.as_ref().unwrap().pid(),
        tollgate.listen_port,
        tollgate.listen_port,
        agents.path.display()
    );
    print!(
        "{}",
        tollgate_e2e::run(
            tollgate
                .cli()
                .args(["ca", "show", "--state-dir"])
                .arg(&tollgate.state_dir)
        )?
        .lines()
        .next()
        .unwrap_or_default()
    );
    println!();

    // The host-level trust step an installer performs: public roots (here: the test host's CA,
    // standing in for them) plus Tollgate's CA.
    let bundle = scratch.join("agent-ca-bundle.pem");
    fs::write(
        &bundle,
        [fs::read(pki.join("ca.pem"))?, fs::read(tollgate.ca_cert())?].concat(),
    )?;
    let hosts = scratch.join("hosts");
    fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n{ip} {SNOWFLAKE_HOST}\n{ip} {OTHER_HOST}\n",
            ip = host.ip4
        ),
    )?;
    let agent = |url: &str| -> Result<(bool, String)> {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/hosts && exec curl -sS -v --max-time 10 -X POST -d '{{}}' {url}",
                hosts.display()
            ))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CURL_CA_BUNDLE", &bundle);
        agents.place(&mut c);
        let out = c.output().context("running the agent (curl)")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let issuer = stderr
            .lines()
            .find(|l| l.contains("issuer:"))
            .map(|l| l.trim_start_matches(['*', ' ']).to_owned())
            .unwrap_or_default();
        let err = stderr
            .lines()
            .find(|l| l.starts_with("curl:"))
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&out.stdout);
        Ok((
            out.status.success(),
            format!("{issuer}{err}\n   response: {}", body.trim()),
        ))
    };

    step(&format!(
        "The agent (curl, unmodified) calls https://{SNOWFLAKE_HOST}: intercepted"
    ));
    let (ok, out) = agent(&format!("https://{SNOWFLAKE_HOST}/status"))?;
    println!("   {out}");
    if !ok {
        bail!(
            "the intercepted request failed; tollgate log:\n{}",
            tollgate.log()
        );
    }

    step(&format!(
        "The agent calls https://{OTHER_HOST}: passed through byte for byte"
    ));
    let (ok, out) = agent(&format!("https://{OTHER_HOST}/status"))?;
    println!("   {out}");
    if !ok {
        bail!(
            "the pass-through request failed; tollgate log:\n{}",
            tollgate.log()
        );
    }

    step("Connection records (one JSON line per connection)");
    tollgate.wait_record(Duration::from_secs(5), |r| r["decision"] == "passthrough")?;
    for r in tollgate.records() {
        println!("   {r}");
    }

    step("tollgate status");
    print!(
        "{}",
        tollgate_e2e::run(
            tollgate
                .cli()
                .arg("status")
                .arg("--pin-dir")
                .arg(&tollgate.pin_dir)
        )?
    );

    step("Fail closed: SIGKILL tollgate; the agent's next connection is refused, never direct");
    tollgate.kill();
    let seen_before = standin.lines().len();
    let (ok, out) = agent(&format!("https://{SNOWFLAKE_HOST}/status"))?;
    println!("   {out}");
    if ok {
        bail!("the agent reached the stand-in while tollgate was down");
    }
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "   the stand-in saw {} new connection(s)",
        standin.lines().len() - seen_before
    );

    step("Restart: interception resumes, links are replaced, not duplicated");
    tollgate.restart()?;
    let (ok, out) = agent(&format!("https://{SNOWFLAKE_HOST}/status"))?;
    println!("   {out}");
    if !ok {
        bail!("the request after restart failed");
    }
    print!(
        "{}",
        tollgate_e2e::run(
            tollgate
                .cli()
                .arg("status")
                .arg("--pin-dir")
                .arg(&tollgate.pin_dir)
        )?
    );

    step("Done: tollgate stops and `tollgate detach` removes the redirect");
    drop(tollgate);
    drop(agents);
    drop(top);
    drop(standin);
    drop(host);
    println!("demo complete");
    Ok(())
}
