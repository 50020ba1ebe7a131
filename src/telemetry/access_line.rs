//! Access-log lines, text or JSON, written without the general formatter.
//!
//! There is one access-log line per request, and the general formatters
//! spend more instructions on it than the rest of a proxied request's own
//! work: styles that are never printed, the timestamp taken apart for
//! every line, every field through `Debug` or a JSON value. This writes
//! the same bytes directly.
//!
//! A line logged while a request is handled (see `context`) gets the
//! request's id written as the general formatter writes a `request{id=…}`
//! span; its fields are still the general formatter's. Every other line,
//! lines inside a span, and every line while colours are on, go through
//! the general formatter.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{Datelike as _, Timelike as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, time::SystemTime as Clock};
use tracing_subscriber::registry::LookupSpan;

use super::{ACCESS_TARGET, context};

/// A log format: access lines written here in `style`, every other line
/// by `general`.
pub(super) struct Access<F> {
    general: F,
    style: Style,
}

/// The text format.
pub(super) type Text = Access<format::Format<format::Full, Clock>>;
/// The JSON format, fields flattened into the object.
pub(super) type Json = Access<format::Format<format::Json, Clock>>;

impl Text {
    pub(super) fn new() -> Self {
        Access {
            general: format::Format::default(),
            style: Style::Text,
        }
    }
}

impl Json {
    pub(super) fn new() -> Self {
        Access {
            general: format::Format::default().json().flatten_event(true),
            style: Style::Json,
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Access<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let plain = !writer.has_ansi_escapes() && ctx.event_scope().is_none();
        if plain
            && let Some(written) =
                context::current(|id| self.in_request(ctx, &mut writer, event, id))
        {
            return written;
        }
        let direct = plain && *meta.level() == Level::INFO && meta.target() == ACCESS_TARGET;
        if !direct {
            return self.general.format_event(ctx, writer, event);
        }
        head(&mut writer, self.style, SystemTime::now())?;
        let mut fields = Fields::new(&mut writer, self.style);
        event.record(&mut fields);
        fields.result?;
        tail(&mut writer, self.style)
    }
}

/// What starts a plain access-log line: time, level and target.
fn head(writer: &mut Writer<'_>, style: Style, now: SystemTime) -> fmt::Result {
    match style {
        Style::Text => {
            timestamp(writer, now)?;
            writer.write_str("  INFO ")?;
            writer.write_str(ACCESS_TARGET)?;
            writer.write_str(": ")
        }
        Style::Json => {
            writer.write_str("{\"timestamp\":\"")?;
            timestamp(writer, now)?;
            writer.write_str("\",\"level\":\"INFO\"")
        }
    }
}

fn tail(writer: &mut Writer<'_>, style: Style) -> fmt::Result {
    match style {
        Style::Text => writer.write_char('\n'),
        Style::Json => {
            writer.write_str(",\"target\":\"")?;
            writer.write_str(ACCESS_TARGET)?;
            writer.write_str("\"}\n")
        }
    }
}

/// One served request, as its access-log line tells it.
#[derive(Clone, Copy, Debug)]
pub struct Served<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub user: &'a str,
    pub client: &'a str,
}

