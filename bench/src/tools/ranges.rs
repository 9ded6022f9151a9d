//! `snowlease-bench verify-ranges [--workers LIST] [--layout T/W/S] [--format F] FILE...`:
//! the checks a cluster test makes on the IDs its clients received, in one place.
//!
//! Every line of every FILE is `first count` (what `snowcat lease N --ranges` prints; blank
//! lines and `#` comments are skipped). The ranges are checked with the bench's own overlap
//! sweep ([`crate::verify::check_disjoint`]), each range's worker is decoded with the layout
//! (the worker field of its first ID: a range never spans workers) and checked against
//! `--workers` when given, and a range running past the end of its tick's sequence field is
//! reported (a LEASED block never crosses a tick).
//!
//! Output (`--format json`, the default), one line:
//! `{"blocks":N,"ids":N,"overlaps":N,"empty":N,"unexpected_worker":N,"crossing_tick":N,
//! "per_worker":{"0":4096,...},"example_overlap":[[first,count],[first,count]]|null,"ok":B}`.
//! `--format text`: `N blocks, N IDs, N overlapping, N from unexpected workers, N crossing a
//! tick`. `--format workers`: `0:4096 1:16` (IDs per worker, ascending).
//! Exit 0 when at least one range was read and every check passed, 1 when a check failed,
//! 2 when a file is unreadable or a line malformed (named with its line number).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use snowlease::Layout;

use crate::verify::{check_disjoint, Block};

/// How to print the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object.
    Json,
    /// One sentence.
    Text,
    /// IDs per worker: `worker:ids ...`.
    Workers,
}

/// Arguments of `verify-ranges`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Worker ids the ranges may come from: "0 1 2", "0,1,2" or "0-5" (default: any).
    #[arg(long)]
    workers: Option<String>,
    /// Timestamp/worker/sequence bit widths of the layout.
    #[arg(long, default_value = "41/10/12")]
    layout: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Files of "first count" lines.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeVerdict {
    /// Ranges read.
    pub blocks: u64,
    /// IDs in them.
    pub ids: u64,
    /// Ranges sharing an ID with another.
    pub overlaps: u64,
    /// Ranges of zero IDs.
    pub empty: u64,
    /// Ranges from a worker outside `--workers`.
    pub unexpected_worker: u64,
    /// Ranges running past the end of their tick.
    pub crossing_tick: u64,
    /// IDs per worker.
    pub per_worker: BTreeMap<u16, u64>,
    /// The first overlapping pair, as `[first, count]`.
    pub example_overlap: Option<[[u64; 2]; 2]>,
    /// Every check passed and there was at least one range.
    pub ok: bool,
}

impl RangeVerdict {
    /// The one-line summary.
    pub fn text(&self) -> String {
        format!(
            "{} blocks, {} IDs, {} overlapping, {} from unexpected workers, {} crossing a tick",
            self.blocks, self.ids, self.overlaps, self.unexpected_worker, self.crossing_tick
        )
    }

