//! `keel completions SHELL` and `keel man [--out DIR]`: generated from the
//! command line itself, so they never drift from it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

/// Prints `shell`'s completion script for keel.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "keel", &mut buf);
    print(&buf)
}

/// Writes `bytes` to standard output; a reader that stops early (`| head`)
/// is no error.
fn print(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints keel's top manual page, or writes keel.1 and one page per
/// command (keel-findings.1, keel-chaos-inject.1, ...) into `out`.
pub fn man(out: Option<&Path>) -> Result<()> {
    let cmd = crate::Cli::command();
    match out {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            print(&buf)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing pages into {}", dir.display()))?;
            let pages = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
                .count();
            eprintln!("{pages} pages in {}", dir.display());
        }
    }
    Ok(())
}
