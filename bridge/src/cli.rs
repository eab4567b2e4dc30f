//! `openhqm-bridge dlq ...`: the dead-letter tooling from a shell, straight
//! on the broker (no running bridge needed), with the bridge's configuration.

use crate::admin::{detail_json, list_json, DEFAULT_LIMIT, MAX_LIMIT};
use openhqm_core::config::Config;
use openhqm_core::dlq::{self, DeadLetter, DlqError};
use openhqm_core::queue::{Queue, QueueError};
use std::sync::Arc;
use std::time::Duration;

/// Added to `openhqm-bridge --help`.
pub const HELP: &str = "

Dead letters (straight on the broker; the bridge need not run):
  openhqm-bridge dlq list [--limit N] [--after POSITION] [--json]
  openhqm-bridge dlq show POSITION [--json]
  openhqm-bridge dlq replay POSITION|--all [--json]
  openhqm-bridge dlq purge --yes [--json]
See docs/operations.md.";

const USAGE: &str =
    "usage: openhqm-bridge [--config FILE] dlq list [--limit N] [--after POSITION] [--json]
       openhqm-bridge [--config FILE] dlq show POSITION [--json]
       openhqm-bridge [--config FILE] dlq replay POSITION|--all [--json]
       openhqm-bridge [--config FILE] dlq purge --yes [--json]";

const PREFIX: &str = "openhqm-bridge: dlq";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    List { limit: usize, after: Option<String> },
    Show(String),
    Replay(Option<String>),
    Purge,
}

#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    command: Command,
    json: bool,
}

fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut json = false;
    let mut yes = false;
    let mut all = false;
    let mut limit = None;
    let mut after = None;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--yes" | "-y" => yes = true,
            "--all" => all = true,
            "--help" | "-h" | "help" => {
                return Ok(Invocation {
                    command: Command::Help,
                    json,
                })
            }
            "--limit" | "-n" => {
                let n = it.next().ok_or("--limit needs a number")?;
                match n.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = Some(n),
                    _ => return Err(format!("--limit is a number from 1 to {MAX_LIMIT}")),
                }
            }
            "--after" => after = Some(it.next().ok_or("--after needs a position")?.clone()),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option `{flag}`"))
            }
            _ => positional.push(arg.clone()),
        }
    }
    let mut positional = positional.into_iter();
    let verb = positional
        .next()
        .ok_or("name an action: list, show, replay or purge")?;
    let rest: Vec<String> = positional.collect();
    let only = |allowed: &[&str]| -> Result<(), String> {
        let used = [
            ("--limit", limit.is_some()),
            ("--after", after.is_some()),
            ("--all", all),
            ("--yes", yes),
        ];
        match used.iter().find(|(n, on)| *on && !allowed.contains(n)) {
            Some((name, _)) => Err(format!("`{verb}` does not take {name}")),
            None => Ok(()),
        }
    };
    let command = match verb.as_str() {
        "list" | "ls" => {
            only(&["--limit", "--after"])?;
            if !rest.is_empty() {
                return Err("`list` takes no position (use --after)".into());
            }
            Command::List {
                limit: limit.unwrap_or(DEFAULT_LIMIT),
                after,
            }
        }
        "show" => {
            only(&[])?;
            match rest.as_slice() {
                [p] => Command::Show(p.clone()),
                _ => return Err("`show` takes one POSITION".into()),
            }
        }
        "replay" => {
            only(&["--all"])?;
            match (rest.as_slice(), all) {
                ([p], false) => Command::Replay(Some(p.clone())),
                ([], true) => Command::Replay(None),
                _ => return Err("`replay` takes one POSITION, or --all".into()),
            }
        }
        "purge" => {
            only(&["--yes"])?;
            if !rest.is_empty() {
                return Err("`purge` takes no position (use `delete` via the API for one)".into());
            }
            if !yes {
                return Err("`purge` removes every dead letter for good: add --yes".into());
            }
            Command::Purge
        }
        other => return Err(format!("unknown action `{other}`")),
    };
    Ok(Invocation { command, json })
}

