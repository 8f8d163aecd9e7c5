//! What a config declares on the broker (SPEC §1): exchanges, queues with their arguments,
//! bindings, and which plugin serves which routing key on each queue. Computed from the
//! [`Config`] without a broker; `broker` declares it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::naming;
use super::routing::KeyMatch;
use crate::config::{Config, QueueProfile};

/// `x-expires` on every queue Warren declares: 5 days in ms, as goamqp sets it.
pub const QUEUE_EXPIRES_MS: i64 = 432_000_000;

/// An AMQP exchange type used by goamqp's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Headers,
    Topic,
    /// Dead-letter exchanges: every bound queue gets every rejected message.
    Fanout,
}

/// A durable, non-auto-delete, non-internal exchange without arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
}

/// A queue argument value (the few types goamqp's declarations use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ArgValue {
    Int(i64),
    Text(String),
}

/// A queue and the flags and arguments it is declared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub name: String,
    /// durable=true, exclusive=false, auto-delete=false; otherwise transient:
    /// durable=false, exclusive=true, auto-delete=true.
    pub durable: bool,
    pub arguments: BTreeMap<String, ArgValue>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
    pub arguments: BTreeMap<String, ArgValue>,
}

/// What a consumer does with a handler's successful result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerKind {
    /// Publish the response to the requester, then ack.
    Request,
    /// Ack (events and responses to our own requests).
    Event,
}

/// One routing key pattern on a queue and the plugin that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub routing_key: String,
    pub plugin: String,
    /// Where this handler's rejected messages go.
    pub dead_letter_exchange: Option<String>,
    /// Delays before each redelivery of a `retry`, through this queue's retry queues
    /// (empty: redelivered at once, `limits.max_retries` times).
    pub retry_delays_ms: Vec<u64>,
}

/// One consumer: a queue, what its messages are, and who handles each routing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerSpec {
    pub queue: String,
    pub kind: ConsumerKind,
    /// Exact keys for direct and headers exchanges, topic patterns for streams.
    pub matching: KeyMatch,
    /// Where messages no handler takes go (`broker.dead_letter_exchange`).
    pub dead_letter_exchange: Option<String>,
    pub routes: Vec<Route>,
}

/// Everything Warren declares and consumes for one config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Topology {
    pub exchanges: Vec<Exchange>,
    pub queues: Vec<Queue>,
    pub bindings: Vec<Binding>,
    pub consumers: Vec<ConsumerSpec>,
}

