//! The console's pages: HTML rendered on the server with `maud` (templates
//! checked at compile time, every interpolated value escaped), from the
//! JSON the API answers the caller.

use axum::extract::{Path, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use wrun_store::UnixMillis;

use super::{Ctx, Failure, Signed, html, seg};
use crate::auth::{Access, Resource};

/// Log lines shown per page of a job.
const LOG_PAGE: usize = 200;

/// Text of a JSON field, or empty.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A stored time as people read it (UTC).
fn time(v: &Value) -> String {
    v.as_i64()
        .map(|ms| UnixMillis(ms).rfc3339())
        .unwrap_or_default()
}

/// A JSON value pretty-printed for a `<pre>`.
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The navigation: (path, label, resource that page reads).
const NAV: [(&str, &str, Resource); 7] = [
    ("/ui/jobs", "Jobs", Resource::Jobs),
    ("/ui/recipes", "Recipes", Resource::Recipes),
    ("/ui/connections", "Connections", Resource::Connections),
    ("/ui/environments", "Environments", Resource::Environments),
    ("/ui/audit", "Audit", Resource::Audit),
    ("/ui/tokens", "Tokens", Resource::Tokens),
    ("/ui/members", "Members", Resource::Members),
];

/// A page of a signed-in caller.
fn page(ctx: &Ctx, title: &str, current: &str, body: Markup) -> Response {
    html(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wrun" }
                link rel="stylesheet" href="/ui/static/console.css";
                link rel="icon" href="/ui/static/icon.svg" type="image/svg+xml";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "wrun" }
                    span.ws { "workspace " strong { (ctx.principal.workspace) } }
                    nav aria-label="Sections" {
                        ul {
                            @for (path, label, resource) in NAV {
                                @if ctx.may(resource, Access::Read) {
                                    li { a href=(path) aria-current=[(path == current).then_some("page")] { (label) } }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(ctx.csrf);
                        span.who { (ctx.principal.subject) }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    })
}

/// A page without a session (sign-in, errors).
pub(crate) fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wrun" }
                link rel="stylesheet" href="/ui/static/console.css";
                link rel="icon" href="/ui/static/icon.svg" type="image/svg+xml";
            }
            body { main #main.narrow { h1 { (title) } (body) } }
        }
    }
}

/// A paragraph with a message.
pub(crate) fn message_markup(message: &str) -> Markup {
    html! { p.notice role="alert" { (message) } p { a href="/ui/jobs" { "Back to the console" } } }
}

/// The page that continues into the console after a sign-in the
/// identity provider's redirect brought back.
pub(crate) fn continue_page(to: &str) -> Response {
    html(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content={ "0;url=" (to) };
                title { "Signed in · wrun" }
                link rel="stylesheet" href="/ui/static/console.css";
                link rel="icon" href="/ui/static/icon.svg" type="image/svg+xml";
            }
            body { main #main.narrow { h1 { "Signed in" } p { a href=(to) { "Continue to the console" } } } }
        }
    })
}

/// The sign-in page.
pub(crate) fn login(csrf: &str, notice: Option<&str>, oidc: Option<&str>) -> Response {
    html(bare_page(
        "Sign in",
        html! {
            @if let Some(n) = notice { p.notice role="alert" { (n) } }
            @if let Some(label) = oidc {
                p { a.button href="/ui/login/oidc" { (label) } }
                p.muted { "or" }
            }
            form method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required placeholder="wrun_pat_…";
                button type="submit" { "Sign in with a token" }
            }
        },
    ))
}

/// A page saying the API refused an action.
pub(crate) fn refused(ctx: &Ctx, status: StatusCode, message: &str, back: &str) -> Response {
    let mut r = page(
        ctx,
        "Refused",
        "",
        html! { p.notice role="alert" { (message) } p { a href=(back) { "Back" } } },
    );
    *r.status_mut() = status;
    r
}

