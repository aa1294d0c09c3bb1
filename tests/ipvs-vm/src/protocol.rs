//! The line protocol the guest prints on the serial console and the host parses.
//!
//! ```text
//! KUBELVS PASS <case> [detail]
//! KUBELVS FAIL <case> <reason>
//! KUBELVS MEASURE <name> <value> <unit>
//! KUBELVS END <passed> <failed>
//! KUBELVS EXIT <status>        (printed by init after the guest binary returns)
//! ```
//! The marker may appear after other text on the same line (kernel messages share
//! the console), so the parser looks for it anywhere in the line.

use std::fmt;

pub const MARKER: &str = "KUBELVS ";

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Pass {
        case: String,
        detail: String,
    },
    Fail {
        case: String,
        reason: String,
    },
    Measure {
        name: String,
        value: f64,
        unit: String,
    },
    End {
        passed: u32,
        failed: u32,
    },
    Exit {
        status: i32,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass { case, detail } => write!(f, "{MARKER}PASS {case} {detail}"),
            Self::Fail { case, reason } => {
                // One line per event: a reason with newlines would be cut.
                write!(f, "{MARKER}FAIL {case} {}", reason.replace('\n', " | "))
            }
            Self::Measure { name, value, unit } => {
                write!(f, "{MARKER}MEASURE {name} {value} {unit}")
            }
            Self::End { passed, failed } => write!(f, "{MARKER}END {passed} {failed}"),
            Self::Exit { status } => write!(f, "{MARKER}EXIT {status}"),
        }
    }
}

/// Parses one console line; `None` for lines that are not protocol lines or are malformed.
pub fn parse_line(line: &str) -> Option<Event> {
    let start = line.find(MARKER)?;
    let rest = line[start + MARKER.len()..].trim_end_matches(['\r', '\n']);
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut words = rest.split_whitespace();
    match kind {
        "PASS" | "FAIL" => {
            let (case, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if case.is_empty() {
                return None;
            }
            let (case, text) = (case.to_owned(), text.trim().to_owned());
            Some(if kind == "PASS" {
                Event::Pass { case, detail: text }
            } else {
                Event::Fail { case, reason: text }
            })
        }
        "MEASURE" => {
            let name = words.next()?.to_owned();
            let value = words.next()?.parse().ok()?;
            let unit = words.next().unwrap_or("").to_owned();
            Some(Event::Measure { name, value, unit })
        }
        "END" => Some(Event::End {
            passed: words.next()?.parse().ok()?,
            failed: words.next()?.parse().ok()?,
        }),
        "EXIT" => Some(Event::Exit {
            status: words.next()?.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_event() {
        let events = [
            Event::Pass {
                case: "nat".into(),
                detail: "3 real servers answered".into(),
            },
            Event::Fail {
                case: "dr".into(),
                reason: "no answer".into(),
            },
            Event::Measure {
                name: "apply_ms".into(),
                value: 12.5,
                unit: "ms".into(),
            },
            Event::End {
                passed: 9,
                failed: 1,
            },
            Event::Exit { status: 0 },
        ];
        for e in events {
            assert_eq!(parse_line(&e.to_string()), Some(e.clone()));
        }
    }

    #[test]
    fn finds_the_marker_after_kernel_noise() {
        let line = "[   12.3] random: crng init done KUBELVS PASS tun ok\r";
        assert_eq!(
            parse_line(line),
            Some(Event::Pass {
                case: "tun".into(),
                detail: "ok".into()
            })
        );
    }

    #[test]
    fn malformed_lines_are_ignored_not_panics() {
        for line in [
            "",
            "KUBELVS ",
            "KUBELVS PASS",
            "KUBELVS MEASURE x",
            "KUBELVS MEASURE x notanumber ms",
            "KUBELVS END 1",
            "KUBELVS EXIT ☃",
            "KUBELVS BOGUS 1",
            "KUBELVS FAIL  ",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn newlines_in_a_reason_stay_on_one_line() {
        let e = Event::Fail {
            case: "x".into(),
            reason: "a\nb".into(),
        };
        assert_eq!(e.to_string().lines().count(), 1);
    }
}