impl Served<'_> {
    /// The line as an event, for the general formatters.
    pub(super) fn log_event(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = %self.request_id,
            method = %self.method,
            path = self.path,
            status = self.status,
            latency_us = self.latency_us,
            user = self.user,
            client = %self.client,
        );
    }

    /// The line as the formatter writes [`Served::log_event`]'s event,
    /// byte for byte, appended to `out` without going through
    /// an event, and each field's name and separators in one piece.
    pub(super) fn write(&self, out: &mut Vec<u8>, style: Style, now: SystemTime) -> fmt::Result {
        let mut digits = itoa::Buffer::new();
        match style {
            Style::Text => {
                timestamp(&mut Appended(out), now)?;
                out.extend_from_slice(b"  INFO billguard::access: request_id=");
                out.extend_from_slice(self.request_id.as_bytes());
                out.extend_from_slice(b" method=");
                out.extend_from_slice(self.method.as_bytes());
                out.extend_from_slice(b" path=");
                quoted(&mut Appended(out), self.path)?;
                out.extend_from_slice(b" status=");
                out.extend_from_slice(digits.format(self.status).as_bytes());
                out.extend_from_slice(b" latency_us=");
                out.extend_from_slice(digits.format(self.latency_us).as_bytes());
                out.extend_from_slice(b" user=");
                quoted(&mut Appended(out), self.user)?;
                out.extend_from_slice(b" client=");
                out.extend_from_slice(self.client.as_bytes());
                out.push(b'\n');
            }
            Style::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                timestamp(&mut Appended(out), now)?;
                out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
                json_string(&mut Appended(out), self.request_id)?;
                out.extend_from_slice(b",\"method\":");
                json_string(&mut Appended(out), self.method)?;
                out.extend_from_slice(b",\"path\":");
                json_string(&mut Appended(out), self.path)?;
                out.extend_from_slice(b",\"status\":");
                out.extend_from_slice(digits.format(self.status).as_bytes());
                out.extend_from_slice(b",\"latency_us\":");
                out.extend_from_slice(digits.format(self.latency_us).as_bytes());
                out.extend_from_slice(b",\"user\":");
                json_string(&mut Appended(out), self.user)?;
                out.extend_from_slice(b",\"client\":");
                json_string(&mut Appended(out), self.client)?;
                out.extend_from_slice(b",\"target\":\"billguard::access\"}\n");
            }
        }
        Ok(())
    }
}

/// Text appended to a byte buffer.
struct Appended<'a>(&'a mut Vec<u8>);

impl fmt::Write for Appended<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl<F> Access<F> {
    /// A line logged while the request `id` is handled, as the general
    /// formatter writes it inside a `request{id=…}` span.
    fn in_request<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: &mut Writer<'_>,
        event: &Event<'_>,
        id: &str,
    ) -> fmt::Result
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
        F: FormatEvent<S, N>,
    {
        let meta = event.metadata();
        match self.style {
            Style::Text => {
                timestamp(writer, SystemTime::now())?;
                write!(writer, " {:>5} request{{id={id}}}: ", meta.level().as_str())?;
                writer.write_str(meta.target())?;
                writer.write_str(": ")?;
                ctx.format_fields(writer.by_ref(), event)?;
                writer.write_char('\n')
            }
            Style::Json => {
                // The general line, which ends `}` and a newline, with the
                // span entries the general formatter would add before its
                // end.
                let mut line = String::new();
                self.general
                    .format_event(ctx, Writer::new(&mut line), event)?;
                let head = line.strip_suffix("}\n").ok_or(fmt::Error)?;
                writer.write_str(head)?;
                writer.write_str(",\"span\":")?;
                json_span(writer, id)?;
                writer.write_str(",\"spans\":[")?;
                json_span(writer, id)?;
                writer.write_str("]}\n")
            }
        }
    }
}

/// The request span as the JSON formatter writes it.
fn json_span(writer: &mut Writer<'_>, id: &str) -> fmt::Result {
    writer.write_str("{\"id\":")?;
    json_string(writer, id)?;
    writer.write_str(",\"name\":\"request\"}")
}

/// How a line's fields are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Style {
    /// `name=value` pairs as the text formatter writes them: strings
    /// quoted and escaped as `Debug` does, anything else through its
    /// `Debug` (which for a `%` field is its `Display`).
    Text,
    /// `,"name":value` entries as the JSON formatter writes them (they
    /// follow `"level"`): strings escaped as serde_json does, anything
    /// else as the string its `Debug` gives.
    Json,
}