impl Topology {
    /// The topology of `config`, following goamqp's conventions.
    pub fn for_config(config: &Config) -> Topology {
        let mut topology = Topology::default();
        if let Some(dlx) = &config.dead_letter_exchange {
            topology.add_exchange(dlx, ExchangeKind::Fanout);
        }
        let service = &config.service;
        let profile = config.queue_profile;

        if !config.requests.is_empty() {
            let exchange = naming::request_exchange(service);
            let queue = naming::request_queue(service);
            topology.add_exchange(&exchange, ExchangeKind::Direct);
            topology.add_exchange(&naming::response_exchange(service), ExchangeKind::Headers);
            topology.add_queue(&queue, true, profile);
            for handler in &config.requests {
                topology.bind(&queue, &exchange, &handler.routing_key, BTreeMap::new());
                let dlx = handler.dead_letter_exchange.as_ref().or(config.dead_letter_exchange.as_ref());
                let route = Route::new(config, &handler.routing_key, &handler.plugin, dlx, &handler.retry_delays);
                topology.route(&queue, ConsumerKind::Request, KeyMatch::Exact, route, profile);
            }
        }

        for handler in &config.responses {
            let exchange = naming::response_exchange(&handler.service);
            let queue = naming::response_queue(&handler.service, service);
            topology.add_exchange(&exchange, ExchangeKind::Headers);
            topology.add_queue(&queue, true, profile);
            let arguments = BTreeMap::from([("service".to_string(), ArgValue::Text(service.clone()))]);
            topology.bind(&queue, &exchange, &handler.routing_key, arguments);
            let dlx = handler.dead_letter_exchange.as_ref().or(config.dead_letter_exchange.as_ref());
            let route = Route::new(config, &handler.routing_key, &handler.plugin, dlx, &handler.retry_delays);
            topology.route(&queue, ConsumerKind::Event, KeyMatch::Exact, route, profile);
        }

        // What plugins are granted to publish to exists before their first publish.
        for settings in config.plugins.values() {
            for stream in &settings.grants.publish {
                topology.add_exchange(&naming::event_exchange(stream), ExchangeKind::Topic);
            }
            for target in &settings.grants.request {
                topology.add_exchange(&naming::request_exchange(target), ExchangeKind::Direct);
                topology.add_exchange(&naming::response_exchange(target), ExchangeKind::Headers);
            }
        }

        // One transient queue per stream per start, shared by that stream's transient handlers.
        let mut transient_queues: BTreeMap<&str, String> = BTreeMap::new();
        for handler in &config.events {
            let stream = handler.stream.as_str();
            let exchange = naming::event_exchange(stream);
            let queue = match (&handler.queue_suffix, handler.transient) {
                (_, true) => transient_queues
                    .entry(stream)
                    .or_insert_with(|| naming::transient_event_queue(stream, service))
                    .clone(),
                (Some(suffix), false) => naming::event_queue_with_suffix(stream, service, suffix),
                (None, false) => naming::event_queue(stream, service),
            };
            topology.add_exchange(&exchange, ExchangeKind::Topic);
            topology.add_queue(&queue, !handler.transient, profile);
            topology.bind(&queue, &exchange, &handler.routing_key, BTreeMap::new());
            let dlx = handler.dead_letter_exchange.as_ref().or(config.dead_letter_exchange.as_ref());
            let route = Route::new(config, &handler.routing_key, &handler.plugin, dlx, &handler.retry_delays);
            topology.route(&queue, ConsumerKind::Event, KeyMatch::Topic, route, profile);
        }
        for consumer in &mut topology.consumers {
            consumer.dead_letter_exchange = config.dead_letter_exchange.clone();
        }
        topology
    }

