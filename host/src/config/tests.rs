//! The config's behaviour, end to end through [`Config::parse`]: what resolves, and that every
//! mistake is one line naming the file, the line, the column and the key.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("conf/warren.toml"), text, None)
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_spec_example_resolves() {
    let config = parse(
        r#"
        [service]
        name = "demo"
        plugins = "target/plugins"

        [broker]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        queue_profile = "classic"

        [[request]]
        routing_key = "echo"
        plugin = "echo"

        [[event]]
        routing_key = "order.#"
        plugin = "audit"
        transient = false

        [[response]]
        service = "billing"
        routing_key = "invoice"
        plugin = "orders"
        "#,
    )
    .unwrap();
    assert_eq!(config.service, "demo");
    assert_eq!(config.plugins_dir, Path::new("conf/target/plugins"));
    assert_eq!(config.plugin_path("echo"), Path::new("conf/target/plugins/echo.wasm"));
    assert_eq!(config.queue_profile, QueueProfile::Classic);
    assert_eq!(
        config.requests,
        vec![RequestHandler {
            routing_key: "echo".into(),
            plugin: "echo".into(),
            dead_letter_exchange: None,
            retry_delays: None,
            respond: true
        }]
    );
    assert_eq!(config.events[0].stream, "events");
    assert_eq!(config.responses[0].service, "billing");
    assert_eq!(config.plugin_names(), vec!["audit", "echo", "orders"]);
    assert_eq!(config.prefetch, 100);
}

#[test]
fn the_environment_overrides_the_broker_url() {
    let text = "[service]\nname = \"demo\"\n[broker]\nurl = \"amqp://a\"\n";
    let config = Config::parse(Path::new("w.toml"), text, Some("amqp://b".into())).unwrap();
    assert_eq!(config.broker_url, "amqp://b");
}

#[test]
fn a_typo_names_file_line_and_key() {
    let message = error("[service]\nname = \"demo\"\n\n[[request]]\nrouting_kye = \"echo\"\nplugin = \"echo\"\n");
    assert!(message.starts_with("conf/warren.toml:5:1: routing_kye: unknown field `routing_kye`"), "{message}");
}

#[test]
fn a_missing_service_name_is_reported() {
    let message = error("[service]\nplugins = \"x\"\n");
    assert!(message.contains("missing field `name`"), "{message}");
}

#[test]
fn a_duplicate_request_key_names_both_entries() {
    let message = error(
        "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"x\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"y\"\n",
    );
    assert!(
        message.starts_with("conf/warren.toml:7:15: request[1].routing_key: 'a' is already served by request[0]"),
        "{message}"
    );
}

#[test]
fn overlapping_event_patterns_on_one_queue_name_both_entries() {
    let base = "[service]\nname = \"d\"\n";
    let event = |key: &str, extra: &str| format!("[[event]]\nrouting_key = \"{key}\"\nplugin = \"p\"\n{extra}");
    let message = error(&format!("{base}{}{}", event("order.#", ""), event("order.created", "")));
    assert!(message.contains("event[1].routing_key: 'order.created' overlaps event[0]'s 'order.#'"), "{message}");
    // Disjoint patterns, or the same pattern on another queue, are fine.
    parse(&format!("{base}{}{}", event("order.*", ""), event("user.*", ""))).unwrap();
    parse(&format!("{base}{}{}", event("order.#", ""), event("order.created", "queue_suffix = \"x\""))).unwrap();
}

#[test]
fn a_bad_service_name_says_which_character() {
    let message = error("[service]\nname = \"my service\"\n");
    assert!(message.contains("service.name: 'my service' contains ' '"), "{message}");
}

#[test]
fn an_unknown_queue_profile_is_refused() {
    let message = error("[service]\nname = \"d\"\n[broker]\nqueue_profile = \"stream\"\n");
    assert!(message.contains("unknown variant `stream`"), "{message}");
}

