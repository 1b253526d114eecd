//! Log lines on stderr: their level (`--log-level`, a `tracing` filter) and format
//! (`--log-format`: text for people, JSON with one object per line and the event's fields at the
//! top level for collectors).

use std::str::FromStr;

use tracing_subscriber::{EnvFilter, filter::LevelFilter};

use crate::config::LogFormat;

/// Parses a `--log-level`: comma-separated directives, each a level (`error`, `warn`, `info`,
/// `debug`, `trace`, `off`) or `target=level` (`longconn_gateway::access_log=off`), as
/// `tracing`'s `EnvFilter` reads them. A bare word that is not a level is refused, though
/// `EnvFilter` would take it for a target at every level: written alone it is almost always a
/// misspelt level.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    let hint = "use error, warn, info, debug, trace or off, or target=level directives such as info,longconn_gateway::access_log=off";
    if level.trim().is_empty() {
        return Err(format!("must not be empty; {hint}"));
    }
    for directive in level.split(',').map(str::trim) {
        if !directive.is_empty()
            && !directive.contains('=')
            && LevelFilter::from_str(directive).is_err()
        {
            return Err(format!("{directive:?} is not a level; {hint}"));
        }
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("{level:?} is not a log filter ({e}); {hint}"))
}

/// Installs the process's subscriber: `filter` (already checked by [`parse_filter`]; `info` if
/// it fails after all) in `format`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = parse_filter(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_are_accepted() {
        for ok in [
            "info",
            "WARN",
            "debug,hyper=off",
            "info,longconn_gateway::access_log=off",
            "longconn_gateway=trace",
        ] {
            parse_filter(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn misspelt_levels_and_bad_directives_are_refused_with_a_hint() {
        for bad in ["infoo", "", " ", "info,foo=loud", "=info", "info,verbose"] {
            let err = parse_filter(bad).expect_err(bad);
            assert!(err.contains("use error, warn, info"), "{bad:?}: {err}");
        }
    }
}
