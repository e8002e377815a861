//! Printing: one line per system and phase, the summary table and the issue's targets.

use super::*;

/// When `binary` was last written (UTC), to tell which build of a changing tree the figures are of.
pub(super) fn built_at(binary: &Path) -> String {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC", "-r"])
        .arg(binary)
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        _ => "at an unknown time".to_string(),
    }
}

pub(super) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub(super) fn describe(setup: Setup, phase: Phase, figures: &Figures, object_size: u64) -> String {
    let mut line = format!(
        "{:11} {:4}: {} requests in {:.1} s, {} errors; origin requests {} ({:.2} per distinct object of {}); \
         hit ratio {:.3}; p50 {:.2} ms, p99 {:.2} ms; local hits {}, peer hits {}; evictions {}, objects held \
         per edge {}-{}; CPU {:.3} s per 10k requests",
        setup.name(),
        phase.name(),
        figures.requests,
        figures.seconds,
        figures.errors,
        figures.origin_requests,
        figures.origin_per_distinct(),
        figures.distinct,
        figures.hit_ratio(),
        figures.p50_ms,
        figures.p99_ms,
        figures.local_hits,
        figures.peer_hits,
        figures.evictions,
        figures.held_min,
        figures.held_max,
        figures.cpu_per_10k()
    );
    if setup == Setup::Community {
        let _ = write!(
            line,
            "; peer requests served {}, {}, origin fallbacks {}",
            figures.peer_served,
            match figures.peer_bytes {
                Some(bytes) => format!("{} of bodies between peers", human(bytes)),
                None => format!(
                    "≈ {} of bodies between peers (no byte counter in these edges: served × object size)",
                    human(figures.peer_served * object_size)
                ),
            },
            figures.fallbacks
        );
    }
    if figures.late > 0 {
        let _ = write!(
            line,
            " [{} requests sent over {} ms after their due time]",
            figures.late,
            LATE.as_millis()
        );
    }
    if figures.truncated {
        let _ = write!(line, " [cut short after {} s]", PHASE_LIMIT.as_secs());
    }
    line
}

pub(super) fn describe_failover(failover: &Failover) -> String {
    let mut line = format!(
        "kill -9 of the master {} (term {}) under load on the other edges: first survivor naming a new \
         master after {:.2} s, all survivors agreeing on {} (term {}) after {:.2} s; clients: {} requests, \
         {} errors; origin requests during the run {}",
        failover.old_master,
        failover.old_term,
        failover.first_seen.as_secs_f64(),
        failover.new_master,
        failover.new_term,
        failover.agreed.as_secs_f64(),
        failover.requests,
        failover.errors,
        failover.origin_requests
    );
    for sample in &failover.error_samples {
        let _ = write!(line, "\n  error: {sample}");
    }
    line
}

