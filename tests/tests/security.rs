
/// Every file under `dir` whose name ends with `.key`.
fn key_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            key_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "key") {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_material_appears_in_any_log() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    let join_flag = format!("--join-token={token}");
    let ca_flag = format!("--ca={ca}");
    c.start_agent("g1", "process", &[&join_flag, &ca_flag])
        .expect("agent");
    c.start_agent("g2", "sim", &[]).expect("agent");
    for n in ["g1", "g2"] {
        c.wait_for("Ready", T, || node_ready(&c, n)).await.expect(n);
    }
    let file = write_manifest(&c, "web");
    ok(&c.ctl().run(&["apply", "-f", &file]));
    ok(&c.ctl().run(&["scale", "deployment/web", "--replicas", "2"]));
    // A refused join with a tampered token is logged too, without the token.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('0') { '1' } else { '0' });
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args(["--name", "g3", "--controllers", &c.servers(), "--runtime", "sim"])
        .arg("--data-dir")
        .arg(c.dir.path().join("agent-g3"))
        .args(["--listen", "127.0.1.201:0", &ca_flag])
        .arg(format!("--join-token={tampered}"))
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(1));
    let ctl_out = c.ctl().run(&["token", "list"]);

    let mut keys = Vec::new();
    key_files(c.dir.path(), &mut keys);
    assert!(keys.len() >= 6, "keys found: {keys:?}");
    // The secret part of the token, and every line of every key's PEM body.
    let secret = token.rsplit('-').next().expect("secret").to_string();
    let mut needles = vec![token.clone(), tampered.clone(), secret];
    for k in &keys {
        let pem = std::fs::read_to_string(k).expect("key");
        needles.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
    }
    let mut logs: Vec<(String, String)> = std::fs::read_dir(c.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.path().display().to_string(), text)
        })
        .collect();
    logs.push(("g3 stderr".into(), String::from_utf8_lossy(&out.stderr).into()));
    logs.push(("token list".into(), String::from_utf8_lossy(&ctl_out.stdout).into()));
    assert!(logs.len() >= 5, "{} logs", logs.len());
    for (name, text) in &logs {
        assert!(!text.contains("PRIVATE KEY"), "{name} holds a private key");
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{name} holds secret material");
        }
    }
}
