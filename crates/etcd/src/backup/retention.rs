//! Which objects under one EtcdBackup's own prefix stay and which go. Pure.
//!
//! Every backup is two objects, `<time>.db` and `<time>.json` (the manifest
//! written once the snapshot was verified); times sort as text. The newest
//! `keep` verified backups stay; older ones go, and so does debris from an
//! interrupted run (a snapshot without a manifest, or a manifest without a
//! snapshot). Names of any other form were not written by bosun and stay.

use std::collections::BTreeSet;

/// The outcome.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Stems (`<time>`) of the verified backups kept, newest first.
    pub kept: Vec<String>,
    /// Object names to delete.
    pub delete: Vec<String>,
}

/// Decides, from the object names under the prefix (without the prefix).
pub fn plan(names: &[String], keep: usize) -> Retention {
    let stems = |ext: &str| -> BTreeSet<&str> {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(ext))
            .filter(|stem| is_time_stem(stem))
            .collect()
    };
    let snapshots = stems(".db");
    let manifests = stems(".json");
    let mut verified: Vec<&str> = snapshots.intersection(&manifests).copied().collect();
    verified.sort_unstable_by(|a, b| b.cmp(a));

    let mut retention = Retention::default();
    for (i, stem) in verified.iter().enumerate() {
        if i < keep {
            retention.kept.push(stem.to_string());
        } else {
            retention.delete.push(format!("{stem}.db"));
            retention.delete.push(format!("{stem}.json"));
        }
    }
    for stem in snapshots.difference(&manifests) {
        retention.delete.push(format!("{stem}.db"));
    }
    for stem in manifests.difference(&snapshots) {
        retention.delete.push(format!("{stem}.json"));
    }
    retention
}

/// The stem of a backup taken at `time`: `20261125T103000Z`.
pub fn stem_of(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y%m%dT%H%M%SZ").to_string()
}

fn is_time_stem(stem: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(stem, "%Y%m%dT%H%M%SZ").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_verified_backups_stay() {
        let r = plan(
            &names(&[
                "20261125T100000Z.db",
                "20261125T100000Z.json",
                "20261125T110000Z.db",
                "20261125T110000Z.json",
                "20261125T120000Z.db",
                "20261125T120000Z.json",
            ]),
            2,
        );
        assert_eq!(r.kept, ["20261125T120000Z", "20261125T110000Z"]);
        assert_eq!(r.delete, ["20261125T100000Z.db", "20261125T100000Z.json"]);
    }

    #[test]
    fn interrupted_runs_are_debris_and_never_count() {
        let r = plan(
            &names(&[
                "20261125T100000Z.db",
                "20261125T100000Z.json",
                "20261125T130000Z.db",
                "20261125T090000Z.json",
            ]),
            2,
        );
        assert_eq!(r.kept, ["20261125T100000Z"]);
        assert_eq!(r.delete, ["20261125T130000Z.db", "20261125T090000Z.json"]);
    }

    #[test]
    fn foreign_names_stay() {
        let r = plan(&names(&["notes.txt", "x.db", "20261125T100000Z.db.tmp"]), 1);
        assert_eq!(r, Retention::default());
    }

    #[test]
    fn stems_are_sortable_times() {
        use chrono::TimeZone;
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("time");
        assert_eq!(stem_of(t), "20260102T030405Z");
        assert!(is_time_stem(&stem_of(t)));
    }
}
