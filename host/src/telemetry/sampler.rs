//! Which traces are recorded: OpenTelemetry's standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`. The default, `parentbased_always_on`, records every trace a
//! message starts and follows the caller's choice (the `traceparent`'s sampled flag) otherwise.

use super::SpanContext;

/// A sampling rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Records this fraction of traces, decided by the trace id (the same everywhere).
    Ratio(f64),
    /// Follows the parent's sampled flag; uses the inner rule for new traces.
    ParentBased(Root),
}

/// The rule a parent-based sampler uses for a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl Sampler {
    /// The sampler the environment names; unknown names fall back to the default with a
    /// warning that says what is accepted.
    pub fn from_env() -> Sampler {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Sampler::named(&name, arg.as_deref())
    }

    /// The sampler called `name` (OpenTelemetry's names) with ratio `arg` where one applies.
    pub fn named(name: &str, arg: Option<&str>) -> Sampler {
        let ratio = arg.and_then(|a| a.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0);
        match name.trim() {
            "" | "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio)),
            other => {
                tracing::warn!(
                    sampler = other,
                    "OTEL_TRACES_SAMPLER is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio: using parentbased_always_on"
                );
                Sampler::ParentBased(Root::AlwaysOn)
            }
        }
    }

    /// Whether a span with `parent` (none: a new trace) is recorded. A new trace's id is not
    /// known yet when the rule is a ratio: it is drawn the same way, at random.
    pub fn sample(&self, parent: Option<&SpanContext>) -> bool {
        let by_ratio = |ratio: f64, parent: Option<&SpanContext>| {
            let id = parent.map_or_else(|| *uuid::Uuid::new_v4().as_bytes(), |p| p.trace_id);
            let low = u64::from_be_bytes(id[8..16].try_into().unwrap_or([0; 8])) >> 1;
            (low as f64) < ratio * (u64::MAX >> 1) as f64
        };
        match (*self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(ratio), parent) => by_ratio(ratio, parent),
            (Sampler::ParentBased(_), Some(parent)) => parent.sampled,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::Ratio(ratio)), None) => by_ratio(ratio, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_follows_the_parent_and_records_new_traces() {
        let sampler = Sampler::named("", None);
        let sampled = SpanContext::new_root(true);
        let unsampled = SpanContext::new_root(false);
        assert!(sampler.sample(None));
        assert!(sampler.sample(Some(&sampled)));
        assert!(!sampler.sample(Some(&unsampled)));
        assert!(!Sampler::named("always_off", None).sample(Some(&sampled)));
        assert!(Sampler::named("always_on", None).sample(Some(&unsampled)));
        assert!(!Sampler::named("traceidratio", Some("0")).sample(Some(&sampled)));
        assert!(Sampler::named("traceidratio", Some("1")).sample(Some(&unsampled)));
        assert_eq!(Sampler::named("bogus", None), Sampler::ParentBased(Root::AlwaysOn));
    }
}
