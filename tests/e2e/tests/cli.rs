//! The `tollgate` command line: configuration errors name the field, privilege problems say
//! what to do, and the CA commands manage the interception CA.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use anyhow::Result;
use tollgate_e2e::{workspace_bin, Scratch};

fn tollgate(args: &[&str]) -> Command {
    let mut c = Command::new(workspace_bin("tollgate"));
    c.args(args);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_errors_name_the_field() -> Result<()> {
    let s = Scratch::new("cli")?;
    let cases = [
        (
            "redirect:\n  cgroups: [agents]\n  ports: [443, 0]\n",
            "`redirect.ports[1]`",
        ),
        ("redirect:\n  portz: [443]\n", "portz"),
        (
            "version: 1\nlisten:\n  addresses: [0.0.0.0]\nredirect:\n  cgroups: [a]\n",
            "`listen.addresses[0]`",
        ),
        ("version: 7\n", "`version`"),
        ("intercept:\n  other_traffic: maybe\n", "other_traffic"),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let f = s.join(&format!("bad{i}.yaml"));
        std::fs::write(&f, yaml)?;
        let o = tollgate(&["run", "--config", f.to_str().unwrap()]).output()?;
        assert!(!o.status.success(), "{yaml}");
        assert!(stderr(&o).contains(want), "{yaml}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(f.to_str().unwrap()) || want.starts_with('`'),
            "{}",
            stderr(&o)
        );
    }
    let o = tollgate(&["run"]).output()?;
    assert!(stderr(&o).contains("`redirect.cgroups`"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--cgroup"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn without_privileges_the_error_says_what_to_do() -> Result<()> {
    let s = Scratch::new("cli")?;
    std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o777))?;
    let mount = tollgate_e2e::cgroup2_mount()?;
    let o = tollgate(&[
        "run",
        "--cgroup",
        mount.to_str().unwrap(),
        "--state-dir",
        s.path.to_str().unwrap(),
        "--pin-dir",
        "/sys/fs/bpf/tollgate-cli-unprivileged",
    ])
    .uid(65534)
    .gid(65534)
    .output()?;
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("CAP_BPF") && e.contains("run as root"), "{e}");
    Ok(())
}

#[test]
fn ca_init_is_idempotent_and_show_prints_the_certificate() -> Result<()> {
    let s = Scratch::new("cli")?;
    let dir = s.join("state");
    let o = tollgate(&["ca", "init", "--state-dir", dir.to_str().unwrap()]).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("created"));
    let key = std::fs::metadata(dir.join("ca.key"))?;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read_to_string(dir.join("ca.pem"))?;
    let o = tollgate(&["ca", "init", "--state-dir", dir.to_str().unwrap()]).output()?;
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("exists"));
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem"))?,
        pem,
        "init replaced the CA"
    );
    let o = tollgate(&["ca", "show", "--state-dir", dir.to_str().unwrap()]).output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(dir.join("ca.pem").to_str().unwrap()), "{out}");
    assert!(out.contains(pem.trim()), "{out}");
    let o = tollgate(&[
        "ca",
        "show",
        "--state-dir",
        s.join("none").to_str().unwrap(),
    ])
    .output()?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tollgate ca init"), "{}", stderr(&o));
    Ok(())
}
