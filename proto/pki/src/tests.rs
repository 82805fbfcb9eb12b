use super::*;

fn der(pem_text: &str) -> Vec<u8> {
    first_pem_der(pem_text, "CERTIFICATE").expect("a certificate")
}

#[test]
fn issued_certificates_carry_role_and_name() {
    let (ca, ca_key) = Ca::generate("test").expect("ca");
    let issued = ca
        .issue(&CertRequest {
            identity: Identity::new(Role::Controller, "c1"),
            hosts: vec!["127.0.0.1".into(), "ctl.example".into()],
            validity: DEFAULT_VALIDITY,
        })
        .expect("issue");
    assert_eq!(
        identity_of(&der(&issued.cert_pem)),
        Some(Identity::new(Role::Controller, "c1"))
    );
    // The CA reloads from its PEM files and still signs.
    let again = Ca::load(ca.cert_pem(), &ca_key).expect("reload");
    let viewer = again
        .issue(&CertRequest {
            identity: Identity::new(Role::Viewer, "ann"),
            hosts: vec!["ignored.example".into()],
            validity: Duration::from_secs(60),
        })
        .expect("issue viewer");
    let info = cert_info(&viewer.cert_pem).expect("info");
    assert_eq!(info.identity, Some(Identity::new(Role::Viewer, "ann")));
    let left = info
        .not_after
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left <= Duration::from_secs(60), "{left:?}");
}

#[test]
fn a_csr_is_signed_with_the_cas_own_identity_not_the_requested_one() {
    let (ca, _) = Ca::generate("test").expect("ca");
    // The CSR asks to be a controller; the CA decides it is agent "n1".
    let (csr, key) = new_csr(&Identity::new(Role::Controller, "evil")).expect("csr");
    assert!(key.contains("PRIVATE KEY"));
    let cert = ca
        .sign_csr(
            &csr,
            &CertRequest {
                identity: Identity::new(Role::Agent, "n1"),
                hosts: vec![],
                validity: DEFAULT_NODE_VALIDITY,
            },
        )
        .expect("sign");
    assert_eq!(
        identity_of(&der(&cert)),
        Some(Identity::new(Role::Agent, "n1"))
    );
    assert!(ca
        .sign_csr(
            "not a csr",
            &CertRequest {
                identity: Identity::new(Role::Agent, "n1"),
                hosts: vec![],
                validity: DEFAULT_NODE_VALIDITY,
            }
        )
        .is_err());
}

#[test]
fn fingerprints_names_and_roles() {
    let (ca, _) = Ca::generate("test").expect("ca");
    let fp = ca_fingerprint(ca.cert_pem()).expect("fingerprint");
    assert_eq!(fp.len(), 64);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    for bad in ["", "Upper", "-x", "a/b", "a_b", &"x".repeat(254)] {
        assert!(check_holder_name(bad).is_err(), "{bad:?}");
    }
    assert!(check_holder_name(&"x".repeat(253)).is_ok());
    assert_eq!(agent_server_name("n1").expect("fits"), "n1.agent.drover");
    // A node name that is a valid name but would not leave a DNS name.
    assert!(agent_server_name(&"x".repeat(64)).is_err());
    assert!(agent_server_name(&"x".repeat(241)).is_err());
    assert_eq!("viewer".parse::<Role>().expect("role"), Role::Viewer);
    assert!("root".parse::<Role>().is_err());
    assert_eq!(identity_of(b"garbage"), None);
}

#[test]
fn keys_are_written_for_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = std::env::temp_dir().join(format!("drover-pki-{}", rand::random::<u64>()));
    let dir = TlsDir::new(tmp.join("tls"));
    let (ca, ca_key) = Ca::generate("test").expect("ca");
    let issued = ca
        .issue(&CertRequest {
            identity: Identity::new(Role::Admin, "admin"),
            hosts: vec![],
            validity: DEFAULT_VALIDITY,
        })
        .expect("issue");
    dir.write(ca.cert_pem(), &issued, Some(&ca_key))
        .expect("write");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path), 0o700);
    assert_eq!(mode(&dir.key()), 0o600);
    assert_eq!(mode(&dir.ca_key()), 0o600);
    assert_eq!(mode(&dir.cert()), 0o644);
    let m = TlsMaterial::read_dir(&dir).expect("read back");
    assert!(m.identity.is_some());
    assert!(m.server_config().is_ok());
    let _ = std::fs::remove_dir_all(tmp);
}

