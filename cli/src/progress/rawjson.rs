//! The rawjson display: BuildKit's `SolveStatus` JSON, one object per line on stderr, as
//! `docker buildx build --progress=rawjson` prints it (moby/buildkit `client/graph.go` field
//! names, Go's encoding: RFC 3339 times with nanoseconds, `[]byte` as base64, empty fields
//! left out). Schema and rbuild's extra fields: docs/progress.md.
//!
//! ```text
//! {"vertexes":[{"digest":"sha256:…","inputs":["sha256:…"],"name":"[2/3] RUN make","started":"2026-12-06T21:34:23.123456789Z"}]}
//! {"logs":[{"vertex":"sha256:…","stream":1,"data":"Y29tcGlsaW5nCg==","timestamp":"…"}]}
//! {"vertexes":[{"digest":"sha256:…","name":"[2/3] RUN make","started":"…","completed":"…"}]}
//! {"statuses":[{"id":"sha256:…","vertex":"sha256:…","name":"downloading","current":1048576,"total":2097152,"timestamp":"…","started":"…"}]}
//! {"warnings":[{"level":1,"short":"…","detail":["…"],"sourceInfo":{"filename":"Dockerfile","language":"Dockerfile"},"range":[{"start":{"line":3},"end":{"line":3}}]}]}
//! ```
//!
//! rbuild's extras, which BuildKit's decoder ignores: `explain` (`[{"vertex","reason"}]`),
//! `canceled: true` on a cancelled vertex (whose `error` is BuildKit's `context canceled`),
//! `other` (a solver event without a schema yet) and a last `result` object.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Map, Value};

use super::{Change, Outcome, Render, Status, Tracker, Vertex};

pub struct RawJson;

/// BuildKit's log stream numbers.
const STDOUT: u8 = 1;
const STDERR: u8 = 2;

/// Go's `time.Time` JSON form (RFC 3339 with up to nine fraction digits, UTC).
pub fn go_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = rbuild_oci::time::rfc3339(d.as_secs() as i64);
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return base;
    }
    let frac = format!("{nanos:09}");
    format!(
        "{}.{}Z",
        base.trim_end_matches('Z'),
        frac.trim_end_matches('0')
    )
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn emit(out: &mut dyn Write, v: Value) {
    let _ = writeln!(out, "{v}");
}

/// A vertex as BuildKit reports it after each change.
fn vertex(vx: &Vertex) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("digest".into(), json!(vx.digest));
    if !vx.inputs.is_empty() {
        o.insert("inputs".into(), json!(vx.inputs));
    }
    if !vx.name.is_empty() {
        o.insert("name".into(), json!(vx.name));
    }
    o.insert("started".into(), json!(go_time(vx.started_at)));
    if let Some(c) = vx.completed_at {
        o.insert("completed".into(), json!(go_time(c)));
    }
    match &vx.status {
        Status::Cached => {
            o.insert("cached".into(), json!(true));
        }
        Status::Error(e) => {
            o.insert("error".into(), json!(e));
        }
        Status::Cancelled => {
            o.insert("error".into(), json!("context canceled"));
            o.insert("canceled".into(), json!(true));
        }
        Status::Running | Status::Done(_) => {}
    }
    o
}

fn vertexes(vx: &Vertex) -> Value {
    json!({ "vertexes": [Value::Object(vertex(vx))] })
}

