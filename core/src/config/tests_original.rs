//! The original's env sets and files (our fixtures in its shapes, under
//! tests/fixtures/original/) load, infer the backend the original would
//! have used, and name what they set without effect.

use super::*;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/original")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `KEY=VALUE` file (compose `environment:` / `.env` shape).
fn env_file(name: &str) -> Vec<(String, String)> {
    fixture(name)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `data:` of the first ConfigMap in a (multi-document) manifest, as
/// `envFrom: configMapRef` would give it.
fn configmap_env(name: &str) -> Vec<(String, String)> {
    let text = fixture(name);
    let doc = text.split("\n---").next().unwrap_or_default();
    let v: Value = yaml_serde::from_str(doc).unwrap();
    v["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `env:` of the StatefulSet in k8s-routing-statefulset.yaml.
fn statefulset_env() -> Vec<(String, String)> {
    let text = fixture("k8s-routing-statefulset.yaml");
    let doc = text.split("\n---").nth(1).unwrap();
    let v: Value = yaml_serde::from_str(doc).unwrap();
    v["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn compose_redis_urls_alone_select_redis_for_queue_and_store() {
    let c = Config::from_sources(None, &env_file("compose-redis.env")).unwrap();
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert_eq!(c.cache.kind, CacheType::Redis);
    assert_eq!(c.cache.redis_url, "redis://broker.internal:6379");
    let line = backend_line(&c);
    assert_eq!(
        line,
        "queue backend: redis (redis://broker.internal:6379); result store: redis (redis://broker.internal:6379)"
    );
    assert!(
        c.notes
            .inferred
            .iter()
            .any(|n| n.contains("queue.redis_url (OPENHQM_QUEUE__REDIS_URL)")),
        "{:?}",
        c.notes
    );
}

#[test]
fn a_redis_queue_url_alone_brings_the_store_along() {
    let c = Config::from_sources(
        None,
        &with(vec![], &[("OPENHQM_QUEUE__REDIS_URL", "redis://q:6379")]),
    )
    .unwrap();
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert_eq!(c.cache.kind, CacheType::Redis);
    assert_eq!(c.cache.redis_url, "redis://q:6379");
    // An explicit store is kept.
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[
                ("OPENHQM_QUEUE__REDIS_URL", "redis://q:6379"),
                ("OPENHQM_CACHE__TYPE", "embedded"),
            ],
        ),
    )
    .unwrap();
    assert_eq!(c.cache.kind, CacheType::Embedded);
}

#[test]
fn nothing_set_stays_embedded_and_says_where() {
    let c = Config::from_sources(
        None,
        &with(vec![], &[("OPENHQM_QUEUE__DATA_DIR", "/var/lib/openhqm")]),
    )
    .unwrap();
    assert_eq!(c.queue.kind, QueueType::Embedded);
    assert_eq!(c.cache.kind, CacheType::Embedded);
    assert!(c.notes.inferred.is_empty());
    assert_eq!(
        backend_line(&c),
        "queue backend: embedded (data_dir /var/lib/openhqm); result store: embedded (data_dir /var/lib/openhqm)"
    );
}

#[test]
fn mqtt_keys_alone_select_mqtt() {
    let c = Config::from_sources(None, &env_file("mqtt.env")).unwrap();
    assert_eq!(c.queue.kind, QueueType::Mqtt);
    assert_eq!(c.cache.kind, CacheType::Embedded);
    assert!(backend_line(&c).starts_with("queue backend: mqtt (mqtt.internal:1883)"));
}

#[test]
fn keys_of_two_backends_without_a_type_are_refused_naming_them() {
    let err = Config::from_sources(None, &env_file("conflict.env")).unwrap_err();
    assert_eq!(err.key, "queue.type");
    for named in [
        "OPENHQM_QUEUE__REDIS_URL",
        "OPENHQM_QUEUE__MQTT_BROKER_HOST",
        "OPENHQM_QUEUE__TYPE",
    ] {
        assert!(err.message.contains(named), "{named}: {err}");
    }
    // With the type given, the other backend's keys are only a warning.
    let c = Config::from_sources(
        None,
        &with(
            env_file("conflict.env"),
            &[("OPENHQM_QUEUE__TYPE", "redis")],
        ),
    )
    .unwrap();
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert!(
        c.notes
            .ignored
            .iter()
            .any(|n| n.contains("queue.mqtt_broker_host")),
        "{:?}",
        c.notes
    );
}

#[test]
fn the_kafka_keys_of_its_docs_select_kafka_which_fails_loudly() {
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[("OPENHQM_QUEUE__KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")],
        ),
    )
    .unwrap();
    assert_eq!(c.queue.kind, QueueType::Kafka);
    let err = crate::open_queue_backend(&c)
        .err()
        .expect("no kafka built in");
    assert_eq!(err.key, "queue.type");
}

