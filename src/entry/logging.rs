//! Logs on stderr: human-readable lines, or one JSON object per line for
//! log shippers (`--log-format json`), filtered by `RUST_LOG`.
//!
//! The JSON lines have tracing-subscriber's shape (`timestamp`, `level`,
//! `fields`, `target`), written here so that each field keeps its type: a
//! number stays a number, and the fields in [`JSON_FIELDS`], which the proxy
//! writes as JSON text (the access log's `failed` list), are embedded as
//! JSON values instead of strings.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log filter when `RUST_LOG` is unset: info, and no access log (one
/// line per request is for operators who ask for it:
/// `RUST_LOG=info,access=info`).
pub const DEFAULT_LOG_DIRECTIVES: &str = "info,access=off";

/// Fields whose text is JSON, embedded as such in JSON lines.
pub const JSON_FIELDS: &[&str] = &["failed"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber: stderr, in `format`, filtered by
/// `RUST_LOG` (default [`DEFAULT_LOG_DIRECTIVES`]).
pub fn init(format: LogFormat) {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse_lossy(directives),
        _ => EnvFilter::new(DEFAULT_LOG_DIRECTIVES),
    };
    // A log line that cannot be written (stderr closed: the log collector
    // went away) is dropped: reporting it would write to stderr again, and
    // `eprintln!` panics when that fails. The proxy keeps serving.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
}

/// Writes each event as one JSON object.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = json_line(&timestamp, meta.level().as_str(), meta.target(), fields.0);
        writeln!(writer, "{line}")
    }
}

/// One log line's object, in tracing-subscriber's JSON shape.
fn json_line(timestamp: &str, level: &str, target: &str, fields: Map<String, Value>) -> Value {
    let mut line = Map::new();
    line.insert("timestamp".into(), Value::from(timestamp));
    line.insert("level".into(), Value::from(level));
    line.insert("fields".into(), Value::Object(fields));
    line.insert("target".into(), Value::from(target));
    Value::Object(line)
}

/// An event's fields as JSON values, by type.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), text_value(field.name(), value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0
            .insert(field.name().into(), text_value(field.name(), &text));
    }
}

/// A field's text as a JSON value: parsed, for the [`JSON_FIELDS`] (when it
/// parses), else a string.
fn text_value(name: &str, text: &str) -> Value {
    if JSON_FIELDS.contains(&name)
        && let Ok(value) = serde_json::from_str(text)
    {
        return value;
    }
    Value::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_field_is_embedded_as_json_and_any_other_text_stays_a_string() {
        assert_eq!(
            text_value("failed", r#"["a","b \"c\""]"#),
            serde_json::json!(["a", "b \"c\""])
        );
        assert_eq!(text_value("failed", "[]"), serde_json::json!([]));
        assert_eq!(text_value("path", "[]"), Value::from("[]"));
        // Not JSON after all: kept as the text it is.
        assert_eq!(text_value("failed", "[oops"), Value::from("[oops"));
    }

    #[test]
    fn a_line_has_the_shape_log_shippers_expect() {
        let mut fields = Map::new();
        fields.insert("latency_ms".into(), Value::from(1.25));
        let line = json_line("2026-12-05T08:00:00Z", "INFO", "access", fields);
        assert_eq!(
            line.to_string(),
            r#"{"fields":{"latency_ms":1.25},"level":"INFO","target":"access","timestamp":"2026-12-05T08:00:00Z"}"#
        );
    }
}
