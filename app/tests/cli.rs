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

/// `karvon migrate` against `url`, which must fail; its stderr.
fn migrate_refused(url: &str) -> String {
    let output = karvon()
        .arg("migrate")
        .env("KARVON_DATABASE_URL", url)
        .output()
        .expect("runs");
    assert!(!output.status.success(), "{url} was accepted");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_in_memory_sqlite_store_is_refused() {
    let text = migrate_refused("sqlite::memory:");
    assert!(text.contains("in-memory SQLite"), "{text}");
}

#[test]
fn an_unknown_database_scheme_is_refused_by_name() {
    let text = migrate_refused("mysql://root@127.0.0.1/karvon");
    assert!(
        text.contains("postgres://") && text.contains("sqlite://"),
        "{text}"
    );
}

#[test]
fn serve_with_no_configuration_says_which_backend_and_integrations_are_active() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = std::env::temp_dir().join(format!("karvon-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut child = karvon()
        .arg("serve")
        .env_remove("KARVON_DATABASE_URL")
        .env_remove("KARVON_NATS_URL")
        .env_remove("KARVON_MQTT_URL")
        .env("KARVON_LISTEN", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut started = None;
    while std::time::Instant::now() < deadline {
        match received.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) if line.contains("karvon started") => {
                started = Some(line);
                break;
            }
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let created = dir.join("karvon-data").join("karvon.db").exists();
    let _ = std::fs::remove_dir_all(&dir);
    let started = started.expect("no start-up line within 30 s");
    let plain: String = strip_ansi(&started);
    for expected in [
        "backend=\"sqlite\"",
        "nats=\"off\"",
        "mqtt=\"per acrel integration",
        "karvon-data",
    ] {
        assert!(plain.contains(expected), "{expected} missing in: {plain}");
    }
    assert!(created, "the store was not created in ./karvon-data");
}

/// Log lines may carry colour codes.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn retry_and_skip_name_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("karvon-cli-skip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let run = |args: &[&str]| {
        karvon()
            .args(args)
            .env_remove("KARVON_DATABASE_URL")
            .current_dir(&dir)
            .output()
            .expect("runs")
    };
    let unknown = run(&["projections", "retry", "nonsense"]);
    let live = run(&["projections", "skip", "stock"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!unknown.status.success());
    let text = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        text.contains("unknown feed consumer") && text.contains("transfers"),
        "{text}"
    );
    assert!(!live.status.success());
    let text = String::from_utf8_lossy(&live.stderr);
    assert!(text.contains("stock is not stopped on an event"), "{text}");
}