#[test]
fn credentials_never_reach_the_start_up_line() {
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[(
                "OPENHQM_QUEUE__REDIS_URL",
                "redis://app:s3cret@redis:6379/2",
            )],
        ),
    )
    .unwrap();
    let line = backend_line(&c);
    assert!(!line.contains("s3cret"), "{line}");
    assert!(line.contains("redis://***@redis:6379/2"), "{line}");
}

#[test]
fn the_originals_env_sets_load() {
    for name in ["compose-proxy.env", "dotenv-example.env"] {
        let c =
            Config::from_sources(None, &env_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.queue.kind, QueueType::Redis, "{name}");
    }
    let c = Config::from_sources(None, &env_file("dotenv-example.env")).unwrap();
    // server.workers, server.reload and worker.count are named as inert.
    for key in ["server.workers", "server.reload", "worker.count"] {
        assert!(
            c.notes.ignored.iter().any(|n| n.starts_with(key)),
            "{key}: {:?}",
            c.notes
        );
    }
    let c = Config::from_sources(None, &configmap_env("k8s-http-to-queue.yaml")).unwrap();
    assert_eq!(c.cache.kind, CacheType::Redis);
    assert!(!c.proxy.enabled);
}

#[test]
fn queue_to_http_configmap_loads_with_auth_header_and_comma_lists() {
    let env = with(
        configmap_env("k8s-queue-to-http.yaml"),
        &[("BILLING_TOKEN", "t0ken"), ("EVENTS_KEY", "k3y")],
    );
    let c = Config::from_sources(None, &env).unwrap();
    let events = &c.proxy.endpoints["events"];
    assert_eq!(events.auth_header_name.as_deref(), Some("X-Events-Key"));
    assert_eq!(events.auth_token.as_deref(), Some("k3y"));
    assert_eq!(
        c.proxy.forward_headers,
        vec!["Content-Type", "X-Request-ID", "X-Trace"]
    );
    for key in [
        "proxy.retry_max_attempts",
        "proxy.retry_backoff_seconds",
        "worker.count",
    ] {
        assert!(
            c.notes.ignored.iter().any(|n| n.starts_with(key)),
            "{key}: {:?}",
            c.notes
        );
    }
    // The retries they meant are ours, unchanged.
    assert_eq!(c.worker.max_retries, 3);
}

#[test]
fn the_example_yaml_config_loads() {
    let env = with(
        vec![],
        &[
            ("INVENTORY_TOKEN", "a"),
            ("REPORTS_KEY", "b"),
            ("ARCHIVE_USER", "c"),
            ("ARCHIVE_PASS", "d"),
        ],
    );
    let c = Config::from_sources(Some(&fixture("config-example.yaml")), &env).unwrap();
    assert_eq!(c.proxy.endpoints.len(), 3);
    assert!(c
        .notes
        .ignored
        .iter()
        .any(|n| n.starts_with("cache.max_connections")));
}

#[test]
fn proxy_mode_without_a_default_endpoint_is_allowed() {
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[
                ("OPENHQM_PROXY__ENABLED", "true"),
                (
                    "OPENHQM_PROXY__ENDPOINTS__API1__URL",
                    "https://api1.example.org",
                ),
            ],
        ),
    )
    .unwrap();
    assert!(c.proxy.enabled);
    assert!(c.resolve_endpoint(None).is_none());
    assert!(c.resolve_endpoint(Some("api1")).is_some());
}

