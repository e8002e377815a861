//! `tern demo`: the whole of tern on this machine, as one system, with the commands to try printed. The
//! mover (with its admin web UI) publishes a sample site to three nodes, each serving its `live` tree with
//! `tern serve`; an edge stands in front of each node, and the three edges are one cache community with its
//! registry ([`community`]); the sync service is the site's caches, so every commit is purged and
//! prefetched on every edge ([`system`]). Differential caching (a dynamic origin behind
//! `tern delta` and an edge) runs beside it, self-contained ([`delta`]). The logs go to a file, so the
//! terminal shows the guide ([`guide`]). `--smoke` checks the whole path and exits ([`smoke`]; used by the
//! tests).

mod community;
mod delta;
mod guide;
mod site;
mod smoke;
mod system;

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use self::system::{Paths, System};

/// Arguments of `tern demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the staging tree, the mover's and nodes' data, keys and the log [default: a new
    /// directory under the system temp dir, removed on a clean exit].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Check the whole path (nodes, edges, publish -> every edge fresh -> rollback -> every edge back,
    /// differential caching) and exit, non-zero on a failure, instead of running.
    #[arg(long)]
    smoke: bool,
}

impl DemoArgs {
    /// The demo's directory, absolute (the printed command lines work from any directory), and whether it
    /// is a temporary one of this process.
    fn base(&self) -> (PathBuf, bool) {
        match &self.dir {
            Some(dir) => (std::path::absolute(dir).unwrap_or_else(|_| dir.clone()), false),
            None => (
                std::env::temp_dir().join(format!("tern-demo-{}", std::process::id())),
                true,
            ),
        }
    }
}

/// Creates the demo's directory and opens its log file (before anything logs), for the process's logging.
pub fn open_log(args: &DemoArgs) -> Result<File> {
    let (base, _) = args.base();
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create the demo's directory {}", base.display()))?;
    let log = Paths::under(&base).log;
    File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open the demo's log {}", log.display()))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let (base, temporary) = args.base();
    // One demo per directory: a second one on a directory in use took over the running demo's mover
    // database and nodes (a trial's finding).
    let _lock = crate::dir_lock::lock(&base, "demo")?;
    let paths = Paths::under(&base);
    let smoke = args.smoke;
    let result = run_in(paths.clone(), smoke, temporary).await;
    match result {
        Ok(()) => {
            if temporary {
                // The log outlives the demo's files, for a look at what happened (a smoke check that passed
                // leaves nothing behind).
                let kept = std::env::temp_dir().join(format!("tern-demo-{}.log", std::process::id()));
                if !smoke && (std::fs::rename(&paths.log, &kept).is_ok() || std::fs::copy(&paths.log, &kept).is_ok()) {
                    eprintln!("tern demo stopped; its log is kept as {}", kept.display());
                }
                let _ = std::fs::remove_dir_all(&base);
            } else if !smoke {
                eprintln!("tern demo stopped; everything it wrote stays in {}", base.display());
            }
            Ok(())
        }
        // The log says why; it stays, with the rest of the demo's files.
        Err(error) => Err(error.context(format!("tern demo failed; its log is {}", paths.log.display()))),
    }
}

async fn run_in(paths: Paths, smoke: bool, temporary: bool) -> Result<()> {
    site::write(&paths.staging)
        .with_context(|| format!("cannot write the sample site under {}", paths.staging.display()))?;
    // Memorable ports, unless taken (or checking): then any free port.
    let fixed = !smoke;
    let system = System::start(paths, fixed).await?;
    let delta_demo = match delta::start(fixed).await {
        Ok(delta_demo) => delta_demo,
        Err(error) => {
            system.shutdown().await;
            return Err(error);
        }
    };
    let outcome = if smoke {
        check(&system, &delta_demo).await
    } else {
        guide_and_wait(&system, &delta_demo, temporary).await
    };
    delta_demo.shutdown().await;
    system.shutdown().await;
    outcome
}

/// The smoke check: the one system's whole path, then differential caching.
async fn check(system: &System, delta_demo: &delta::DeltaDemo) -> Result<()> {
    smoke::check(system).await?;
    delta_demo.smoke().await?;
    println!("demo smoke check passed");
    Ok(())
}

/// Prints the guide and runs until Ctrl-C.
async fn guide_and_wait(system: &System, delta_demo: &delta::DeltaDemo, temporary: bool) -> Result<()> {
    guide::print(system)?;
    delta_demo.print_guide().await;
    let base = system.paths.base.display();
    if temporary {
        println!("\nPress Ctrl-C to stop (this removes {base} but keeps its log; keep everything with --dir DIR).");
    } else {
        println!("\nPress Ctrl-C to stop.");
    }
    let stop = CancellationToken::new();
    crate::stop_on_signal(stop.clone(), crate::Hangup::Stop);
    stop.cancelled().await;
    Ok(())
}