#[test]
fn plugin_tables_override_limits_and_grant_env_and_a_folder() {
    let config = parse(
        "[service]\nname = \"d\"\n[limits]\ntimeout_ms = 900\n[[request]]\nrouting_key = \"a\"\nplugin = \"chaos\"\n\
         [[request]]\nrouting_key = \"b\"\nplugin = \"echo\"\n\
         [plugin.chaos]\nmemory_mib = 16\nfuel = 1000\nmax_concurrency = 2\nenv = [\"TZ\"]\ndir = \"data\"\n",
    )
    .unwrap();
    let chaos = config.settings_for("chaos");
    assert_eq!(chaos.limits.memory_bytes, 16 << 20);
    assert_eq!(chaos.limits.timeout, Duration::from_millis(900), "inherited from [limits]");
    assert_eq!(chaos.limits.fuel, Some(1000));
    assert_eq!(chaos.limits.max_concurrency, Some(2));
    assert_eq!(chaos.grants.env, vec!["TZ".to_string()]);
    assert_eq!(chaos.grants.dir, Some((PathBuf::from("conf/data"), "/data".to_string())));
    let echo = config.settings_for("echo");
    assert_eq!(echo.limits.memory_bytes, 64 << 20);
    assert_eq!(echo.grants, Grants::default(), "nothing granted unless configured");
}

#[test]
fn plugin_tables_report_typos_and_unused_names() {
    let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"chaos\"\n";
    let unused = error(&format!("{base}[plugin.chaso]\nfuel = 5\n"));
    assert!(unused.contains("plugin.chaso: no [[request]], [[event]] or [[response]] uses plugin 'chaso'"), "{unused}");
    let typo = error(&format!("{base}[plugin.chaos]\nfule = 5\n"));
    assert!(typo.contains("conf/warren.toml:7:1: fule: unknown field `fule`"), "{typo}");
    let zero = error(&format!("{base}[plugin.chaos]\ntimeout_ms = 0\n"));
    assert!(zero.contains("plugin.chaos.timeout_ms: must be at least 1"), "{zero}");
}

#[test]
fn a_plugin_named_with_its_extension_is_refused() {
    let message = error("[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"echo.wasm\"\n");
    assert!(message.contains("request[0].plugin: name the plugin without '.wasm'"), "{message}");
}

#[test]
fn grants_in_limits_are_refused_not_ignored() {
    for grant in [
        "publish = [\"events\"]",
        "request = [\"billing\"]",
        "queues = [\"q\"]",
        "respond = [\"billing\"]",
        "log = false",
        "dir_as = \"/x\"",
    ] {
        let message = error(&format!("[service]\nname = \"d\"\n[limits]\n{grant}\n"));
        let key = grant.split(' ').next().unwrap();
        assert!(message.contains(&format!("limits.{key}: `{key}` is a grant")), "{message}");
        assert!(message.starts_with("conf/warren.toml:4:"), "{message}");
    }
}

#[test]
fn a_request_handler_may_answer_nothing_and_a_plugin_may_answer_later() {
    let config = parse(
        "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"charge\"\nplugin = \"billing\"\nrespond = false\n\
         [[request]]\nrouting_key = \"quote\"\nplugin = \"billing\"\n\
         [plugin.billing]\nrespond = [\"orders\", \"shop-2\"]\n",
    )
    .unwrap();
    assert!(!config.requests[0].respond, "respond = false: goamqp's ServiceRequestConsumer");
    assert!(config.requests[1].respond, "answers by default: goamqp's RequestResponseHandler");
    assert_eq!(config.settings_for("billing").grants.respond, ["orders", "shop-2"]);
    let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"p\"\n";
    let not_bool = error(&format!("{base}respond = \"no\"\n"));
    assert!(not_bool.starts_with("conf/warren.toml:6:11: "), "{not_bool}");
    assert!(not_bool.contains("expected a boolean"), "{not_bool}");
    let bad_name = error(&format!("{base}[plugin.p]\nrespond = [\"two words\"]\n"));
    assert!(bad_name.contains("plugin.p.respond: 'two words' contains ' '"), "{bad_name}");
    let on_event = error("[service]\nname = \"d\"\n[[event]]\nrouting_key = \"a\"\nplugin = \"p\"\nrespond = false\n");
    assert!(on_event.contains("unknown field `respond`"), "{on_event}");
}