#[test]
fn routing_config_dict_is_the_inline_table() {
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[
                ("OPENHQM_ROUTING__ENABLED", "true"),
                (
                    "OPENHQM_ROUTING__CONFIG_DICT",
                    r#"{"routes": [{"name": "all", "is_default": true, "endpoint": "app"}]}"#,
                ),
            ],
        ),
    )
    .unwrap();
    let table = c.routing.config.expect("inline table");
    assert_eq!(table["routes"][0]["endpoint"].as_str(), Some("app"));
    let err =
        Config::from_sources(Some("routing:\n  config: {}\n  config_dict: {}\n"), &[]).unwrap_err();
    assert_eq!(err.key, "routing.config_dict");
}

#[test]
fn a_routing_file_with_routing_off_is_named() {
    let c = Config::from_sources(
        None,
        &with(
            vec![],
            &[("OPENHQM_ROUTING__CONFIG_PATH", "/etc/openhqm/routing.yaml")],
        ),
    )
    .unwrap();
    assert!(
        c.notes
            .ignored
            .iter()
            .any(|n| n.contains("routing.enabled is false")),
        "{:?}",
        c.notes
    );
}

#[test]
fn partitioning_from_the_statefulset_keys_on_session_id() {
    let c = Config::from_sources(None, &statefulset_env()).unwrap();
    let p = &c.partitioning;
    assert!(p.enabled);
    assert_eq!(p.partition_key_field, "metadata.session_id");
    let message = serde_json::json!({
        "correlation_id": "c1",
        "payload": {"id": 7},
        "metadata": {"session_id": "sess-42", "type": "cart"},
    });
    assert_eq!(p.key_for(&message).unwrap().as_deref(), Some("sess-42"));
    // partition_count and sticky_session_ttl have no effect: said so.
    for key in [
        "partitioning.partition_count",
        "partitioning.sticky_session_ttl",
    ] {
        assert!(
            c.notes.ignored.iter().any(|n| n.starts_with(key)),
            "{key}: {:?}",
            c.notes
        );
    }
}

#[test]
fn partition_key_falls_back_to_the_session_field() {
    let c = Config::from_sources(
        None,
        &with(vec![], &[("OPENHQM_PARTITIONING__ENABLED", "true")]),
    )
    .unwrap();
    let p = &c.partitioning;
    let key = |m: serde_json::Value| p.key_for(&m);
    assert_eq!(
        key(serde_json::json!({"metadata": {"partition_key": "a", "session_id": "b"}})).unwrap(),
        Some("a".into())
    );
    assert_eq!(
        key(serde_json::json!({"metadata": {"session_id": "b"}})).unwrap(),
        Some("b".into())
    );
    assert_eq!(
        key(serde_json::json!({"metadata": {"session_id": 12}})).unwrap(),
        Some("12".into())
    );
    assert_eq!(key(serde_json::json!({"metadata": {}})).unwrap(), None);
    assert!(
        key(serde_json::json!({"metadata": {"session_id": {"x": 1}}}))
            .unwrap_err()
            .contains("metadata.session_id")
    );
    assert!(key(serde_json::json!({"metadata": {"session_id": "x".repeat(300)}})).is_err());
    // Off (the default): no key from these fields.
    let off = PartitioningConfig::default();
    assert_eq!(
        off.key_for(&serde_json::json!({"metadata": {"session_id": "b"}}))
            .unwrap(),
        None
    );
    let err = Config::from_sources(
        None,
        &with(vec![], &[("OPENHQM_PARTITIONING__STRATEGY", "random")]),
    )
    .unwrap_err();
    assert_eq!(err.key, "partitioning.strategy");
}

/// Every document of a manifest under deploy/kubernetes/original/.
fn ported(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/original")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n---")
        .filter_map(|d| yaml_serde::from_str::<Value>(d).ok())
        .filter(|v| v.is_mapping())
        .collect()
}

