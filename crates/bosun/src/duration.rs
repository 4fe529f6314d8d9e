//! Durations as people write them on bosun's command line and read them in
//! what it prints. Every duration flag parses through [`parse_duration`],
//! so `--lease-duration` and `bosun backup now --timeout` take the same
//! spellings (`--timeout` also a bare number of seconds, as it always has).

use std::time::Duration;

/// Parses a `DURATION` flag: Go's `time.ParseDuration` spellings, which
/// Kubernetes flags use (`15s`, `1m30s`, `1.5s`, `300ms`, `2h`, `0`), and
/// humantime's longer ones (`1m 30s`, `2 hours`, `1d`). A bare number but
/// 0 is refused, as Go refuses it: `2` could mean seconds or minutes.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}): write e.g. 90s, 1m30s, 300ms or 2h"))
}

/// A duration for people, to the second: 4s, 1m05s, 1h00m00s.
pub(crate) fn human_duration(duration: Duration) -> String {
    let s = duration.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_parse() {
        let cases = [
            ("15s", Duration::from_secs(15)),
            ("300ms", Duration::from_millis(300)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.3s", Duration::from_millis(300)),
            ("1m30s", Duration::from_secs(90)),
            ("10m", Duration::from_secs(600)),
            ("2h", Duration::from_secs(7200)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn longer_spellings_parse() {
        let cases = [
            (" 90s ", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("2 hours", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("0", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn what_is_no_duration_is_refused() {
        for bad in [
            "",
            "15",
            "s",
            "m",
            "15x",
            "1.2.3s",
            "-1s",
            "1e3s",
            "1.",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_print_to_the_second() {
        assert_eq!(human_duration(Duration::from_millis(4_900)), "4s");
        assert_eq!(human_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m00s");
        assert_eq!(human_duration(Duration::from_secs(3601)), "1h00m01s");
    }
}
