//! `wasi:config/store`: what `[plugin.<name>.config]` and `[plugin.<name>.config_files]` give
//! a plugin, at both versions the host serves (`0.2.0-draft`, which wasmCloud's component
//! crate imports, and Wasmtime's `0.2.0-rc.1`). The plugin is `tests/fixtures/counter-wasmcloud`,
//! built with wasmCloud's crate, not Warren's SDK: its answer carries the values as each
//! version gives them (`config`: draft `get-all`, `config_rc1`: rc.1 `get-all`, `greeting`:
//! draft `get`).

use std::path::{Path, PathBuf};

use warren_tests::*;

/// A plugins folder of the test's own: the wasmCloud-built counter under each name in `names`.
fn plugins_named(service: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-plugins-{service}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        std::fs::copy(fixture("counter-wasmcloud"), dir.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// A config file's folder of the test's own, with a secret file in it.
fn secret_file(service: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-secrets-{service}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("api_key");
    std::fs::write(&file, text).unwrap();
    file
}

/// The config for `service` serving `plugins` (routing key = plugin name), with `rest` after.
fn config_for(service: &str, plugins_dir: &Path, plugins: &[&str], rest: &str) -> Config {
    let handlers: Vec<(&str, &str)> = plugins.iter().map(|p| (*p, *p)).collect();
    config_in(service, plugins_dir, &format!("{}{rest}", requests(&handlers)))
}

/// Asks `plugin` once (no bucket touched) and returns its JSON answer.
async fn ask(client: &mut GoClient, plugin: &str) -> serde_json::Value {
    client.request(plugin, b"{}").await;
    let answer = client.response(DEADLINE).await.unwrap_or_else(|| panic!("no answer from {plugin}"));
    serde_json::from_slice(&answer.data).unwrap_or_else(|e| panic!("{plugin} answered no JSON ({e})"))
}

/// Warren's own log down to `trace` (the rest at `info`), kept for the secret check.
const LOG_FILTER: &str = "info,warren=trace";

broker_test! {
    /// `[plugin.cfg.config]` values and a `config_files` value reach the plugin through
    /// `wasi:config/store@0.2.0-draft` (`get`, `get-all`) and `@0.2.0-rc.1` (`get-all`) alike;
    /// the file's trailing newline is dropped. The secret is never in the host's log (kept
    /// down to `trace` from the config's parse to the host's stop), nor in the `{:?}` of the
    /// config.
    async fn values_and_files_reach_the_plugin_at_both_versions_and_a_secret_is_never_logged() {
        capture_logs(LOG_FILTER);
        let service = unique_service("wasi-config");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let secret = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
        let file = secret_file(&service, &format!("{secret}\n"));
        cleanup.dir(file.parent().unwrap());
        let dir = plugins_named(&service, &["cfg"]);
        cleanup.dir(&dir);
        let tables = format!(
            "[plugin.cfg.config]\ngreeting = \"hello\"\nregion = \"eu-north\"\n[plugin.cfg.config_files]\napi_key = \"{}\"\n",
            file.display()
        );
        let config = config_for(&service, &dir, &["cfg"], &tables);
        assert!(!format!("{config:?}").contains(&secret), "the config's Debug output shows the secret");

        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["cfg"]).await;
        let answer = ask(&mut client, "cfg").await;
        let expected = serde_json::json!({"api_key": secret, "greeting": "hello", "region": "eu-north"});
        assert_eq!(answer["config"], expected, "0.2.0-draft get-all: {answer}");
        assert_eq!(answer["config_rc1"], expected, "0.2.0-rc.1 get-all: {answer}");
        assert_eq!(answer["greeting"], "hello", "0.2.0-draft get: {answer}");
        client.cleanup().await;
        host.stop().await.unwrap();

        let log = captured_log();
        assert!(log.contains(&service), "the capture holds this host's log");
        assert!(!log.contains(&secret), "the secret is in the host's log");
    }
}

broker_test! {
    /// A config reload reads every `config_files` file again: the plugin, reloaded because its
    /// value changed, answers the file's new text.
    async fn a_config_reload_reads_a_config_file_again() {
        capture_logs(LOG_FILTER);
        let service = unique_service("wasi-config-reload");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let file = secret_file(&service, "first");
        cleanup.dir(file.parent().unwrap());
        let dir = plugins_named(&service, &["cfg"]);
        cleanup.dir(&dir);
        let tables = format!("[plugin.cfg.config_files]\napi_key = \"{}\"\n", file.display());
        let config = || config_for(&service, &dir, &["cfg"], &tables);

        let mut host = start(&config()).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["cfg"]).await;
        assert_eq!(ask(&mut client, "cfg").await["config"]["api_key"], "first");

        std::fs::write(&file, "second\n").unwrap();
        host.reload(config()).await.expect("the reload is applied");
        assert_eq!(ask(&mut client, "cfg").await["config"]["api_key"], "second", "after the reload");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// Two plugins of one host (the same component under two names) each see their own
    /// values only, through both versions: nothing of the other's, and no key of its own that
    /// the config did not give it.
    async fn a_plugin_reads_only_its_own_values() {
        capture_logs(LOG_FILTER);
        let service = unique_service("wasi-config-own");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let file = secret_file(&service, "alpha-secret");
        cleanup.dir(file.parent().unwrap());
        let dir = plugins_named(&service, &["alpha", "beta", "gamma"]);
        cleanup.dir(&dir);
        let tables = format!(
            "[plugin.alpha.config]\ngreeting = \"from alpha\"\n[plugin.alpha.config_files]\napi_key = \"{}\"\n\
             [plugin.beta.config]\ngreeting = \"from beta\"\nonly_beta = \"b\"\n",
            file.display()
        );
        let config = config_for(&service, &dir, &["alpha", "beta", "gamma"], &tables);
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["alpha", "beta", "gamma"]).await;

        let alpha = serde_json::json!({"api_key": "alpha-secret", "greeting": "from alpha"});
        let beta = serde_json::json!({"greeting": "from beta", "only_beta": "b"});
        for (plugin, expected) in [("alpha", alpha), ("beta", beta), ("gamma", serde_json::json!({}))] {
            let answer = ask(&mut client, plugin).await;
            assert_eq!(answer["config"], expected, "{plugin}, 0.2.0-draft: {answer}");
            assert_eq!(answer["config_rc1"], expected, "{plugin}, 0.2.0-rc.1: {answer}");
        }
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
