//! A build's bisection (`peerbot_protocol::bisect`) as JSON for the API,
//! and as the rows of the build page: the search a failure started, or
//! for a bisect build, the failure whose range it searches.

use maud::{html, Markup};
use peerbot_protocol::bisect::{bisect_ref, bisection, State};
use peerbot_protocol::record::{Body, BuildResult};
use peerbot_protocol::store::Store;
use serde_json::{json, Value};

use super::{s, short};

/// Sets `bisect` (the search this failure started, or null) and
/// `bisect_of` (the failure a bisect build searches for, or null).
pub fn add_bisect<S: Store + ?Sized>(store: &S, r: &BuildResult, v: &mut Value) {
    v["bisect"] = bisection(store, r).map_or(Value::Null, |b| {
        let (next, first_bad, reason) = match &b.state {
            State::Searching { next } => (json!(next), Value::Null, Value::Null),
            State::Found { commit, author, title } => {
                (Value::Null, json!({"commit": commit, "author": author, "title": title}), Value::Null)
            }
            State::GaveUp { reason } => (Value::Null, Value::Null, json!(reason)),
        };
        let state = match b.state {
            State::Searching { .. } => "searching",
            State::Found { .. } => "found",
            State::GaveUp { .. } => "gave_up",
        };
        let steps: Vec<Value> = b
            .steps
            .iter()
            .map(|st| {
                json!({
                    "commit": st.commit,
                    "job": st.job.to_hex(),
                    "announced": st.announced,
                    "status": st.status.map(|x| x.as_str()),
                    "build": st.result.map(|x| x.to_hex()),
                })
            })
            .collect();
        json!({
            "state": state,
            "good": b.good,
            "candidates": b.candidates.iter().map(|c| json!({"commit": c.commit, "author": c.author, "title": c.title})).collect::<Vec<_>>(),
            "max_builds": b.max_builds,
            "steps": steps,
            "next": next,
            "first_bad": first_bad,
            "reason": reason,
        })
    });
    v["bisect_of"] = bisect_ref(store, &r.job).map_or(Value::Null, |b| {
        // The failure's first result, as the search reads it.
        let build = store
            .results_for_job(&b.origin)
            .into_iter()
            .filter_map(|id| store.record(&id))
            .min_by_key(|r| (r.time(), r.id));
        let commit = match build.as_deref().map(|r| &r.body) {
            Some(Body::Result(o)) => Some(o.commit.clone()),
            _ => None,
        };
        json!({"job": b.origin.to_hex(), "build": build.map(|r| r.id.to_hex()), "commit": commit})
    });
}

/// The rows of a build page about bisection, from the build's JSON.
pub fn rows(b: &Value) -> Markup {
    let x = &b["bisect"];
    let of = &b["bisect_of"];
    let steps: Vec<&Value> = x["steps"].as_array().into_iter().flatten().collect();
    let built = steps.iter().filter(|st| st["announced"] == true).count();
    html! {
        @if x.is_object() {
            tr { th { "bisect" } td {
                @match s(&x["state"]) {
                    "searching" => { "bisecting: " (built) " of at most " (x["max_builds"]) " builds · next " code { (short(s(&x["next"]))) } }
                    "found" => { "first failing commit " code { (short(s(&x["first_bad"]["commit"]))) } " by " strong { (s(&x["first_bad"]["author"])) } ": " (s(&x["first_bad"]["title"]))
                        " · found in " (built) " build(s) of at most " (x["max_builds"]) }
                    _ => { span.err { "bisection gave up: " (s(&x["reason"])) } }
                }
                " · " (x["candidates"].as_array().map_or(0, |c| c.len())) " commits after " code { (short(s(&x["good"]))) }
                @for st in &steps {
                    br;
                    code { (short(s(&st["commit"]))) } " · "
                    @if let Some(id) = st["build"].as_str() {
                        a href={"/builds/" (id)} { span class={"badge " (s(&st["status"]))} { (s(&st["status"])) } }
                    } @else if let Some(status) = st["status"].as_str() {
                        a href={"/jobs/" (s(&st["job"]))} { (status) }
                    } @else if st["announced"] == true {
                        a href={"/jobs/" (s(&st["job"]))} { "building" }
                    } @else { span.muted { "to be announced" } }
                }
            } }
        }
        @if of.is_object() {
            tr { th { "bisect build" } td {
                "a bisect build of the failure of job "
                @if let Some(id) = of["build"].as_str() {
                    a href={"/builds/" (id)} { code { (short(s(&of["job"]))) } }
                } @else { code { (short(s(&of["job"]))) } }
                @if let Some(c) = of["commit"].as_str() { " at " code { (short(c)) } }
            } }
        }
    }
}
