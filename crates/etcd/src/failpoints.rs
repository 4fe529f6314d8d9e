//! Crash points: named places before and after every mutating call of the
//! controllers, where a test can have the operator die (as `kill -9` would)
//! and then prove that a restarted operator finishes the work without
//! losing data.
//!
//! Compiled in only with the `failpoints` feature (the test build turns it
//! on; a release build carries none): without it [`crash_point!`] expands to
//! nothing. With it, `FAILPOINTS="name=return;..."` (tikv's fail-rs syntax)
//! arms points at start, and an armed point exits the process with
//! [`CRASH_EXIT_CODE`] when reached.

/// The exit code of an operator stopped at an armed crash point.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Arms the crash points named in `FAILPOINTS`. Returns what was armed, or
/// why the variable is not understood. Without the `failpoints` feature a
/// set variable is an error: the points it names do not exist in this build.
pub fn arm_from_env() -> Result<Vec<String>, String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(vec![]);
    };
    arm(&spec)
}

#[cfg(feature = "failpoints")]
fn arm(spec: &str) -> Result<Vec<String>, String> {
    let mut armed = vec![];
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) = entry
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS entry {entry:?} is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| format!("FAILPOINTS entry {entry:?}: {e}"))?;
        armed.push(name.trim().to_string());
    }
    Ok(armed)
}

#[cfg(not(feature = "failpoints"))]
fn arm(spec: &str) -> Result<Vec<String>, String> {
    if spec.trim().is_empty() {
        return Ok(vec![]);
    }
    Err(
        "FAILPOINTS is set, but this build has no crash points (build with the failpoints feature)"
            .into(),
    )
}

/// Ends the process at crash point `name`: no destructor, no release of
/// the Lease, no flush beyond this line — as close to `kill -9` as a
/// process can do to itself.
#[cfg(feature = "failpoints")]
pub fn crash(name: &str) -> ! {
    eprintln!("crash point {name}: exiting with code {CRASH_EXIT_CODE}");
    std::process::exit(CRASH_EXIT_CODE)
}

/// A named crash point (see the module documentation).
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            $crate::failpoints::crash($name)
        }
    }};
}