    /// A readable listing: exchanges with type, queues with flags and arguments, bindings
    /// with keys and arguments, and which plugin serves which key.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let args = |a: &BTreeMap<String, ArgValue>| {
            let parts: Vec<String> = a
                .iter()
                .map(|(k, v)| match v {
                    ArgValue::Int(i) => format!("{k}={i}"),
                    ArgValue::Text(s) => format!("{k}={s}"),
                })
                .collect();
            if parts.is_empty() { "-".to_string() } else { parts.join(", ") }
        };
        let mut out = String::new();
        let _ = writeln!(out, "EXCHANGES (durable, not auto-delete)");
        for e in &self.exchanges {
            let _ = writeln!(out, "  {:<8} {}", format!("{:?}", e.kind).to_lowercase(), e.name);
        }
        let _ = writeln!(out, "QUEUES");
        for q in &self.queues {
            let flags = if q.durable { "durable" } else { "transient (exclusive, auto-delete)" };
            let _ = writeln!(out, "  {}  [{flags}]  {}", q.name, args(&q.arguments));
        }
        let _ = writeln!(out, "BINDINGS");
        for b in &self.bindings {
            let _ = writeln!(out, "  {} -> {}  key={}  {}", b.exchange, b.queue, b.routing_key, args(&b.arguments));
        }
        let _ = writeln!(out, "HANDLERS");
        for c in &self.consumers {
            for r in &c.routes {
                let _ = writeln!(out, "  {}  {}  -> plugin {}", c.queue, r.routing_key, r.plugin);
            }
        }
        out
    }

    /// Keeps the transient queue names of `running` for the same streams, so a config
    /// reload does not replace a live transient queue with a new one.
    pub fn keep_transient_names(&mut self, running: &Topology) {
        // A transient name is `X.topic.exchange.queue.S-` + a 36-character UUID.
        let prefix = |name: &str| name.get(..name.len().saturating_sub(36)).unwrap_or_default().to_string();
        let renames: Vec<(String, String)> = self
            .queues
            .iter()
            .filter(|q| !q.durable)
            .filter_map(|new| {
                let old = running.queues.iter().find(|old| !old.durable && prefix(&old.name) == prefix(&new.name))?;
                Some((new.name.clone(), old.name.clone()))
            })
            .collect();
        for (from, to) in renames {
            self.queues.iter_mut().filter(|q| q.name == from).for_each(|q| q.name = to.clone());
            self.bindings.iter_mut().filter(|b| b.queue == from).for_each(|b| b.queue = to.clone());
            self.consumers.iter_mut().filter(|c| c.queue == from).for_each(|c| c.queue = to.clone());
        }
    }

    fn add_exchange(&mut self, name: &str, kind: ExchangeKind) {
        if !self.exchanges.iter().any(|e| e.name == name) {
            self.exchanges.push(Exchange { name: name.to_string(), kind });
        }
    }

    fn add_queue(&mut self, name: &str, durable: bool, profile: QueueProfile) {
        if self.queues.iter().any(|q| q.name == name) {
            return;
        }
        let mut arguments = BTreeMap::from([("x-expires".to_string(), ArgValue::Int(QUEUE_EXPIRES_MS))]);
        if durable && profile == QueueProfile::Quorum {
            arguments.insert("x-queue-type".to_string(), ArgValue::Text("quorum".to_string()));
        }
        self.queues.push(Queue { name: name.to_string(), durable, arguments });
    }

    fn bind(&mut self, queue: &str, exchange: &str, key: &str, arguments: BTreeMap<String, ArgValue>) {
        let binding = Binding {
            queue: queue.to_string(),
            exchange: exchange.to_string(),
            routing_key: key.to_string(),
            arguments,
        };
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }

    /// Adds `route` to the consumer of `queue`, with its dead-letter exchange and the retry
    /// queues its delays need.
    fn route(&mut self, queue: &str, kind: ConsumerKind, matching: KeyMatch, route: Route, profile: QueueProfile) {
        if let Some(dlx) = &route.dead_letter_exchange {
            self.add_exchange(dlx, ExchangeKind::Fanout);
        }
        let durable = self.queues.iter().find(|q| q.name == queue).is_none_or(|q| q.durable);
        for &delay in &route.retry_delays_ms {
            self.add_retry_queue(queue, delay, durable, profile);
        }
        match self.consumers.iter_mut().find(|c| c.queue == queue) {
            Some(consumer) => consumer.routes.push(route),
            None => {
                let routes = vec![route];
                let dead_letter_exchange = None; // set for every queue once all are known
                self.consumers.push(ConsumerSpec {
                    queue: queue.to_string(),
                    kind,
                    matching,
                    dead_letter_exchange,
                    routes,
                })
            }
        }
    }

    /// A queue where a retried message of `queue` waits `delay_ms`, then is dead-lettered by
    /// RabbitMQ straight back to `queue` (default exchange, routing key = `queue`).
    fn add_retry_queue(&mut self, queue: &str, delay_ms: u64, durable: bool, profile: QueueProfile) {
        let name = naming::retry_queue(queue, delay_ms);
        self.add_queue(&name, durable, profile);
        let retry = self.queues.iter_mut().find(|q| q.name == name).expect("just added");
        retry.arguments.extend([
            ("x-message-ttl".to_string(), ArgValue::Int(delay_ms as i64)),
            ("x-dead-letter-exchange".to_string(), ArgValue::Text(String::new())),
            ("x-dead-letter-routing-key".to_string(), ArgValue::Text(queue.to_string())),
        ]);
    }
}

