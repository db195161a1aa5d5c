//! What the command-line tools print for the operator. Output into a pipe whose reader has gone
//! (`cairn admin status | head`) ends the command quietly instead of panicking, as `println!`
//! would.

use std::fmt;
use std::io::Write;

/// Print one line to standard output (see the module docs).
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the operator's output: [`line`].
#[macro_export]
macro_rules! say {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// An operator's request refused before anything changed (an id already in use, say): the
/// command exits with status 2, as for a usage error, and says why.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}
