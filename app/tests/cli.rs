//! The `karvon` binary's command line. (Also makes `cargo test` build the
//! binary that the kill -9 tests in `tests/` start.)

use std::process::Command;

fn karvon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_karvon"))
}

#[test]
fn help_lists_the_subcommands() {
    let output = karvon().arg("--help").output().expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for command in ["serve", "migrate", "projections"] {
        assert!(text.contains(command), "{text}");
    }
}

#[test]
fn an_unknown_projection_is_refused_by_name() {
    let output = karvon()
        .args(["projections", "rebuild", "nonsense"])
        .env(
            "KARVON_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/karvon_cli_test",
        )
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("unknown projection") && text.contains("stock"),
        "{text}"
    );
}

#[test]
fn with_no_configuration_the_store_is_a_sqlite_file_in_karvon_data() {
    let dir = std::env::temp_dir().join(format!(
        "karvon-cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let output = karvon()
        .arg("migrate")
        .env_remove("KARVON_DATABASE_URL")
        .current_dir(&dir)
        .output()
        .expect("runs");
    let created = dir.join("karvon-data").join("karvon.db").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(created, "no ./karvon-data/karvon.db after migrate");
}

#[test]
fn an_unknown_database_scheme_is_refused_by_name() {
    let output = karvon()
        .arg("migrate")
        .env("KARVON_DATABASE_URL", "mysql://root@127.0.0.1/karvon")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("postgres://") && text.contains("sqlite://"),
        "{text}"
    );
}
