//! plumb: container networks from Linux kernel primitives. The binary is a thin shell: it
//! parses the command line and hands each subcommand to its module.

mod apply;
mod census;
mod commands;
mod discover;
mod failure;
mod output;
mod processes;
mod runfile;
mod stackfile;
mod state;
mod supervisor;
mod supervisor_socket;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{Context, Format};
use state::StateDir;

#[derive(Parser)]
#[command(
    name = "plumb",
    version,
    about = "Container networks from Linux kernel primitives: namespaces, veth pairs, bridges, routes, nftables"
)]
struct Cli {
    /// Where plumb keeps leases, process ids and logs.
    #[arg(long, global = true, env = "PLUMB_STATE_DIR", default_value = "/var/lib/plumb")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the kernel match the stack file (idempotent; applies only the difference).
    Up {
        /// The stack file.
        #[arg(short, long, default_value = "plumb.toml")]
        file: PathBuf,
        /// Print the plan as a runnable shell script of ip/nft commands and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan (steps and their operations) as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// Supervise the services in this process (Ctrl-C stops them) instead of in the background.
        #[arg(long, conflicts_with = "dry_run")]
        foreground: bool,
    },
    /// Remove everything a stack made, and nothing else.
    Down {
        /// The stack file naming the stack (default: ./plumb.toml when no STACK is given).
        #[arg(short, long, conflicts_with = "stack")]
        file: Option<PathBuf>,
        /// The stack's name.
        stack: Option<String>,
        /// Print the plan as a runnable shell script and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan (steps and their operations) as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// List the containers of every stack that is up.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a container's network namespace.
    Exec {
        /// SVC-k, SVC (replica 1) or STACK/SVC-k.
        container: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show one network or container, as asked for and as the kernel holds it.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a service's or container's output (several replicas: prefixed by container).
    Logs {
        /// SVC or SVC-k (or STACK/...).
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// How many lines of the past to show per container.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Restart every replica of a service.
    Restart { service: String },
    /// Stop a service's processes (the containers stay wired).
    Stop { service: String },
    /// Start a service stopped with `plumb stop`.
    Start { service: String },
    /// Bring up the reference shop app (nginx, API gateway, 3 product replicas, Redis).
    Demo {
        /// Remove it instead.
        #[arg(long)]
        down: bool,
    },
    /// Run a stack's supervisor (started by `plumb up`).
    #[command(hide = true)]
    Supervise { stack: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        state: StateDir::new(cli.state_dir),
    };
    let result = match cli.command {
        Command::Up {
            file,
            dry_run,
            json,
            foreground,
        } => {
            use commands::up::{Mode, Supervision};
            let mode = match (dry_run, foreground) {
                (true, _) => Mode::DryRun(Format::from_json_flag(json)),
                (false, true) => Mode::Apply(Supervision::Foreground),
                (false, false) => Mode::Apply(Supervision::Background),
            };
            commands::up::run(&ctx, &file, mode)
        }
        Command::Down {
            file,
            stack,
            dry_run,
            json,
        } => {
            use commands::down::Mode;
            let mode = if dry_run {
                Mode::DryRun(Format::from_json_flag(json))
            } else {
                Mode::Apply
            };
            match (file, stack) {
                (_, Some(stack)) => commands::down::run(&ctx, &stack, mode),
                (file, None) => stackfile::stack_name(&file.unwrap_or_else(|| PathBuf::from("plumb.toml")))
                    .and_then(|s| commands::down::run(&ctx, &s, mode)),
            }
        }
        Command::Ps { json } => commands::ps::run(&ctx, Format::from_json_flag(json)),
        Command::Exec { container, command } => commands::exec::run(&ctx, &container, &command),
        Command::Inspect { name, json } => commands::inspect::run(&ctx, &name, Format::from_json_flag(json)),
        Command::Logs { name, follow, tail } => {
            let follow = if follow {
                commands::logs::Follow::New
            } else {
                commands::logs::Follow::Once
            };
            commands::logs::run(&ctx, &name, follow, tail)
        }
        Command::Restart { service } => commands::control::run(&ctx, commands::control::Action::Restart, &service),
        Command::Stop { service } => commands::control::run(&ctx, commands::control::Action::Stop, &service),
        Command::Start { service } => commands::control::run(&ctx, commands::control::Action::Start, &service),
        Command::Demo { down } => {
            let action = if down {
                commands::demo::Action::Down
            } else {
                commands::demo::Action::Up
            };
            commands::demo::run(&ctx, action)
        }
        Command::Supervise { stack } => supervisor::Supervisor::new(&ctx.state.stack_dir(&stack)).and_then(|s| s.run()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("plumb: {failure}");
            ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
        }
    }
}
