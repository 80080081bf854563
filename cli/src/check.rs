//! `rbuild build --check`: print the build checks' findings (BuildKit's lint rules) with the
//! Dockerfile line each one points at, then a summary; nothing is built. Exit code 1 when
//! anything was found (like `docker build --check`), 0 otherwise.

use std::process::ExitCode;

use rbuild_frontend::Diagnostic;

/// Print `warnings` for the Dockerfile `name` with text `text`; returns the exit code.
pub fn report(name: &str, text: &str, warnings: &[Diagnostic]) -> ExitCode {
    let lines: Vec<&str> = text.lines().collect();
    for w in warnings {
        let (rule, detail) = split_rule(&w.message);
        match rule {
            Some(r) => println!("WARNING: {r} - {}", rule_url(r)),
            None => println!("WARNING:"),
        }
        println!("{detail}");
        if w.line > 0 {
            println!("{name}:{}", w.line);
            println!("--------------------");
            let at = w.line as usize;
            let end = (w.end_line as usize).max(at);
            for n in at.saturating_sub(2).max(1)..=end {
                if let Some(l) = lines.get(n - 1) {
                    let mark = if n >= at { ">>>" } else { "   " };
                    println!("{n:>3} | {mark} {l}");
                }
            }
            println!("--------------------");
        }
        println!();
    }
    if warnings.is_empty() {
        println!("Check complete, no warnings found.");
        ExitCode::SUCCESS
    } else {
        let s = if warnings.len() == 1 { "" } else { "s" };
        println!(
            "Check complete, {} warning{s} have been found!",
            warnings.len()
        );
        ExitCode::FAILURE
    }
}

/// `RuleName: detail` → (rule, detail); a message without a rule name is all detail.
pub fn split_rule(message: &str) -> (Option<&str>, &str) {
    match message.split_once(": ") {
        Some((r, d)) if !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()) => {
            (Some(r), d)
        }
        _ => (None, message),
    }
}

/// The documentation page of a rule, as BuildKit links it.
pub fn rule_url(rule: &str) -> String {
    format!(
        "https://docs.docker.com/go/dockerfile/rule/{}/",
        kebab(rule)
    )
}

/// `JSONArgsRecommended` → `json-args-recommended`.
fn kebab(rule: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = rule.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let prev_lower = i > 0 && (chars[i - 1].is_ascii_lowercase());
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
        if c.is_ascii_uppercase() && i > 0 && (prev_lower || (prev_upper && next_lower)) {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_urls_are_kebab_case() {
        assert_eq!(kebab("JSONArgsRecommended"), "json-args-recommended");
        assert_eq!(kebab("UndefinedVar"), "undefined-var");
        assert_eq!(kebab("FromAsCasing"), "from-as-casing");
    }
}
