//! The trace id in log lines: an event formatter around the usual ones.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events with `inner`, adding the trace id of the span they
/// happen in (when traces are on and the span is traced): `trace_id=…`
/// at the end of a human line, a `"trace_id"` member first in a JSON one.
pub(crate) struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceId<F> {
    pub(crate) fn human(inner: F) -> Self {
        WithTraceId { inner, json: false }
    }

    pub(crate) fn json(inner: F) -> Self {
        WithTraceId { inner, json: true }
    }
}

/// The trace id of the innermost traced span the event happens in (a
/// span that is not exported, such as a debug one, gives way to its
/// parents).
fn trace_id<S>(ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let spans: Vec<tracing::span::Id> = ctx.event_scope()?.map(|span| span.id()).collect();
    tracing::dispatcher::get_default(|dispatch| {
        spans.iter().find_map(|id| {
            // No extension of the span is borrowed here (the OpenTelemetry
            // layer may need to start the span to answer).
            let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
            let span_context = context.span().span_context().clone();
            span_context
                .is_valid()
                .then(|| span_context.trace_id().to_string())
        })
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
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
        let Some(id) = trace_id(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The inner line, then the id put in place (colours are left out
        // of such lines: the buffer is no terminal).
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"trace_id\":\"{id}\",{rest}"),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={id}")
        }
    }
}
