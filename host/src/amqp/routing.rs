//! Picks the handler for a delivery by its routing key (SPEC §1: several handlers may share
//! one queue). Request and response queues match keys exactly; event queues use AMQP topic
//! patterns, where `*` is one word and `#` is zero or more words.

/// How a queue's routing keys are compared with a delivery's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMatch {
    /// The key must equal the pattern (direct and headers exchanges).
    Exact,
    /// AMQP topic matching (topic exchanges).
    Topic,
}

/// The routes of one queue: routing key patterns and what serves each.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    matching: KeyMatch,
    routes: Vec<(String, T)>,
}

impl<T> RouteTable<T> {
    pub fn new(matching: KeyMatch) -> Self {
        RouteTable { matching, routes: Vec::new() }
    }

    /// Adds a pattern; the first added pattern that matches a key wins.
    pub fn add(&mut self, pattern: impl Into<String>, target: T) {
        self.routes.push((pattern.into(), target));
    }

    /// The target for `routing_key`, or `None` when no pattern matches.
    pub fn find(&self, routing_key: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(pattern, _)| match self.matching {
                KeyMatch::Exact => pattern == routing_key,
                KeyMatch::Topic => topic_matches(pattern, routing_key),
            })
            .map(|(_, target)| target)
    }
}

/// Whether AMQP topic `pattern` matches routing `key` (`*` = one word, `#` = zero or more).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&word, rest)) => match key.split_first() {
                Some((first, key_rest)) => (word == "*" || word == *first) && matches(rest, key_rest),
                None => false,
            },
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    matches(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_is_exactly_one_word() {
        assert!(topic_matches("order.*", "order.created"));
        assert!(!topic_matches("order.*", "order"));
        assert!(!topic_matches("order.*", "order.created.eu"));
        assert!(topic_matches("*.created", "order.created"));
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("order.#", "order.created"));
        assert!(topic_matches("order.#", "order.created.eu"));
        assert!(!topic_matches("order.#", "invoice.created"));
        assert!(topic_matches("#", "anything.at.all"));
        assert!(topic_matches("#.eu", "order.created.eu"));
        assert!(topic_matches("order.#.eu", "order.eu"));
    }

    #[test]
    fn literal_words_must_match() {
        assert!(topic_matches("order.created", "order.created"));
        assert!(!topic_matches("order.created", "order.deleted"));
    }

    #[test]
    fn exact_tables_do_not_expand_wildcards() {
        let mut table = RouteTable::new(KeyMatch::Exact);
        table.add("echo", 1);
        table.add("a.*", 2);
        assert_eq!(table.find("echo"), Some(&1));
        assert_eq!(table.find("a.b"), None);
        assert_eq!(table.find("a.*"), Some(&2));
    }

    #[test]
    fn topic_tables_pick_the_first_matching_pattern() {
        let mut table = RouteTable::new(KeyMatch::Topic);
        table.add("order.created", "created");
        table.add("order.#", "any order");
        assert_eq!(table.find("order.created"), Some(&"created"));
        assert_eq!(table.find("order.deleted"), Some(&"any order"));
        assert_eq!(table.find("user.created"), None);
    }
}