/// Run `dlq <args>`; returns the exit code: 0 done, 1 failed, 2 usage.
pub async fn run(config: Config, args: &[String]) -> i32 {
    let invocation = match parse(args) {
        Ok(i) => i,
        Err(msg) => {
            eprintln!("{PREFIX}: {msg}\n{USAGE}");
            return 2;
        }
    };
    if invocation.command == Command::Help {
        println!("{USAGE}\n\nConfiguration: --config FILE (or $OPENHQM_CONFIG) plus OPENHQM_* overrides, as for the server.");
        return 0;
    }
    let backend = match openhqm_core::open_queue_backend(&config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{PREFIX}: {e}");
            return 2;
        }
    };
    let dlq = match backend.open(&config.queue.dlq_name).await {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "{PREFIX}: cannot open queue `{}`: {e}",
                config.queue.dlq_name
            );
            return 1;
        }
    };
    let mut opened = vec![dlq.clone()];
    let code = match execute(&config, backend.as_ref(), &dlq, &invocation, &mut opened).await {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("{PREFIX}: {msg}");
            1
        }
    };
    for q in opened {
        let _ = q.close().await;
    }
    code
}

fn queue_msg(e: QueueError) -> String {
    match e {
        QueueError::Unsupported(_) => format!(
            "{e}: this queue backend cannot list dead letters without consuming them (see docs/backends.md)"
        ),
        other => other.to_string(),
    }
}

async fn execute(
    config: &Config,
    backend: &dyn openhqm_core::queue::QueueBackend,
    dlq: &Arc<dyn Queue>,
    invocation: &Invocation,
    opened: &mut Vec<Arc<dyn Queue>>,
) -> Result<(), String> {
    let json = invocation.json;
    let ttl = Duration::from_secs(config.cache.ttl_seconds);
    match &invocation.command {
        Command::Help => Ok(()),
        Command::List { limit, after } => {
            let items = dlq::list(dlq.as_ref(), after.as_deref(), *limit)
                .await
                .map_err(queue_msg)?;
            if json {
                println!("{}", list_json(&items, *limit));
            } else {
                print_table(dlq.name(), &items, *limit);
            }
            Ok(())
        }
        Command::Show(position) => {
            let (dead, body) = dlq::get(dlq.as_ref(), position)
                .await
                .map_err(queue_msg)?
                .ok_or_else(|| format!("no dead letter at position `{position}`"))?;
            if json {
                println!("{}", detail_json(&dead, &body));
            } else {
                print_detail(&dead, &body);
            }
            Ok(())
        }
        Command::Replay(target) => {
            let store = openhqm_core::open_result_store(config).map_err(|e| e.to_string())?;
            let requests = backend
                .open(&config.queue.request_queue_name)
                .await
                .map_err(|e| {
                    format!(
                        "cannot open queue `{}`: {e}",
                        config.queue.request_queue_name
                    )
                })?;
            opened.push(requests.clone());
            match target {
                Some(position) => {
                    let dead = dlq::replay(
                        dlq.as_ref(),
                        requests.as_ref(),
                        store.as_ref(),
                        position,
                        ttl,
                    )
                    .await
                    .map_err(|e| match e {
                        DlqError::NotFound => format!("no dead letter at position `{position}`"),
                        DlqError::Queue(q) => queue_msg(q),
                        other => other.to_string(),
                    })?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"replayed": 1, "position": dead.position, "message_id": dead.message_id, "queue": requests.name()})
                        );
                    } else {
                        println!(
                            "replayed {} (position {}) to `{}`",
                            dead.message_id,
                            dead.position,
                            requests.name()
                        );
                    }
                    Ok(())
                }
                None => {
                    let counts =
                        dlq::replay_all(dlq.as_ref(), requests.as_ref(), store.as_ref(), ttl)
                            .await
                            .map_err(queue_msg)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"replayed": counts.replayed, "failed": counts.failed, "queue": requests.name()})
                        );
                    } else {
                        println!(
                            "replayed {} dead letter(s) to `{}`, {} failed",
                            counts.replayed,
                            requests.name(),
                            counts.failed
                        );
                    }
                    if counts.failed > 0 {
                        return Err(format!(
                            "{} dead letter(s) could not be replayed and stay in the DLQ",
                            counts.failed
                        ));
                    }
                    Ok(())
                }
            }
        }
        Command::Purge => {
            let removed = dlq::purge(dlq.as_ref()).await.map_err(queue_msg)?;
            if json {
                println!("{}", serde_json::json!({"removed": removed}));
            } else {
                println!("removed {removed} dead letter(s) from `{}`", dlq.name());
            }
            Ok(())
        }
    }
}

