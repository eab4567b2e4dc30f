//! OpenHQM's shared library: configuration, the message envelope, the queue
//! and result-store contracts with their backends, and the retry policy.

pub mod backends;
pub mod build_info;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod cors;
pub mod dlq;
pub mod envelope;
pub mod headers;
pub mod metrics;
pub mod model;
pub mod original;
pub mod original_args;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod time;

pub use backends::{built_in_queue_types, open_queue_backend, open_result_store};
use config::Config;

/// A program's command line, as [`parse_args`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Run: the config file (`--config`, else none here) and, when the
    /// program has subcommands and one was named, that subcommand and its
    /// own arguments (`["dlq", "list", "--json"]`); empty to run the server.
    Run {
        config: Option<std::path::PathBuf>,
        command: Vec<String>,
    },
    Help,
    Version,
}

/// Read a command line (without the program name). `--config FILE` may
/// appear anywhere, also after a subcommand; everything else after the
/// first word naming one of `commands` belongs to that subcommand.
pub fn parse_args(args: &[String], commands: &[&str]) -> Result<Args, String> {
    let mut config = None;
    let mut command = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => config = Some(p.into()),
                None => return Err("--config needs a file path".into()),
            },
            _ if !command.is_empty() => command.push(arg.clone()),
            "--help" | "-h" => return Ok(Args::Help),
            "--version" | "-V" => return Ok(Args::Version),
            word if commands.contains(&word) => command.push(arg.clone()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args::Run { config, command })
}

/// Read `--config PATH` (or `OPENHQM_CONFIG`) and the environment; on error
/// print what is wrong and exit 2 before anything binds a port.
pub fn load_config_or_exit(program: &str) -> Config {
    load_program_or_exit(program, &[], "").0
}

/// [`load_config_or_exit`] for a program with subcommands: also returns the
/// subcommand named on the command line (empty when none). `help` is added
/// to the `--help` text.
pub fn load_program_or_exit(program: &str, commands: &[&str], help: &str) -> (Config, Vec<String>) {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The original's compose `command: python -m openhqm.api.listener`.
    let python = original_args::strip_api_prefix(&mut args);
    let (mut config, command) = load_args_or_exit(program, commands, help, &args);
    if python {
        config.notes.ignored.push(
            "arguments `python -m openhqm.api.listener` (the image runs the program itself)".into(),
        );
    }
    (config, command)
}

/// [`load_config_or_exit`] for the worker: also accepts the original's
/// positional arguments (`worker-1`, `$(POD_NAME) $(POD_INDEX) 5`; see
/// [`original_args`]).
pub fn load_worker_or_exit(program: &str) -> Config {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flags, positional) =
        original_args::split_worker_args(&args).unwrap_or_else(|m| exit_usage(program, &m));
    let help = "\n\nThe original's positional arguments are accepted: [WORKER_ID [WORKER_INDEX [WORKER_COUNT]]]; WORKER_ID names the consumer, the others are logged (docs/migration.md).";
    let (mut config, _) = load_args_or_exit(program, &[], help, &flags);
    original_args::apply_worker_args(
        &mut config,
        &positional,
        &backends::identity::host_name(),
        std::process::id(),
    );
    config
}

fn load_args_or_exit(
    program: &str,
    commands: &[&str],
    help: &str,
    args: &[String],
) -> (Config, Vec<String>) {
    let (path, command) = match parse_args(args, commands) {
        Ok(Args::Run { config, command }) => (
            config.or_else(|| std::env::var_os(config::CONFIG_FILE_ENV).map(Into::into)),
            command,
        ),
        Ok(Args::Help) => {
            println!("usage: {program} [--config FILE]\n\nConfiguration: FILE (or $OPENHQM_CONFIG) plus OPENHQM_<SECTION>__<KEY> environment overrides; see README.md.{help}");
            std::process::exit(0);
        }
        Ok(Args::Version) => {
            println!("{}", build_info::version_line(program));
            std::process::exit(0);
        }
        Err(msg) => exit_usage(program, &msg),
    };
    match Config::load(path.as_deref()) {
        Ok(c) => (c, command),
        Err(e) => startup::fail(program, e),
    }
}

fn exit_usage(program: &str, msg: &str) -> ! {
    startup::fail(program, format!("{msg}\nusage: {program} [--config FILE]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        parse_args(&args, &["dlq"])
    }

    #[test]
    fn args_without_and_with_a_subcommand() {
        assert_eq!(
            parse(&[]),
            Ok(Args::Run {
                config: None,
                command: vec![]
            })
        );
        assert_eq!(
            parse(&["-c", "a.yaml"]),
            Ok(Args::Run {
                config: Some("a.yaml".into()),
                command: vec![]
            })
        );
        assert_eq!(
            parse(&["dlq", "list", "--config", "b.yaml", "--json", "--help"]),
            Ok(Args::Run {
                config: Some("b.yaml".into()),
                command: vec![
                    "dlq".into(),
                    "list".into(),
                    "--json".into(),
                    "--help".into()
                ]
            }),
            "--config anywhere; --help after the subcommand is the subcommand's"
        );
        assert_eq!(parse(&["--help", "dlq"]), Ok(Args::Help));
        assert_eq!(parse(&["-V"]), Ok(Args::Version));
        assert!(parse(&["list"]).unwrap_err().contains("`list`"));
        assert!(parse(&["dlq", "--config"]).is_err());
        assert!(
            parse_args(&["dlq".to_string()], &[]).is_err(),
            "no subcommands"
        );
    }
}
