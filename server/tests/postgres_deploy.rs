//! PostgreSQL as an operator deploys it: a cluster that accepts only TLS, reached with
//! `sslmode=require` and the CA in `sslrootcert` (plain, an unknown CA and a wrong host name
//! are refused), and the server running as the least-privileged role the README documents.

use nbde_proto::Curve;
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::policy::DeviceState;
use nbde_server::store::{Location, Store, StoreError};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA (written to `dir/ca.pem`), and a server certificate for `localhost` signed by it.
fn pki(dir: &std::path::Path) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_pem = other
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    std::fs::write(dir.join("other.pem"), other_pem).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn open(url: &str) -> Result<Store, StoreError> {
    let store = Store::open_location(&Location::database(url).unwrap())?;
    store.unlock(Kek::generate().unwrap()).unwrap();
    Ok(store)
}

fn refused(url: &str) -> String {
    match open(url) {
        Ok(_) => panic!("{url}: opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_is_required_verified_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki(dir.path());
    let cluster = testkit::Postgres::start();
    cluster.require_tls(&cert, &key);
    let plain = cluster
        .create_database()
        .replace("@127.0.0.1:", "@localhost:");
    let ca = dir.path().join("ca.pem");
    let other = dir.path().join("other.pem");

    let e = refused(&plain);
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");
    assert!(!e.contains(cluster.password()), "{e}");

    let good = format!("{plain}?sslmode=require&sslrootcert={}", ca.display());
    let store = open(&good).unwrap();
    store
        .add_org("acme", &keys::generate_signing_key().unwrap())
        .unwrap();
    assert_eq!(store.orgs().unwrap().len(), 1);
    let tls_sessions = cluster.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'nbde-server' AND s.ssl",
    );
    assert!(
        tls_sessions.trim().parse::<u32>().unwrap() >= 1,
        "{tls_sessions}"
    );

    let e = refused(&format!(
        "{plain}?sslmode=require&sslrootcert={}",
        other.display()
    ));
    assert!(e.to_lowercase().contains("certificate"), "unknown CA: {e}");
    let by_address = good.replace("@localhost:", "@127.0.0.1:");
    let e = refused(&by_address);
    assert!(
        e.to_lowercase().contains("certificate"),
        "name mismatch: {e}"
    );
}

/// The role and grants of the README, as written there: as a superuser, then the last one
/// in the new database (a function's grant belongs to the database it is made in).
const LEAST_PRIVILEGE: [&str; 3] = [
    "CREATE ROLE nbde LOGIN PASSWORD 'role-password'",
    "CREATE DATABASE nbde OWNER nbde",
    "GRANT pg_checkpoint, pg_monitor TO nbde",
];
const IN_ITS_DATABASE: &str = "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO nbde";

#[test]
fn the_documented_least_privileged_role_runs_everything_and_erases() {
    let cluster = testkit::Postgres::start();
    for statement in LEAST_PRIVILEGE {
        cluster.psql(statement);
    }
    cluster.psql_in("nbde", IN_ITS_DATABASE);
    let url = format!(
        "postgres://nbde:role-password@127.0.0.1:{}/nbde",
        cluster.port()
    );
    let store = open(&url).unwrap();
    store
        .add_org("acme", &keys::generate_signing_key().unwrap())
        .unwrap();
    let exchange = keys::generate_exchange_key(Curve::P256).unwrap();
    store.add_device("acme", "web1", &exchange).unwrap();
    store
        .set_device_state("acme", "web1", DeviceState::Retired)
        .unwrap();
    // Ok only once the WAL directory shows no segment older than the deletion.
    store.erase_destroyed().unwrap();
    let super_role = cluster.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'nbde'");
    assert_eq!(super_role.trim(), "f", "not a superuser");
}
