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
fn the_sqlite_default_is_refused_with_a_clear_message_until_it_exists() {
    let output = karvon()
        .arg("migrate")
        .env("KARVON_DATABASE_URL", "sqlite://./karvon-data/karvon.db")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("SQLite backend is not available yet"),
        "{text}"
    );
}