#[test]
fn retry_delays_come_from_the_handler_else_the_limits() {
    let config = parse(
        "[service]\nname = \"d\"\n[limits]\nretry_delays_ms = [100, 1000]\n\
         [[request]]\nrouting_key = \"a\"\nplugin = \"x\"\nretry_delays_ms = [5]\n\
         [[request]]\nrouting_key = \"b\"\nplugin = \"y\"\n",
    )
    .unwrap();
    let ms = |d: Vec<Duration>| d.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>();
    assert_eq!(ms(config.retry_delays(config.requests[0].retry_delays.as_ref(), "x")), vec![5]);
    assert_eq!(ms(config.retry_delays(config.requests[1].retry_delays.as_ref(), "y")), vec![100, 1000]);
    let zero =
        error("[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"x\"\nretry_delays_ms = [0]\n");
    assert!(zero.contains("request[0].retry_delays_ms: 0 is not a delay"), "{zero}");
    let empty = error("[service]\nname = \"d\"\n[limits]\nretry_delays_ms = []\n");
    assert!(empty.contains("limits.retry_delays_ms: give 1 to 10 delays"), "{empty}");
}

#[test]
fn http_grants_origins_per_plugin_with_its_caps() {
    let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"enrich\"\n\
                [[request]]\nrouting_key = \"b\"\nplugin = \"echo\"\n";
    let config = parse(&format!(
        "{base}[plugin.enrich]\nhttp = [\"https://api.example.com\", \"https://*.example.com\", \"http://127.0.0.1:8080\"]\n\
         http_max_response_kib = 64\nhttp_max_concurrency = 4\n"
    ))
    .unwrap();
    let http = &config.settings_for("enrich").grants.http;
    let shown: Vec<String> = http.origins.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["https://api.example.com:443", "https://*.example.com:443", "http://127.0.0.1:8080"]);
    assert_eq!((http.max_response_bytes, http.max_concurrency, http.ca_pem.as_deref()), (64 << 10, 4, None));
    let echo = config.settings_for("echo").grants.http;
    assert!(echo.origins.is_empty(), "no origin unless granted");
    assert_eq!((echo.max_response_bytes, echo.max_concurrency), (1024 << 10, 16), "the defaults");
}

#[test]
fn the_state_folder_is_private_to_the_deployment_and_outside_the_plugins() {
    if std::env::var_os(STATE_DIR_ENV).is_some() {
        return; // the environment's folder wins over the file: nothing here to check
    }
    let with = |extra: &str| parse(&format!("[service]\nname = \"d\"\nplugins = \"p\"\n{extra}")).unwrap();
    let state = with("state_dir = \"/var/lib/warren\"\n").state_dir;
    let folder = state.file_name().unwrap().to_str().unwrap().to_string();
    assert!(state.starts_with("/var/lib/warren") && folder.starts_with("d-") && folder.len() == 14, "{state:?}");
    let elsewhere = parse("[service]\nname = \"d\"\nplugins = \"q\"\nstate_dir = \"/var/lib/warren\"\n").unwrap();
    assert_ne!(elsewhere.state_dir, state, "another plugins folder, another cache");
    let inside = error("[service]\nname = \"d\"\nplugins = \"p\"\nstate_dir = \"p/.state\"\n");
    assert!(
        inside.starts_with("conf/warren.toml:4:13: service.state_dir: ")
            && inside.contains("inside the plugins folder"),
        "{inside}"
    );
    assert!(!with("").state_dir.starts_with("conf/p"), "the default is outside the plugins folder");
}

#[test]
fn http_mistakes_are_one_line_each() {
    let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"enrich\"\n[plugin.enrich]\n";
    let bad = error(&format!("{base}http = [\"https://ok.example.com\", \"api.example.com\"]\n"));
    assert!(bad.starts_with("conf/warren.toml:7:8: plugin.enrich.http: 'api.example.com' is not an origin"), "{bad}");
    assert!(!bad.contains('\n'), "{bad}");
    let path = error(&format!("{base}http = [\"https://api.example.com/v1\"]\n"));
    assert!(path.contains("grant \"https://api.example.com\""), "{path}");
    let orphan = error(&format!("{base}http_max_concurrency = 2\n"));
    assert!(orphan.contains("plugin.enrich.http_max_concurrency: needs `http`"), "{orphan}");
    let zero = error(&format!("{base}http = [\"http://h\"]\nhttp_max_response_kib = 0\n"));
    assert!(zero.contains("plugin.enrich.http_max_response_kib: must be at least 1"), "{zero}");
    let ca = error(&format!("{base}http = [\"https://h\"]\nhttp_ca_file = \"missing-ca.pem\"\n"));
    assert!(ca.contains("plugin.enrich.http_ca_file: cannot read conf/missing-ca.pem"), "{ca}");
    let in_limits = error("[service]\nname = \"d\"\n[limits]\nhttp = [\"https://h\"]\n");
    assert!(in_limits.contains("limits.http: `http` is a grant"), "{in_limits}");
}

