//! netdevd's log: `tracing` events written to stderr, one line each —
//! `2026-11-27T06:55:09.406487Z  WARN netdevd_backends::tap: message key=value`.
//!
//! A small subscriber of its own rather than `tracing-subscriber`'s fmt layer: netdevd has
//! no spans and a few dozen events, and the fmt layer was a tenth of the binary (every page
//! of which a running netdevd keeps mapped).
//!
//! `NETDEVD_LOG` picks what is written: a level (`error`, `warn`, `info`, `debug`, `trace`,
//! `off`), or `target=level` pairs with an optional default level, comma-separated
//! (`warn,netdevd_usernet=debug`); the longest matching target prefix wins. Default `info`.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// What `NETDEVD_LOG` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// (target prefix, level), longest prefix first.
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parse `NETDEVD_LOG`'s syntax; `None` if any part is not understood.
    pub fn parse(s: &str) -> Option<Filter> {
        let mut f = Filter {
            default: LevelFilter::INFO,
            targets: Vec::new(),
        };
        let mut default = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((target, level)) if !target.is_empty() => {
                    f.targets.push((target.to_string(), level.parse().ok()?));
                }
                Some(_) => return None,
                None => default = Some(part.parse().ok()?),
            }
        }
        // With only targets named, everything else is off (as tracing's `Targets`).
        f.default = default.unwrap_or(if f.targets.is_empty() {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        });
        f.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Some(f)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| {
                target.starts_with(t.as_str())
                    && (target.len() == t.len() || target[t.len()..].starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, LevelFilter::max)
    }
}

/// The subscriber: filters, formats, writes each event with one `write` to stderr.
pub struct Logger {
    filter: Filter,
}

/// Install the logger for the whole process, from `NETDEVD_LOG` (default `info`).
pub fn init() {
    let filter = std::env::var("NETDEVD_LOG")
        .ok()
        .and_then(|v| Filter::parse(&v))
        .unwrap_or_else(|| Filter::parse("info").expect("a valid default"));
    let _ = tracing::subscriber::set_global_default(Logger { filter });
}

impl Subscriber for Logger {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= self.filter.level_for(meta.target())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter.max())
    }

    // No spans in netdevd: they are given one id and otherwise ignored.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = String::with_capacity(128);
        timestamp(&mut line, SystemTime::now());
        let _ = write!(line, " {:>5} {}: ", meta.level().as_str(), meta.target());
        let mut fields = Fields {
            line: &mut line,
            rest: String::new(),
        };
        event.record(&mut fields);
        let rest = fields.rest;
        line.push_str(&rest);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The message first, then `key=value` for each other field.
struct Fields<'a> {
    line: &'a mut String,
    rest: String,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.line.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.line, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// RFC 3339 in UTC with microseconds.
fn timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian calendar;
/// the days-to-civil algorithm over 400-year eras).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut s = String::new();
        timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_micros(1_795_762_509_406_487),
        );
        assert_eq!(s, "2026-11-27T06:55:09.406487Z");
    }

    #[test]
    fn filters() {
        let f = Filter::parse("warn,netdevd_usernet=debug,netdevd_usernet::tcp=off").unwrap();
        assert_eq!(f.level_for("netdevd"), LevelFilter::WARN);
        assert_eq!(f.level_for("netdevd_usernet"), LevelFilter::DEBUG);
        assert_eq!(f.level_for("netdevd_usernet::stack"), LevelFilter::DEBUG);
        assert_eq!(f.level_for("netdevd_usernet::tcp"), LevelFilter::OFF);
        assert_eq!(f.level_for("netdevd_usernetx"), LevelFilter::WARN);
        assert_eq!(f.max(), LevelFilter::DEBUG);
        assert_eq!(
            Filter::parse("debug").unwrap().level_for("x"),
            LevelFilter::DEBUG
        );
        assert_eq!(
            Filter::parse("netdevd=trace").unwrap().level_for("x"),
            LevelFilter::OFF
        );
        assert_eq!(Filter::parse("").unwrap().level_for("x"), LevelFilter::INFO);
        assert!(Filter::parse("loud").is_none());
        assert!(Filter::parse("=info").is_none());
        assert!(Filter::parse("a=loud").is_none());
    }
}
