//! Unit tests of loading and validation.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_the_originals_names() {
    let c = Config::from_sources(None, &[]).unwrap();
    assert_eq!(c.queue.kind, QueueType::Embedded);
    assert_eq!(c.queue.request_queue_name, "openhqm-requests");
    assert_eq!(c.queue.response_queue_name, "openhqm-responses");
    assert_eq!(c.queue.dlq_name, "openhqm-dlq");
    assert_eq!(c.worker.max_retries, 3);
    assert_eq!(c.cache.ttl_seconds, 3600);
}

#[test]
fn file_then_env_overrides() {
    let yaml = "server:\n  port: 9000\nqueue:\n  data_dir: /tmp/x\n";
    let c = Config::from_sources(
        Some(yaml),
        &env(&[
            ("OPENHQM_SERVER__PORT", "9100"),
            ("OPENHQM_WORKER__BATCH_SIZE", "4"),
            ("OPENHQM_MONITORING__LOG_LEVEL", "debug"),
            ("OPENHQM_CONFIG", "/ignored.yaml"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.server.port, 9100);
    assert_eq!(c.worker.batch_size, 4);
    assert_eq!(c.queue.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.monitoring.log_level, "debug");
}

#[test]
fn endpoints_as_json_in_env() {
    let c = Config::from_sources(
        None,
        &env(&[
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "app"),
            (
                "OPENHQM_PROXY__ENDPOINTS",
                r#"{"app": {"url": "http://127.0.0.1:8080", "timeout": 5}}"#,
            ),
        ]),
    )
    .unwrap();
    assert!(c.proxy.enabled);
    let ep = c.resolve_endpoint(None).unwrap();
    assert_eq!(ep.url, "http://127.0.0.1:8080");
    assert_eq!(ep.timeout, Some(5));
    assert!(c.resolve_endpoint(Some("nope")).is_none());
}

#[test]
fn numeric_text_from_env_stays_text() {
    let c = Config::from_sources(None, &env(&[("OPENHQM_QUEUE__REDIS_URL", "12345")])).unwrap();
    assert_eq!(c.queue.redis_url, "12345");
}

#[test]
fn var_expansion() {
    let yaml = "proxy:\n  endpoints:\n    app:\n      url: http://${HOST:-localhost}:8080\n      auth_type: bearer\n      auth_token: ${TOKEN}\n";
    let c = Config::from_sources(Some(yaml), &env(&[("TOKEN", "s3cret")])).unwrap();
    let ep = &c.proxy.endpoints["app"];
    assert_eq!(ep.url, "http://localhost:8080");
    assert_eq!(ep.auth_token.as_deref(), Some("s3cret"));
    let err = Config::from_sources(Some(yaml), &[]).unwrap_err();
    assert_eq!(err.key, "proxy.endpoints.app.auth_token");
    assert!(err.message.contains("TOKEN"), "{err}");
}

#[test]
fn original_keys_need_the_redis_store() {
    let err =
        Config::from_sources(None, &env(&[("OPENHQM_CACHE__ORIGINAL_KEYS", "true")])).unwrap_err();
    assert_eq!(err.key, "cache.original_keys");
    assert!(err.message.contains("embedded"), "{err}");
    let c = Config::from_sources(
        None,
        &env(&[
            ("OPENHQM_CACHE__TYPE", "redis"),
            ("OPENHQM_CACHE__ORIGINAL_KEYS", "true"),
        ]),
    )
    .unwrap();
    assert!(c.cache.original_keys);
}

#[test]
fn errors_name_the_key() {
    let err = Config::from_sources(Some("queue:\n  typo: 1\n"), &[]).unwrap_err();
    assert_eq!(err.key, "queue.typo");
    assert!(err.message.contains("typo"), "{err}");

    let err = Config::from_sources(None, &env(&[("OPENHQM_SERVER__PORT", "eighty")])).unwrap_err();
    assert_eq!(err.key, "server.port");

    let err =
        Config::from_sources(None, &env(&[("OPENHQM_WORKER__MAX_RETRIES", "-1")])).unwrap_err();
    assert_eq!(err.key, "worker.max_retries");
    assert!(err.message.contains("-1"), "{err}");
    assert!(
        !err.message.contains("string"),
        "the numeric complaint is clearer: {err}"
    );

    let err = Config::from_sources(None, &env(&[("OPENHQM_QUEUE__TYPE", "rabbit")])).unwrap_err();
    assert_eq!(err.key, "queue.type");

    let err = Config::from_sources(None, &env(&[("OPENHQM_WORKER__BATCH_SIZE", "0")])).unwrap_err();
    assert_eq!(err.key, "worker.batch_size");

    let err = Config::from_sources(
        None,
        &env(&[
            ("OPENHQM_PROXY__ENABLED", "true"),
            ("OPENHQM_PROXY__DEFAULT_ENDPOINT", "nowhere"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.key, "proxy.default_endpoint");

    let err = Config::from_sources(
        Some("proxy:\n  endpoints:\n    a:\n      url: ftp://x\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "proxy.endpoints.a.url");

    let err = Config::from_sources(
        None,
        &env(&[("OPENHQM_WORKER__RETRY_ON_STATUS", r#"["5xx", "abc"]"#)]),
    )
    .unwrap_err();
    assert_eq!(err.key, "worker.retry_on_status");

    let err = Config::from_sources(Some("- a\n- b\n"), &[]).unwrap_err();
    assert!(err.message.contains("mapping"), "{err}");
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn callbacks(hosts: &[&str]) -> CallbacksConfig {
    CallbacksConfig {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        secret: Some(SECRET.into()),
        ..Default::default()
    }
}

#[test]
fn callback_urls() {
    let c = callbacks(&["hooks.example.com", "*.corp.example", "127.0.0.1"]);
    assert_eq!(c.check_url("https://hooks.example.com/done?x=1"), Ok(()));
    assert_eq!(c.check_url("HTTP://Hooks.Example.COM:8443/a"), Ok(()));
    assert_eq!(c.check_url("http://127.0.0.1:9/cb"), Ok(()));
    assert_eq!(c.check_url("https://a.corp.example/x"), Ok(()));
    assert_eq!(c.check_url("https://a.b.corp.example"), Ok(()));
    // The wildcard covers subdomains, not the domain itself.
    assert!(c
        .check_url("https://corp.example/")
        .unwrap_err()
        .contains("not in callbacks.allowed_hosts"));
    assert!(c.check_url("https://xcorp.example/").is_err());
    assert!(c.check_url("https://hooks.example.com.evil.net/").is_err());
    assert!(c.check_url("https://evil.net/hooks.example.com").is_err());
    let err = c
        .check_url("https://user:pw@hooks.example.com/")
        .unwrap_err();
    assert!(err.contains("user info"), "{err}");
    assert!(c.check_url("https://evil.net@hooks.example.com/").is_err());
    assert!(c
        .check_url("https://hooks.example.com\\@evil.net/")
        .is_err());
    assert!(c.check_url("https://evil.net\\.corp.example/").is_err());
    assert!(c.check_url("https://evil%2enet.corp.example/").is_err());
    let err = c.check_url("ftp://hooks.example.com/").unwrap_err();
    assert!(err.contains("http://"), "{err}");
    assert!(c.check_url("https://hooks.example.com:99999/").is_err());
    assert!(c.check_url("https:///path").is_err());
    let err = CallbacksConfig::default()
        .check_url("https://hooks.example.com/")
        .unwrap_err();
    assert!(err.contains("disabled"), "{err}");
}

#[test]
fn callbacks_config() {
    let c = Config::from_sources(
        None,
        &env(&[
            (
                "OPENHQM_CALLBACKS__ALLOWED_HOSTS",
                r#"["a.example", "*.b.example"]"#,
            ),
            ("OPENHQM_CALLBACKS__SECRET", SECRET),
            ("OPENHQM_CALLBACKS__MAX_ATTEMPTS", "7"),
        ]),
    )
    .unwrap();
    assert_eq!(c.callbacks.allowed_hosts, vec!["a.example", "*.b.example"]);
    assert_eq!(c.callbacks.max_attempts, 7);
    assert_eq!(c.callbacks.timeout_seconds, 10);
    assert_eq!(c.callbacks.secret_key().unwrap().len(), 24);
    assert!(c.callbacks.check_url("https://x.b.example/").is_ok());

    let err = Config::from_sources(
        None,
        &env(&[("OPENHQM_CALLBACKS__ALLOWED_HOSTS", r#"["a.example"]"#)]),
    )
    .unwrap_err();
    assert_eq!(err.key, "callbacks.secret");
    for bad in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_!!!",
        "whsec_c2hvcnQ=",
    ] {
        let err = Config::from_sources(
            Some(&format!(
                "callbacks:\n  allowed_hosts: [a.example]\n  secret: \"{bad}\"\n"
            )),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "callbacks.secret", "{bad}: {err}");
    }
    let err = Config::from_sources(
        Some("callbacks:\n  allowed_hosts: [\"https://a.example/\"]\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "callbacks.allowed_hosts.0");
    let err =
        Config::from_sources(None, &env(&[("OPENHQM_CALLBACKS__MAX_ATTEMPTS", "0")])).unwrap_err();
    assert_eq!(err.key, "callbacks.max_attempts");
    // Disabled by default, and then no secret is needed.
    let c = Config::from_sources(None, &[]).unwrap();
    assert!(!c.callbacks.enabled());
}

#[test]
fn worker_command_settings() {
    let c = Config::from_sources(
        Some(
            "worker:\n  command: [python3, p.py]\n  command_processes: 3\n  timeout_seconds: 40\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.worker.command, vec!["python3", "p.py"]);
    assert_eq!(c.worker.command_processes, 3);
    assert_eq!(
        c.worker.command_timeout(),
        std::time::Duration::from_secs(40)
    );
    let c = Config::from_sources(
        None,
        &env(&[
            ("OPENHQM_WORKER__COMMAND", r#"["./proc", "--fast"]"#),
            ("OPENHQM_WORKER__COMMAND_TIMEOUT_SECONDS", "5"),
        ]),
    )
    .unwrap();
    assert_eq!(c.worker.command, vec!["./proc", "--fast"]);
    assert_eq!(c.worker.command_processes, 1);
    assert_eq!(
        c.worker.command_timeout(),
        std::time::Duration::from_secs(5)
    );
    for (var, val, key) in [
        (
            "OPENHQM_WORKER__COMMAND_PROCESSES",
            "0",
            "worker.command_processes",
        ),
        (
            "OPENHQM_WORKER__COMMAND_TIMEOUT_SECONDS",
            "0",
            "worker.command_timeout_seconds",
        ),
        ("OPENHQM_WORKER__COMMAND", r#"["", "x"]"#, "worker.command"),
    ] {
        let err = Config::from_sources(None, &env(&[(var, val)])).unwrap_err();
        assert_eq!(err.key, key);
    }
}

#[test]
fn display_names_key_and_fix() {
    let e = ConfigError::new("queue.type", "unknown variant");
    assert_eq!(
        e.to_string(),
        "invalid configuration: `queue.type`: unknown variant"
    );
}

#[test]
fn admin_token_is_off_by_default_and_never_empty() {
    let c = Config::from_sources(None, &[]).unwrap();
    assert_eq!(c.server.admin_token, None);
    let c = Config::from_sources(
        Some("server:\n  admin_token: ${ADMIN}\n"),
        &env(&[("ADMIN", "s3cret")]),
    )
    .unwrap();
    assert_eq!(c.server.admin_token.as_deref(), Some("s3cret"));
    // A numeric-looking token from the environment stays a string.
    let c = Config::from_sources(None, &env(&[("OPENHQM_SERVER__ADMIN_TOKEN", "12345")])).unwrap();
    assert_eq!(c.server.admin_token.as_deref(), Some("12345"));
    let err =
        Config::from_sources(None, &env(&[("OPENHQM_SERVER__ADMIN_TOKEN", " ")])).unwrap_err();
    assert_eq!(err.key, "server.admin_token");
}

#[test]
fn explicit_keys_are_known_and_connection_limits_checked() {
    let c = Config::from_sources(
        Some("worker:\n  admin_host: 127.0.0.1\n"),
        &env(&[("OPENHQM_SERVER__IDLE_TIMEOUT_SECONDS", "5")]),
    )
    .unwrap();
    assert!(c.is_set("worker.admin_host") && c.is_set("server.idle_timeout_seconds"));
    assert!(!c.is_set("worker.admin_port"), "left at its default");
    assert_eq!(c.server.idle_timeout_seconds, 5.0);
    let c = Config::from_sources(None, &env(&[("OPENHQM_WORKER__ADMIN_PORT", "8001")])).unwrap();
    assert!(
        c.is_set("worker.admin_port"),
        "set to the default value is still set"
    );
    for (var, val) in [
        ("OPENHQM_SERVER__HEADER_READ_TIMEOUT_SECONDS", "0"),
        ("OPENHQM_SERVER__BODY_READ_TIMEOUT_SECONDS", "-1"),
        ("OPENHQM_SERVER__MAX_CONNECTIONS", "0"),
    ] {
        let err = Config::from_sources(None, &env(&[(var, val)])).unwrap_err();
        let key = var
            .trim_start_matches("OPENHQM_SERVER__")
            .to_ascii_lowercase();
        assert_eq!(err.key, format!("server.{key}"), "{var}");
    }
}
