//! Status helpers shared by the controllers: conditions in the Kubernetes
//! style and conversions between the API's timestamps and chrono's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets a condition, keeping its transition time when its status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status;
            existing.reason = reason.into();
            existing.message = message.into();
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

/// An API timestamp from a chrono time.
pub fn to_time(time: chrono::DateTime<chrono::Utc>) -> Time {
    let nanos = time.timestamp_nanos_opt().unwrap_or_default();
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos))
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// A chrono time from an API timestamp.
pub fn from_time(time: &Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(time.0.as_second(), time.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        let now = chrono::DateTime::from_timestamp(1_795_000_000, 123_000_000).expect("time");
        assert_eq!(from_time(&to_time(now)), now);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Failed", true, "A", "first", Some(1));
        let first = conditions[0].last_transition_time.clone();
        set_condition(&mut conditions, "Failed", true, "B", "second", Some(2));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, first);
        assert_eq!(conditions[0].reason, "B");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }
}
