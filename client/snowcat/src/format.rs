//! Turns replies into the one-line text snowcat prints: a [`Response`] goes in, together with
//! the layout to decode IDs with, and a line like
//! `LEASED id=1 first=123456 count=5 (2026-11-28T10:00:00.123Z worker 0 seq 0..4)` comes out.
//! Pure functions, so the exact text is unit-tested.

use snowlease::layout::format_unix_ms;
use snowlease::wire::{goaway, Response, Welcome, WorkerSet};
use snowlease::Layout;

/// One readable line for a reply.
pub fn response_line(response: &Response, layout: &Layout) -> String {
    match response {
        Response::Welcome(w) => welcome_line(w, None),
        Response::WelcomeV2 { welcome, workers } => welcome_line(welcome, Some(workers)),
        Response::Leased {
            request_id,
            first_id,
            count,
        } => format!(
            "LEASED id={request_id} first={first_id} count={count} ({})",
            range_summary(*first_id, *count, layout)
        ),
        Response::BulkLeased { request_id, runs } => {
            let total: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
            let each: Vec<String> = runs
                .iter()
                .map(|r| {
                    let blocks = layout.blocks(r.first_id, r.count).count();
                    format!(
                        "[first={} count={} ({}; {blocks} ticks)]",
                        r.first_id,
                        r.count,
                        run_summary(r.first_id, r.count, layout)
                    )
                })
                .collect();
            format!(
                "BULK_LEASED id={request_id} runs={} ids={total} {}",
                runs.len(),
                each.join(" ")
            )
        }
        Response::Pong { nonce } => format!("PONG nonce={nonce}"),
        Response::GoAway { reason } => {
            format!("GOAWAY reason={}({reason})", goaway::name(*reason))
        }
        Response::Error {
            request_id,
            code,
            message,
        } => format!("ERROR id={request_id} code={code:?} message={message:?}"),
    }
}

fn welcome_line(w: &Welcome, workers: Option<&WorkerSet>) -> String {
    let mut line = format!(
        "WELCOME version={} worker={} layout={}/{}/{} epoch={} max_lease={} server_time={}",
        w.version,
        w.worker_id,
        w.timestamp_bits,
        w.worker_bits,
        w.sequence_bits,
        format_unix_ms(w.epoch_unix_ms),
        w.max_lease,
        format_unix_ms(w.server_unix_ms)
    );
    if let Some(set) = workers {
        let last = u32::from(set.first_worker) + u32::from(set.worker_count) - 1;
        line.push_str(&format!(
            " workers={}..={last} max_bulk={}",
            set.first_worker, set.max_bulk
        ));
    }
    line
}

/// A run's first and last ID decoded: worker, first and last tick and sequence.
fn run_summary(first: u64, count: u32, layout: &Layout) -> String {
    let start = layout.decompose(first);
    let last = layout
        .blocks(first, count)
        .last()
        .map(|(id, n)| layout.decompose(id + u64::from(n) - 1));
    match last {
        Some(last) => format!(
            "worker {} {} seq {} .. {} seq {}",
            start.worker,
            format_unix_ms(start.unix_ms),
            start.sequence,
            format_unix_ms(last.unix_ms),
            last.sequence
        ),
        None => format!("{start}"),
    }
}

/// What a block of IDs decodes to. A block normally sits inside one tick of one worker, so its
/// sequence numbers are a run; anything else is shown as first and last in full.
fn range_summary(first: u64, count: u32, layout: &Layout) -> String {
    let start = layout.decompose(first);
    let Some(last_id) = first.checked_add(u64::from(count.max(1)) - 1) else {
        return format!("{start}, block overflows u64");
    };
    let last = layout.decompose(last_id);
    if start.tick == last.tick && start.worker == last.worker && last.sequence >= start.sequence {
        format!(
            "{} worker {} seq {}..{}",
            format_unix_ms(start.unix_ms),
            start.worker,
            start.sequence,
            last.sequence
        )
    } else {
        format!("{start} .. {last}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use snowlease::wire::ErrorCode;

    use super::*;

    /// The line of `response` in the default layout.
    fn line(response: Response) -> String {
        response_line(&response, &Layout::DEFAULT)
    }

    /// The line of a LEASED reply in the default layout.
    fn leased(request_id: u32, first_id: u64, count: u32) -> String {
        line(Response::Leased {
            request_id,
            first_id,
            count,
        })
    }

    #[test]
    fn leased_lines_show_the_decoded_block() {
        let first = Layout::DEFAULT.compose(1, 3, 10);
        let line = leased(1, first, 5);
        assert_eq!(
            line,
            format!(
                "LEASED id=1 first={first} count=5 (2024-01-01T00:00:00.001Z worker 3 seq 10..14)"
            )
        );
    }

    #[test]
    fn a_block_crossing_ticks_shows_both_ends() {
        let first = Layout::DEFAULT.compose(1, 0, 4095);
        let line = leased(2, first, 2);
        assert!(line.contains("sequence 4095 .. "), "{line}");
    }

    #[test]
    fn a_bulk_reply_shows_each_run_with_its_ticks() {
        let first = Layout::DEFAULT.compose(1, 3, 4000);
        let line = line(Response::BulkLeased {
            request_id: 4,
            runs: vec![snowlease::wire::Run {
                first_id: first,
                count: 96 + 4096,
            }],
        });
        assert!(
            line.starts_with("BULK_LEASED id=4 runs=1 ids=4192 "),
            "{line}"
        );
        assert!(line.contains("worker 3 2024-01-01T00:00:00.001Z seq 4000 .. 2024-01-01T00:00:00.002Z seq 4095; 2 ticks"), "{line}");
    }

    #[test]
    fn errors_name_their_code_and_quote_the_message() {
        let line = line(Response::Error {
            request_id: 0,
            code: ErrorCode::INVALID_COUNT,
            message: "count \"0\"".into(),
        });
        assert_eq!(
            line,
            r#"ERROR id=0 code=INVALID_COUNT(3) message="count \"0\"""#
        );
    }

    #[test]
    fn goaway_and_pong_lines_are_short() {
        assert_eq!(
            line(Response::GoAway { reason: 0 }),
            "GOAWAY reason=SHUTDOWN(0)"
        );
        assert_eq!(line(Response::Pong { nonce: 7 }), "PONG nonce=7");
    }

    #[test]
    fn welcome_lines_spell_out_the_layout() {
        let w = Welcome::announcing(1, 7, &Layout::DEFAULT, 1_704_067_200_000);
        assert_eq!(
            line(Response::Welcome(w)),
            "WELCOME version=1 worker=7 layout=41/10/12 epoch=2024-01-01T00:00:00.000Z \
             max_lease=4096 server_time=2024-01-01T00:00:00.000Z"
        );
        assert_eq!(w.layout(), Ok(Layout::DEFAULT));
    }
}
