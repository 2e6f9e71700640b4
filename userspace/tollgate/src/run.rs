//! The commands' glue: `run` wires the redirect (tollgate-bpf), the proxy (tollgate-proxy) and
//! the record sink together; `ca`, `status` and `detach` are thin views over the same parts.
//!
//! `run` takes [`Settings`] that [`crate::config::Config::build`] already checked, then checks
//! the host (cgroup2 mount, target cgroups, privileges, bpffs) — and only then creates anything:
//! its cgroup, the state directory, keys, spool, CA, record file, pins, pid file. A refused
//! setting or host leaves the disk as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tollgate_bpf::{ConnectLookup, RedirectConfig, Redirector};
use tollgate_mask::{MaskKey, TokenMac};
use tollgate_proxy::{
    CertificateAuthority, KernelRedirectsOnly, ProcessIdentity, Proxy, RecordSink, Redirects,
};
use tollgate_snowflake::{
    Auditor, Masking, SnowflakeConfig, SnowflakeHooks, StorageClient, StorageConfig,
    UnknownEndpoints as Unknown,
};
use tollgate_wire::snowflake::BodyLimits;
use tracing::{info, warn};

use crate::config::{
    resolve_cgroup, MaskKeySource, RecordsTarget, RedirectPlan, Settings, UnknownEndpoints,
};
use crate::output::error_chain;
use crate::reload::Reloader;

/// Process identity from the eBPF connect hooks, for the proxy: a lock-free map handle.
struct EbpfRedirects {
    lookup: ConnectLookup,
}

impl Redirects for EbpfRedirects {
    fn take_identity(&self, client: std::net::SocketAddr) -> Option<ProcessIdentity> {
        let info = self.lookup.lookup(client)?;
        Some(ProcessIdentity {
            pid: info.pid,
            tgid: info.tgid,
            uid: info.uid,
            gid: info.gid,
            comm: info.comm,
            cgroup_id: info.cgroup_id,
            netns_cookie: info.netns_cookie,
            exe: None,
            cgroup_path: None,
        })
    }
}

/// The cgroup2 mount point, or an error that says how to get one.
fn cgroup2_mount() -> Result<PathBuf> {
    tollgate_bpf::cgroup2_mount()?.context("no cgroup2 filesystem is mounted: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or run `cargo xtask setup`")
}

