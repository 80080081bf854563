//! Times as images and registries write them: Unix seconds to and from RFC 3339
//! (`2024-05-01T12:00:00Z`), on the proleptic Gregorian calendar (H. Hinnant's civil/days
//! algorithms), for any `i64` second without panicking. The one date formatter and parser;
//! `http` reads HTTP dates with the same day arithmetic.

pub use rbuild_cache::now_secs;

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time (UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parse an RFC 3339 time (`2024-05-01T12:00:00Z`, `…T12:00:00.123456789+02:00`; image
/// configs' `created`) into Unix seconds (the fraction is dropped).
pub fn parse_rfc3339(v: &str) -> Option<i64> {
    let v = v.trim();
    let (date, time) = v.split_once(['T', 't', ' '])?;
    let ymd: Vec<i64> = date
        .split('-')
        .map(|x| x.parse::<i64>().ok())
        .collect::<Option<Vec<i64>>>()?;
    let [y, m, d] = ymd.as_slice() else {
        return None;
    };
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let clock = clock.split('.').next()?;
    let hms: Vec<i64> = clock
        .split(':')
        .map(|x| x.parse::<i64>().ok())
        .collect::<Option<Vec<i64>>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(d) || *h > 23 || *mi > 59 || *se > 60 {
        return None;
    }
    Some(days_from_civil(*y, *m, *d) * 86400 + h * 3600 + mi * 60 + se - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        for s in [0, -1, 951_782_400, 1_700_000_000, -62_135_596_800] {
            assert_eq!(parse_rfc3339(&rfc3339(s)), Some(s), "{s}");
        }
    }

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20"), None);
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
        assert_eq!(parse_rfc3339("x"), None);
    }
}
