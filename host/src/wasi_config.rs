//! `wasi:config/store` for plugins: the values `[plugin.<name>.config]` and
//! `[plugin.<name>.config_files]` give one plugin, served at the two versions components are
//! built against — `0.2.0-draft` (wasmCloud's component crate; this host's `bindgen!` of
//! `wit/deps/config.wit`, which the `handler` world imports) and `0.2.0-rc.1` (Wasmtime's
//! `wasmtime-wasi-config` crate).
//!
//! Shaped like a Spin factor, so it needs nothing from either wing:
//! - shared state: [`PluginConfig`], one plugin's values, made once per plugin load (a config
//!   reload makes a new one, so a `config_files` value is re-read then);
//! - per-call state: [`CallConfig`], a handle on those values that one call's store holds;
//! - linker setup: [`add_to_linker`], for any store data that implements [`WasiConfigView`].
//!
//! A plugin sees only its own values: nothing else is reachable through this interface. A
//! value from a file is a [`Secret`]: never in a log line nor in `{:?}` output.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::config::Secret;

/// Host bindings of `wasi:config/store@0.2.0-draft` (the WIT in `wit/deps/config.wit`).
/// `wasm::bindings` maps the `handler` world's import of it here.
pub mod draft {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:config/imports@0.2.0-draft",
        imports: { default: trappable },
    });

    pub use self::wasi::config::store;
}

/// One value a plugin may read.
#[derive(Clone, PartialEq)]
enum Value {
    /// From `[plugin.<name>.config]`.
    Plain(String),
    /// Read from a file named in `[plugin.<name>.config_files]`.
    Secret(Secret),
}

impl Value {
    fn expose(&self) -> &str {
        match self {
            Value::Plain(text) => text,
            Value::Secret(secret) => secret.expose(),
        }
    }
}

/// The values, in the two shapes the two versions read them from.
#[derive(Default)]
struct Values {
    /// Every key and its value (for `0.2.0-draft`, in key order for `get-all`).
    map: BTreeMap<String, Value>,
    /// The same, for `wasmtime-wasi-config` (`0.2.0-rc.1`).
    rc1: WasiConfigVariables,
}

/// Shared state: the `wasi:config` values of one plugin, made when the plugin is loaded.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct PluginConfig {
    values: Arc<Values>,
}

impl PluginConfig {
    /// The values of one plugin: `plain` from `[plugin.<name>.config]`, `secrets` read from
    /// the files of `[plugin.<name>.config_files]` (the config refuses a key in both).
    pub fn new<'a>(
        plain: impl IntoIterator<Item = (&'a String, &'a String)>,
        secrets: impl IntoIterator<Item = (&'a String, &'a Secret)>,
    ) -> PluginConfig {
        let mut map = BTreeMap::new();
        for (key, value) in plain {
            map.insert(key.clone(), Value::Plain(value.clone()));
        }
        for (key, secret) in secrets {
            map.insert(key.clone(), Value::Secret(secret.clone()));
        }
        let rc1 = map.iter().map(|(key, value)| (key.as_str(), value.expose())).collect();
        PluginConfig { values: Arc::new(Values { map, rc1 }) }
    }

    /// The per-call state for one call's store.
    pub fn call(&self) -> CallConfig {
        CallConfig { values: self.values.clone() }
    }

    /// Whether the plugin has no value at all.
    pub fn is_empty(&self) -> bool {
        self.values.map.is_empty()
    }
}

impl std::fmt::Debug for PluginConfig {
    /// The keys, and a plain value as itself; a secret is `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.values.map {
            match value {
                Value::Plain(text) => map.entry(key, text),
                Value::Secret(secret) => map.entry(key, secret),
            };
        }
        map.finish()
    }
}

/// Per-call state: the values one call's guest may read.
#[derive(Clone, Default)]
pub struct CallConfig {
    values: Arc<Values>,
}

impl std::fmt::Debug for CallConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallConfig({} values)", self.values.map.len())
    }
}

/// What a store's data implements to serve `wasi:config/store`.
pub trait WasiConfigView: Send {
    /// This call's values.
    fn wasi_config(&mut self) -> &mut CallConfig;
}

impl draft::store::Host for CallConfig {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, draft::store::Error>> {
        Ok(Ok(self.values.map.get(&key).map(|value| value.expose().to_string())))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, draft::store::Error>> {
        Ok(Ok(self.values.map.iter().map(|(key, value)| (key.clone(), value.expose().to_string())).collect()))
    }
}

struct HasCallConfig;

impl HasData for HasCallConfig {
    type Data<'a> = &'a mut CallConfig;
}

fn draft_view<T: WasiConfigView>(data: &mut T) -> &mut CallConfig {
    data.wasi_config()
}

fn rc1_view<T: WasiConfigView>(data: &mut T) -> WasiConfig<'_> {
    WasiConfig::from(&data.wasi_config().values.rc1)
}

/// Adds `wasi:config/store` at `0.2.0-draft` and at `0.2.0-rc.1` to `linker`. A component
/// that imports neither links as before.
pub fn add_to_linker<T: WasiConfigView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    draft::store::add_to_linker::<T, HasCallConfig>(linker, draft_view::<T>)?;
    wasmtime_wasi_config::add_to_linker(linker, rc1_view::<T>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use draft::store::Host;

    fn config() -> PluginConfig {
        let plain = BTreeMap::from([("greeting".to_string(), "hello".to_string())]);
        let secrets = BTreeMap::from([("api_key".to_string(), Secret::new("s3cret-value"))]);
        PluginConfig::new(&plain, &secrets)
    }

    #[test]
    fn a_call_reads_plain_values_and_secrets() {
        let mut call = config().call();
        assert_eq!(call.get("greeting".into()).unwrap().unwrap().as_deref(), Some("hello"));
        assert_eq!(call.get("api_key".into()).unwrap().unwrap().as_deref(), Some("s3cret-value"));
        assert_eq!(call.get("missing".into()).unwrap().unwrap(), None);
        let all = call.get_all().unwrap().unwrap();
        assert_eq!(
            all,
            vec![("api_key".to_string(), "s3cret-value".to_string()), ("greeting".to_string(), "hello".to_string())]
        );
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let config = config();
        let shown = format!("{config:?} {:?}", config.call());
        assert!(shown.contains("greeting") && shown.contains("hello") && shown.contains("api_key"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
