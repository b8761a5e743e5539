//! `karvon`: the event-sourced integration backend.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use karvon_app::{Application, Config, Role};
use tracing_subscriber::EnvFilter;

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
}

#[derive(Debug, Subcommand)]
enum ProjectionCommand {
    /// Replay all events into fresh tables, then swap them in.
    Rebuild { name: String },
    /// Position and lag of every projection.
    Status,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
        Command::Projections {
            command: ProjectionCommand::Status,
        } => {
            let statuses = karvon_app::projection_status(&config).await?;
            for status in statuses {
                println!(
                    "{}\t{}\tlag {}\t{}",
                    status.name, status.position, status.lag_events, status.updated_at
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