/// A page for a failed read.
fn failed(ctx: &Ctx, title: &str, f: &Failure) -> Response {
    let mut r = page(
        ctx,
        title,
        "",
        html! { p.notice role="alert" { (f.message) } },
    );
    *r.status_mut() = f.status;
    r
}

/// The answer to a token creation: the token, shown this once.
pub(crate) fn token_created(ctx: &Ctx, v: &Value) -> Response {
    page(
        ctx,
        "Token created",
        "/ui/tokens",
        html! {
            p { "Copy the token now: it is not shown again." }
            label for="newtoken" { "Token " (text(v, "name")) }
            input #newtoken.mono type="text" readonly value=(text(v, "token"));
            p { a href="/ui/tokens" { "Back to tokens" } }
        },
    )
}

/// The hidden CSRF field of a form.
fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

// ---------------------------------------------------------------------------
// Jobs

/// Filters of the jobs page.
#[derive(Deserialize, Default)]
pub(crate) struct JobsQuery {
    #[serde(default)]
    recipe: String,
    #[serde(default)]
    state: String,
    /// Only jobs of the last this many hours.
    #[serde(default)]
    hours: String,
    #[serde(default)]
    before: String,
}

pub(crate) async fn jobs(Signed { c, ctx }: Signed, Query(q): Query<JobsQuery>) -> Response {
    let mut query = vec!["limit=50".to_string()];
    for (k, v) in [
        ("recipe", &q.recipe),
        ("state", &q.state),
        ("before", &q.before),
    ] {
        if !v.is_empty() {
            query.push(format!("{k}={}", seg(v)));
        }
    }
    if let Ok(hours) = q.hours.parse::<i64>() {
        let since = UnixMillis::now()
            .0
            .saturating_sub(hours.saturating_mul(3_600_000));
        query.push(format!("since={since}"));
    }
    let list = match c.get(&ctx, &format!("jobs?{}", query.join("&"))).await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Jobs", &f),
    };
    let jobs = list
        .get("jobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let next = (jobs.len() == 50).then(|| {
        let last = jobs.last().map(|j| text(j, "id")).unwrap_or("");
        format!(
            "/ui/jobs?recipe={}&state={}&hours={}&before={}",
            seg(&q.recipe),
            seg(&q.state),
            seg(&q.hours),
            seg(last)
        )
    });
    page(
        &ctx,
        "Jobs",
        "/ui/jobs",
        html! {
            figure.chart {
                img src="/ui/jobs/chart.svg" width="720" height="120" alt="Runs and failures per hour over the last 24 hours";
                figcaption { "Runs (bars) and failures (red) per hour, last 24 hours" }
            }
            form.filters method="get" action="/ui/jobs" {
                label for="f-recipe" { "Recipe" }
                input #f-recipe type="text" name="recipe" value=(q.recipe);
                label for="f-state" { "State" }
                select #f-state name="state" {
                    @for s in ["", "queued", "running", "succeeded", "failed", "cancelled"] {
                        option value=(s) selected[q.state == s] { @if s.is_empty() { "any" } @else { (s) } }
                    }
                }
                label for="f-hours" { "Last hours" }
                input #f-hours type="number" min="1" name="hours" value=(q.hours);
                button type="submit" { "Filter" }
            }
            table {
                thead { tr { th { "Job" } th { "Recipe" } th { "State" } th { "Trigger" } th { "Created" } th { "Error" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { a.mono href={ "/ui/jobs/" (seg(text(j, "id"))) } { (text(j, "id")) } }
                            td { (text(j, "recipe")) }
                            td { span class={ "state " (text(j, "state")) } { (text(j, "state")) } }
                            td { (text(j, "trigger")) }
                            td { (time(&j["created_at"])) }
                            td.error { (text(j, "error")) }
                        }
                    }
                }
            }
            @if jobs.is_empty() { p.muted { "No jobs match." } }
            @if let Some(next) = next { p { a href=(next) rel="next" { "Older jobs" } } }
        },
    )
}

