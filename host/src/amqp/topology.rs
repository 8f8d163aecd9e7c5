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
    /// Whether a success publishes the handler's result as the answer to the requester: a
    /// `[[request]]` handler (goamqp's `RequestResponseHandler`), unless it says
    /// `respond = false` (goamqp's `ServiceRequestConsumer`). Never for events and responses.
    pub answers: bool,
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
                let mut route = Route::new(config, &handler.routing_key, &handler.plugin, dlx, &handler.retry_delays);
                route.answers = handler.respond;
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
            // Late answers (`respond = [...]`) go out on this service's own response exchange.
            if !settings.grants.respond.is_empty() {
                topology.add_exchange(&naming::response_exchange(service), ExchangeKind::Headers);
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
                let silent = c.kind == ConsumerKind::Request && !r.answers;
                let note =
                    if silent { "  (respond = false: answers nothing, goamqp's ServiceRequestConsumer)" } else { "" };
                let _ = writeln!(out, "  {}  {}  -> plugin {}{note}", c.queue, r.routing_key, r.plugin);
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
            answers: false,
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
    fn a_request_handler_that_answers_nothing_declares_what_goamqps_service_request_consumer_does() {
        let silent = topology(
            "[service]\nname = \"billing\"\n[[request]]\nrouting_key = \"charge\"\nplugin = \"p\"\nrespond = false\n",
        );
        let answering =
            topology("[service]\nname = \"billing\"\n[[request]]\nrouting_key = \"charge\"\nplugin = \"p\"\n");
        // ServiceRequestConsumer declares the response exchange, the request exchange, the
        // queue and the binding, exactly as RequestResponseHandler (which wraps it) does.
        assert_eq!(
            (&silent.exchanges, &silent.queues, &silent.bindings),
            (&answering.exchanges, &answering.queues, &answering.bindings)
        );
        let response_exchange =
            Exchange { name: "billing.headers.exchange.response".into(), kind: ExchangeKind::Headers };
        assert!(silent.exchanges.contains(&response_exchange));
        assert!(!silent.consumers[0].routes[0].answers);
        assert!(answering.consumers[0].routes[0].answers);
        let table = silent.to_table();
        assert!(table.contains("charge  -> plugin p  (respond = false: answers nothing"), "{table}");
        assert!(!answering.to_table().contains("respond = false"));
    }

    #[test]
    fn a_respond_grant_declares_the_services_own_response_exchange() {
        let t = topology(
            "[service]\nname = \"billing\"\n[[event]]\nrouting_key = \"saga.done\"\nplugin = \"p\"\n[plugin.p]\nrespond = [\"orders\"]\n",
        );
        let response_exchange =
            Exchange { name: "billing.headers.exchange.response".into(), kind: ExchangeKind::Headers };
        assert!(t.exchanges.contains(&response_exchange));
        assert!(!t.consumers[0].routes[0].answers, "an event handler never answers by itself");
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

/// The requester a diagram shows for requests from any client (goamqp's README says
/// `client`; braces mark it as a stand-in for each requesting service's name).
pub const MERMAID_ANY_CLIENT: &str = "{client}";
/// The publishers a diagram shows for an event stream this service consumes.
pub const MERMAID_ANY_PUBLISHER: &str = "{publishers}";

impl Topology {
    /// A mermaid `flowchart LR` of this topology for `config` (`warren topology --mermaid`),
    /// drawn as goamqp's README draws a request/response pair: service ((circle)) → exchange
    /// [box] → binding {rhombus, with its routing key and arguments} → queue ([stadium]) →
    /// service. For each request handler, the loop from any client through this service and
    /// back; for each response consumer, the loop through the other service; for each event
    /// consumer, the stream's path to this service. Also what this service's plugins may
    /// publish to, dead-lettering (dotted, `rejected`) and retry queues (dotted). Every
    /// exchange and queue of the topology appears, with goamqp's exact names.
    pub fn to_mermaid(&self, config: &Config) -> String {
        let service = config.service.as_str();
        let mut d = Drawing::default();
        let me = d.node(Shape::Service, service);

        // Requests this service answers: any client → … → this service → … → the client.
        for consumer in self.consumers.iter().filter(|c| c.kind == ConsumerKind::Request) {
            for binding in self.bindings.iter().filter(|b| b.queue == consumer.queue) {
                let client = d.node(Shape::Service, MERMAID_ANY_CLIENT);
                let exchange = d.node(Shape::Exchange, &binding.exchange);
                d.edge(&client, &exchange);
                let queue = d.binding(binding);
                d.edge(&queue, &me);
                // `respond = false` (goamqp's ServiceRequestConsumer): no answer loop.
                if !consumer.routes.iter().any(|r| r.routing_key == binding.routing_key && r.answers) {
                    continue;
                }
                let answer = Binding {
                    queue: naming::response_queue(service, MERMAID_ANY_CLIENT),
                    exchange: naming::response_exchange(service),
                    routing_key: binding.routing_key.clone(),
                    arguments: BTreeMap::from([("service".into(), ArgValue::Text(MERMAID_ANY_CLIENT.into()))]),
                };
                let response_exchange = d.node(Shape::Exchange, &answer.exchange);
                d.edge(&me, &response_exchange);
                let reply_queue = d.binding(&answer);
                d.edge(&reply_queue, &client);
            }
        }

        // Responses this service consumes: this service → the other's request side → the
        // other service → its response exchange → our binding and queue → this service.
        let response_suffix = naming::response_exchange("");
        for binding in &self.bindings {
            let Some(target) = binding.exchange.strip_suffix(&response_suffix) else { continue };
            let request = Binding {
                queue: naming::request_queue(target),
                exchange: naming::request_exchange(target),
                routing_key: binding.routing_key.clone(),
                arguments: BTreeMap::new(),
            };
            let request_exchange = d.node(Shape::Exchange, &request.exchange);
            d.edge(&me, &request_exchange);
            let request_queue = d.binding(&request);
            let other = d.node(Shape::Service, target);
            d.edge(&request_queue, &other);
            let response_exchange = d.node(Shape::Exchange, &binding.exchange);
            d.edge(&other, &response_exchange);
            let queue = d.binding(binding);
            d.edge(&queue, &me);
        }

        // Event streams this service consumes: publishers → stream → binding → queue → us.
        let topic = |name: &str| self.exchanges.iter().any(|e| e.name == name && e.kind == ExchangeKind::Topic);
        for binding in self.bindings.iter().filter(|b| topic(&b.exchange)) {
            let publishers = d.node(Shape::Service, MERMAID_ANY_PUBLISHER);
            let exchange = d.node(Shape::Exchange, &binding.exchange);
            d.edge(&publishers, &exchange);
            let queue = d.binding(binding);
            d.edge(&queue, &me);
        }

        // What the plugins are granted to send to.
        for settings in config.plugins.values() {
            for stream in &settings.grants.publish {
                let exchange = d.node(Shape::Exchange, &naming::event_exchange(stream));
                d.edge(&me, &exchange);
            }
            for target in &settings.grants.request {
                let exchange = d.node(Shape::Exchange, &naming::request_exchange(target));
                d.edge(&me, &exchange);
            }
            if !settings.grants.respond.is_empty() {
                let exchange = d.node(Shape::Exchange, &naming::response_exchange(service));
                d.edge(&me, &exchange);
            }
        }

        // Warren's own additions: dead-lettering and delayed retries.
        for consumer in &self.consumers {
            let queue = d.node(Shape::Queue, &consumer.queue);
            let exchanges = consumer
                .dead_letter_exchange
                .iter()
                .chain(consumer.routes.iter().filter_map(|r| r.dead_letter_exchange.as_ref()));
            for dlx in exchanges {
                let exchange = d.node(Shape::Exchange, dlx);
                d.dotted(&queue, &exchange, "rejected");
            }
        }
        for retry in &self.queues {
            let Some(ArgValue::Text(back_to)) = retry.arguments.get("x-dead-letter-routing-key") else { continue };
            let waiting = d.node(Shape::Queue, &retry.name);
            d.dotted(&me, &waiting, "retry");
            let work = d.node(Shape::Queue, back_to);
            let after = match retry.arguments.get("x-message-ttl") {
                Some(ArgValue::Int(ms)) => format!("after {ms} ms"),
                _ => "expired".to_string(),
            };
            d.dotted(&waiting, &work, &after);
        }

        // Anything declared that no path above reached still appears.
        for exchange in &self.exchanges {
            d.node(Shape::Exchange, &exchange.name);
        }
        for queue in &self.queues {
            d.node(Shape::Queue, &queue.name);
        }
        d.render()
    }
}

/// The shapes of goamqp's pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `((name))`: a service (or a stand-in for any client or publisher).
    Service,
    /// `[name]`
    Exchange,
    /// `{Binding …}`
    Binding,
    /// `([name])`
    Queue,
}

/// A mermaid flowchart being drawn: each node declared once (id by shape and name, in order
/// of first use), each edge once.
#[derive(Default)]
struct Drawing {
    ids: BTreeMap<(u8, String), String>,
    counts: [usize; 4],
    nodes: Vec<String>,
    edges: Vec<String>,
}

impl Drawing {
    /// The id of the node `name` of `shape`, declaring it on first use.
    fn node(&mut self, shape: Shape, name: &str) -> String {
        self.node_labelled(shape, name, &mermaid_text(name))
    }

    /// The id of the node known as `key` of `shape`, declared with `label` on first use.
    fn node_labelled(&mut self, shape: Shape, key: &str, label: &str) -> String {
        let slot = shape as u8;
        if let Some(id) = self.ids.get(&(slot, key.to_string())) {
            return id.clone();
        }
        let (prefix, open, close) = match shape {
            Shape::Service => ("s", "((", "))"),
            Shape::Exchange => ("x", "[", "]"),
            Shape::Binding => ("b", "{", "}"),
            Shape::Queue => ("q", "([", "])"),
        };
        let id = format!("{prefix}{}", self.counts[usize::from(slot)]);
        self.counts[usize::from(slot)] += 1;
        self.nodes.push(format!("    {id}{open}\"{label}\"{close}"));
        self.ids.insert((slot, key.to_string()), id.clone());
        id
    }

    /// `exchange → {Binding routingKey, arguments} → queue`, one rhombus per binding, as
    /// goamqp's README draws it; returns the queue's id.
    fn binding(&mut self, binding: &Binding) -> String {
        let exchange = self.node(Shape::Exchange, &binding.exchange);
        let mut fields = vec![format!("routingKey: '{}'", mermaid_text(&binding.routing_key))];
        for (name, value) in &binding.arguments {
            let value = match value {
                ArgValue::Int(i) => i.to_string(),
                ArgValue::Text(s) => format!("'{}'", mermaid_text(s)),
            };
            fields.push(format!("{}: {value}", mermaid_text(name)));
        }
        let label = format!("Binding<br/>{}", fields.join(",<br/>"));
        let key = format!("{}\u{0}{}\u{0}{label}", binding.exchange, binding.queue);
        let rhombus = self.node_labelled(Shape::Binding, &key, &label);
        let queue = self.node(Shape::Queue, &binding.queue);
        self.edge(&exchange, &rhombus);
        self.edge(&rhombus, &queue);
        queue
    }

    /// A solid arrow: where messages flow.
    fn edge(&mut self, from: &str, to: &str) {
        self.push_edge(format!("    {from} --> {to}"));
    }

    /// A dotted, labelled arrow: Warren's own detours (dead-lettering, delayed retries).
    fn dotted(&mut self, from: &str, to: &str, label: &str) {
        self.push_edge(format!("    {from} -.->|\"{}\"| {to}", mermaid_text(label)));
    }

    fn push_edge(&mut self, line: String) {
        if !self.edges.contains(&line) {
            self.edges.push(line);
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for line in self.nodes.iter().chain(&self.edges) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Text safe inside a quoted mermaid label: `"`, `<` and `>` as entity codes, and a `#` that
/// would start one (`#word;`) too.
fn mermaid_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' if starts_entity(&text[i + 1..]) => out.push_str("#35;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `rest` (the text after a `#`) reads as an entity code's name and `;`.
fn starts_entity(rest: &str) -> bool {
    let name_len = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).count();
    name_len > 0 && rest[name_len..].starts_with(';')
}

#[cfg(test)]
mod mermaid_tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn mermaid(text: &str) -> String {
        let config = Config::parse(Path::new("w.toml"), text, None).unwrap();
        Topology::for_config(&config).to_mermaid(&config)
    }

    /// The node ids of `labels`, in order, looked up in `chart`'s declarations.
    fn id(chart: &str, label: &str) -> String {
        let declared = chart
            .lines()
            .find(|l| l.contains(&format!("\"{label}\"")))
            .unwrap_or_else(|| panic!("no node {label} in\n{chart}"));
        declared.trim().split(['(', '[', '{']).next().unwrap().to_string()
    }

    /// Asserts that `chart` has a solid path through the nodes labelled `labels`, in order.
    fn assert_path(chart: &str, labels: &[&str]) {
        for pair in labels.windows(2) {
            let edge = format!("    {} --> {}", id(chart, pair[0]), id(chart, pair[1]));
            assert!(chart.lines().any(|l| l == edge), "no edge {} → {} in\n{chart}", pair[0], pair[1]);
        }
    }

    #[test]
    fn a_request_handler_draws_goamqps_request_response_loop() {
        let chart = mermaid("[service]\nname = \"svc\"\n[[request]]\nrouting_key = \"key\"\nplugin = \"p\"\n");
        assert!(chart.starts_with("flowchart LR\n"), "{chart}");
        assert_path(
            &chart,
            &[
                "{client}",
                "svc.direct.exchange.request",
                "Binding<br/>routingKey: 'key'",
                "svc.direct.exchange.request.queue",
                "svc",
                "svc.headers.exchange.response",
                "Binding<br/>routingKey: 'key',<br/>service: '{client}'",
                "svc.headers.exchange.response.queue.{client}",
                "{client}",
            ],
        );
        assert!(chart.contains("    s0((\"svc\"))\n"), "services are circles: {chart}");
        assert!(chart.contains("[\"svc.direct.exchange.request\"]"), "exchanges are boxes: {chart}");
        assert!(chart.contains("([\"svc.direct.exchange.request.queue\"])"), "queues are stadiums: {chart}");
    }

    #[test]
    fn a_response_consumer_draws_the_loop_through_the_other_service() {
        let chart = mermaid(
            "[service]\nname = \"orders\"\n[[response]]\nservice = \"billing\"\nrouting_key = \"invoice\"\nplugin = \"p\"\n",
        );
        assert_path(
            &chart,
            &[
                "orders",
                "billing.direct.exchange.request",
                "Binding<br/>routingKey: 'invoice'",
                "billing.direct.exchange.request.queue",
                "billing",
                "billing.headers.exchange.response",
                "Binding<br/>routingKey: 'invoice',<br/>service: 'orders'",
                "billing.headers.exchange.response.queue.orders",
                "orders",
            ],
        );
    }

    #[test]
    fn event_consumers_draw_the_stream_to_each_queue_transient_ones_too() {
        let chart = mermaid(
            "[service]\nname = \"audit\"\n[[event]]\nrouting_key = \"order.#\"\nplugin = \"p\"\n\
             [[event]]\nstream = \"users\"\nrouting_key = \"user.*\"\nplugin = \"p\"\ntransient = true\n",
        );
        assert_path(
            &chart,
            &[
                "{publishers}",
                "events.topic.exchange",
                "Binding<br/>routingKey: 'order.#'",
                "events.topic.exchange.queue.audit",
                "audit",
            ],
        );
        let transient = chart
            .lines()
            .find_map(|l| l.split('"').nth(1).filter(|n| n.starts_with("users.topic.exchange.queue.audit-")))
            .expect(&chart);
        assert_path(
            &chart,
            &["{publishers}", "users.topic.exchange", "Binding<br/>routingKey: 'user.*'", transient, "audit"],
        );
    }

    #[test]
    fn a_handler_that_answers_nothing_draws_no_answer_loop() {
        let chart = mermaid(
            "[service]\nname = \"svc\"\n[[request]]\nrouting_key = \"cmd\"\nplugin = \"p\"\nrespond = false\n\
             [plugin.p]\nrespond = [\"orders\"]\n",
        );
        let request = ["{client}", "svc.direct.exchange.request", "Binding<br/>routingKey: 'cmd'"];
        assert_path(&chart, &[&request[..], &["svc.direct.exchange.request.queue", "svc"]].concat());
        assert!(!chart.contains("service: '{client}'"), "no answer goes back by itself: {chart}");
        assert_path(&chart, &["svc", "svc.headers.exchange.response"]);
    }

    #[test]
    fn grants_draw_what_the_plugins_may_send_to() {
        let chart = mermaid(
            "[service]\nname = \"s\"\n[[request]]\nrouting_key = \"k\"\nplugin = \"p\"\n\
             [plugin.p]\npublish = [\"audit\"]\nrequest = [\"billing\"]\n",
        );
        assert_path(&chart, &["s", "audit.topic.exchange"]);
        assert_path(&chart, &["s", "billing.direct.exchange.request"]);
        assert!(chart.contains("[\"billing.headers.exchange.response\"]"), "every declared exchange appears: {chart}");
    }

    #[test]
    fn dead_lettering_and_delayed_retries_are_dotted_detours() {
        let chart = mermaid(
            "[service]\nname = \"s\"\n[broker]\ndead_letter_exchange = \"s.dlx\"\n\
             [[request]]\nrouting_key = \"k\"\nplugin = \"p\"\nretry_delays_ms = [100, 1000]\n",
        );
        let (queue, dlx) = (id(&chart, "s.direct.exchange.request.queue"), id(&chart, "s.dlx"));
        assert!(chart.contains(&format!("    {queue} -.->|\"rejected\"| {dlx}\n")), "{chart}");
        for delay in [100, 1000] {
            let retry = id(&chart, &format!("s.direct.exchange.request.queue.retry-{delay}ms"));
            assert!(chart.contains(&format!("    s0 -.->|\"retry\"| {retry}\n")), "{chart}");
            assert!(chart.contains(&format!("    {retry} -.->|\"after {delay} ms\"| {queue}\n")), "{chart}");
        }
    }

    #[test]
    fn labels_escape_what_mermaid_would_read_as_syntax() {
        assert_eq!(mermaid_text(r#"a"b<c>"#), "a#quot;b#lt;c#gt;");
        assert_eq!(mermaid_text("order.#"), "order.#", "a lone # stays readable");
        assert_eq!(mermaid_text("x.#amp;"), "x.#35;amp;", "a # that would start an entity code");
        let chart = mermaid("[service]\nname = \"s\"\n[[request]]\nrouting_key = \"a<b>\"\nplugin = \"p\"\n");
        assert!(chart.contains("routingKey: 'a#lt;b#gt;'"), "{chart}");
    }

    #[test]
    fn node_ids_are_plain_words_and_every_label_is_quoted() {
        let chart = mermaid(
            "[service]\nname = \"orders\"\n[[request]]\nrouting_key = \"order.create\"\nplugin = \"p\"\n\
             [[event]]\nrouting_key = \"order.#\"\nplugin = \"p\"\n",
        );
        for line in chart.lines().skip(1) {
            let first = line.trim().split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap();
            assert!(!first.is_empty() && first.chars().next().unwrap().is_ascii_lowercase(), "{line}");
            if !line.contains("--") {
                assert_eq!(line.matches('"').count(), 2, "one quoted label per node: {line}");
            }
        }
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// The demo configs' charts, against `host/tests/fixtures/mermaid/<config>.mmd`
    /// (`WARREN_BLESS=1` rewrites them after a deliberate change).
    #[test]
    fn the_demo_configs_draw_as_their_fixtures() {
        for name in ["warren.toml", "warren-orders.toml"] {
            let config =
                Config::parse(Path::new(name), &std::fs::read_to_string(repo().join(name)).unwrap(), None).unwrap();
            let chart = Topology::for_config(&config).to_mermaid(&config);
            let fixture =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mermaid").join(format!("{name}.mmd"));
            if std::env::var_os("WARREN_BLESS").is_some() {
                std::fs::write(&fixture, &chart).unwrap();
            }
            let expected = std::fs::read_to_string(&fixture).unwrap();
            assert!(
                chart == expected,
                "{name} draws differently from {}:\n--- expected\n{expected}--- got\n{chart}",
                fixture.display()
            );
        }
    }
}
