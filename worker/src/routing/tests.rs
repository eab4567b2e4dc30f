use super::*;
use serde_json::json;

const ROUTES: &str = r#"
version: "1.0"
routes:
  - name: orders-jq
    match_field: metadata.type
    match_value: order.create
    priority: 10
    endpoint: orders
    method: put
    transform_type: jq
    transform: "{user: .payload.name, n: (.payload.items | length)}"
    header_mappings:
      X-Tenant: metadata.tenant
      X-Trace: "t-{{correlation_id}}-{{metadata.attempt}}"
      X-Missing: metadata.nope
    query_params:
      first: payload.items.0.id
      key: correlation_id
    timeout: 30
    max_retries: 2
  # Same match, lower priority: never reached for order.create.
  - name: orders-shadowed
    match_field: metadata.type
    match_value: order.create
    endpoint: shadow
  - name: ids-jsonpath
    match_field: metadata.type
    match_pattern: "ids\\."
    priority: 5
    endpoint: ids
    transform_type: jsonpath
    transform: "$.payload.items[*].id"
  - name: notify-template
    match_field: metadata.attempt
    match_value: 3
    priority: 5
    endpoint: notify
    transform_type: template
    transform: '{"to": "{{payload.name}}", "items": {{payload.items}}, "none": {{payload.nope}}}'
  - name: disabled
    is_default: true
    priority: 100
    endpoint: never
    enabled: false
  - name: raw
    match_field: metadata.raw
    match_value: true
    endpoint: raw
default_endpoint: fallback
"#;

fn table() -> RoutingTable {
    RoutingTable::from_text(ROUTES).unwrap()
}

fn message(kind: &str) -> Value {
    json!({
        "correlation_id": "c-1",
        "payload": {"name": "Ada \"the\" Countess", "items": [{"id": 7}, {"id": 8}]},
        "metadata": {"type": kind, "tenant": "acme", "attempt": 1},
        "headers": {}
    })
}

#[test]
fn table_is_shareable_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RoutingTable>();
}

#[test]
fn priority_then_match_value_with_jq_headers_and_query() {
    let routed = table().route(&message("order.create")).unwrap();
    assert_eq!(
        routed,
        Routed {
            route: Some("orders-jq".into()),
            endpoint: "orders".into(),
            method: Some("PUT".into()),
            body: json!({"user": "Ada \"the\" Countess", "n": 2}),
            headers: vec![
                ("X-Tenant".into(), "acme".into()),
                ("X-Trace".into(), "t-c-1-1".into()),
            ],
            query: vec![("first".into(), "7".into()), ("key".into(), "c-1".into())],
            timeout: Some(30),
            max_retries: Some(2),
        }
    );
}

#[test]
fn match_pattern_is_anchored_and_jsonpath_wraps_lists() {
    let t = table();
    let routed = t.route(&message("ids.list")).unwrap();
    assert_eq!(routed.route.as_deref(), Some("ids-jsonpath"));
    assert_eq!(routed.body, json!({"result": [7, 8]}));
    assert_eq!(routed.method, None);
    // `ids\.` must match at the start, not anywhere.
    assert_eq!(t.route(&message("x.ids.list")).unwrap().route, None);
}

#[test]
fn jsonpath_single_match_is_the_value() {
    let t = RoutingTable::from_text(
        "routes: [{name: one, endpoint: e, transform_type: jsonpath, transform: '$.payload'}]",
    )
    .unwrap();
    let body = t.route(&message("any")).unwrap().body;
    assert_eq!(body, message("any")["payload"]);
    let t = RoutingTable::from_text(
        "routes: [{name: one, endpoint: e, transform_type: jsonpath, transform: '$.nothing'}]",
    )
    .unwrap();
    assert_eq!(
        t.route(&message("any")).unwrap().body,
        json!({"result": []})
    );
}

#[test]
fn template_escapes_strings_and_renders_json() {
    let mut m = message("other");
    m["metadata"]["attempt"] = json!(3);
    let routed = table().route(&m).unwrap();
    assert_eq!(routed.route.as_deref(), Some("notify-template"));
    assert_eq!(
        routed.body,
        json!({"to": "Ada \"the\" Countess", "items": [{"id": 7}, {"id": 8}], "none": null})
    );
}