impl Route {
    /// The route of a handler: its key, plugin, dead-letter exchange and retry delays (its
    /// own, else its plugin's limits).
    fn new(
        config: &Config,
        routing_key: &str,
        plugin: &str,
        dlx: Option<&String>,
        own_delays: &Option<Vec<std::time::Duration>>,
    ) -> Route {
        let delays = config.retry_delays(own_delays.as_ref(), plugin);
        Route {
            routing_key: routing_key.to_string(),
            plugin: plugin.to_string(),
            dead_letter_exchange: dlx.cloned(),
            retry_delays_ms: delays.iter().map(|d| d.as_millis() as u64).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology(text: &str) -> Topology {
        Topology::for_config(&Config::parse(Path::new("w.toml"), text, None).unwrap())
    }

    #[test]
    fn request_handlers_declare_both_exchanges_one_queue_and_a_binding_each() {
        let t = topology(
            "[service]\nname = \"demo\"\n[[request]]\nrouting_key = \"echo\"\nplugin = \"echo\"\n[[request]]\nrouting_key = \"greet\"\nplugin = \"greet\"\n",
        );
        assert_eq!(
            t.exchanges,
            vec![
                Exchange { name: "demo.direct.exchange.request".into(), kind: ExchangeKind::Direct },
                Exchange { name: "demo.headers.exchange.response".into(), kind: ExchangeKind::Headers },
            ]
        );
        assert_eq!(t.queues.len(), 1);
        assert_eq!(t.queues[0].name, "demo.direct.exchange.request.queue");
        assert!(t.queues[0].durable);
        assert_eq!(t.queues[0].arguments, BTreeMap::from([("x-expires".into(), ArgValue::Int(432_000_000))]));
        let keys: Vec<_> = t.bindings.iter().map(|b| b.routing_key.as_str()).collect();
        assert_eq!(keys, ["echo", "greet"]);
        assert_eq!(t.consumers.len(), 1);
        assert_eq!(t.consumers[0].routes.len(), 2);
    }

    #[test]
    fn response_handlers_bind_with_the_service_header_and_no_x_match() {
        let t = topology(
            "[service]\nname = \"orders\"\n[[response]]\nservice = \"billing\"\nrouting_key = \"invoice\"\nplugin = \"orders\"\n",
        );
        assert_eq!(t.queues[0].name, "billing.headers.exchange.response.queue.orders");
        assert_eq!(t.bindings[0].exchange, "billing.headers.exchange.response");
        assert_eq!(t.bindings[0].arguments, BTreeMap::from([("service".into(), ArgValue::Text("orders".into()))]));
    }

    #[test]
    fn event_handlers_share_one_queue_per_stream() {
        let t = topology(
            "[service]\nname = \"audit\"\n[[event]]\nrouting_key = \"order.#\"\nplugin = \"audit\"\n[[event]]\nrouting_key = \"user.*\"\nplugin = \"audit\"\n[[event]]\nrouting_key = \"x\"\nplugin = \"audit\"\ntransient = true\n",
        );
        assert_eq!(t.exchanges, vec![Exchange { name: "events.topic.exchange".into(), kind: ExchangeKind::Topic }]);
        assert_eq!(t.queues[0].name, "events.topic.exchange.queue.audit");
        assert!(t.queues[1].name.starts_with("events.topic.exchange.queue.audit-"));
        assert!(!t.queues[1].durable);
        assert_eq!(t.consumers[0].routes.len(), 2);
    }

    #[test]
    fn a_reload_keeps_the_running_transient_queue() {
        let text = "[service]\nname = \"a\"\n[[event]]\nrouting_key = \"x\"\nplugin = \"p\"\ntransient = true\n";
        let running = topology(text);
        let mut reloaded = topology(text);
        assert_ne!(running.queues[0].name, reloaded.queues[0].name);
        reloaded.keep_transient_names(&running);
        assert_eq!(running.queues, reloaded.queues);
        assert_eq!(running.bindings, reloaded.bindings);
        assert_eq!(running.consumers, reloaded.consumers);
    }

    #[test]
    fn the_quorum_profile_applies_to_durable_queues_only() {
        let t = topology(
            "[service]\nname = \"a\"\n[broker]\nqueue_profile = \"quorum\"\n[[request]]\nrouting_key = \"k\"\nplugin = \"p\"\n[[event]]\nrouting_key = \"x\"\nplugin = \"p\"\ntransient = true\n",
        );
        assert_eq!(t.queues[0].arguments["x-queue-type"], ArgValue::Text("quorum".into()));
        assert_eq!(t.queues[0].arguments["x-expires"], ArgValue::Int(432_000_000));
        assert!(!t.queues[1].arguments.contains_key("x-queue-type"));
    }
}