/// An event's fields, numbers and booleans plain in both styles.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    style: Style,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> Fields<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, style: Style) -> Self {
        Fields {
            writer,
            style,
            first: true,
            result: Ok(()),
        }
    }

    fn name(&mut self, name: &str) -> fmt::Result {
        let name = name.strip_prefix("r#").unwrap_or(name);
        match self.style {
            Style::Text => {
                if !std::mem::take(&mut self.first) {
                    self.writer.write_char(' ')?;
                }
                self.writer.write_str(name)?;
                self.writer.write_char('=')
            }
            Style::Json => {
                self.writer.write_char(',')?;
                json_string(self.writer, name)?;
                self.writer.write_char(':')
            }
        }
    }

    fn put(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>, Style) -> fmt::Result) {
        if self.result.is_ok() {
            let style = self.style;
            self.result = self.name(name).and_then(|()| value(self.writer, style));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), |w, style| match style {
            Style::Text => quoted(w, value),
            Style::Json => json_string(w, value),
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), |w, _| {
            w.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), |w, _| {
            w.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), |w, _| {
            w.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), |w, style| match style {
            Style::Text => write!(w, "{value:?}"),
            Style::Json => {
                let mut text = String::new();
                write!(text, "{value:?}")?;
                json_string(w, &text)
            }
        });
    }
}

/// `value` as serde_json writes a string.
fn json_string(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !plain(value) {
        let escaped = serde_json::to_string(value).map_err(|_| fmt::Error)?;
        return w.write_str(&escaped);
    }
    w.write_char('"')?;
    w.write_str(value)?;
    w.write_char('"')
}