impl Render for RawJson {
    fn change(&mut self, t: &Tracker, c: &Change<'_>, out: &mut dyn Write) {
        match c {
            Change::Started(v)
            | Change::Cached(v)
            | Change::Done(v)
            | Change::Cancelled(v)
            | Change::Error { v, .. } => emit(out, vertexes(&t.vertices[*v])),
            Change::Chunk { v, stderr, data } => emit(
                out,
                json!({"logs": [{
                    "vertex": t.vertices[*v].digest,
                    "stream": if *stderr { STDERR } else { STDOUT },
                    "data": b64(data),
                    "timestamp": go_time(SystemTime::now()),
                }]}),
            ),
            Change::Line { .. } => {}
            Change::Transfer { v, i } => {
                let vx = &t.vertices[*v];
                let x = &vx.transfers[*i];
                let mut o = json!({
                    "id": x.id,
                    "vertex": vx.digest,
                    "name": x.action,
                    "current": x.current,
                    "timestamp": go_time(SystemTime::now()),
                    "started": go_time(x.started_at),
                });
                if x.total > 0 {
                    o["total"] = json!(x.total);
                }
                if let Some(c) = x.completed_at {
                    o["completed"] = json!(go_time(c));
                }
                emit(out, json!({ "statuses": [o] }));
            }
            Change::Warning(w) => {
                let mut o = json!({
                    "level": 1,
                    "short": b64(w.message.as_bytes()),
                });
                if let Some(file) = w.file {
                    o["sourceInfo"] = json!({"filename": file, "language": "Dockerfile"});
                }
                if let Some((start, end)) = w.lines {
                    o["range"] = json!([{"start": {"line": start}, "end": {"line": end}}]);
                }
                emit(out, json!({ "warnings": [o] }));
            }
            Change::Explain { v, reason } => emit(
                out,
                json!({"explain": [{"vertex": t.vertices[*v].digest, "reason": reason}]}),
            ),
            Change::Other(text) => emit(out, json!({ "other": text })),
        }
    }

    fn finish(&mut self, t: &Tracker, o: &Outcome, out: &mut dyn Write) {
        let cached = t
            .vertices
            .iter()
            .filter(|v| v.status == Status::Cached)
            .count();
        let d = (t.build_start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let mut r = json!({
            "ok": o.ok,
            "duration": d,
            "steps": t.vertices.len(),
            "cached": cached,
        });
        if let Some(id) = &o.image_id {
            r["image"] = json!(id);
        }
        if let Some(e) = &o.error {
            r["error"] = json!(e);
        }
        emit(out, json!({ "result": r }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Buf;
    use super::super::{Mode, Outcome, Reporter};
    use super::go_time;
    use base64::Engine;
    use rbuild_solver::{Event, Progress};
    use serde_json::Value;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_in_go_rfc3339_nano_form() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(go_time(t), "2023-11-14T22:13:20.12Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 1);
        assert_eq!(go_time(t), "2023-11-14T22:13:20.000000001Z");
        assert_eq!(
            go_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn one_solve_status_per_line_with_base64_logs_and_stream_numbers() {
        let buf = Buf::default();
        let r = Reporter::with_writer(Mode::RawJson, Box::new(buf.clone()), None);
        r.event(Event::Started {
            vertex: 4,
            name: "[s 1/1] RUN x".into(),
        });
        r.event(Event::Log {
            vertex: 4,
            stderr: false,
            data: b"caf\xc3\xa9\n".to_vec(),
        });
        r.event(Event::Log {
            vertex: 4,
            stderr: true,
            data: vec![0xff, 0x00],
        });
        r.event(Event::Failed {
            vertex: 4,
            message: "[s 1/1] RUN x: boom".into(),
        });
        r.warning_at("Dockerfile", 2, 3, "odd");
        r.finish(&Outcome {
            ok: false,
            cancelled: false,
            image_id: None,
            error: Some("boom".into()),
        });
        let v: Vec<Value> = buf
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 6, "{v:#?}");
        let started = &v[0]["vertexes"][0];
        assert_eq!(started["name"], "[s 1/1] RUN x");
        let digest = started["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:") && digest.len() == 71);
        assert!(started["started"].as_str().unwrap().ends_with('Z'));
        assert!(started.get("completed").is_none());
        let decode = |x: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(x.as_str().unwrap())
                .unwrap()
        };
        assert_eq!(v[1]["logs"][0]["vertex"], digest);
        assert_eq!(v[1]["logs"][0]["stream"], 1);
        assert_eq!(decode(&v[1]["logs"][0]["data"]), "café\n".as_bytes());
        assert_eq!(v[2]["logs"][0]["stream"], 2);
        assert_eq!(decode(&v[2]["logs"][0]["data"]), [0xff, 0x00]);
        let failed = &v[3]["vertexes"][0];
        assert_eq!(failed["error"], "boom");
        assert_eq!(failed["digest"], digest);
        assert!(failed["completed"].is_string());
        let w = &v[4]["warnings"][0];
        assert_eq!(decode(&w["short"]), b"odd");
        assert_eq!(w["range"][0]["start"]["line"], 2);
        assert_eq!(w["range"][0]["end"]["line"], 3);
        assert_eq!(v[5]["result"]["ok"], false);
    }
}
