//! `modgraph [--dot] SRC`: read the crate whose source is in SRC (its `lib.rs` or `main.rs`
//! and the modules they declare). Fails naming each circle among its modules and the
//! references that make it; with `--dot`, prints the module graph for graphviz instead.
//!
//! `scripts/test` runs `modgraph controller/src`; `docs/architecture.md` shows the diagram
//! and the command that draws it.

use std::path::PathBuf;
use std::process::ExitCode;

use demofleet_modgraph::{circles, dot, read};

fn main() -> anyhow::Result<ExitCode> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let draw = args.iter().position(|a| a == "--dot").map(|i| args.remove(i)).is_some();
    let [src] = args.as_slice() else {
        anyhow::bail!("usage: modgraph [--dot] SRC (a crate's source folder, such as controller/src)");
    };
    let src = PathBuf::from(src);
    let graph = read::crate_dir(&src, &std::env::current_dir()?)?;
    let found = circles::circles(&graph);
    if draw {
        let title = src.components().rev().nth(1).map_or("crate".into(), |c| c.as_os_str().to_string_lossy());
        print!("{}", dot::render(&graph, &found, &title));
        return Ok(ExitCode::SUCCESS);
    }
    if found.is_empty() {
        println!(
            "{}: {} modules, {} references between them, no circles",
            src.display(),
            graph.modules.len(),
            graph.edges.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("{}", circles::report(&graph, &found));
    eprintln!("{}: modules must not refer to each other in a circle", src.display());
    Ok(ExitCode::FAILURE)
}