/// Printable ASCII without quote or backslash: written as it is, in
/// quotes, by both `Debug` and JSON.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `value` as `{:?}` writes it, without the per-character escaping when
/// there is nothing to escape.
fn quoted(w: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !plain(value) {
        return write!(w, "{value:?}");
    }
    w.write_char('"')?;
    w.write_str(value)?;
    w.write_char('"')
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the
    /// fraction: `2026-12-04T02:29:27`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-04T02:29:27.559038Z`, as the general formatters write it.
fn timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .unwrap_or_default();
            write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )?;
            *second = secs;
        }
        w.write_str(text)
    })?;
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since.subsec_micros());
    w.write_char('.')?;
    w.write_str(&"000000"[micros.len()..])?;
    w.write_str(micros)?;
    w.write_char('Z')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    type Boxed = Box<dyn Subscriber + Send + Sync>;

    fn text_ours(w: Captured) -> Boxed {
        let layer = tracing_subscriber::fmt::layer().with_ansi(false);
        Box::new(
            tracing_subscriber::registry().with(layer.event_format(Text::new()).with_writer(w)),
        )
    }

    fn text_general(w: Captured) -> Boxed {
        let layer = tracing_subscriber::fmt::layer().with_ansi(false);
        Box::new(tracing_subscriber::registry().with(layer.with_writer(w)))
    }

    fn json_ours(w: Captured) -> Boxed {
        let layer = tracing_subscriber::fmt::layer().json().flatten_event(true);
        Box::new(
            tracing_subscriber::registry().with(layer.event_format(Json::new()).with_writer(w)),
        )
    }

    fn json_general(w: Captured) -> Boxed {
        let layer = tracing_subscriber::fmt::layer().json().flatten_event(true);
        Box::new(tracing_subscriber::registry().with(layer.with_writer(w)))
    }

    /// What `emit` logs through the subscriber `make` builds.
    fn through(make: fn(Captured) -> Boxed, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        tracing::subscriber::with_default(make(out.clone()), emit);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// The same events through this JSON format and the general one.
    fn both_json(emit: impl Fn()) -> (String, String) {
        (through(json_ours, &emit), through(json_general, &emit))
    }

    /// A JSON line without its timestamp's value.
    fn untimed_json(line: &str) -> String {
        let (head, rest) = line.split_once("\"timestamp\":\"").unwrap();
        let (_, tail) = rest.split_once('"').unwrap();
        format!("{head}{tail}")
    }

    fn access_events() {
        let ip: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        tracing::info!(
            target: "billguard::access",
            request_id = "4bf92f3577b34da6",
            method = %hyper::Method::GET,
            path = "/bills/2026",
            status = 200_u16,
            latency_us = 1234_u64,
            user = "ada \"the\" admin\\",
            client = %ip,
        );
        tracing::info!(target: "billguard::access", path = "/caf\u{e9}\n\u{1b}[31m", user = "-");
    }

    #[test]
    fn a_json_access_line_reads_as_the_general_formatter_writes_it() {
        let (raw, general) = both_json(access_events);
        let ours: Vec<String> = raw.lines().map(untimed_json).collect();
        let general: Vec<String> = general.lines().map(untimed_json).collect();
        assert_eq!(ours, general);
        assert_eq!(ours.len(), 2);
        let line: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["status"], 200);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["target"], "billguard::access");
    }

    /// A served request with text that needs escaping both ways.
    const SERVED: Served<'static> = Served {
        request_id: "4bf92f3577b34da6aa55",
        method: "PATCH",
        path: "/caf\u{e9}/\"x\"\\y\n\u{1b}[31m",
        status: 502,
        latency_us: 98_765,
        user: "ada \"the\" admin\\",
        client: "2001:db8::1",
    };

    fn written(served: &Served<'_>, style: Style) -> String {
        let mut line = Vec::new();
        served.write(&mut line, style, SystemTime::now()).unwrap();
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn a_served_request_written_directly_reads_as_its_event() {
        for served in [
            SERVED,
            Served {
                user: "-",
                path: "/",
                ..SERVED
            },
        ] {
            let event = through(text_ours, || served.log_event());
            assert_eq!(untimed(&written(&served, Style::Text)), untimed(&event));
            let general = through(text_general, || served.log_event());
            assert_eq!(untimed(&event), untimed(&general));

            let event = through(json_ours, || served.log_event());
            assert_eq!(
                untimed_json(&written(&served, Style::Json)),
                untimed_json(&event)
            );
            let general = through(json_general, || served.log_event());
            assert_eq!(untimed_json(&event), untimed_json(&general));
        }
        let line: serde_json::Value = serde_json::from_str(&written(&SERVED, Style::Json)).unwrap();
        assert_eq!(line["path"], SERVED.path);
        assert_eq!(line["user"], SERVED.user);
        assert_eq!(line["status"], 502);
    }

    #[test]
    fn other_json_lines_are_left_to_the_general_formatter() {
        let (ours, general) = both_json(|| {
            tracing::error!(target: "billguard::access", status = 502_u16, "odd");
            let span = tracing::info_span!("request", id = "abc");
            let _in = span.enter();
            tracing::info!(target: "billguard::access", status = 200_u16);
        });
        let ours: Vec<String> = ours.lines().map(untimed_json).collect();
        assert_eq!(ours, general.lines().map(untimed_json).collect::<Vec<_>>());
        assert!(ours[1].contains("\"span\":{\"id\":\"abc\""), "{}", ours[1]);
    }

    /// The same events through this format and the general one.
    fn both(emit: impl Fn()) -> (String, String) {
        (through(text_ours, &emit), through(text_general, &emit))
    }

    /// A line without its timestamp (which the two layers take apart).
    fn untimed(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    #[test]
    fn an_access_line_reads_as_the_general_formatter_writes_it() {
        let (ours, general) = both(access_events);
        let ours: Vec<&str> = ours.lines().map(untimed).collect();
        let general: Vec<&str> = general.lines().map(untimed).collect();
        assert_eq!(ours, general);
        assert_eq!(ours.len(), 2);
        assert!(
            ours[0]
                .starts_with(" INFO billguard::access: request_id=\"4bf92f3577b34da6\" method=GET")
        );
    }

    #[test]
    fn other_lines_are_left_to_the_general_formatter() {
        let (ours, general) = both(|| {
            tracing::warn!(target: "billguard::access", status = 502_u16, "odd");
            tracing::info!(target: "billguard::auth", outcome = "success", "Login");
            let span = tracing::info_span!("request", id = "abc");
            let _in = span.enter();
            tracing::info!(target: "billguard::access", status = 200_u16);
        });
        assert_eq!(
            ours.lines().map(untimed).collect::<Vec<_>>(),
            general.lines().map(untimed).collect::<Vec<_>>()
        );
        assert!(ours.contains("request{id=\"abc\"}: billguard::access: status=200"));
    }

    const REQUEST: &str = "req-7:f00d/b@r";

    /// Lines of every kind logged while a request is handled.
    fn request_events() {
        tracing::info!(target: "billguard::auth", outcome = "success", user = %"olivia", "Login succeeded");
        let refused = std::io::Error::other("connection \"refused\"");
        tracing::warn!(error = %refused, attempt = 2_u64, retry = false, "Upstream unreachable");
        tracing::error!(ratio = 0.5_f64, delta = -3_i64, "odd");
        tracing::debug!(path = ?"/a b", "debug line");
        tracing::info!(target: "billguard::access", status = 200_u16);
    }

    /// `request_events` through `ours` with the request in the task's
    /// context, and through `general` inside a `request` span.
    fn in_request(ours: fn(Captured) -> Boxed, general: fn(Captured) -> Boxed) -> (String, String) {
        let in_context = || context::sync_in_request(REQUEST, request_events);
        let in_span = || tracing::info_span!("request", id = %REQUEST).in_scope(request_events);
        (through(ours, in_context), through(general, in_span))
    }

    #[test]
    fn a_line_of_a_request_reads_as_inside_the_request_span() {
        let (ours, general) = in_request(text_ours, text_general);
        let ours: Vec<&str> = ours.lines().map(untimed).collect();
        assert_eq!(ours, general.lines().map(untimed).collect::<Vec<_>>());
        assert_eq!(ours.len(), 5);
        assert!(
            ours[0]
                .starts_with(" INFO request{id=req-7:f00d/b@r}: billguard::auth: Login succeeded"),
            "{}",
            ours[0]
        );
    }

    #[test]
    fn a_json_line_of_a_request_reads_as_inside_the_request_span() {
        let (ours, general) = in_request(json_ours, json_general);
        let raw = ours.lines().nth(1).unwrap().to_owned();
        let ours: Vec<String> = ours.lines().map(untimed_json).collect();
        assert_eq!(ours, general.lines().map(untimed_json).collect::<Vec<_>>());
        assert_eq!(ours.len(), 5);
        let line: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(line["span"]["id"], REQUEST);
        assert_eq!(line["spans"][0]["name"], "request");
    }

    #[test]
    fn lines_outside_a_request_carry_no_request_id() {
        let (ours, general) = both(|| {
            context::sync_in_request(REQUEST, || {});
            tracing::info!(target: "billguard::auth", outcome = "success", "Login");
        });
        assert_eq!(
            ours.lines().map(untimed).collect::<Vec<_>>(),
            general.lines().map(untimed).collect::<Vec<_>>()
        );
        assert!(!ours.contains("request{"), "{ours}");
    }

    #[test]
    fn the_timestamp_has_microseconds_and_a_cached_second_that_moves_on() {
        let mut out = String::new();
        let t0 = UNIX_EPOCH + Duration::from_micros(1_764_815_367_000_042);
        timestamp(&mut Writer::new(&mut out), t0).unwrap();
        timestamp(
            &mut Writer::new(&mut out),
            t0 + Duration::from_micros(999_000),
        )
        .unwrap();
        timestamp(&mut Writer::new(&mut out), t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(
            out,
            "2025-12-04T02:29:27.000042Z2025-12-04T02:29:27.999042Z2025-12-04T02:29:28.000042Z"
        );
    }
}