/// A container's env as the kubelet would set it: ConfigMap `envFrom`,
/// then `env` (fieldRefs and secrets given stand-in values).
fn container_env(docs: &[Value], kind: &str) -> (Vec<(String, String)>, Vec<String>) {
    let workload = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap();
    let spec = &workload["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    if spec["envFrom"].is_sequence() {
        let cm = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("ConfigMap") && d["data"].is_mapping())
            .unwrap();
        for (k, v) in cm["data"].as_mapping().unwrap() {
            env.push((k.as_str().unwrap().into(), v.as_str().unwrap().into()));
        }
    }
    for e in spec["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value =
            e["value"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| match name.as_str() {
                    "POD_INDEX" => "2".into(),
                    "POD_NAME" | "OPENHQM_QUEUE__REDIS_CONSUMER_NAME" => "openhqm-workers-2".into(),
                    _ => "from-a-secret".into(),
                });
        env.push((name, value));
    }
    let args = spec["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|a| {
            let a = a.as_str().unwrap();
            a.replace("$(POD_NAME)", "openhqm-workers-2")
                .replace("$(POD_INDEX)", "2")
        })
        .collect();
    (env, args)
}

#[test]
fn the_ported_manifests_configure_what_they_say() {
    let docs = ported("http-to-queue.yaml");
    let (env, _) = container_env(&docs, "Deployment");
    let c = Config::from_sources(None, &env).unwrap();
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert_eq!(c.cache.kind, CacheType::Redis);
    assert_eq!(c.worker.admin_port, 8001);
    let docs = ported("queue-to-http.yaml");
    let (env, _) = container_env(&docs, "Deployment");
    let c = Config::from_sources(None, &env).unwrap();
    assert_eq!(
        c.proxy.endpoints["webhook-endpoint"]
            .auth_header_name
            .as_deref(),
        Some("X-API-Key")
    );
    assert_eq!(
        c.proxy.endpoints["backend-api"].auth_token.as_deref(),
        Some("from-a-secret")
    );
    let docs = ported("routing-statefulset.yaml");
    let (env, args) = container_env(&docs, "StatefulSet");
    let (flags, positional) = crate::original_args::split_worker_args(&args).unwrap();
    assert!(flags.is_empty());
    let mut c = Config::from_sources(None, &env).unwrap();
    crate::original_args::apply_worker_args(&mut c, &positional, "openhqm-workers-2", 1);
    assert_eq!(
        c.queue.redis_consumer_name.as_deref(),
        Some("openhqm-workers-2")
    );
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert_eq!(c.partitioning.partition_key_field, "metadata.session_id");
    assert!(c.routing.enabled);
}

/// The original's README quick start writes `queue.redis.url`, its pattern
/// docs `queue.kafka.bootstrap_servers: [..]`: read as the flat keys.
#[test]
fn nested_backend_blocks_of_its_readme_are_read_flat() {
    let c = Config::from_sources(
        Some("queue:\n  type: redis\n  redis:\n    url: redis://cache:6379\nworker:\n  count: 5\n"),
        &[],
    )
    .unwrap();
    assert_eq!(c.queue.redis_url, "redis://cache:6379");
    let c = Config::from_sources(
        Some(
            "queue:\n  kafka:\n    bootstrap_servers: [k1:9092, k2:9092]\n    consumer_group: g\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.queue.kind,
        QueueType::Kafka,
        "inferred from the kafka keys"
    );
    assert_eq!(
        c.queue.kafka_bootstrap_servers.as_deref(),
        Some("k1:9092,k2:9092")
    );
    let c = Config::from_sources(
        None,
        &with(vec![], &[("OPENHQM_QUEUE__REDIS__URL", "redis://r:6379")]),
    )
    .unwrap();
    assert_eq!(c.queue.kind, QueueType::Redis);
    assert_eq!(c.queue.redis_url, "redis://r:6379");
    let err = Config::from_sources(
        Some("queue:\n  redis_url: redis://a\n  redis:\n    url: redis://b\n"),
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "queue.redis.url");
}
