//! The dashboard's HTML, rendered with `maud`: every `(value)` is escaped, and the only
//! `PreEscaped` text is the doctype. Payloads are user data and display as text.

use duro_proto::{OrchestrationStatus, TaskFailureDetails};
use maud::{html, Markup, DOCTYPE};

use super::timeline::{self, Outcome, SpanKind};
use super::{instance_url, ActionKind, Ctx, ListView, LiveView, Refusal, PAGE_SIZES, PREFIX};
use crate::http::json::{self, ApiError};
use crate::store::InstanceRecord;

/// Statuses in the order the counts and filters show them.
const STATUSES: [OrchestrationStatus; 7] = [
    OrchestrationStatus::Pending,
    OrchestrationStatus::Running,
    OrchestrationStatus::Suspended,
    OrchestrationStatus::Completed,
    OrchestrationStatus::Failed,
    OrchestrationStatus::Terminated,
    OrchestrationStatus::ContinuedAsNew,
];

/// Steps drawn on a timeline and events listed, at most (a page stays small for long histories).
const MAX_SPANS: usize = 500;
const MAX_EVENTS: usize = 2000;

/// `2026-12-05 13:10:05.123` (UTC).
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A payload for display: indented when it is JSON, as stored otherwise.
pub fn payload(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| raw.to_string())
}

fn status_badge(s: OrchestrationStatus) -> Markup {
    let name = json::status_name(s);
    html! { span class={ "badge s-" (name.to_ascii_lowercase()) } { (name) } }
}

