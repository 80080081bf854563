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
//! {"type":"other","debug":"…"}      (a solver event this version does not know yet)
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
                        o["base64"] = json!(base64::engine::general_purpose::STANDARD.encode(data))
                    }
                }
                emit(out, o);
            }
            Change::Line { .. } => {}
            Change::Done(v) => {
                let vx = &t.vertices[*v];
                let d = (vx.elapsed() * 1000.0).round() / 1000.0;
                emit(out, json!({"type": "done", "vertex": vx.n, "duration": d}));
            }
            Change::Error { v, message } => {
                let vx = &t.vertices[*v];
                emit(
                    out,
                    json!({"type": "error", "vertex": vx.n, "name": vx.name, "error": message}),
                );
            }
            Change::Cancelled(v) => {
                let vx = &t.vertices[*v];
                emit(out, json!({"type": "canceled", "vertex": vx.n}));
            }
            Change::Warning(text) => emit(out, json!({"type": "warning", "message": text})),
            Change::Explain { v, reason } => emit(
                out,
                json!({"type": "explain", "vertex": t.vertices[*v].n, "reason": reason}),
            ),
            Change::Other(text) => emit(out, json!({"type": "other", "debug": text})),
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

#[cfg(test)]
mod tests {
    use super::super::testing::Buf;
    use super::super::{Mode, Outcome, Reporter};
    use rbuild_solver::{Event, Progress};
    use serde_json::Value;

    #[test]
    fn one_object_per_line_with_text_or_base64_logs() {
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
        r.finish(&Outcome {
            ok: false,
            image_id: None,
            error: Some("boom".into()),
        });
        let v: Vec<Value> = buf
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0]["type"], "started");
        assert_eq!(v[0]["vertex"], 1);
        assert_eq!(v[1]["text"], "café\n");
        assert_eq!(v[1]["stream"], "stdout");
        assert_eq!(v[2]["base64"], "/wA=");
        assert_eq!(v[2]["stream"], "stderr");
        assert_eq!(v[3]["type"], "error");
        assert_eq!(v[3]["error"], "boom");
        assert_eq!(v[4]["type"], "result");
        assert_eq!(v[4]["ok"], false);
        assert!(v.iter().all(|o| o["time"].as_f64().unwrap() > 1.6e9));
    }
}