fn broker_error(broker: &str) -> String {
    error(&format!("[service]\nname = \"d\"\n[broker]\n{broker}\n"))
}

#[test]
fn broker_urls_come_from_the_environment_list_else_urls_else_url() {
    let text = "[service]\nname = \"d\"\n[broker]\nurls = [\"amqp://a/%2f\", \"amqp://b/%2f\"]\n";
    let config = parse(text).unwrap();
    assert_eq!(config.broker.urls, vec!["amqp://a/%2f", "amqp://b/%2f"]);
    assert_eq!(config.broker_url, "amqp://a/%2f");
    let env = Config::parse(Path::new("w.toml"), text, Some("amqp://x/%2f, amqp://y/%2f".into())).unwrap();
    assert_eq!(env.broker.urls, vec!["amqp://x/%2f", "amqp://y/%2f"]);
}

#[test]
fn broker_mistakes_are_one_line_each() {
    assert!(
        broker_error("url = \"amqp://a\"\nurls = [\"amqp://b\"]").contains("set broker.url or broker.urls, not both")
    );
    let bad = broker_error("urls = [\"amqp://ok/%2f\", \"http://nope\"]");
    assert!(bad.contains("broker.urls: 'http://nope' is not an AMQP URL"), "{bad}");
    assert!(broker_error("urls = []").contains("names no broker"));
    let missing = broker_error("url = \"amqp://u@h/%2f\"\npassword_file = \"no-such-file\"");
    assert!(missing.contains("broker.password_file: cannot read conf/no-such-file"), "{missing}");
    let plain = broker_error("url = \"amqp://h/%2f\"\n[broker.tls]\nca_file = \"x.pem\"");
    assert!(plain.contains("cannot read conf/x.pem") || plain.contains("need amqps://"), "{plain}");
    let ca = broker_error("url = \"amqps://h/%2f\"\n[broker.tls]\nca_file = \"missing-ca.pem\"");
    assert!(ca.contains("broker.tls.ca_file: cannot read conf/missing-ca.pem"), "{ca}");
    let half = broker_error("url = \"amqps://h/%2f\"\n[broker.tls]\ncert_file = \"c.pem\"");
    assert!(half.contains("mutual TLS needs both cert_file and key_file"), "{half}");
    assert!(broker_error("[broker.tls]\nca_fil = \"x\"").contains("unknown field `ca_fil`"));
}

#[test]
fn passwords_come_from_a_file_and_are_never_printed() {
    let dir = std::env::temp_dir().join(format!("warren-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let text = "[service]\nname = \"d\"\n[broker]\nurl = \"amqp://u@h/%2f\"\npassword_file = \"pw\"\n";
    let config = Config::parse(&dir.join("warren.toml"), text, None).unwrap();
    assert_eq!(config.broker.password.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(!format!("{config:?}").contains("s3cret"), "the password leaks through Debug");
    std::fs::write(dir.join("pw"), "\n").unwrap();
    let empty = Config::parse(&dir.join("warren.toml"), text, None).unwrap_err().to_string();
    assert!(empty.contains("is empty: put the password on its first line"), "{empty}");
    let with_password = text.replace("amqp://u@h", "amqp://u:p@h");
    std::fs::write(dir.join("pw"), "x").unwrap();
    let both = Config::parse(&dir.join("warren.toml"), &with_password, None).unwrap_err().to_string();
    assert!(both.contains("amqp://u:***@h/%2f already has a password") && !both.contains("u:p@"), "{both}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn delivery_is_confirmed_unless_goamqp_is_chosen() {
    let text = |delivery: &str| {
        format!("[service]\nname = \"s\"\n{delivery}\n[[request]]\nrouting_key = \"k\"\nplugin = \"p\"\n")
    };
    let parse = |t: String| Config::parse(Path::new("w.toml"), &t, None);
    assert_eq!(parse(text("")).unwrap().delivery, Delivery::Confirmed);
    assert_eq!(parse(text("delivery = \"goamqp\"")).unwrap().delivery, Delivery::Goamqp);
    let error = parse(text("delivery = \"fast\"")).unwrap_err().to_string();
    assert!(error.starts_with("w.toml:3:12") && error.contains("goamqp"), "{error}");
}