pub(crate) async fn jobs_chart(Signed { c, ctx }: Signed) -> Response {
    let hour = 3_600_000_i64;
    let now = UnixMillis::now().0;
    let since = (now / hour - 23) * hour;
    let stats = c
        .get(&ctx, &format!("jobs/stats?since={since}&bucket_ms={hour}"))
        .await
        .unwrap_or(Value::Null);
    let mut buckets = [(0_u64, 0_u64); 24];
    for b in stats
        .get("buckets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let at = b.get("start").and_then(Value::as_i64).unwrap_or(0);
        if let Ok(i) = usize::try_from((at - since) / hour)
            && i < 24
        {
            buckets[i] = (
                b.get("total").and_then(Value::as_u64).unwrap_or(0),
                b.get("failed").and_then(Value::as_u64).unwrap_or(0),
            );
        }
    }
    let max = buckets.iter().map(|b| b.0).max().unwrap_or(0).max(1);
    let svg = html! {
        svg xmlns="http://www.w3.org/2000/svg" width="720" height="120" viewBox="0 0 720 120" role="img" {
            title { "Runs and failures per hour" }
            rect x="0" y="0" width="720" height="120" fill="#f6f7f9" {}
            @for (i, (total, failed)) in buckets.iter().enumerate() {
                @let h = (*total as f64 / max as f64 * 100.0).round();
                @let fh = (*failed as f64 / max as f64 * 100.0).round();
                @let x = i * 30 + 3;
                rect x=(x) y=(110.0 - h) width="24" height=(h) fill="#4a7bd0" { title { (total) " runs" } }
                rect x=(x) y=(110.0 - fh) width="24" height=(fh) fill="#c8323c" { title { (failed) " failed" } }
            }
            text x="4" y="118" font-size="9" fill="#555" { "24 h ago" }
            text x="690" y="118" font-size="9" fill="#555" { "now" }
            text x="4" y="10" font-size="9" fill="#555" { "max " (max) "/h" }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg.into_string(),
    )
        .into_response()
}

/// Query of a job page: which page of log lines.
#[derive(Deserialize, Default)]
pub(crate) struct JobQuery {
    #[serde(default)]
    log_page: usize,
}

pub(crate) async fn job(
    Signed { c, ctx }: Signed,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Response {
    let job = match c.get(&ctx, &format!("jobs/{}", seg(&id))).await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Job", &f),
    };
    let state = text(&job, "state");
    let active = state == "queued" || state == "running";
    let steps = job
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Log lines of every step, in order, paged.
    let logs: Vec<(String, String, String)> = steps
        .iter()
        .flat_map(|s| {
            s.get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|e| text(e, "kind") == "log")
        .map(|e| {
            (
                text(&e, "step").to_string(),
                e.get("level")
                    .map(|l| l.as_str().unwrap_or("").to_string())
                    .unwrap_or_default(),
                text(&e, "message").to_string(),
            )
        })
        .collect();
    let pages = logs.len().div_ceil(LOG_PAGE).max(1);
    let log_page = q.log_page.min(pages - 1);
    let shown = logs.iter().skip(log_page * LOG_PAGE).take(LOG_PAGE);
    let may_write = ctx.may(Resource::Jobs, Access::Write);
    let mut r = page(
        &ctx,
        &format!("Job {id}"),
        "/ui/jobs",
        html! {
            dl.facts {
                dt { "Recipe" } dd { a href={ "/ui/recipes/" (seg(text(&job, "recipe"))) } { (text(&job, "recipe")) } }
                dt { "Environment" } dd { (text(&job, "environment")) }
                dt { "State" } dd { span class={ "state " (state) } #job-state { (state) } }
                dt { "Trigger" } dd { (text(&job, "trigger")) }
                dt { "Created" } dd { (time(&job["created_at"])) }
                dt { "Finished" } dd { (time(&job["finished_at"])) }
                @if let Some(of) = job.get("rerun_of").and_then(Value::as_str) {
                    dt { "Rerun of" } dd { a href={ "/ui/jobs/" (seg(of)) } { (of) } }
                }
                @if !text(&job, "error").is_empty() { dt { "Error" } dd.error { (text(&job, "error")) } }
            }
            @if may_write {
                div.actions {
                    @if active {
                        form method="post" action={ "/ui/jobs/" (seg(&id)) "/cancel" } {
                            (csrf(&ctx)) button type="submit" { "Cancel" }
                        }
                    } @else {
                        form method="post" action={ "/ui/jobs/" (seg(&id)) "/rerun" } {
                            (csrf(&ctx)) button type="submit" #rerun { "Rerun" }
                        }
                    }
                }
            }
            @if active { p.muted { "This page reloads while the job runs." } }
            h2 { "Input" }
            pre.json { (pretty(&job["input"])) }
            h2 { "Steps" }
            @for s in &steps {
                section.step {
                    h3 { (text(s, "step")) " " span class={ "state " (text(s, "status")) } { (text(s, "status")) } }
                    p.muted { (s.get("elapsed_ms").and_then(Value::as_u64).unwrap_or(0)) " ms · "
                        (s.get("attempts").and_then(Value::as_u64).unwrap_or(0)) " attempt(s)" }
                    @if !text(s, "error").is_empty() { p.error { (text(s, "error")) } }
                    details {
                        summary { "Input and output" }
                        h4 { "Input" } pre.json { (pretty(&s["input"])) }
                        h4 { "Output" } pre.json { (pretty(&s["output"])) }
                    }
                    @let requests: Vec<&Value> = s.get("events").and_then(Value::as_array).map(|e| e.iter().filter(|e| text(e, "kind") == "request").collect()).unwrap_or_default();
                    @if !requests.is_empty() {
                        table.requests {
                            thead { tr { th { "Method" } th { "URL" } th { "Status" } th { "Connections" } } }
                            tbody { @for e in requests { tr {
                                td { (text(e, "method")) } td.mono { (text(e, "url")) }
                                td { (e.get("status").map(Value::to_string).unwrap_or_default()) }
                                td { (e.get("connections").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            } } }
                        }
                    }
                }
            }
            h2 #logs { "Logs (" (logs.len()) " lines)" }
            ol.logs start=(log_page * LOG_PAGE + 1) {
                @for (step, level, message) in shown {
                    li { span.muted { (step) " " (level) } " " (message) }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="Log pages" {
                    @if log_page > 0 { a href={ "/ui/jobs/" (seg(&id)) "?log_page=" (log_page - 1) "#logs" } { "Previous lines" } }
                    span { " page " (log_page + 1) " of " (pages) " " }
                    @if log_page + 1 < pages { a href={ "/ui/jobs/" (seg(&id)) "?log_page=" (log_page + 1) "#logs" } { "Next lines" } }
                }
            }
        },
    );
    if active {
        r.headers_mut()
            .insert("refresh", axum::http::HeaderValue::from_static("2"));
    }
    r
}

// ---------------------------------------------------------------------------
// Recipes

pub(crate) async fn recipes(Signed { c, ctx }: Signed) -> Response {
    let list = match c.get(&ctx, "recipes").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Recipes", &f),
    };
    let recipes = list
        .get("recipes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    page(
        &ctx,
        "Recipes",
        "/ui/recipes",
        html! {
            table {
                thead { tr { th { "Recipe" } th { "Updated" } } }
                tbody { @for r in &recipes { tr {
                    td { a href={ "/ui/recipes/" (seg(text(r, "name"))) } { (text(r, "name")) } }
                    td { (time(&r["updated_at"])) }
                } } }
            }
            @if recipes.is_empty() { p.muted { "No recipe is deployed." } }
            @if ctx.may(Resource::Recipes, Access::Write) {
                h2 { "Deploy a bundle" }
                form method="post" action="/ui/recipes" enctype="multipart/form-data" {
                    (csrf(&ctx))
                    label for="d-name" { "Recipe name" }
                    input #d-name type="text" name="name" required;
                    label for="d-bundle" { "Bundle (wrun export)" }
                    input #d-bundle type="file" name="bundle" accept=".tar.gz,.tgz,application/gzip" required;
                    button type="submit" { "Deploy" }
                }
            }
        },
    )
}

/// The steps of a recipe as a graph: the trigger, then each step in the
/// order it runs, drawn on the server.
fn graph(trigger: &str, steps: &[String]) -> Markup {
    let height = 50 + steps.len() * 60;
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width="260" height=(height) viewBox={ "0 0 260 " (height) } role="img" aria-label="The recipe's steps in order" {
            rect x="30" y="5" width="200" height="34" rx="17" fill="#e8eefb" stroke="#4a7bd0" {}
            text x="130" y="27" text-anchor="middle" font-size="13" { (trigger) }
            @for (i, step) in steps.iter().enumerate() {
                @let y = 65 + i * 60;
                line x1="130" y1=(y - 26) x2="130" y2=(y) stroke="#555" stroke-width="2" {}
                polygon points={ "124," (y - 7) " 136," (y - 7) " 130," (y) } fill="#555" {}
                rect x="30" y=(y) width="200" height="34" rx="4" fill="#fff" stroke="#333" {}
                text x="130" y=(y + 22) text-anchor="middle" font-size="13" { (step) }
            }
        }
    }
}

pub(crate) async fn recipe(Signed { c, ctx }: Signed, Path(name): Path<String>) -> Response {
    let r = match c.get(&ctx, &format!("recipes/{}", seg(&name))).await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Recipe", &f),
    };
    let triggers = c
        .get(&ctx, &format!("recipes/{}/triggers", seg(&name)))
        .await
        .ok()
        .and_then(|v| v.get("triggers").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let manifest = wrun_runtime::manifest::Manifest::parse(text(&r, "manifest")).ok();
    let components: BTreeMap<String, String> =
        serde_json::from_value(r["components"].clone()).unwrap_or_default();
    let (trigger, order, grants) = match &manifest {
        Some(m) => (
            match &m.trigger {
                wrun_runtime::manifest::Trigger::Webhook { .. } => "webhook".to_string(),
                wrun_runtime::manifest::Trigger::Schedule { cron, .. } => {
                    format!("schedule {cron}")
                }
                _ => "manual".to_string(),
            },
            m.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            crate::review::grants(m, &components),
        ),
        None => ("trigger".into(), Vec::new(), BTreeMap::new()),
    };
    let list = |set: &std::collections::BTreeSet<String>| {
        if set.is_empty() {
            "none".to_string()
        } else {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    page(
        &ctx,
        &format!("Recipe {name}"),
        "/ui/recipes",
        html! {
            dl.facts {
                dt { "Updated" } dd { (time(&r["updated_at"])) }
                dt { "Signed version" } dd { (r.get("signed_version").and_then(Value::as_u64).map_or_else(|| "unsigned".to_string(), |v| v.to_string())) }
                dt { "Signer" } dd { (text(&r, "signer")) }
                @if !text(&r, "pending").is_empty() { dt { "Waiting for approval" } dd { (text(&r, "pending")) } }
            }
            div.split {
                (graph(&trigger, &order))
                div {
                    h2 { "What each step may do" }
                    table.grants {
                        thead { tr { th { "Step" } th { "HTTPS hosts" } th { "Secrets" } th { "Properties" } th { "Memory" } th { "Time" } } }
                        tbody { @for step in &order { @if let Some(g) = grants.get(step) { tr {
                            td { (step) }
                            td { (list(&g.hosts)) }
                            td { (list(&g.secrets)) }
                            td { (list(&g.properties)) }
                            td { (g.memory.map(|m| format!("{} MiB", m >> 20)).unwrap_or_else(|| "default".into())) }
                            td { (g.timeout_ms.map(|t| format!("{t} ms")).unwrap_or_else(|| "default".into())) }
                        } } } }
                    }
                }
            }
            h2 { "Triggers" }
            table {
                thead { tr { th { "Kind" } th { "Id" } th { "Environment" } th { "Schedule" } } }
                tbody { @for t in &triggers { tr {
                    td { (text(t, "kind")) } td.mono { (text(t, "id")) } td { (text(t, "environment")) }
                    td { (text(t, "cron")) " " (text(t, "timezone")) }
                } } }
            }
            @if triggers.is_empty() { p.muted { "No webhook or schedule." } }
            @if ctx.may(Resource::Jobs, Access::Write) {
                h2 { "Run now" }
                form method="post" action={ "/ui/recipes/" (seg(&name)) "/run" } {
                    (csrf(&ctx))
                    label for="r-env" { "Environment" }
                    input #r-env type="text" name="environment" required value="prod";
                    label for="r-input" { "Input (JSON)" }
                    textarea #r-input name="input" rows="4" { "{}" }
                    button type="submit" #run { "Run" }
                }
            }
            details {
                summary { "Manifest" }
                pre { (text(&r, "manifest")) }
            }
        },
    )
}

// ---------------------------------------------------------------------------
// Connections, environments

pub(crate) async fn connections(Signed { c, ctx }: Signed) -> Response {
    let list = match c.get(&ctx, "connections").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Connections", &f),
    };
    let items = list
        .get("connections")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let show = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    page(
        &ctx,
        "Connections",
        "/ui/connections",
        html! {
            p.muted { "Values are write-only: nobody reads them back, here or through the API." }
            table {
                thead { tr { th { "Name" } th { "Hosts" } th { "Placement" } th { "Created" } th { "Rotated" } } }
                tbody { @for k in &items { tr {
                    td { (text(k, "name")) }
                    td { (show(&k["hosts"])) }
                    td { (show(&k["placement"])) }
                    td { (time(&k["created_at"])) }
                    td { (time(&k["rotated_at"])) }
                } } }
            }
            @if ctx.may(Resource::Connections, Access::Write) {
                h2 { "Create or rotate" }
                form method="post" action="/ui/connections" autocomplete="off" {
                    (csrf(&ctx))
                    label for="c-name" { "Name" }
                    input #c-name type="text" name="name" required;
                    label for="c-hosts" { "Hosts it may be sent to (comma-separated)" }
                    input #c-hosts type="text" name="hosts" required;
                    label for="c-placement" { "Placement (empty: bearer)" }
                    input #c-placement type="text" name="placement";
                    label for="c-value" { "New value (leave empty to keep the stored one)" }
                    input #c-value type="password" name="value" autocomplete="new-password";
                    button type="submit" { "Save" }
                }
            }
        },
    )
}

/// Which environment to show.
#[derive(Deserialize, Default)]
pub(crate) struct EnvQuery {
    #[serde(default)]
    env: String,
}

pub(crate) async fn environments(Signed { c, ctx }: Signed, Query(q): Query<EnvQuery>) -> Response {
    let env = if q.env.is_empty() {
        "prod".to_string()
    } else {
        q.env.clone()
    };
    let view = match c.get(&ctx, &format!("environments/{}", seg(&env))).await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Environments", &f),
    };
    let map = |key: &str| -> Vec<(String, String)> {
        view.get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let writable = ctx.may(Resource::Environments, Access::Write);
    let action = format!("/ui/environments/{}", seg(&env));
    page(
        &ctx,
        &format!("Environment {env}"),
        "/ui/environments",
        html! {
            form.filters method="get" action="/ui/environments" {
                label for="e-env" { "Environment" }
                input #e-env type="text" name="env" value=(env);
                button type="submit" { "Show" }
            }
            h2 { "Properties" }
            table {
                thead { tr { th { "Name" } th { "Value" } @if writable { th { "" } } } }
                tbody { @for (k, v) in map("properties") { tr {
                    td { (k) } td.mono { (v) }
                    @if writable { td { form method="post" action=(action) {
                        (csrf(&ctx)) input type="hidden" name="op" value="remove_property";
                        input type="hidden" name="name" value=(k);
                        button type="submit" aria-label={ "Remove property " (k) } { "Remove" }
                    } } }
                } } }
            }
            h2 { "Bindings" }
            table {
                thead { tr { th { "Recipe's name" } th { "Connection" } @if writable { th { "" } } } }
                tbody { @for (k, v) in map("bindings") { tr {
                    td { (k) } td { (v) }
                    @if writable { td { form method="post" action=(action) {
                        (csrf(&ctx)) input type="hidden" name="op" value="unbind";
                        input type="hidden" name="name" value=(k);
                        button type="submit" aria-label={ "Unbind " (k) } { "Unbind" }
                    } } }
                } } }
            }
            @if writable {
                h2 { "Change" }
                form method="post" action=(action) {
                    (csrf(&ctx))
                    label for="e-op" { "Change" }
                    select #e-op name="op" {
                        option value="property" { "Set a property" }
                        option value="bind" { "Bind a name to a connection" }
                    }
                    label for="e-name" { "Name" }
                    input #e-name type="text" name="name" required;
                    label for="e-value" { "Value or connection" }
                    input #e-value type="text" name="value";
                    button type="submit" { "Apply" }
                }
            }
        },
    )
}

// ---------------------------------------------------------------------------
// Audit, tokens, members

/// Paging and filters of the audit page.
#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    verify: String,
}

pub(crate) async fn audit(Signed { c, ctx }: Signed, Query(q): Query<AuditQuery>) -> Response {
    let read = match c
        .get(&ctx, &format!("audit?after={}&limit=200", q.after))
        .await
    {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Audit", &f),
    };
    let all = read
        .get("entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last = all
        .last()
        .and_then(|e| e.get("seq"))
        .and_then(Value::as_u64);
    let entries: Vec<&Value> = all
        .iter()
        .filter(|e| q.action.is_empty() || text(e, "action").starts_with(q.action.as_str()))
        .filter(|e| q.actor.is_empty() || text(e, "actor") == q.actor)
        .collect();
    let verified = if q.verify.is_empty() {
        None
    } else {
        Some(c.get(&ctx, "audit/verify").await)
    };
    page(
        &ctx,
        "Audit",
        "/ui/audit",
        html! {
            form.filters method="get" action="/ui/audit" {
                label for="a-action" { "Action starts with" }
                input #a-action type="text" name="action" value=(q.action);
                label for="a-actor" { "Actor" }
                input #a-actor type="text" name="actor" value=(q.actor);
                input type="hidden" name="after" value=(q.after);
                button type="submit" { "Filter" }
            }
            p { a href="/ui/audit?verify=1" #verify { "Verify the chain" } }
            @match &verified {
                Some(Ok(v)) => {
                    @if v.get("intact").and_then(Value::as_bool) == Some(true) {
                        p.ok #chain role="status" { "The chain is intact: " (v["verified"]) " of " (v["entries"]) " entries verified." }
                    } @else {
                        p.notice #chain role="alert" { "The chain is broken: " (v["problems"]) }
                    }
                }
                Some(Err(f)) => { p.notice role="alert" { (f.message) } }
                None => {}
            }
            table {
                thead { tr { th { "#" } th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Outcome" } th { "Detail" } } }
                tbody { @for e in &entries { tr {
                    td { (e["seq"]) }
                    td { (time(&e["at"])) }
                    td { (text(e, "actor")) }
                    td { (text(e, "action")) }
                    td.mono { (text(e, "target")) }
                    td { (text(e, "outcome")) }
                    td.mono { (e.get("detail").map(Value::to_string).unwrap_or_default()) }
                } } }
            }
            @if let Some(last) = last.filter(|_| all.len() == 200) {
                p { a href={ "/ui/audit?after=" (last) "&action=" (seg(&q.action)) "&actor=" (seg(&q.actor)) } rel="next" { "Later entries" } }
            }
        },
    )
}

pub(crate) async fn tokens(Signed { c, ctx }: Signed) -> Response {
    let list = match c.get(&ctx, "tokens").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Tokens", &f),
    };
    let items = list
        .get("tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let writable = ctx.may(Resource::Tokens, Access::Write);
    page(
        &ctx,
        "API tokens",
        "/ui/tokens",
        html! {
            table {
                thead { tr { th { "Name" } th { "Id" } th { "Owner" } th { "Scopes" } th { "Expires" } th { "Last used" } th { "State" } @if writable { th { "" } } } }
                tbody { @for t in &items { tr {
                    td { (text(t, "name")) }
                    td.mono { (text(t, "id")) }
                    td { (text(t, "owner")) }
                    td { (t.get("scopes").map(|s| s.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")).unwrap_or_else(|| s.to_string())).unwrap_or_default()) }
                    td { (time(&t["expires_at"])) }
                    td { (time(&t["last_used_at"])) }
                    td { @if t["revoked_at"].is_null() { "active" } @else { "revoked" } }
                    @if writable { td { @if t["revoked_at"].is_null() {
                        form method="post" action={ "/ui/tokens/" (seg(text(t, "id"))) "/revoke" } {
                            (csrf(&ctx)) button type="submit" aria-label={ "Revoke token " (text(t, "name")) } { "Revoke" }
                        }
                    } } }
                } } }
            }
            @if writable {
                h2 { "Create a token" }
                form method="post" action="/ui/tokens" {
                    (csrf(&ctx))
                    label for="t-name" { "Name" }
                    input #t-name type="text" name="name" required;
                    label for="t-scopes" { "Scopes (such as jobs:read recipes:write)" }
                    input #t-scopes type="text" name="scopes" required;
                    label for="t-days" { "Lifetime in days" }
                    input #t-days type="number" min="1" name="expires_in" value="30";
                    button type="submit" { "Create" }
                }
            }
        },
    )
}

pub(crate) async fn members(Signed { c, ctx }: Signed) -> Response {
    let list = match c.get(&ctx, "members").await {
        Ok(v) => v,
        Err(f) => return failed(&ctx, "Members", &f),
    };
    let items = list
        .get("members")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let settings = c.get(&ctx, "settings").await.unwrap_or(Value::Null);
    let writable = ctx.may(Resource::Members, Access::Write);
    let idle = settings
        .get("session_idle_secs")
        .and_then(Value::as_u64)
        .unwrap_or(1800)
        / 60;
    page(
        &ctx,
        "Members",
        "/ui/members",
        html! {
            table {
                thead { tr { th { "Subject" } th { "Role" } th { "Since" } @if writable { th { "" } } } }
                tbody { @for m in &items { tr {
                    td { (text(m, "subject")) }
                    td { (text(m, "role")) }
                    td { (time(&m["created_at"])) }
                    @if writable { td {
                        form method="post" action={ "/ui/members/" (seg(text(m, "subject"))) "/remove" } {
                            (csrf(&ctx)) button type="submit" aria-label={ "Remove member " (text(m, "subject")) } { "Remove" }
                        }
                    } }
                } } }
            }
            @if writable {
                h2 { "Add a member or change a role" }
                form method="post" action="/ui/members" {
                    (csrf(&ctx))
                    label for="m-subject" { "Subject" }
                    input #m-subject type="text" name="subject" required;
                    label for="m-role" { "Role" }
                    input #m-role type="text" name="role" required placeholder="admin, operator, developer, auditor…";
                    button type="submit" { "Save" }
                }
                h2 { "Console sessions" }
                form method="post" action="/ui/settings" {
                    (csrf(&ctx))
                    label for="s-idle" { "Idle timeout in minutes (1 to 720)" }
                    input #s-idle type="number" min="1" max="720" name="idle_minutes" value=(idle);
                    button type="submit" { "Save" }
                }
            } @else {
                p.muted { "Console sessions end after " (idle) " idle minutes." }
            }
        },
    )
}
