//! When a scheduled EtcdBackup runs next. Pure, so that "missed runs while
//! the operator was down are run once, not many times" is a unit test.

use chrono::{DateTime, Utc};
use croner::Cron;

/// What the schedule says now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// A run is due: the newest scheduled time not later than now. Earlier
    /// missed times are folded into this one run.
    Now {
        /// The scheduled time this run stands for.
        scheduled: DateTime<Utc>,
    },
    /// Nothing is due before `at`.
    Later {
        /// The next scheduled time.
        at: DateTime<Utc>,
    },
}

/// Decides whether a run is due.
///
/// `last` is the scheduled time of the last run (or, before the first run,
/// the EtcdBackup's creation time): only times after it count.
pub fn due(cron: &Cron, last: DateTime<Utc>, now: DateTime<Utc>) -> Result<Due, String> {
    let next = cron
        .find_next_occurrence(&last, false)
        .map_err(|e| format!("the schedule has no next time after {last}: {e}"))?;
    if next > now {
        return Ok(Due::Later { at: next });
    }
    let newest = cron
        .find_previous_occurrence(&now, true)
        .map_err(|e| format!("the schedule has no time before {now}: {e}"))?;
    Ok(Due::Now {
        scheduled: newest.max(next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, h, m, s)
            .single()
            .expect("valid time")
    }

    fn cron(text: &str) -> Cron {
        bosun_api::validation::parse_schedule(text).expect("valid schedule")
    }

    #[test]
    fn nothing_is_due_before_the_next_time() {
        assert_eq!(
            due(&cron("*/10 * * * *"), at(10, 0, 0), at(10, 5, 0)),
            Ok(Due::Later { at: at(10, 10, 0) })
        );
    }

    #[test]
    fn a_time_reached_is_due_once() {
        assert_eq!(
            due(&cron("*/10 * * * *"), at(10, 0, 0), at(10, 10, 3)),
            Ok(Due::Now {
                scheduled: at(10, 10, 0)
            })
        );
        // After that run, the same time is not due again.
        assert_eq!(
            due(&cron("*/10 * * * *"), at(10, 10, 0), at(10, 10, 30)),
            Ok(Due::Later { at: at(10, 20, 0) })
        );
    }

    #[test]
    fn many_missed_times_are_one_run_for_the_newest() {
        assert_eq!(
            due(&cron("*/10 * * * *"), at(9, 0, 0), at(11, 34, 0)),
            Ok(Due::Now {
                scheduled: at(11, 30, 0)
            })
        );
    }

    #[test]
    fn a_seconds_field_schedules_within_a_minute() {
        assert_eq!(
            due(&cron("*/15 * * * * *"), at(10, 0, 0), at(10, 0, 16)),
            Ok(Due::Now {
                scheduled: at(10, 0, 15)
            })
        );
    }
}
