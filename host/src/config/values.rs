//! `[plugin.<name>.config]` and `[plugin.<name>.config_files]`: the values a plugin reads
//! through `wasi:config/store` — plain strings, and values read from files (secrets), each
//! file read when the config is (so again on every config reload) and kept as a [`Secret`].

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::ConfigError;
use super::files::{Secret, read_beside};
use super::locate::Locator;

/// The most one `config_files` value may hold: a secret or a small setting, never a data file
/// (grant a folder with `dir` for those).
pub const MAX_CONFIG_FILE_BYTES: usize = 64 << 10;

/// One plugin's `wasi:config` values. Its `Debug` shows a file's value as `***`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigValues {
    /// `[plugin.<name>.config]`: key → value.
    pub plain: BTreeMap<String, String>,
    /// `[plugin.<name>.config_files]`: key → the file's text (one trailing newline dropped).
    pub files: BTreeMap<String, Secret>,
}

/// The raw tables, as written.
pub(super) type RawValues = BTreeMap<String, Spanned<toml::Value>>;
pub(super) type RawFiles = BTreeMap<String, Spanned<String>>;

/// Checks `[<key>.config]` (every value a string) and reads every file of
/// `[<key>.config_files]` (relative to the config's folder `base`).
pub(super) fn resolve_values(
    at: &Locator,
    base: &Path,
    key: &str,
    plain: Option<&RawValues>,
    files: Option<&RawFiles>,
) -> Result<ConfigValues, ConfigError> {
    let mut values = ConfigValues::default();
    for (name, value) in plain.into_iter().flatten() {
        let setting = format!("{key}.config.{name}");
        match value.get_ref() {
            toml::Value::String(text) => {
                values.plain.insert(name.clone(), text.clone());
            }
            other => {
                let kind = other.type_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                return Err(at.at(
                    value,
                    &setting,
                    format!(
                        "is {article} {kind}, but wasi:config values are strings: write {name} = \"{}\"",
                        other.to_string().trim_matches('"')
                    ),
                ));
            }
        }
    }
    for (name, file) in files.into_iter().flatten() {
        let setting = format!("{key}.config_files.{name}");
        if values.plain.contains_key(name) {
            return Err(at.at(
                file,
                &setting,
                format!("'{name}' is also in [{key}.config]: a value comes from one place, keep one of the two"),
            ));
        }
        values.files.insert(name.clone(), read_value_file(at, base, file, &setting)?);
    }
    Ok(values)
}

/// One `config_files` value: the file's UTF-8 text, one trailing newline dropped (as `echo`
/// writes it). The text itself is never put in an error.
fn read_value_file(at: &Locator, base: &Path, file: &Spanned<String>, setting: &str) -> Result<Secret, ConfigError> {
    let bytes = read_beside(at, base, file, setting)?;
    if bytes.len() > MAX_CONFIG_FILE_BYTES {
        return Err(at.at(
            file,
            setting,
            format!(
                "{} is {} bytes, over the {} KiB a config value may hold: grant large files with `dir` instead",
                base.join(file.get_ref()).display(),
                bytes.len(),
                MAX_CONFIG_FILE_BYTES >> 10
            ),
        ));
    }
    let Ok(mut text) = String::from_utf8(bytes) else {
        return Err(at.at(
            file,
            setting,
            format!("{} is not UTF-8 text: wasi:config values are strings", base.join(file.get_ref()).display()),
        ));
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Secret::new(text))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    /// A config serving plugin `p`, with `tables` after it.
    fn parse(tables: &str) -> Result<Config, String> {
        let text = format!(
            "[service]\nname = \"demo\"\n[broker]\nurl = \"amqp://u@h/%2f\"\n[[request]]\nrouting_key = \"k\"\nplugin = \"p\"\n{tables}"
        );
        Config::parse(Path::new("conf/warren.toml"), &text, None).map_err(|e| e.to_string())
    }

    fn secret_file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-config-values-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn values_and_files_resolve_and_a_file_value_is_never_printed() {
        let file = secret_file("api_key", "s3cret-value\n");
        let config = parse(&format!(
            "[plugin.p.config]\ngreeting = \"hello\"\n[plugin.p.config_files]\napi_key = \"{}\"\n",
            file.display()
        ))
        .unwrap();
        let values = config.settings_for("p").grants.config;
        assert_eq!(values.plain.get("greeting").map(String::as_str), Some("hello"));
        assert_eq!(
            values.files.get("api_key").map(|s| s.expose()),
            Some("s3cret-value"),
            "one trailing newline dropped"
        );
        assert!(!format!("{config:?}").contains("s3cret"), "the config's Debug output shows the secret");
        assert!(config.settings_for("other").grants.config.plain.is_empty());
    }

    #[test]
    fn mistakes_name_the_key_where_it_stands_and_what_to_do() {
        let number = parse("[plugin.p.config]\nport = 8080\n").unwrap_err();
        assert!(number.starts_with("conf/warren.toml:9:8: plugin.p.config.port"), "{number}");
        assert!(
            number.contains("is an integer, but wasi:config values are strings: write port = \"8080\""),
            "{number}"
        );

        let missing = parse("[plugin.p.config_files]\napi_key = \"no-such-file\"\n").unwrap_err();
        assert!(missing.contains("plugin.p.config_files.api_key: cannot read conf/no-such-file"), "{missing}");

        let file = secret_file("both", "x");
        let both = parse(&format!(
            "[plugin.p.config]\napi_key = \"a\"\n[plugin.p.config_files]\napi_key = \"{}\"\n",
            file.display()
        ))
        .unwrap_err();
        assert!(both.contains("plugin.p.config_files.api_key: 'api_key' is also in [plugin.p.config]"), "{both}");

        let binary = secret_file("binary", "\u{0}\u{ff}");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        let not_text = parse(&format!("[plugin.p.config_files]\nkey = \"{}\"\n", binary.display())).unwrap_err();
        assert!(not_text.contains("is not UTF-8 text"), "{not_text}");

        let in_limits = parse("[limits.config]\ngreeting = \"hello\"\n").unwrap_err();
        assert!(in_limits.contains("limits.config: `config` is a grant"), "{in_limits}");
    }
}
