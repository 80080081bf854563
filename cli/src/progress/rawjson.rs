//! The rawjson display: one JSON object per line on stderr, for tools. Schema (documented in
//! docs/progress.md):
//!
//! ```text
//! {"type":"started","vertex":3,"name":"[base 2/3] RUN make","time":1763812345.123}
//! {"type":"cached","vertex":4,"name":"[base 3/3] COPY a /a","time":…}
//! {"type":"log","vertex":3,"stream":"stdout","text":"compiling…\n","time":…}
//! {"type":"log","vertex":3,"stream":"stderr","base64":"/w==","time":…}   (not UTF-8)
//! {"type":"done","vertex":3,"duration":1.234,"time":…}
//! {"type":"error","vertex":5,"error":"process … exit code 3","time":…}
//! {"type":"warning","message":"Dockerfile:3: …","time":…}
//! {"type":"result","ok":true,"image":"sha256:…","duration":3.2,"steps":6,"cached":2,"time":…}
//! ```
//!
//! Logs are the raw chunks as the step wrote them (never clipped or re-split).

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use super::{unix_time, Change, Outcome, Render, Status, Tracker};

pub struct RawJson;

fn emit(out: &mut dyn Write, mut v: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("time".into(), json!(unix_time()));
    }
    let _ = writeln!(out, "{v}");
}

impl Render for RawJson {
    fn change(&mut self, t: &Tracker, c: &Change<'_>, out: &mut dyn Write) {
        match c {
            Change::Started(v) => {
                let vx = &t.vertices[*v];
                emit(
                    out,
                    json!({"type": "started", "vertex": vx.n, "name": vx.name}),
                );
            }
            Change::Cached(v) => {
                let vx = &t.vertices[*v];
                emit(
                    out,
                    json!({"type": "cached", "vertex": vx.n, "name": vx.name}),
                );
            }
            Change::Chunk { v, stderr, data } => {
                let stream = if *stderr { "stderr" } else { "stdout" };
                let mut o = json!({"type": "log", "vertex": t.vertices[*v].n, "stream": stream});
                match std::str::from_utf8(data) {
                    Ok(s) => o["text"] = json!(s),
                    Err(_) => {
                        o["base64"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(data))
                    }
                }
                emit(out, o);
            }
            Change::Line { .. } => {}
            Change::Done(v) => {
                let vx = &t.vertices[*v];
                let d = (vx.elapsed() * 1000.0).round() / 1000.0;
                emit(
                    out,
                    json!({"type": "done", "vertex": vx.n, "duration": d}),
                );
            }
            Change::Error { v, message } => {
                let vx = &t.vertices[*v];
                emit(
                    out,
                    json!({"type": "error", "vertex": vx.n, "name": vx.name, "error": message}),
                );
            }
            Change::Warning(text) => emit(out, json!({"type": "warning", "message": text})),
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
            "type": "result",
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
        emit(out, r);
    }
}