pub(super) fn summary(out: &mut Printer, options: &CommunityBench, figures: &BTreeMap<(Setup, Phase), Figures>) {
    out.line(format!(
        "{:11} {:5} {:>8} {:>7} {:>8} {:>10} {:>6} {:>8} {:>8} {:>10} {:>12} {:>8} {:>9}",
        "system",
        "phase",
        "requests",
        "errors",
        "origin",
        "origin/obj",
        "hit",
        "p50 ms",
        "p99 ms",
        "peer reqs",
        "peer bytes",
        "evicted",
        "CPU/10k s"
    ));
    for ((setup, phase), f) in figures {
        let (peer_requests, peer_bytes) = if *setup == Setup::Community {
            let bytes = match f.peer_bytes {
                Some(bytes) => human(bytes),
                None => format!("≈{}", human(f.peer_served * options.object_size)),
            };
            (f.peer_served.to_string(), bytes)
        } else {
            ("-".to_string(), "-".to_string())
        };
        out.line(format!(
            "{:11} {:5} {:>8} {:>7} {:>8} {:>10.2} {:>6.3} {:>8.2} {:>8.2} {:>10} {:>12} {:>8} {:>9.3}",
            setup.name(),
            phase.name(),
            f.requests,
            f.errors,
            f.origin_requests,
            f.origin_per_distinct(),
            f.hit_ratio(),
            f.p50_ms,
            f.p99_ms,
            peer_requests,
            peer_bytes,
            f.evictions,
            f.cpu_per_10k()
        ));
    }
    out.line(
        "hit = 1 - origin requests / requests (served without an origin request of its own); origin/obj = \
         origin requests per distinct object requested in the phase; CPU = the edges' (and the registry's) \
         utime+stime; peer bytes: body bytes members served each other, from \
         tern_community_peer_bytes_total, or (marked ≈) peer requests served × object size where the edges \
         have no such counter; N edges, the load generator and the origin \
         share this machine's cores",
    );
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

pub(super) fn targets(
    out: &mut Printer,
    figures: &BTreeMap<(Setup, Phase), Figures>,
    peer_latency: Option<&PeerLatency>,
    failover: Option<&Failover>,
) {
    out.line("targets (issue 11):");
    let get = |setup, phase| figures.get(&(setup, phase));
    match get(Setup::Community, Phase::Cold) {
        Some(cold) => {
            let per_object = cold.origin_per_distinct();
            out.line(format!(
                "  {} origin requests per distinct object on the cold run = 1.00: community {:.3} ({} for {} objects, \
                 {} more than one each; the edges evicted {} objects)",
                verdict(format!("{per_object:.2}") == "1.00"),
                per_object,
                cold.origin_requests,
                cold.distinct,
                cold.origin_requests as i64 - cold.distinct as i64,
                cold.evictions
            ));
        }
        None => out.line("  ---- origin requests per distinct object: the community did not run"),
    }
    for phase in [Phase::Cold, Phase::Warm] {
        match (get(Setup::Community, phase), get(Setup::Ideal, phase)) {
            (Some(community), Some(ideal)) => {
                let share = community.hit_ratio() / ideal.hit_ratio().max(1e-9);
                out.line(format!(
                    "  {} community hit ratio >= 0.97 of the ideal ({}): {:.3} / {:.3} = {:.3}",
                    verdict(share >= 0.97),
                    phase.name(),
                    community.hit_ratio(),
                    ideal.hit_ratio(),
                    share
                ));
            }
            _ => out.line(format!(
                "  ---- community hit ratio against the ideal ({}): not both run",
                phase.name()
            )),
        }
    }
    for phase in [Phase::Cold, Phase::Warm] {
        match (get(Setup::Community, phase), get(Setup::Independent, phase)) {
            (Some(community), Some(independent)) => {
                let share = community.origin_requests as f64 / independent.origin_requests.max(1) as f64;
                out.line(format!(
                    "  {} origin requests <= 1/6 of the independent edges' ({}): {} / {} = {}",
                    verdict(share <= 1.0 / 6.0),
                    phase.name(),
                    community.origin_requests,
                    independent.origin_requests,
                    as_fraction(share)
                ));
            }
            _ => out.line(format!(
                "  ---- origin requests against the independent edges ({}): not both run",
                phase.name()
            )),
        }
    }
    let whole_run = |setup| {
        let cold = get(setup, Phase::Cold)?;
        let warm = get(setup, Phase::Warm)?;
        Some(cold.origin_requests + warm.origin_requests)
    };
    if let (Some(community), Some(independent)) = (whole_run(Setup::Community), whole_run(Setup::Independent)) {
        let share = community as f64 / independent.max(1) as f64;
        out.line(format!(
            "  {} origin requests <= 1/6 of the independent edges' (cold + warm): {community} / {independent} = {}",
            verdict(share <= 1.0 / 6.0),
            as_fraction(share)
        ));
    }
    match peer_latency {
        Some(latency) if latency.local_samples > 0 && latency.peer_samples > 0 => {
            let added = latency.peer_p50_ms - latency.local_p50_ms;
            out.line(format!(
                "  {} a peer hit adds <= 0.5 ms at p50 over a local hit (idle): +{added:.3} ms ({:.3} against {:.3} ms; \
                 under the warm load +{:.3} ms)",
                verdict(added <= 0.5),
                latency.peer_p50_ms,
                latency.local_p50_ms,
                latency.loaded_peer_p50_ms - latency.loaded_local_p50_ms
            ));
        }
        Some(_) => out.line("  ---- peer hit latency: no local or no peer hits to compare"),
        None => out.line("  ---- peer hit latency: the community did not run"),
    }
    match failover {
        Some(failover) => out.line(format!(
            "  {} failover within 3 s with zero failed requests: {:.2} s to agreement, {} failed of {}",
            verdict(failover.agreed <= Duration::from_secs(3) && failover.errors == 0),
            failover.agreed.as_secs_f64(),
            failover.errors,
            failover.requests
        )),
        None => out.line("  ---- failover: not run"),
    }
}

/// A share as `1/x`, or `0` when nothing was asked of the origin.
fn as_fraction(share: f64) -> String {
    if share <= 0.0 {
        "0".to_string()
    } else {
        format!("1/{:.1}", 1.0 / share)
    }
}
