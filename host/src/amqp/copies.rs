//! What Warren republishes of a delivery it was given: the retry, delayed-retry, dead-letter
//! and host-failure copies (SPEC §1's outcomes).
//!
//! A copy is published with Warren's own permissions, so it carries the message's meaning and
//! nothing of the publisher's that would act on the broker: no `CC` or `BCC` (RabbitMQ routes
//! a message to every queue they name — a publisher could have its message copied into queues
//! it may not write to), no `user_id` (RabbitMQ refuses one that is not the connection's
//! user), no `expiration` or `cluster_id`. What stays: body, content type and encoding, the
//! other headers, persistence, priority, correlation and message ids, reply-to, timestamp,
//! type and app id. The header table is checked against the frame by the publisher
//! ([`super::broker::Publisher`]), which refuses an oversized one for good.

use lapin::BasicProperties;
use lapin::types::FieldTable;

use super::headers::{BCC_HEADER, CC_HEADER};

/// `original`'s header table without the headers that route (`CC`, `BCC`, in any case).
pub fn headers(original: &BasicProperties) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in original.headers().as_ref().map(|t| t.inner()).into_iter().flatten() {
        let routes = name.as_str().eq_ignore_ascii_case(CC_HEADER) || name.as_str().eq_ignore_ascii_case(BCC_HEADER);
        if !routes {
            table.insert(name.clone(), value.clone());
        }
    }
    table
}

/// The properties of a copy of a message with `original`'s properties, carrying `headers`.
pub fn properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut copy = BasicProperties::default().with_headers(headers);
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*value);
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, LongString};

    #[test]
    fn a_copy_keeps_the_meaning_and_drops_what_routes_or_is_refused() {
        let mut table = FieldTable::default();
        let queues = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(LongString::from("other"))]));
        table.insert("CC".into(), queues.clone());
        table.insert("bcc".into(), queues);
        table.insert("service".into(), AMQPValue::LongString(LongString::from("orders")));
        let original = BasicProperties::default()
            .with_headers(table)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_user_id("someone-else".into())
            .with_expiration("60000".into())
            .with_cluster_id("x".into());
        let copy = properties(&original, headers(&original));
        let names: Vec<String> = copy.headers().as_ref().unwrap().inner().keys().map(|k| k.to_string()).collect();
        assert_eq!(names, vec!["service"]);
        assert_eq!(copy.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(copy.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.cluster_id(), &None);
    }
}
