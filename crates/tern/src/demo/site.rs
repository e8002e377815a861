//! The demo's sample site, written into its staging directory: what its authors edit and `tern publish`
//! sends to the nodes.

use std::path::Path;

/// The site's name on the mover and on the sync service.
pub const SITE: &str = "demo";
/// The site's host name: its public URL is `http://demo.tern`, and the edges key their caches by it, so
/// requests for the site carry `Host: demo.tern` (what DNS pointing the name at the edges would give).
pub const HOST: &str = "demo.tern";
/// What a node's `tern serve` sends with every page: fresh for an hour, so only the mover's purge (through
/// the sync service) brings a change to the edges within that hour.
pub const CACHE_CONTROL: &str = "public, max-age=3600";

/// The sample site's files, by path under the staging directory.
const FILES: [(&str, &str); 4] = [
    (
        "index.html",
        "<!doctype html>\n<html><head><title>tern demo</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\n\
         <body><h1>Served by tern</h1>\n\
         <p>This page was published by <code>tern mover</code> to three nodes, each serving it with <code>tern serve</code>, \
         and it reached you through a tern edge that may keep it for an hour. Edit it in the demo's staging directory and \
         run the printed <code>tern publish</code> line: every edge serves the new page at once.</p>\n\
         <p><a href=\"/news.html\">News</a></p>\n\
         <img src=\"/static/logo.svg\" alt=\"tern\"></body></html>\n",
    ),
    (
        "news.html",
        "<!doctype html>\n<html><body><h1>News</h1><p>Nothing yet: publish some.</p></body></html>\n",
    ),
    (
        "static/style.css",
        "body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }\n",
    ),
    (
        "static/logo.svg",
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#2b6cb0\"/></svg>\n",
    ),
];

/// Writes the sample site under `staging`; files already there are kept, so a demo restarted on the same
/// `--dir` publishes what its user left in staging.
pub fn write(staging: &Path) -> std::io::Result<()> {
    for (path, content) in FILES {
        let target = staging.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !target.exists() {
            std::fs::write(target, content)?;
        }
    }
    Ok(())
}