fn layout(ctx: Option<&Ctx>, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Duro" }
                link rel="stylesheet" href={ (PREFIX) "/static/dashboard.css" };
                script src={ (PREFIX) "/static/dashboard.js" } defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(PREFIX) { "Duro" }
                    @if let Some(ctx) = ctx {
                        nav aria-label="Dashboard" {
                            a href=(PREFIX) aria-current=[(active == "list").then_some("page")] { "Instances" }
                            a href={ (PREFIX) "/live" } aria-current=[(active == "live").then_some("page")] { "Live" }
                            a href={ (PREFIX) "/entities" } aria-current=[(active == "entities").then_some("page")] { "Entities" }
                        }
                        form.search method="get" action={ (PREFIX) "/search" } role="search" {
                            label for="search-id" { "Instance id" }
                            input #search-id type="search" name="id" placeholder="Go to instance id" required;
                            button type="submit" { "Open" }
                        }
                        @if ctx.signed_in {
                            form method="post" action={ (PREFIX) "/logout" } {
                                input type="hidden" name="csrf" value=(ctx.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn banner_refusal(r: &Refusal) -> Markup {
    html! {
        div.banner.error role="alert" {
            strong { "Refused by the API (" (r.status.as_u16()) " " (r.code) "): " }
            span.api-message { (r.message) }
        }
    }
}

/// A page with a heading, a sentence and maybe a link.
pub fn message_page(title: &str, text: &str, link: Option<(&str, &str)>) -> Markup {
    layout(
        None,
        title,
        "",
        html! {
            h1 { (title) }
            p { (text) }
            @if let Some((href, label)) = link { p { a href=(href) { (label) } } }
        },
    )
}

pub fn error_page(ctx: &Ctx, e: &ApiError) -> Markup {
    layout(
        Some(ctx),
        "Error",
        "",
        html! {
            h1 { "Something was refused" }
            div.banner.error role="alert" {
                strong { (e.code.status().as_u16()) " " (e.code.as_str()) ": " }
                span.api-message { (e.message) }
            }
            p { a href=(PREFIX) { "Back to the instances" } }
        },
    )
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        "",
        html! {
            h1 { "Sign in to the Duro dashboard" }
            @if let Some(e) = error { div.banner.error role="alert" { (e) } }
            form.card.login method="post" action={ (PREFIX) "/login" } {
                label for="key" { "System key" }
                p.hint #key-hint { "The management key of this Duro (DURO_SYSTEM_KEY). It is kept only as a signed session cookie, never in the address bar." }
                input #key type="password" name="key" autocomplete="current-password" required autofocus aria-describedby="key-hint";
                button type="submit" { "Sign in" }
            }
        },
    )
}

// ----- list ------------------------------------------------------------------------------

pub fn list(ctx: &Ctx, v: &ListView) -> Markup {
    let p = &v.params;
    let total: u64 = v.counts.iter().map(|(_, n)| n).sum();
    let count_of = |s: OrchestrationStatus| v.counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n).unwrap_or(0);
    let qs = p.query_string();
    layout(
        Some(ctx),
        "Instances",
        "list",
        html! {
            h1 { "Orchestration instances" }
            @if let Some(n) = &v.notice { div.banner.ok role="status" { (n) } }
            div data-refresh-region {
                ul.counts aria-label="Instances by status" {
                    li { a href=(PREFIX) { span.count { (total) } " all" } }
                    @for s in STATUSES {
                        @let n = count_of(s);
                        @if n > 0 || !matches!(s, OrchestrationStatus::ContinuedAsNew) {
                            li { a href={ (PREFIX) "?status=" (json::status_name(s)) } data-status=(json::status_name(s)) {
                                span.count { (n) } " " (status_badge(s))
                            } }
                        }
                    }
                }
            }
            details.filters open[!qs.is_empty()] {
                summary { "Filters" }
                form method="get" action=(PREFIX) {
                    fieldset {
                        legend { "Status" }
                        @for s in STATUSES {
                            @let name = json::status_name(s);
                            label.check {
                                input type="checkbox" name="status" value=(name) checked[p.statuses.contains(&s)];
                                " " (name)
                            }
                        }
                    }
                    div.fields {
                        div { label for="f-name" { "Orchestration name" } input #f-name type="text" name="name" value=(p.name); }
                        div { label for="f-prefix" { "Instance id prefix" } input #f-prefix type="text" name="prefix" value=(p.prefix); }
                        div { label for="f-from" { "Created from (UTC)" } input #f-from type="datetime-local" name="from" value=(p.from); }
                        div { label for="f-to" { "Created before (UTC)" } input #f-to type="datetime-local" name="to" value=(p.to); }
                        div {
                            label for="f-size" { "Per page" }
                            select #f-size name="size" {
                                @for n in PAGE_SIZES { option value=(n) selected[n == p.size] { (n) } }
                            }
                        }
                    }
                    button type="submit" { "Apply filters" }
                    " "
                    a href=(PREFIX) { "Clear" }
                }
            }
            div.toolbar {
                label.check { input #auto-refresh type="checkbox"; " Auto-refresh every 5 s" }
            }
            div data-refresh-region {
                @if v.rows.is_empty() {
                    p.empty { "No instances match." }
                } @else {
                    div.table-wrap {
                        table.instances {
                            caption.sr-only { "Instances, newest first" }
                            thead { tr { th scope="col" { "Instance id" } th scope="col" { "Name" } th scope="col" { "Status" } th scope="col" { "Created (UTC)" } th scope="col" { "Last updated (UTC)" } } }
                            tbody {
                                @for r in &v.rows {
                                    tr {
                                        td.id { a href=(instance_url(&r.instance_id)) { (r.instance_id) } }
                                        td { (r.name) }
                                        td { (status_badge(r.status)) }
                                        td { (time(r.created_at_ms)) }
                                        td { (time(r.updated_at_ms)) }
                                    }
                                }
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if p.before.is_some() { a href={ (PREFIX) "?" (qs) } { "← First page" } }
                    @if let Some(next) = &v.next {
                        @let sep = if qs.is_empty() { "" } else { "&" };
                        a rel="next" href={ (PREFIX) "?" (qs) (sep) "before=" (super::enc(next)) } { "Next page →" }
                    }
                }
            }
        },
    )
}

// ----- one instance -----------------------------------------------------------------------

pub struct InstanceView {
    pub record: InstanceRecord,
    pub history: Vec<duro_proto::HistoryEvent>,
    pub now_ms: i64,
    pub done: Option<ActionKind>,
    pub refusal: Option<Refusal>,
    /// Durable HTTP calls in flight that are polling a 202's `Location`, by task id.
    pub polling: Vec<(i32, crate::durable_http::polling::PollState)>,
}

pub fn not_found(ctx: &Ctx, id: &str, e: &ApiError, refusal: Option<&Refusal>) -> Markup {
    layout(
        Some(ctx),
        "Not found",
        "",
        html! {
            h1 { "Instance " code { (id) } }
            @if let Some(r) = refusal { (banner_refusal(r)) }
            div.banner.error role="alert" { (e.message) }
            p { a href=(PREFIX) { "Back to the instances" } }
        },
    )
}

fn payload_block(label: &str, value: Option<&str>) -> Markup {
    html! {
        section.payload {
            h3 { (label) }
            @match value {
                Some(v) => pre data-payload=(label.to_ascii_lowercase()) { code { (payload(v)) } },
                None => p.none { "none" },
            }
        }
    }
}

fn failure_block(f: &TaskFailureDetails) -> Markup {
    html! {
        div.failure {
            p { strong { (f.error_type) } ": " (f.error_message) }
            @if let Some(st) = &f.stack_trace { pre.stack { (st) } }
            @if let Some(inner) = &f.inner_failure {
                details { summary { "Inner failure" } (failure_block(inner)) }
            }
        }
    }
}

fn action_form(ctx: &Ctx, id: &str, a: ActionKind, confirm: &str, fields: Markup) -> Markup {
    html! {
        form.action method="post" action={ (instance_url(id)) "/" (a.slug()) } data-confirm=(confirm) {
            input type="hidden" name="csrf" value=(ctx.csrf);
            (fields)
            button type="submit" data-action=(a.slug()) { (a.title()) }
        }
    }
}

pub fn instance(ctx: &Ctx, v: &InstanceView) -> Markup {
    let r = &v.record;
    let id = r.instance_id.as_str();
    let tl = timeline::build(&v.history, v.now_ms);
    let children: Vec<&timeline::Span> = tl.spans.iter().filter(|s| s.kind == SpanKind::SubOrchestration).collect();
    let live = crate::engine::is_started(r.status) && !crate::engine::is_finished(r.status);
    layout(
        Some(ctx),
        id,
        "",
        html! {
            p.crumbs { a href=(PREFIX) { "Instances" } " / " }
            h1 { "Instance " code #instance-id { (id) } " " span #instance-status { (status_badge(r.status)) } }
            @if let Some(d) = v.done { div.banner.ok role="status" { (d.title()) " accepted." } }
            @if let Some(refusal) = &v.refusal { (banner_refusal(refusal)) }
            @if live || r.status == OrchestrationStatus::Pending {
                div.toolbar { label.check { input #auto-refresh type="checkbox"; " Auto-refresh every 5 s" } }
            }
            div data-refresh-region {
                dl.facts {
                    dt { "Name" } dd { (r.name) @if let Some(ver) = &r.version { " (version " (ver) ")" } }
                    dt { "Execution id" } dd { code { (r.execution_id) } }
                    dt { "Created" } dd { (time(r.created_at_ms)) " UTC" }
                    dt { "Last updated" } dd { (time(r.updated_at_ms)) " UTC" }
                    @if let Some(c) = r.completed_at_ms { dt { "Completed" } dd { (time(c)) " UTC (after " (timeline::duration_text(c - r.created_at_ms)) ")" } }
                    @if let Some(s) = r.scheduled_start_at_ms { dt { "Scheduled start" } dd { (time(s)) " UTC" } }
                    dt { "Parent" }
                    dd { @match &r.parent_instance_id {
                        Some(p) => a #parent-link href=(instance_url(p)) { (p) },
                        None => "none (top level)",
                    } }
                    @if !r.tags.is_empty() {
                        dt { "Tags" }
                        dd { @for (k, t) in &r.tags { span.tag { (k) "=" (t) } " " } }
                    }
                }
                div.payloads {
                    (payload_block("Input", r.input.as_deref()))
                    (payload_block("Output", r.output.as_deref()))
                    (payload_block("Custom status", r.custom_status.as_deref()))
                }
                @if let Some(f) = &r.failure {
                    section #failure { h2 { "Failure" } (failure_block(f)) }
                }
                section #children {
                    h2 { "Sub-orchestrations" }
                    @if children.is_empty() { p.none { "none" } } @else {
                        ul { @for c in &children { li {
                            @if let Some(cid) = &c.instance_id { a href=(instance_url(cid)) { (cid) } }
                            " " (c.name) " · " (c.outcome.label())
                        } } }
                    }
                }
                @if !v.polling.is_empty() {
                    section #durable-http {
                        h2 { "Durable HTTP calls polling" }
                        p.hint { "A 202 answer's Location is polled until the call finishes; the query string is not shown (it may hold a token)." }
                        ul { @for (task_id, st) in &v.polling { li data-task=(task_id) {
                            "Task #" (task_id) ": poll " (st.polls) " of this call, next at " (time(st.next_poll_at_ms)) " UTC, gives up at "
                            (time(st.deadline_ms)) " UTC · "
                            code { (st.location_url().map(|u| crate::durable_http::ssrf::display_url(&u)).unwrap_or_else(|_| "(unreadable location)".into())) }
                        } } }
                    }
                }
                section #timeline {
                    h2 { "Timeline" }
                    (timeline_chart(&tl, v.now_ms))
                }
            }
            section #actions {
                h2 { "Actions" }
                p.hint { "Each action is a call of the HTTP management API; if the API refuses it, its answer is shown above." }
                div.actions {
                    (action_form(ctx, id, ActionKind::RaiseEvent, "Raise this event?", html! {
                        label for="ev-name" { "Event name" } input #ev-name type="text" name="event" required;
                        label for="ev-data" { "Event data (JSON, optional)" } textarea #ev-data name="data" rows="3" {}
                    }))
                    (action_form(ctx, id, ActionKind::Terminate, "Terminate this instance?", html! {
                        label for="t-reason" { "Reason" } input #t-reason type="text" name="reason";
                        label.check { input type="checkbox" name="recursive" value="true"; " also its sub-orchestrations" }
                    }))
                    (action_form(ctx, id, ActionKind::Suspend, "Suspend this instance?", html! {
                        label for="s-reason" { "Reason" } input #s-reason type="text" name="reason";
                    }))
                    (action_form(ctx, id, ActionKind::Resume, "Resume this instance?", html! {
                        label for="r-reason" { "Reason" } input #r-reason type="text" name="reason";
                    }))
                    (action_form(ctx, id, ActionKind::Rewind, "Rewind this failed instance?", html! {
                        label for="w-reason" { "Reason" } input #w-reason type="text" name="reason";
                    }))
                    (action_form(ctx, id, ActionKind::Restart, "Restart this instance?", html! {
                        label.check { input type="checkbox" name="newId" value="true" checked; " under a new instance id" }
                    }))
                    (action_form(ctx, id, ActionKind::Purge, "Purge this instance and its history? This cannot be undone.", html! {
                        p.hint { "Deletes a finished instance and its history." }
                    }))
                }
            }
            section #history {
                h2 { "History (" (v.history.len()) " events)" }
                @if v.history.len() > MAX_EVENTS {
                    p.hint { "The first " (MAX_EVENTS) " events are listed; the management API's status route with showHistory=true returns them all." }
                }
                p.hint {
                    "The store keeps the current execution's history only: after a continue-as-new, earlier generations are not kept "
                    "(the execution id changes; the input of the current generation is shown above)."
                }
                div.table-wrap {
                    table.events {
                        caption.sr-only { "Raw history events" }
                        thead { tr { th scope="col" { "#" } th scope="col" { "Time (UTC)" } th scope="col" { "Event" } th scope="col" { "Id" } th scope="col" { "Details" } } }
                        tbody {
                            @for (i, e) in v.history.iter().enumerate().take(MAX_EVENTS) {
                                @let (kind, details) = event_text(e);
                                tr {
                                    td { (i) }
                                    td { (e.timestamp.as_ref().map(crate::core::time::to_ms).map(time).unwrap_or_default()) }
                                    td { (kind) }
                                    td { (e.event_id) }
                                    td { code.details { (details) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// An event's kind and its fields, as text.
fn event_text(e: &duro_proto::HistoryEvent) -> (String, String) {
    let Some(t) = &e.event_type else { return ("(empty)".into(), String::new()) };
    let debug = format!("{t:?}");
    let kind = debug.split('(').next().unwrap_or_default().to_string();
    let details = debug.strip_prefix(&kind).unwrap_or(&debug);
    let details = details.strip_prefix('(').and_then(|d| d.strip_suffix(')')).unwrap_or(details);
    const MAX: usize = 2000;
    let details = match details.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &details[..cut]),
        None => details.to_string(),
    };
    (kind, details)
}

/// The Gantt chart: one row per span, bars in inline SVG (positions as attributes, so the
/// page's style policy allows them), and the same data as a table.
fn timeline_chart(tl: &timeline::Timeline, now_ms: i64) -> Markup {
    const LABEL: f64 = 260.0;
    const CHART: f64 = 720.0;
    const ROW: f64 = 22.0;
    let spans = &tl.spans[..tl.spans.len().min(MAX_SPANS)];
    let height = ROW * spans.len().max(1) as f64 + 24.0;
    let total = tl.end_ms - tl.start_ms;
    html! {
        @if tl.spans.is_empty() { p.none { "No history yet." } } @else {
            @if spans.len() < tl.spans.len() {
                p.hint { "The first " (MAX_SPANS) " of " (tl.spans.len()) " steps are shown." }
            }
            figure.timeline {
                svg viewBox={ "0 0 " (LABEL + CHART + 10.0) " " (height) } width="100%" role="img"
                    aria-label={ "Timeline of " (tl.spans.len()) " steps over " (timeline::duration_text(total)) } {
                    @for (i, s) in spans.iter().enumerate() {
                        @let y = ROW * i as f64 + 4.0;
                        @let (x, w) = timeline::bar(tl, s, CHART, now_ms);
                        g class={ "span k-" (s.kind.label().replace('-', "")) " o-" (s.outcome.label()) } {
                            title { (s.kind.label()) " " (s.name) ": " (s.outcome.label()) ", " (timeline::duration_text(s.duration_ms(now_ms))) }
                            text x="4" y=(y + 13.0) { (clip(&s.name, 34)) }
                            rect x=(LABEL + x) y=(y) width=(w) height=(ROW - 6.0) rx="2" {}
                        }
                    }
                    text.axis x=(LABEL) y=(height - 4.0) { "0" }
                    text.axis x=(LABEL + CHART) y=(height - 4.0) text-anchor="end" { (timeline::duration_text(total)) }
                }
                figcaption.legend {
                    span.k-activity { "activity" } span.k-timer { "timer" } span.k-suborchestration { "sub-orchestration" }
                    span.k-event { "event" } span.o-failed { "failed" } span.o-running { "running" }
                }
            }
            details.timeline-table open {
                summary { "Timeline as a table" }
                div.table-wrap {
                    table #timeline-table {
                        thead { tr { th scope="col" { "Step" } th scope="col" { "Name" } th scope="col" { "Started (UTC)" } th scope="col" { "Duration" } th scope="col" { "Outcome" } } }
                        tbody {
                            @for s in spans {
                                tr data-kind=(s.kind.label()) data-outcome=(s.outcome.label()) {
                                    td { (s.kind.label()) }
                                    td.name { (s.name)
                                        @if let Some(i) = &s.instance_id { " → " a href=(instance_url(i)) { (i) } }
                                    }
                                    td { (time(s.start_ms)) }
                                    td { (timeline::duration_text(s.duration_ms(now_ms))) @if s.outcome == Outcome::Open { " so far" } }
                                    td { (s.outcome.label()) @if let Some(d) = &s.detail { ": " (d) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

// ----- live, entities ---------------------------------------------------------------------

pub fn live(ctx: &Ctx, v: &LiveView, cap: usize) -> Markup {
    let st = &v.snapshot.stats;
    let at_least = |n: usize| if n >= cap { format!("≥{n}") } else { n.to_string() };
    layout(
        Some(ctx),
        "Live",
        "live",
        html! {
            h1 { "Live view" }
            div.toolbar { label.check { input #auto-refresh type="checkbox" checked; " Auto-refresh every 5 s" } }
            div data-refresh-region {
                section {
                    h2 { "Throughput" }
                    dl.facts {
                        dt { "Finished in the last minute" } dd #finished-1m { (at_least(v.finished_1m)) }
                        dt { "Finished in the last 5 minutes" } dd { (at_least(v.finished_5m)) " (" (format!("{:.1}", v.finished_5m as f64 / 300.0)) " per second)" }
                    }
                }
                section {
                    h2 { "Queues" }
                    dl.facts {
                        dt { "Events ready for a turn (store)" } dd #ready-events { (v.metrics.ready_events) }
                        dt { "Oldest ready event waiting for" } dd { (format!("{:.1}", v.metrics.oldest_ready_age_seconds)) " s" }
                        dt { "Events waiting for their time (timers)" } dd { (v.metrics.timers_waiting) }
                        dt { "Activities scheduled, not completed (store)" } dd #activities-store { (v.metrics.activities) }
                        dt { "Instances ready for a worker" } dd #ready { (st.ready_instances) }
                        dt { "Instances no connected worker accepts" } dd { (st.parked_instances) }
                        dt { "Activities queued or running" } dd #activities { (st.queued_activities) }
                        dt { "Work items leased to workers" } dd { (st.leases) }
                        dt { "Timers and delayed wake-ups" } dd { (st.wakeups) }
                        dt { "Instances in dispatch memory" } dd { (st.instances_in_memory) }
                        dt { "Event payload bytes held in memory" } dd { (st.payload_bytes) }
                    }
                }
                section {
                    h2 { "Since start" }
                    p.hint { "The same counters as " code { "/metrics" } " and " code { "/stats" } "." }
                    dl.facts {
                        @for (kind, n) in &v.metrics.dispatched {
                            dt { (kind) " work items dispatched" } dd { (n) }
                        }
                        @for (kind, n) in &v.metrics.completed {
                            dt { (kind) " work items completed" } dd data-completed=(kind) { (n) }
                        }
                        dt { "Leases that expired" } dd { (v.metrics.leases_expired) }
                    }
                    @if let Some(e) = &v.metrics.store_error { div.banner.error role="alert" { (e) } }
                }
                section {
                    h2 { "Instances by status" }
                    ul.counts { @for (s, n) in &v.counts { li { a href={ (PREFIX) "?status=" (json::status_name(*s)) } { span.count { (n) } " " (status_badge(*s)) } } } }
                }
                section {
                    h2 { "Connected workers: " (v.snapshot.streams.len()) " work-item " (if v.snapshot.streams.len() == 1 { "stream" } else { "streams" }) }
                    @if v.snapshot.streams.is_empty() { p.none #no-workers { "No worker is connected." } } @else {
                        div.table-wrap { table #streams {
                            thead { tr { th scope="col" { "Stream" } th scope="col" { "Orchestrations (held / cap)" } th scope="col" { "Activities (held / cap)" } th scope="col" { "Filters" } } }
                            tbody { @for s in &v.snapshot.streams { tr {
                                td { (s.id) }
                                td { (s.orchestrations) " / " (s.max_orchestrations) }
                                td { (s.activities) " / " (s.max_activities) }
                                td { @match &s.filters {
                                    None => "all work",
                                    Some(f) => {
                                        @for o in &f.orchestrations { span.tag { "orchestration " (o.name) @if !o.versions.is_empty() { "@" (o.versions.join(",")) } } " " }
                                        @for a in &f.activities { span.tag { "activity " (a.name) @if !a.versions.is_empty() { "@" (a.versions.join(",")) } } " " }
                                    }
                                } }
                            } } }
                        } }
                    }
                }
                section {
                    h2 { "Recent failures (last 24 h)" }
                    @if v.failures.is_empty() { p.none { "none" } } @else {
                        ul #recent-failures { @for r in &v.failures { li {
                            a href=(instance_url(&r.instance_id)) { (r.instance_id) } " " (r.name) " · "
                            (r.completed_at_ms.map(time).unwrap_or_default()) " UTC · "
                            (r.failure.as_ref().map(|f| f.error_message.as_str()).unwrap_or("no details"))
                        } } }
                    }
                }
            }
        },
    )
}

/// One page of entities (`next`: the cursor of the following page, if any).
pub struct EntitiesView {
    pub prefix: String,
    pub rows: Vec<crate::store::EntityRecord>,
    pub next: Option<String>,
}

/// Where an entity's lock owner links: the orchestration holding it.
fn owner_link(owner: &str) -> Markup {
    html! { a href=(instance_url(owner)) { (owner) } }
}

pub fn entities(ctx: &Ctx, v: &EntitiesView) -> Markup {
    let page_url = |after: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("prefix", &v.prefix)
            .append_pair("after", after)
            .finish();
        format!("{PREFIX}/entities?{q}")
    };
    layout(
        Some(ctx),
        "Entities",
        "entities",
        html! {
            h1 { "Entities" }
            form.toolbar method="get" action={ (PREFIX) "/entities" } {
                label for="entity-prefix" { "Entity id prefix" }
                input #entity-prefix name="prefix" type="search" value=(v.prefix) placeholder="@counter@";
                button type="submit" { "Filter" }
            }
            p.hint { "Ids are " code { "@name@key" } " (the name in lower case). Entities without state are listed while they hold a lock or have queued operations." }
            @if v.rows.is_empty() { p.none #no-entities { "No entities." } } @else {
                div.table-wrap { table #entities {
                    thead { tr {
                        th scope="col" { "Entity" } th scope="col" { "Lock owner" } th scope="col" { "Queued operations" }
                        th scope="col" { "Last modified (UTC)" } th scope="col" { "State" }
                    } }
                    tbody { @for e in &v.rows { tr {
                        td { code { (e.entity_id) } }
                        td { @match &e.lock_owner { Some(o) => (owner_link(o)), None => "—" } }
                        td data-backlog=(e.backlog) { (e.backlog) }
                        td { (time(e.modified_at_ms)) }
                        td { @match &e.state { Some(st) => code.state { (clip(st, 200)) }, None => span.none { "no state" } } }
                    } } }
                } }
            }
            @if let Some(after) = &v.next { p { a href=(page_url(after)) rel="next" { "Next page" } } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_indented_json_or_verbatim() {
        assert_eq!(payload("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(payload("not json <b>"), "not json <b>");
    }

    #[test]
    fn markup_in_values_is_escaped() {
        let m = message_page("<img src=x onerror=alert(1)>", "\"<script>\"", None).into_string();
        assert!(!m.contains("<img src=x"), "{m}");
        assert!(m.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!m.contains("<script>\""));
    }

    #[test]
    fn event_text_splits_kind_and_fields() {
        let e = duro_proto::HistoryEvent {
            event_type: Some(duro_proto::history_event::EventType::EventRaised(duro_proto::EventRaisedEvent {
                name: "approve".into(),
                input: Some("<b>".into()),
            })),
            ..Default::default()
        };
        let (kind, details) = event_text(&e);
        assert_eq!(kind, "EventRaised");
        assert!(details.starts_with("EventRaisedEvent {") && details.contains("approve"), "{details}");
    }
}