    /// `worker:ids` pairs, ascending.
    pub fn workers_text(&self) -> String {
        self.per_worker
            .iter()
            .map(|(w, n)| format!("{w}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Runs `verify-ranges`.
pub fn run(args: &Args) -> Result<bool, String> {
    let layout = parse_layout(&args.layout)?;
    let allowed = args.workers.as_deref().map(parse_workers).transpose()?;
    let mut blocks = Vec::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        blocks.extend(parse_ranges(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let verdict = verify(&mut blocks, &layout, allowed.as_deref());
    match args.format {
        Format::Json => super::print_json(&verdict)?,
        Format::Text => println!("{}", verdict.text()),
        Format::Workers => println!("{}", verdict.workers_text()),
    }
    Ok(verdict.ok)
}

/// Parses `first count` lines.
pub fn parse_ranges(text: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected `first count`, got {line:?}", i + 1);
        let mut fields = line.split_whitespace();
        let (Some(first), Some(count), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad());
        };
        out.push(Block {
            first: first.parse().map_err(|_| bad())?,
            count: count.parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

/// Parses `T/W/S` bit widths (any epoch: only the field positions matter here).
pub fn parse_layout(text: &str) -> Result<Layout, String> {
    let widths: Vec<u8> = text
        .split('/')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--layout {text:?}: expected three bit widths like 41/10/12"))?;
    let [t, w, s] = widths[..] else {
        return Err(format!(
            "--layout {text:?}: expected three bit widths like 41/10/12"
        ));
    };
    Layout::widths(0, t, w, s).map_err(|e| format!("--layout {text}: {e}"))
}

/// Parses a worker list: ids and `a-b` ranges separated by spaces or commas.
pub fn parse_workers(text: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for item in text.split([' ', ',']).filter(|s| !s.is_empty()) {
        let bad = || format!("--workers: {item:?} is not a worker id or a range a-b");
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(item.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

/// Runs every check over `blocks` (sorted in place).
pub fn verify(blocks: &mut [Block], layout: &Layout, allowed: Option<&[u16]>) -> RangeVerdict {
    let sweep = check_disjoint(blocks);
    let per_tick = u64::from(layout.max_lease());
    let mut per_worker = BTreeMap::new();
    let (mut unexpected_worker, mut crossing_tick) = (0, 0);
    for b in blocks.iter().filter(|b| b.count > 0) {
        let parts = layout.decompose(b.first);
        *per_worker.entry(parts.worker).or_default() += u64::from(b.count);
        if allowed.is_some_and(|a| !a.contains(&parts.worker)) {
            unexpected_worker += 1;
        }
        if u64::from(parts.sequence) + u64::from(b.count) > per_tick {
            crossing_tick += 1;
        }
    }
    RangeVerdict {
        ok: sweep.ok() && sweep.blocks > 0 && unexpected_worker == 0 && crossing_tick == 0,
        blocks: sweep.blocks,
        ids: sweep.ids,
        overlaps: sweep.overlaps,
        empty: sweep.empty,
        unexpected_worker,
        crossing_tick,
        per_worker,
        example_overlap: sweep
            .example
            .map(|(a, b)| [[a.first, u64::from(a.count)], [b.first, u64::from(b.count)]]),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(tick: u64, worker: u16, seq: u32) -> u64 {
        Layout::DEFAULT.compose(tick, worker, seq)
    }

    #[test]
    fn disjoint_ranges_of_allowed_workers_pass_with_totals_per_worker() {
        let text = format!(
            "# snowcat --ranges\n{} 4096\n\n{} 16\n{} 10\n",
            id(5, 0, 0),
            id(5, 1, 0),
            id(6, 1, 100)
        );
        let mut blocks = parse_ranges(&text).unwrap();
        let v = verify(&mut blocks, &Layout::DEFAULT, Some(&[0, 1]));
        assert!(v.ok, "{v:?}");
        assert_eq!(
            v.text(),
            "3 blocks, 4122 IDs, 0 overlapping, 0 from unexpected workers, 0 crossing a tick"
        );
        assert_eq!(v.workers_text(), "0:4096 1:26");
    }

    #[test]
    fn an_overlap_a_foreign_worker_and_a_range_past_its_tick_each_fail() {
        let mut blocks = vec![
            Block {
                first: id(5, 0, 0),
                count: 10,
            },
            Block {
                first: id(5, 0, 9),
                count: 1,
            },
        ];
        let v = verify(&mut blocks, &Layout::DEFAULT, None);
        assert_eq!(v.overlaps, 1);
        assert_eq!(
            v.example_overlap,
            Some([[id(5, 0, 0), 10], [id(5, 0, 9), 1]])
        );
        assert!(!v.ok);
        let mut blocks = vec![Block {
            first: id(5, 7, 0),
            count: 1,
        }];
        let v = verify(&mut blocks, &Layout::DEFAULT, Some(&[0, 1]));
        assert_eq!((v.unexpected_worker, v.ok), (1, false));
        let mut blocks = vec![Block {
            first: id(5, 0, 4000),
            count: 97,
        }];
        let v = verify(&mut blocks, &Layout::DEFAULT, None);
        assert_eq!((v.crossing_tick, v.ok), (1, false));
        assert!(
            !verify(&mut [], &Layout::DEFAULT, None).ok,
            "no ranges is no proof"
        );
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let err = parse_ranges("1 2\n3\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(parse_ranges("1 2 3").is_err());
        assert!(parse_ranges("x 2").is_err());
        assert!(parse_ranges("1 -2").is_err());
    }

    #[test]
    fn worker_lists_and_layouts_parse() {
        assert_eq!(parse_workers("0 1,3-5").unwrap(), vec![0, 1, 3, 4, 5]);
        assert!(parse_workers("5-3").is_err());
        assert!(parse_workers("x").is_err());
        let l = parse_layout("43/10/10").unwrap();
        assert_eq!(l.max_lease(), 1024);
        assert!(parse_layout("41/10").is_err());
        assert!(parse_layout("41/10/13").is_err());
    }
}