#[test]
fn boolean_match_value_and_passthrough() {
    let mut m = message("other");
    m["metadata"]["raw"] = json!(true);
    let routed = table().route(&m).unwrap();
    assert_eq!(routed.route.as_deref(), Some("raw"));
    assert_eq!(routed.body, m["payload"]);
}

#[test]
fn disabled_route_skipped_then_fallback_then_no_route() {
    let t = table();
    let routed = t.route(&message("unknown")).unwrap();
    assert_eq!(routed.route, None);
    assert_eq!(routed.endpoint, "fallback");
    assert_eq!(routed.body, message("x")["payload"]);
    assert_eq!(
        t.endpoints(),
        ["orders", "ids", "notify", "shadow", "raw", "fallback"]
    );

    let off = ROUTES.replace(
        "default_endpoint: fallback",
        "default_endpoint: fallback\nenable_fallback: false",
    );
    let t = RoutingTable::from_text(&off).unwrap();
    assert_eq!(t.route(&message("unknown")), Err(RouteError::NoRoute));
    assert!(!t.endpoints().contains(&"fallback".to_string()));
}

#[test]
fn is_default_and_no_match_field_match_everything() {
    let t = RoutingTable::from_text(
        "routes:\n- {name: d, is_default: true, match_field: a, match_value: b, endpoint: d}\n- {name: e, endpoint: e}",
    )
    .unwrap();
    assert_eq!(t.route(&json!({})).unwrap().route.as_deref(), Some("d"));
    // A message without payload is passed whole.
    assert_eq!(t.route(&json!({"x": 1})).unwrap().body, json!({"x": 1}));
}

