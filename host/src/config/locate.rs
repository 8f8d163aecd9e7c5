//! Where a mistake stands: byte offsets in the config text (TOML spans) turned into
//! `file:line:column: key: message` errors, the one form every config error takes.

use std::path::Path;

use toml::Spanned;

use super::ConfigError;

/// Turns byte offsets in the config text into `file:line:column` errors.
pub(super) struct Locator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Locator<'_> {
    pub(super) fn error(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(value.span().start, key, message)
    }
}
