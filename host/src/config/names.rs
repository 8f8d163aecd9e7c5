//! The name rule shared by every section: service, stream, exchange, queue-suffix and plugin
//! names are one segment of goamqp's dotted names, so they carry only characters those names
//! and AMQP short strings carry safely. (The names themselves are spelled by the AMQP wing.)

use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

/// Characters goamqp's names and AMQP's short strings can carry safely in a name segment.
pub(super) fn check_name(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let name = value.get_ref();
    if name.is_empty() {
        return Err(at.at(value, key, "must not be empty"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        return Err(at.at(value, key, format!("'{name}' contains '{bad}'; use letters, digits, '-', '_' or '.'")));
    }
    Ok(name.clone())
}

/// A table's `dead_letter_exchange` (`broker`, `request[0]`…), checked as a name.
pub(super) fn dead_letter(
    at: &Locator,
    value: &Option<Spanned<String>>,
    table: &str,
) -> Result<Option<String>, ConfigError> {
    value.as_ref().map(|v| check_name(at, v, &format!("{table}.dead_letter_exchange"))).transpose()
}