/// Moves this whole process into `cgroup`, before any socket exists, so
/// the listeners and upstream sockets belong to it.
fn enter_cgroup(cgroup: &Path) -> Result<()> {
    std::fs::write(
        cgroup.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .with_context(|| {
        format!(
            "moving tollgate into cgroup {} (needs root; is it a cgroup v2 directory?)",
            cgroup.display()
        )
    })
}

/// Lifts the soft open-files limit to the hard one: every proxied connection holds two sockets.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// The host checks of the redirect, before anything is created: the cgroup2 mount, the target
/// cgroups, privileges and kernel features.
fn check_redirect(plan: &RedirectPlan) -> Result<RedirectConfig> {
    let mount = cgroup2_mount()?;
    let proxy_cgroup = resolve_cgroup(&mount, &plan.proxy_cgroup);
    let cgroups: Vec<PathBuf> = plan
        .cgroups
        .iter()
        .map(|c| resolve_cgroup(&mount, c))
        .collect();
    for (i, cg) in cgroups.iter().enumerate() {
        if !cg.join("cgroup.procs").exists() {
            bail!(
                "config field `redirect.cgroups[{i}]`: {} is not a cgroup v2 directory (create it, or name an existing one under {})",
                cg.display(),
                mount.display()
            );
        }
    }
    let rc = RedirectConfig {
        cgroups,
        ports: plan.ports.clone(),
        direct: plan.direct.clone(),
        listen_port: plan.listen_port,
        proxy_cgroup,
        proxy_tgid: std::process::id(),
        mark: plan.mark,
        pin_dir: plan.pin_dir.clone(),
    };
    // Privileges and kernel features first, so that a missing capability is reported as
    // such rather than as a failure to create tollgate's cgroup (which does not exist yet:
    // its parent, the mount, stands in).
    tollgate_bpf::preflight(&RedirectConfig {
        proxy_cgroup: mount,
        ..rc.clone()
    })?;
    Ok(rc)
}

/// `tollgate run`.
pub fn run(settings: Settings) -> Result<()> {
    raise_nofile_limit();
    let redirect_cfg = settings.redirect.as_ref().map(check_redirect).transpose()?;

    // Every check passed: from here on, things are created.
    if let Some(rc) = &redirect_cfg {
        std::fs::create_dir_all(&rc.proxy_cgroup).with_context(|| {
            format!(
                "creating tollgate's cgroup {} (config field `redirect.proxy_cgroup`)",
                rc.proxy_cgroup.display()
            )
        })?;
        enter_cgroup(&rc.proxy_cgroup)?;
    }

    let loaded = &settings.policy;
    let policy = Arc::new(loaded.policy.clone());
    match &loaded.path {
        Some(p) => info!(policy = %p.display(), rules = policy.rule_count(), digest = %loaded.digest, "policy loaded"),
        None => warn!("no policy configured: every Snowflake statement is refused until one is given with --policy FILE"),
    }
    let sf = &settings.snowflake;
    let upstream = settings.upstream.clone();
    let masking = masking_setup(&settings)?;
    let storage = StorageClient::new(
        &upstream,
        settings.proxy.upstream_mark,
        StorageConfig {
            resolve: sf
                .storage_resolve
                .iter()
                .map(|(h, ip)| (h.to_ascii_lowercase(), *ip))
                .collect(),
            timeout: Duration::from_millis(sf.storage_timeout_ms),
            max_chunk_decompressed: sf.max_chunk_decompressed_bytes,
            chunk_memory_budget: sf.chunk_memory_budget_bytes,
            ticket_lifetime: Duration::from_secs(sf.chunk_ticket_lifetime_secs),
        },
    );
    // The audit spool first: nothing is served unless it can be recorded.
    let audit = &settings.audit;
    let audit_host = audit
        .host
        .clone()
        .or_else(hostname)
        .unwrap_or_else(|| "localhost".into());
    let key_path = audit.key_file.clone();
    let audit_key = tollgate_audit::HostKey::load_or_create(&key_path)
        .with_context(|| format!("preparing the audit signing key {}", key_path.display()))?;
    info!(key = %key_path.display(), key_id = %audit_key.public().key_id(), "audit signing key");
    let spool_dir = audit.spool_dir.clone();
    let mut spool_opts = tollgate_audit::SpoolOptions::new(spool_dir.clone(), audit_host.clone());
    spool_opts.sync = audit.fsync;
    if !spool_opts.sync {
        warn!("audit.fsync is off: acknowledged audit events may be lost on power failure (for benchmarks only)");
    }
    let (spool, recovery) = tollgate_audit::Spool::open(spool_opts, audit_key)
        .with_context(|| format!("opening the audit spool {}", spool_dir.display()))?;
    info!(
        spool = %spool_dir.display(),
        events = recovery.next_host_seq,
        closed_chains = recovery.closed_chains,
        torn_bytes = recovery.torn_bytes,
        "audit spool open"
    );
    let clickhouse = audit.clickhouse.clone();
    let hooks = Arc::new(
        SnowflakeHooks::new(
            SnowflakeConfig {
                unknown_endpoints: match sf.unknown_endpoints {
                    UnknownEndpoints::Deny => Unknown::Deny,
                    UnknownEndpoints::Forward => Unknown::Forward,
                },
                request_limits: BodyLimits {
                    max_compressed: sf.max_request_body_bytes,
                    max_decompressed: sf.max_decoded_body_bytes,
                    max_ratio: sf.max_gzip_ratio,
                    ..BodyLimits::default()
                },
                max_inspected_response: sf.max_inspected_response_bytes,
                host: hostname(),
                ..SnowflakeConfig::default()
            },
            policy,
        )
        .with_storage(storage)
        .with_masking(masking)
        .with_audit(Auditor::new(spool.clone())),
    );

    let (ca, created) = CertificateAuthority::load_or_create(&settings.state_dir)
        .context("preparing the interception CA")?;
    if created {
        info!(path = %ca.cert_path().display(), "created the interception CA; agents' hosts must trust it");
    }
    let records_target = settings.records.clone();
    let records = match &records_target {
        RecordsTarget::Stdout => RecordSink::stdout()?,
        RecordsTarget::File(path) => RecordSink::file(path)?,
    };
    let reloader = Reloader::new(&settings.state_dir, loaded, spool.clone(), {
        let hooks = hooks.clone();
        Box::new(move |policy| hooks.set_policy(policy))
    });
    let proxy_cfg = settings.proxy;

    // The redirect is attached before the listeners exist: a connect redirected in between is
    // refused (fail closed), and on a restart the previous run's pinned links keep refusing
    // until the listeners are back.
    let mut redirector = match &redirect_cfg {
        Some(rc) => {
            let redirector = Redirector::attach(rc)?;
            log_attach_report(redirector.attach_report());
            Some(redirector)
        }
        None => None,
    };
    let redirects: Arc<dyn Redirects> = match &redirector {
        Some(r) => Arc::new(EbpfRedirects {
            lookup: r.connect_lookup(),
        }),
        None => Arc::new(KernelRedirectsOnly),
    };
    let kernel_log = redirector.as_mut().and_then(Redirector::take_kernel_log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Before anyone can send them (the pid file, the ready line): the default actions of
        // SIGHUP, SIGTERM and SIGINT would end the daemon without a reload or a drain.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP (policy reload) handler")?;
        let shutdown = shutdown_signal()?;
        let proxy = Proxy::new(
            proxy_cfg,
            Arc::new(ca),
            upstream,
            redirects,
            records,
            hooks,
        );
        let bound = proxy.bind().context("binding the proxy listeners")?;
        let (stop_ship, stop_rx) = tokio::sync::watch::channel(false);
        let shipper = clickhouse.map(|ch| {
            let durable = spool.durable();
            let dir = spool_dir.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                loop {
                    match tollgate_audit::clickhouse::migrate(&ch).await {
                        Ok(applied) => {
                            info!(url = %ch.url, database = %ch.database, ?applied, "audit schema ready in ClickHouse");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, retry_in_s = wait.as_secs(), "ClickHouse schema not ready; events wait in the spool");
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = stop.changed() => return,
                            }
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                tollgate_audit::clickhouse::Shipper::new(ch, dir, durable)
                    .run(stop)
                    .await;
            })
        });
        if let Some(mut log) = kernel_log {
            // The programs log only when they cannot store a record; forward that to our log.
            // The reader is this task's own: the accept path never waits for it.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    log.flush();
                }
            });
        }
        reloader.publish()?;
        let reloader_files = reloader.files();
        tokio::spawn(crate::reload::serve(hangup, reloader));
        let addrs: Vec<String> = bound.local_addrs().iter().map(|a| a.to_string()).collect();
        let ready = match &redirect_cfg {
            Some(rc) => outln!(
                "tollgate ready: listening on {}; redirecting TCP ports {} from {} cgroup(s); records: {}; audit spool: {}",
                addrs.join(", "),
                rc.ports,
                rc.cgroups.len(),
                records_target,
                spool_dir.display()
            ),
            None => outln!(
                "tollgate ready: listening on {} (no eBPF: feed it with a REDIRECT rule); records: {}",
                addrs.join(", "),
                records_target
            ),
        };
        if let Err(e) = ready {
            // Whoever started us stopped listening; the daemon still serves.
            warn!(error = %error_chain(&e), "the ready line could not be written to stdout");
        }
        let served = bound.run(shutdown).await;
        reloader_files.withdraw();
        let stats = served?;
        info!(?stats, "proxy stopped");
        spool.flush().await;
        let _ = stop_ship.send(true);
        if let Some(s) = shipper {
            if tokio::time::timeout(Duration::from_secs(10), s).await.is_err() {
                warn!("audit shipping did not finish in 10 s; the rest ships at the next start");
            }
        }
        // Kept until here: its fds keep the object's programs and maps open while we serve.
        drop(redirector);
        if redirect_cfg.is_some() {
            warn!("the redirect stays in force while tollgate is stopped (agents get connection refused); `tollgate detach` removes it");
        }
        anyhow::Ok(())
    })
}

