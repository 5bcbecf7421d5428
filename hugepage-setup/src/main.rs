//! `hugepage-setup`: see the library's documentation or `--help`.

use std::io;
use std::process::ExitCode;

use hugepage_setup::{Exit, HostSys};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("hugepage-setup: error: argument {arg:?} is not UTF-8");
                return ExitCode::from(Exit::Usage.code());
            }
        }
    }
    let exit = hugepage_setup::main_with(
        &HostSys::new(),
        args,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    ExitCode::from(exit.code())
}
