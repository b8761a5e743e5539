//! `karvon`: the event-sourced integration backend.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use karvon_app::{Application, Config, Role};
use tracing_subscriber::EnvFilter;

// glibc's allocator spent nearly half of the MQTT ingest's CPU time in
// malloc/free (consolidating and unlinking chunks of the many short-lived
// JSON values a batch makes); mimalloc serves them from per-thread pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "karvon", version, about = "Event-sourced integration backend")]
struct Cli {
    /// TOML configuration file (default: ./karvon.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and/or the workers.
    Serve {
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
        /// Do not apply migrations on start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect or rebuild projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The event store itself.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The NATS relay.
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Manage users who log in with a password.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        id: String,
        /// IANA time zone for daily/weekly/monthly buckets.
        #[arg(long, default_value = "UTC")]
        time_zone: String,
    },
    /// Change a tenant's settings.
    Set {
        id: String,
        /// May a purchase-order receipt bring more than was ordered of a
        /// line (`true`/`false`; refused by default)?
        #[arg(long, action = clap::ArgAction::Set)]
        allow_over_delivery: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Write a tenant's events as NDJSON (one CloudEvents 1.0 object per
    /// line, as on NATS), in feed order, to standard output.
    Export {
        #[arg(long)]
        tenant: String,
        /// Recorded at or after this instant (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Recorded before this instant (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::FixedOffset>>,
    },
    /// Check every stream for holes in its sequences, every event for its
    /// metadata and every idempotency key for its log entry; exits non-zero
    /// when something is wrong.
    Verify,
}

#[derive(Debug, Subcommand)]
enum RelayCommand {
    /// Send every event again from a feed position on (for a JetStream
    /// stream that lost messages); a running relay picks it up.
    Republish {
        /// A feed position as `projections status` shows it
        /// (`<transaction>.<global>`), or `start`.
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key; the key is printed once, alone on the last line.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: read, write, webhooks, admin.
        #[arg(long)]
        scopes: String,
        /// Requests per minute (default 60).
        #[arg(long)]
        rate_limit: Option<i32>,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create or reset a user. The password is read from
    /// KARVON_USER_PASSWORD or, without it, from the first line of stdin.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        username: String,
        #[arg(long, default_value = "read,write")]
        scopes: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionCommand {
    /// Replay all events into fresh tables, then swap them in.
    Rebuild { name: String },
    /// Kind, state, position and lag of every feed consumer.
    Status,
    /// Make a failed consumer try the event it stopped on again.
    Retry { name: String },
    /// Skip the event a failed consumer stopped on (kept with its error).
    Skip { name: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    karvon_app::without_transparent_huge_pages();
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    init_tracing(&config.log);
    match cli.command {
        Command::Serve { role, no_migrate } => {
            if no_migrate {
                config.run_migrations = false;
            }
            tracing::info!(?config, "configuration");
            let app = Application::build(config, role).await?;
            app.run(karvon_app::shutdown_signal()).await
        }
        Command::Migrate => {
            karvon_app::migrate(&config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Projections {
            command: ProjectionCommand::Rebuild { name },
        } => {
            let report = karvon_app::rebuild_projection(&config, &name).await?;
            println!(
                "rebuilt {name}: {} events in {:.2}s, now at {}",
                report.events,
                report.elapsed.as_secs_f64(),
                report.position
            );
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { id, time_zone },
        } => {
            let created = karvon_app::create_tenant(&config, &id, &time_zone).await?;
            println!(
                "{}",
                if created {
                    format!("tenant {id} created")
                } else {
                    format!("tenant {id} already exists")
                }
            );
            Ok(())
        }
        Command::Tenant {
            command:
                TenantCommand::Set {
                    id,
                    allow_over_delivery,
                },
        } => {
            karvon_app::set_allow_over_delivery(&config, &id, allow_over_delivery).await?;
            println!("tenant {id}: allow_over_delivery = {allow_over_delivery}");
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Export { tenant, from, to },
        } => {
            let utc = |at: chrono::DateTime<chrono::FixedOffset>| at.with_timezone(&chrono::Utc);
            let written =
                karvon_app::export_events(&config, &tenant, from.map(utc), to.map(utc)).await?;
            eprintln!("exported {written} events of tenant {tenant}");
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Verify,
        } => {
            let report = karvon_app::verify_events(&config).await?;
            println!(
                "{} events in {} streams; streams with holes: {}; events without metadata: {}; unlogged idempotency keys: {}",
                report.events,
                report.streams,
                report.streams_with_holes.len(),
                report.events_without_metadata.len(),
                report.unlogged_keys
            );
            for (aggregate_type, aggregate_id, events, top) in &report.streams_with_holes {
                println!("hole: {aggregate_type} {aggregate_id}: {events} events, highest sequence {top}");
            }
            for event_id in &report.events_without_metadata {
                println!("no metadata: event {event_id}");
            }
            anyhow::ensure!(report.is_clean(), "the event store has problems (listed above)");
            println!("ok");
            Ok(())
        }
        Command::Relay {
            command: RelayCommand::Republish { from },
        } => {
            let position = karvon_app::republish(&config, &from).await?;
            println!("the relay sends every event after {position} again");
            Ok(())
        }
        Command::ApiKey {
            command:
                ApiKeyCommand::Create {
                    tenant,
                    scopes,
                    rate_limit,
                    name,
                },
        } => {
            let key =
                karvon_app::create_api_key(&config, &tenant, &scopes, rate_limit, name.as_deref())
                    .await?;
            println!(
                "id {} tenant {tenant} scopes {} rate limit {}/min",
                key.id,
                key.scopes.join(","),
                key.rate_limit
            );
            println!("{}", key.key);
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    tenant,
                    username,
                    scopes,
                },
        } => {
            let password = match std::env::var("KARVON_USER_PASSWORD") {
                Ok(password) => password,
                // At a terminal: asked for, not echoed. Piped: one line.
                Err(_) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    rpassword::prompt_password(format!("Password for {username}: "))
                        .context("reading the password from the terminal")?
                }
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from stdin")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            karvon_app::create_user(&config, &tenant, &username, &password, &scopes).await?;
            println!("user {username} saved for tenant {tenant}");
            Ok(())
        }
        Command::Projections {
            command: ProjectionCommand::Retry { name },
        } => {
            karvon_app::retry_consumer(&config, &name).await?;
            println!("{name} will try its event again");
            Ok(())
        }
        Command::Projections {
            command: ProjectionCommand::Skip { name },
        } => {
            let skipped = karvon_app::skip_event(&config, &name).await?;
            println!(
                "{name} skipped event {} ({} {}/{} #{}): {}",
                skipped.event_id,
                skipped.event_type,
                skipped.aggregate_type,
                skipped.aggregate_id,
                skipped.sequence,
                skipped.error
            );
            Ok(())
        }
        Command::Projections {
            command: ProjectionCommand::Status,
        } => {
            let statuses = karvon_app::projection_status(&config).await?;
            for status in statuses {
                println!(
                    "{}\t{:?}\t{}\t{}\tlag {} ({:.1} s)\t{}{}",
                    status.name,
                    status.kind,
                    status.state,
                    status.position,
                    status.lag_events,
                    status.lag_seconds,
                    status.updated_at,
                    status
                        .last_error
                        .map(|error| format!("\tfailed on {:?}: {error}", status.failed_event_id))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
    .context("karvon failed")
}

fn init_tracing(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
