//! The original worker's command line, `python -m openhqm.worker.worker
//! [worker_id] [worker_index] [worker_count]` (its compose file passes
//! `worker-1`, its StatefulSet `$(POD_NAME) $(POD_INDEX) 5`).
//!
//! - `worker_id` names this consumer (Redis consumer, MQTT client ID) unless
//!   `queue.redis_consumer_name` / `queue.mqtt_client_id` are set. It is used
//!   as it is when it is the host name (a pod name: unique and stable across
//!   restarts); otherwise `<id>-<host>-<pid>`, because compose replicas all
//!   get `worker-1` and two live processes must never share a consumer.
//! - `worker_index` and `worker_count` gave the original's fixed partition
//!   assignment; here the queue spreads messages over the workers that are
//!   up, so both are checked (numbers, as the original required) and logged.
//! - A leading `python -m openhqm.worker.worker` (a compose `command:` given
//!   to our image as arguments) is dropped.

use crate::config::Config;

/// The module name the original's manifests start the worker with.
const WORKER_MODULE: &str = "openhqm.worker.worker";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerArgs {
    pub worker_id: Option<String>,
    pub index: Option<u64>,
    pub count: Option<u64>,
    pub python_prefix: bool,
}

/// The API's module in the original's `python -m openhqm.api.listener`.
const API_MODULE: &str = "openhqm.api.listener";

/// Drop a leading `python -m openhqm.api.listener` (the original compose
/// file's API `command:`, which our bridge image receives as arguments);
/// true when it was there.
pub fn strip_api_prefix(args: &mut Vec<String>) -> bool {
    let found = args.len() >= 3
        && matches!(args[0].as_str(), "python" | "python3")
        && args[1] == "-m"
        && args[2] == API_MODULE;
    if found {
        args.drain(..3);
    }
    found
}

/// Take the positional arguments out of `args`; the rest (flags) is left
/// for the usual parser.
pub fn split_worker_args(args: &[String]) -> Result<(Vec<String>, WorkerArgs), String> {
    let mut out = WorkerArgs::default();
    let mut rest: &[String] = args;
    if rest.len() >= 3
        && matches!(rest[0].as_str(), "python" | "python3")
        && rest[1] == "-m"
        && rest[2] == WORKER_MODULE
    {
        out.python_prefix = true;
        rest = &rest[3..];
    }
    let mut flags = Vec::new();
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                flags.push(arg.clone());
                if let Some(v) = it.next() {
                    flags.push(v.clone());
                }
            }
            a if a.starts_with('-') => flags.push(arg.clone()),
            _ => positional.push(arg.clone()),
        }
    }
    if positional.len() > 3 {
        return Err(format!(
            "unknown argument `{}` (at most three: worker id, worker index, worker count)",
            positional[3]
        ));
    }
    let number = |i: usize, what: &str| -> Result<Option<u64>, String> {
        positional
            .get(i)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("argument {} ({what}) must be a number, got `{v}`", i + 1))
            })
            .transpose()
    };
    if let Some(id) = positional.first() {
        if id.trim().is_empty() {
            return Err("argument 1 (the worker id) is empty".into());
        }
        out.worker_id = Some(id.clone());
    }
    out.index = number(1, "the worker index")?;
    out.count = number(2, "the worker count")?;
    Ok((flags, out))
}

/// Apply the arguments to the configuration, with start-up notes saying so.
pub fn apply_worker_args(config: &mut Config, args: &WorkerArgs, host: &str, pid: u32) {
    if args.python_prefix {
        config.notes.ignored.push(format!(
            "arguments `python -m {WORKER_MODULE}` (the image runs openhqm-worker itself)"
        ));
    }
    if let Some(id) = &args.worker_id {
        let name = if id == host {
            id.clone()
        } else {
            format!("{id}-{host}-{pid}")
        };
        let q = &mut config.queue;
        if q.redis_consumer_name.is_none() {
            q.redis_consumer_name = Some(name.clone());
        }
        if q.mqtt_client_id.as_deref().is_none_or(str::is_empty) {
            q.mqtt_client_id = Some(name.clone());
        }
        config.notes.inferred.push(format!(
            "worker id `{id}` (argument 1) names the consumer `{}`",
            q.redis_consumer_name.as_deref().unwrap_or(&name)
        ));
    }
    if args.index.is_some() || args.count.is_some() {
        let show = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        config.notes.ignored.push(format!(
            "worker index {} and count {} (arguments 2 and 3; the queue spreads messages over the workers that are up)",
            show(args.index),
            show(args.count)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(args: &[&str]) -> Result<(Vec<String>, WorkerArgs), String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        split_worker_args(&args)
    }

    #[test]
    fn the_originals_command_lines() {
        // docker-compose.yml: `python -m openhqm.worker.worker worker-${WORKER_ID:-1}`.
        let (flags, a) = split(&["python", "-m", "openhqm.worker.worker", "worker-1"]).unwrap();
        assert!(flags.is_empty());
        assert!(a.python_prefix);
        assert_eq!(a.worker_id.as_deref(), Some("worker-1"));
        // k8s-routing-configmap.yaml: `$(POD_NAME) $(POD_INDEX) 5`, resolved.
        let mut api: Vec<String> = ["python", "-m", "openhqm.api.listener", "--config", "a"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert!(strip_api_prefix(&mut api));
        assert_eq!(api, vec!["--config", "a"]);
        assert!(!strip_api_prefix(&mut api));
        let (_, a) = split(&["openhqm-workers-3", "3", "5", "--config", "c.yaml"]).unwrap();
        assert_eq!(a.index, Some(3));
        assert_eq!(a.count, Some(5));
        let (flags, _) = split(&["w", "--config", "c.yaml"]).unwrap();
        assert_eq!(flags, vec!["--config", "c.yaml"]);
        // Unresolved `$(POD_INDEX)` (the label is missing): said plainly.
        let err = split(&["w", "$(POD_INDEX)"]).unwrap_err();
        assert!(
            err.contains("worker index") && err.contains("$(POD_INDEX)"),
            "{err}"
        );
        assert!(split(&["a", "1", "2", "3"]).unwrap_err().contains("`3`"));
        assert!(split(&[""]).is_err());
    }

    #[test]
    fn the_worker_id_names_a_consumer_no_replica_shares() {
        let (_, a) = split(&["openhqm-workers-0", "0", "5"]).unwrap();
        let mut c = Config::default();
        apply_worker_args(&mut c, &a, "openhqm-workers-0", 1);
        assert_eq!(
            c.queue.redis_consumer_name.as_deref(),
            Some("openhqm-workers-0")
        );
        assert_eq!(c.queue.mqtt_client_id.as_deref(), Some("openhqm-workers-0"));
        assert!(c
            .notes
            .ignored
            .iter()
            .any(|n| n.contains("index 0 and count 5")));
        // Compose replicas all get `worker-1`: host and pid tell them apart.
        let (_, a) = split(&["worker-1"]).unwrap();
        let mut c = Config::default();
        apply_worker_args(&mut c, &a, "3f2a9c", 1);
        assert_eq!(
            c.queue.redis_consumer_name.as_deref(),
            Some("worker-1-3f2a9c-1")
        );
        // An explicit name wins.
        let mut c = Config::default();
        c.queue.redis_consumer_name = Some("mine".into());
        apply_worker_args(&mut c, &a, "h", 7);
        assert_eq!(c.queue.redis_consumer_name.as_deref(), Some("mine"));
    }
}
