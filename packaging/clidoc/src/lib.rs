//! Man pages and shell completions, generated from a binary's own clap
//! definition so they can never drift from its flags. Packaging runs each
//! binary with `QEMUD_GENERATE_DOCS=DIR`; the binary writes `NAME.1` and
//! completions for bash, zsh and fish into DIR and exits.

use std::path::Path;

use clap::Command;
use clap_complete::Shell;

/// The environment variable that asks a binary for its documentation.
pub const ENV: &str = "QEMUD_GENERATE_DOCS";

/// Writes the man page and completions of `cmd` into `dir`.
pub fn generate(cmd: Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), &name, dir)?;
    }
    Ok(())
}

/// When `QEMUD_GENERATE_DOCS` is set, generates into that directory and
/// returns the process exit code; otherwise `None` and the binary runs.
pub fn generate_if_asked(cmd: impl FnOnce() -> Command) -> Option<i32> {
    let dir = std::env::var_os(ENV)?;
    match generate(cmd(), Path::new(&dir)) {
        Ok(()) => Some(0),
        Err(e) => {
            eprintln!(
                "cannot write documentation to {}: {e}",
                dir.to_string_lossy()
            );
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_page_and_completions() {
        let dir = std::env::temp_dir().join(format!("clidoc-test-{}", std::process::id()));
        let cmd = Command::new("demo")
            .about("A demo")
            .arg(clap::Arg::new("socket").long("socket"));
        generate(cmd, &dir).unwrap();
        let page = std::fs::read_to_string(dir.join("demo.1")).unwrap();
        assert!(page.contains("socket"));
        assert!(dir.join("demo.bash").exists());
        assert!(dir.join("_demo").exists());
        assert!(dir.join("demo.fish").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