/// Logs what the attach found: the direct destinations, and a summary of the connections older
/// than the redirect (tollgate-bpf logs each one, with its pid and comm, as it handles it;
/// those it could not destroy still bypass Tollgate).
fn log_attach_report(report: &tollgate_bpf::AttachReport) {
    let direct: Vec<String> = report
        .direct
        .iter()
        .map(|r| format!("{} ({})", r.net, r.reason))
        .collect();
    info!(links = report.links, direct = ?direct, "redirect attached");
    let pre = &report.preexisting;
    if !pre.destroyed.is_empty() {
        info!(
            destroyed = pre.destroyed.len(),
            "pre-existing connections of the target cgroups destroyed: they predate the redirect"
        );
    }
    if !pre.failed.is_empty() {
        warn!(
            failed = pre.failed.len(),
            "pre-existing connections could NOT be destroyed: they bypass tollgate until they close (`tollgate status` reports them)"
        );
    }
    if !pre.scan_errors.is_empty() {
        warn!(errors = ?pre.scan_errors, "pre-existing connections could not all be examined");
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal sent as soon as "ready" is printed
/// drains rather than kills), and returns the wait for either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining connections"),
            _ = int.recv() => info!("SIGINT: draining connections"),
        }
    })
}

/// `tollgate ca init`.
pub fn ca_init(state_dir: &Path) -> Result<()> {
    let (ca, created) = CertificateAuthority::load_or_create(state_dir)?;
    outln!(
        "{} {}",
        if created { "created" } else { "exists:" },
        ca.cert_path().display()
    )?;
    Ok(())
}