/// At most `max` characters of one line of `s`, marked when cut.
fn clip(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max && line.len() == s.len() {
        return line.to_string();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn print_table(queue: &str, items: &[DeadLetter], limit: usize) {
    if items.is_empty() {
        println!("no dead letters in `{queue}`");
        return;
    }
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|d| {
            [
                d.position.clone(),
                d.message_id.clone(),
                d.attempts
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.failed_at.clone().unwrap_or_else(|| "-".into()),
                clip(d.error.as_deref().unwrap_or("-"), 60),
            ]
        })
        .collect();
    let header = ["POSITION", "MESSAGE ID", "ATTEMPTS", "FAILED AT", "ERROR"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 4 {
                out.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out
    };
    println!("{}", line(header));
    for row in &rows {
        println!(
            "{}",
            line([&row[0], &row[1], &row[2], &row[3], &row[4]].map(String::as_str))
        );
    }
    if items.len() == limit {
        if let Some(last) = items.last() {
            println!("(more may follow: --after {})", last.position);
        }
    }
}

fn print_detail(d: &DeadLetter, body: &[u8]) {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    println!("position:     {}", d.position);
    println!("message id:   {}", d.message_id);
    println!("source queue: {}", or_dash(d.source_queue.as_deref()));
    println!(
        "attempts:     {}",
        d.attempts
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("failed at:    {}", or_dash(d.failed_at.as_deref()));
    println!("error:        {}", or_dash(d.error.as_deref()));
    for (k, v) in &d.attributes {
        println!("attribute:    {k}={v}");
    }
    println!("size:         {} bytes", d.size_bytes);
    match std::str::from_utf8(body) {
        Ok(text) => println!("body:\n{text}"),
        Err(_) => println!(
            "body (base64):\n{}",
            openhqm_core::model::encode_base64(body)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        parse(&args)
    }

    #[test]
    fn parses_every_action() {
        assert_eq!(
            p(&["list", "--limit", "5", "--after", "3", "--json"]),
            Ok(Invocation {
                command: Command::List {
                    limit: 5,
                    after: Some("3".into())
                },
                json: true
            })
        );
        assert_eq!(
            p(&["list"]).unwrap().command,
            Command::List {
                limit: DEFAULT_LIMIT,
                after: None
            }
        );
        assert_eq!(
            p(&["show", "1-0"]).unwrap().command,
            Command::Show("1-0".into())
        );
        assert_eq!(
            p(&["replay", "7"]).unwrap().command,
            Command::Replay(Some("7".into()))
        );
        assert_eq!(
            p(&["replay", "--all"]).unwrap().command,
            Command::Replay(None)
        );
        assert_eq!(p(&["purge", "--yes"]).unwrap().command, Command::Purge);
        assert_eq!(p(&["--help"]).unwrap().command, Command::Help);
    }

    #[test]
    fn refuses_what_is_wrong() {
        for bad in [
            &[][..],
            &["frobnicate"],
            &["list", "--limit", "0"],
            &["list", "--limit", "501"],
            &["list", "--limit"],
            &["list", "--bogus"],
            &["list", "extra"],
            &["show"],
            &["show", "1", "2"],
            &["show", "1", "--all"],
            &["replay"],
            &["replay", "1", "--all"],
            &["purge"],
            &["purge", "1", "--yes"],
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn clip_is_char_safe() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ünïcödé-ünïcödé", 5), "ünïc…");
        assert_eq!(clip("two\nlines", 10), "two…");
    }
}