#[test]
fn names_follow_the_one_name_rule() {
    let (ca, _) = Ca::generate("test").expect("ca");
    let issue = |role, name: &str| {
        ca.issue(&CertRequest {
            identity: Identity::new(role, name),
            hosts: vec![],
            validity: DEFAULT_VALIDITY,
        })
    };
    // Any valid name, up to 253 characters, for a holder outside DNS.
    let long = vec!["a".repeat(62); 4].join(".") + ".b";
    assert_eq!(long.len(), 253);
    let issued = issue(Role::Admin, &long).expect("issue a long name");
    assert_eq!(
        identity_of(&der(&issued.cert_pem)),
        Some(Identity::new(Role::Admin, long.clone()))
    );
    // An agent's name must also leave `<node>.agent.drover` a DNS name.
    let err = issue(Role::Agent, &long).expect_err("too long for a server name");
    assert!(err.to_string().starts_with("node name "), "{err}");
    assert!(issue(Role::Agent, "rack-2.n1").is_ok());
    // A name breaking the rule is refused, naming it.
    let err = issue(Role::Viewer, "Ann").expect_err("upper case");
    assert!(
        err.to_string()
            .starts_with("certificate name \"Ann\" is invalid"),
        "{err}"
    );
}

#[test]
fn no_certificate_gets_a_name_that_makes_it_look_like_another_role() {
    let (ca, _) = Ca::generate("test").expect("ca");
    let req = |role, host: &str| CertRequest {
        identity: Identity::new(role, "n1"),
        hosts: vec![host.to_string()],
        validity: DEFAULT_NODE_VALIDITY,
    };
    for (role, host) in [
        (Role::Agent, CONTROLLER_SERVER_NAME),
        (Role::Agent, "n2.agent.drover"),
        (Role::Controller, "n2.agent.drover"),
        (Role::Controller, "Controller.Drover."),
    ] {
        let e = ca.issue(&req(role, host)).expect_err(host);
        assert!(e.to_string().contains(host), "{e}");
    }
    // IP addresses are fine for both; the role's own name comes first.
    let ok = ca.issue(&req(Role::Agent, "10.0.0.7")).expect("an IP");
    let d = der(&ok.cert_pem);
    assert!(!d
        .windows(CONTROLLER_SERVER_NAME.len())
        .any(|w| w == CONTROLLER_SERVER_NAME.as_bytes()));
}

#[test]
fn clients_accept_a_server_only_with_the_role_they_dialled() {
    let agent = |name: &str| Some(Identity::new(Role::Agent, name));
    assert!(Server::Controller.accepts(Some(&Identity::new(Role::Controller, "1"))));
    assert!(!Server::Controller.accepts(agent("n1").as_ref()));
    assert!(!Server::Controller.accepts(Some(&Identity::new(Role::Admin, "a"))));
    assert!(!Server::Controller.accepts(None));
    let n1 = Server::agent("n1").expect("valid");
    assert!(n1.accepts(agent("n1").as_ref()));
    assert!(!n1.accepts(agent("n2").as_ref()));
    assert!(!n1.accepts(Some(&Identity::new(Role::Controller, "n1"))));
}

#[test]
fn a_secret_is_never_written_through_a_planted_link() {
    let dir = std::env::temp_dir().join(format!("drover-pki-{}", rand::random::<u64>()));
    create_private_dir(&dir).expect("dir");
    let victim = dir.join("victim");
    std::fs::write(&victim, "untouched").expect("victim");
    let key = dir.join("tls.key");
    std::os::unix::fs::symlink(&victim, dir.join(".tls.key.tmp")).expect("link");
    write_secret(&key, "SECRET").expect("written");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
    assert_eq!(std::fs::read_to_string(&key).expect("read"), "SECRET");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signed_certificate_carries_its_epoch_in_its_serial() {
    let (ca, _) = Ca::generate("test").expect("ca");
    let req = CertRequest {
        identity: Identity::new(Role::Agent, "n2"),
        hosts: vec![],
        validity: DEFAULT_VALIDITY,
    };
    let (csr, _) = new_csr(&req.identity).expect("csr");
    let at3 = ca.sign_csr_at_epoch(&csr, &req, 3).expect("sign");
    assert_eq!(serial_epoch(&der(&at3)), Some(3));
    let plain = ca.sign_csr(&csr, &req).expect("sign");
    assert_eq!(serial_epoch(&der(&plain)), Some(0));
    let issued = ca.issue(&req).expect("issue");
    assert_eq!(serial_epoch(&der(&issued.cert_pem)), Some(0));
    // Serials stay unique.
    let again = ca.sign_csr_at_epoch(&csr, &req, 3).expect("sign");
    assert_ne!(der(&again), der(&at3));
}