/// `tollgate ca show`.
pub fn ca_show(state_dir: &Path) -> Result<()> {
    let ca = CertificateAuthority::load(state_dir).with_context(|| {
        format!(
            "no CA in {} yet: run `tollgate ca init --state-dir {}`",
            state_dir.display(),
            state_dir.display()
        )
    })?;
    outln!("CA certificate: {}", ca.cert_path().display())?;
    out!("{}", ca.cert_pem())?;
    Ok(())
}

/// `tollgate status`.
pub fn status(pin_dir: &Path, json: bool) -> Result<()> {
    let st = tollgate_bpf::status(pin_dir)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&st)?)?;
        return Ok(());
    }
    if !st.pinned {
        outln!("not attached: nothing pinned at {}", pin_dir.display())?;
        return Ok(());
    }
    outln!("redirect pinned at {}", pin_dir.display())?;
    if let Some(c) = &st.config {
        outln!(
            "  listener port {}, target ports {}, enabled {}, proxy pid {} ({})",
            c.listen_port,
            if c.all_ports {
                "all".to_owned()
            } else {
                format!("{:?}", c.target_ports)
            },
            c.enabled,
            c.proxy_tgid,
            if c.proxy_alive {
                "running"
            } else {
                "NOT running: agents are refused until it restarts"
            }
        )?;
    }
    for l in &st.links {
        outln!(
            "  {:<10} cgroup {} ({}) link {} prog {} {}",
            format!("{:?}", l.hook).to_lowercase(),
            l.cgroup_id,
            l.cgroup_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "gone".into()),
            l.link_id.map(|i| i.to_string()).unwrap_or("?".into()),
            l.prog_id.map(|i| i.to_string()).unwrap_or("?".into()),
            if l.attached {
                "attached"
            } else {
                "NOT attached"
            }
        )?;
    }
    for k in &st.kernel_attachments {
        if k.tollgate_programs != Some(1) {
            outln!(
                "  warning: {:?} on cgroup {} has {:?} tollgate programs attached (expected 1)",
                k.hook,
                k.cgroup_id,
                k.tollgate_programs
            )?;
        }
    }
    if let Some(c) = &st.config {
        let direct: Vec<String> = c
            .direct
            .iter()
            .map(|r| format!("{} ({})", r.net, r.reason))
            .collect();
        outln!(
            "  direct (never redirected): {}",
            if direct.is_empty() {
                "nothing".to_owned()
            } else {
                direct.join(", ")
            }
        )?;
        let pre = c.preexisting;
        outln!(
            "  pre-existing connections destroyed at the last start: {}",
            pre.destroyed
        )?;
        if pre.failed > 0 {
            outln!(
                "  warning: {} pre-existing connections could not be destroyed: they bypass tollgate until they close (see the run log)",
                pre.failed
            )?;
        }
        if pre.unchecked {
            outln!("  warning: some pre-existing connections could not be examined at the last start (see the run log)")?;
        }
    }
    outln!(
        "  unclaimed redirect records: {}, pending: {}",
        st.orig_dst_entries,
        st.pending_entries
    )?;
    Ok(())
}

/// `tollgate detach`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    let r = tollgate_bpf::detach(pin_dir)?;
    outln!(
        "detached: removed {} link(s), {} program(s), {} map(s) from {}",
        r.links,
        r.programs,
        r.maps,
        pin_dir.display()
    )?;
    Ok(())
}

/// The tokenisation key (created on first start at the default path; the build read an
/// existing one) and the detectors.
fn masking_setup(settings: &Settings) -> Result<Masking> {
    let key = match &settings.masking.key {
        MaskKeySource::Existing { path, key } => {
            info!(path = %path.display(), token_mac = key.token_mac().name(), "masking key");
            key.clone()
        }
        MaskKeySource::Create { path, mac } => create_mask_key(path, *mac)?,
    };
    Ok(Masking {
        key: Some(key),
        detectors: settings.masking.detectors.clone(),
    })
}

/// Creates a fresh 32-byte masking key at `path` (mode 0600, never replacing a file).
fn create_mask_key(path: &Path, mac: TokenMac) -> Result<MaskKey> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness for the masking key: {e}"))?;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the masking key {}", path.display()))?;
    f.write_all(&key)
        .with_context(|| format!("writing the masking key {}", path.display()))?;
    f.sync_all().ok();
    info!(path = %path.display(), "created the masking key for `token` masking; back it up to keep tokens stable");
    MaskKey::new(&key, mac).map_err(|e| anyhow::anyhow!("the new masking key is unusable: {e}"))
}