#[test]
fn jq_runtime_error_and_empty_output() {
    let t = RoutingTable::from_text(
        "routes:\n- {name: num, match_field: metadata.type, match_value: n, endpoint: e, transform_type: jq, transform: '.payload.name | tonumber'}\n- {name: none, endpoint: e, transform_type: jq, transform: 'empty'}",
    )
    .unwrap();
    match t.route(&message("n")) {
        Err(RouteError::Transform { route, detail }) => {
            assert_eq!(route, "num");
            assert!(detail.starts_with("jq: "), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.route(&message("other")).unwrap().body, json!({}));
}

#[test]
fn jq_halt_is_an_error_not_an_exit() {
    let t = RoutingTable::from_text(
        "routes: [{name: h, endpoint: e, transform_type: jq, transform: 'halt'}]",
    )
    .unwrap();
    let err = t.route(&message("x")).unwrap_err();
    assert_eq!(err.to_string(), "route h: jq: halted with code 0");
}

#[test]
fn jq_numbers_round_trip() {
    let t = RoutingTable::from_text(
        "routes: [{name: n, endpoint: e, transform_type: jq, transform: '[.payload.big, .payload.f, .payload.f * 2, 1 / 0, nan]'}]",
    )
    .unwrap();
    let m = json!({"payload": {"big": u64::MAX, "f": 1.5}});
    assert_eq!(
        t.route(&m).unwrap().body,
        json!([u64::MAX, 1.5, 3.0, null, null])
    );
}

#[test]
fn template_failure_names_the_route() {
    let t = RoutingTable::from_text(
        r#"routes: [{name: tpl, endpoint: e, transform_type: template, transform: '{"a": {{payload.name}}}'}]"#,
    )
    .unwrap();
    // An unquoted string slot does not make JSON.
    let err = t.route(&message("x")).unwrap_err();
    assert!(
        matches!(&err, RouteError::Transform { route, .. } if route == "tpl"),
        "{err}"
    );
}

#[test]
fn bad_header_value_is_a_transform_error() {
    let t = RoutingTable::from_text(
        "routes: [{name: h, endpoint: e, header_mappings: {X-A: payload.s}}]",
    )
    .unwrap();
    let err = t
        .route(&json!({"payload": {"s": "a\r\nX-Evil: 1"}}))
        .unwrap_err();
    assert!(err.to_string().contains("header X-A"), "{err}");
}

#[test]
fn lookup_paths() {
    let v = json!({"a": {"b": [{"c": 1}, null]}, "n": null});
    assert_eq!(lookup(&v, "a.b.0.c"), Some(&json!(1)));
    assert_eq!(lookup(&v, "a.b.1"), None);
    assert_eq!(lookup(&v, "a.b.9.c"), None);
    assert_eq!(lookup(&v, "a.b.x"), None);
    assert_eq!(lookup(&v, "n"), None);
    assert_eq!(lookup(&v, "a.b.0.c.d"), None);
}

#[test]
fn template_placeholders() {
    let t = Template::parse("{{{a}}} {{ b.c }} {{}} {{x");
    assert_eq!(t.slots().collect::<Vec<_>>(), ["{a", "b.c"]);
    assert_eq!(t.render(|p| format!("<{p}>")), "<{a>} <b.c> {{}} {{x");
}

fn load_error(yaml: &str) -> String {
    match RoutingTable::from_text(yaml) {
        Ok(_) => panic!("loaded: {yaml}"),
        Err(e) => e,
    }
}

#[test]
fn load_errors_name_the_route_and_key() {
    let e = load_error("routes:\n- {name: a, endpoint: e}\n- {name: orders-v2, endpoint: e, transform_type: jq, transform: '{a: .b'}");
    assert!(
        e.starts_with("routes[1] (orders-v2).transform: jq does not compile: "),
        "{e}"
    );
    let e = load_error(
        "routes: [{name: j, endpoint: e, transform_type: jq, transform: 'nosuchfn(1)'}]",
    );
    assert!(
        e.starts_with("routes[0] (j).transform: jq does not compile: undefined"),
        "{e}"
    );
    let e = load_error("routes: [{name: r, endpoint: e, match_field: a, match_pattern: '(x'}]");
    assert!(
        e.starts_with("routes[0] (r).match_pattern: not a regex"),
        "{e}"
    );
    let e = load_error("routes: [{name: r, endpoint: e, match_field: a, match_pattern: 'a)(b'}]");
    assert!(
        e.starts_with("routes[0] (r).match_pattern: not a regex"),
        "{e}"
    );
    let e = load_error("routes: [{name: u, endpoint: e, colour: red}]");
    assert!(
        e.starts_with("routes[0] (u).colour: unknown field `colour`"),
        "{e}"
    );
    let e = load_error("routes: []\ncolour: red");
    assert!(e.starts_with("colour: unknown field `colour`"), "{e}");
    let e = load_error("routes: [{name: d, endpoint: e}, {name: d, endpoint: f}]");
    assert_eq!(
        e,
        "routes[1] (d).name: duplicate route name (also routes[0])"
    );
    let e = load_error(
        "routes: [{name: b, endpoint: e, match_field: a, match_value: x, match_pattern: y}]",
    );
    assert!(
        e.starts_with("routes[0] (b).match_pattern: give match_value or match_pattern"),
        "{e}"
    );
    let e = load_error("routes: [{name: t, endpoint: e, timeout: soon}]");
    assert!(e.starts_with("routes[0] (t).timeout: invalid type"), "{e}");
    let e = load_error("routes: [{endpoint: e}]");
    assert!(e.starts_with("routes[0]: missing field `name`"), "{e}");
    let e =
        load_error("routes: [{name: p, endpoint: e, transform_type: jsonpath, transform: '$.a['}]");
    assert!(
        e.starts_with("routes[0] (p).transform: not a JSONPath"),
        "{e}"
    );
    let e = load_error(
        r#"routes: [{name: p, endpoint: e, transform_type: template, transform: '{"a": }'}]"#,
    );
    assert!(
        e.starts_with("routes[0] (p).transform: template is not JSON"),
        "{e}"
    );
    let e = load_error("routes: [{name: k, endpoint: e, transform_type: xslt, transform: x}]");
    assert!(
        e.starts_with("routes[0] (k).transform_type: unknown transform_type"),
        "{e}"
    );
    let e = load_error("routes: [{name: m, endpoint: e, method: 'GE T'}]");
    assert!(e.starts_with("routes[0] (m).method:"), "{e}");
    // A jq mapping that does not compile names the route and the mapping.
    let e = load_error("routes: [{name: h, endpoint: e, header_mappings: {X-A: '.metadata.x |'}}]");
    assert!(
        e.starts_with("routes[0] (h).header_mappings: X-A: \".metadata.x |\": jq does not compile"),
        "{e}"
    );
    let e = load_error("routes: [{name: h, endpoint: e, header_mappings: {'bad header': a}}]");
    assert!(e.starts_with("routes[0] (h).header_mappings:"), "{e}");
    assert!(load_error("routes: [").starts_with("not YAML"));
}

#[test]
fn load_names_the_path() {
    let e = match RoutingTable::load(Path::new("/nonexistent/routing.yaml")) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };
    assert!(e.starts_with("/nonexistent/routing.yaml: "), "{e}");
}

#[test]
fn example_file_loads_and_routes() {
    let t = RoutingTable::from_text(include_str!("../../examples/routing.yaml")).unwrap();
    let m = json!({
        "correlation_id": "c-9",
        "payload": {"email": "ada@example.org", "name": "Ada", "order_id": 4,
                    "items": [{"sku": "a", "qty": 2, "unit_price": 1.5}],
                    "user": {"email": "ada@example.org"}, "subject": "hi"},
        "metadata": {"type": "user.register", "tenant": "acme", "attempt": 2},
    });
    let r = t.route(&m).unwrap();
    assert_eq!(r.endpoint, "user-service");
    assert_eq!(r.body["username"], "ada");
    assert_eq!(r.body["metadata"]["correlation_id"], "c-9");

    let mut order = m.clone();
    order["metadata"]["type"] = json!("order.create");
    let r = t.route(&order).unwrap();
    assert_eq!(r.body["total"], json!(3.0));
    assert_eq!(r.body["currency"], "USD");
    assert_eq!(
        r.query,
        [("idempotency_key".to_string(), "c-9".to_string())]
    );

    let mut note = m.clone();
    note["metadata"]["type"] = json!("notification.email");
    let r = t.route(&note).unwrap();
    assert_eq!(r.body["attempt"], 2);
    assert_eq!(
        r.headers,
        [("X-Trace".to_string(), "openhqm-c-9".to_string())]
    );

    let mut legacy = m.clone();
    legacy["metadata"]["type"] = json!("legacy.request");
    assert_eq!(t.route(&legacy).unwrap().route.as_deref(), Some("default"));
    assert!(!t.endpoints().contains(&"legacy-service".to_string()));
}

/// The original's docs write header mappings as jq (`.payload.x`); they
/// run as jq here, compiled at load (our routing-table fixture's shape).
#[test]
fn jq_header_mappings_run() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/original/routing-table.yaml");
    let table = RoutingTable::load(&path).unwrap();
    let m = json!({
        "correlation_id": "c-1",
        "payload": {"id": "cart-9", "items": [1, 2, 3]},
        "metadata": {"type": "cart", "session_id": "s-7"},
        "headers": {},
    });
    let r = table.route(&m).unwrap();
    assert_eq!(r.route.as_deref(), Some("cart"));
    assert_eq!(r.body, json!({"cart_id": "cart-9", "count": 3}));
    let headers: BTreeMap<_, _> = r.headers.into_iter().collect();
    assert_eq!(headers["X-Cart-Size"], "3");
    assert_eq!(headers["X-Session-ID"], "s-7");
    assert_eq!(headers["X-Request-ID"], "c-1");
    assert_eq!(
        r.query,
        vec![("idempotency_key".to_string(), "c-1".to_string())]
    );
    // `empty` or null output leaves the header out.
    let t = RoutingTable::from_text(
        "routes: [{name: a, endpoint: e, header_mappings: {X-E: '.payload | empty', X-N: .payload.none}}]",
    )
    .unwrap();
    assert!(t.route(&m).unwrap().headers.is_empty());
}

/// The ported StatefulSet (deploy/kubernetes/original/): its ConfigMap's
/// routing.yaml loads and names only endpoints its env defines.
#[test]
fn the_ported_routing_configmap_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/original/routing-statefulset.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = text.split("\n---");
    let cm: Value = yaml_serde::from_str(docs.next().unwrap()).unwrap();
    let table = RoutingTable::from_text(cm["data"]["routing.yaml"].as_str().unwrap()).unwrap();
    let sts: Value = yaml_serde::from_str(docs.next().unwrap()).unwrap();
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    let endpoints = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "OPENHQM_PROXY__ENDPOINTS")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    let endpoints: Value = serde_json::from_str(endpoints).unwrap();
    for name in table.endpoints() {
        assert!(endpoints.get(&name).is_some(), "{name} is not defined");
    }
}
