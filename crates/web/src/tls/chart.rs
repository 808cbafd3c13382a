//! Server-rendered SVG charts, so that the pages keep their
//! Content-Security-Policy without scripts. The geometry is computed here
//! (pure); the template draws it with classes that the stylesheet colours
//! for light and dark mode.

use serde::Serialize;
use tlsrpt_stats::summary::DomainPoint;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
/// Room for the sessions axis labels on the left and the days below.
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;
/// At most this many day labels under the bars.
const MAX_LABELS: usize = 8;

/// A stacked bar chart of sessions per day: successful below, failed on top.
#[derive(Debug, Serialize)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub baseline: f64,
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub width: f64,
    pub ok_y: f64,
    pub ok_height: f64,
    pub failed_y: f64,
    pub failed_height: f64,
    /// The bar's tooltip (`<title>`).
    pub title: String,
    /// Written under the bar, for every few bars.
    pub label: Option<String>,
    pub label_x: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Tick {
    pub y: f64,
    pub label: String,
}

impl Chart {
    /// The chart of `points` (oldest first).
    pub fn of_days(points: &[DomainPoint]) -> Chart {
        let baseline = HEIGHT - BOTTOM;
        let plot_height = baseline - TOP;
        let largest = points
            .iter()
            .map(|p| p.successful.saturating_add(p.failed))
            .max()
            .unwrap_or(0);
        let top = nice_ceiling(largest);
        let scale = |n: u64| n as f64 / top as f64 * plot_height;
        let slot = (WIDTH - LEFT) / points.len().max(1) as f64;
        let every = points.len().div_ceil(MAX_LABELS).max(1);
        let bars = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ok_height = scale(p.successful);
                let failed_height = scale(p.failed);
                let x = LEFT + i as f64 * slot + slot * 0.1;
                Bar {
                    x,
                    width: slot * 0.8,
                    ok_y: baseline - ok_height,
                    ok_height,
                    failed_y: baseline - ok_height - failed_height,
                    failed_height,
                    title: format!(
                        "{}: {} successful, {} failed",
                        p.day, p.successful, p.failed
                    ),
                    label: (i % every == 0).then(|| p.day.to_string()),
                    label_x: x + slot * 0.4,
                }
            })
            .collect();
        let ticks = [0, top / 2, top]
            .into_iter()
            .map(|n| Tick {
                y: baseline - scale(n),
                label: n.to_string(),
            })
            .collect();
        Chart {
            width: WIDTH,
            height: HEIGHT,
            left: LEFT,
            baseline,
            bars,
            ticks,
        }
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `n` (at least
/// 2, so that the middle tick is a whole number).
fn nice_ceiling(n: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for step in [1u64, 2, 5] {
            match step.checked_mul(power) {
                Some(candidate) if candidate >= n.max(2) => return candidate,
                Some(_) => {}
                None => return u64::MAX,
            }
        }
        power = match power.checked_mul(10) {
            Some(p) => p,
            None => return u64::MAX,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailtls_common::day::Day;

    #[test]
    fn bars_stack_failures_on_successes_on_a_round_scale() {
        let day = Day::parse("2026-12-01").unwrap();
        let points = [
            DomainPoint {
                day,
                successful: 60,
                failed: 20,
            },
            DomainPoint {
                day: day.succ(),
                successful: 0,
                failed: 0,
            },
        ];
        let chart = Chart::of_days(&points);
        assert_eq!(
            chart
                .ticks
                .iter()
                .map(|t| t.label.as_str())
                .collect::<Vec<_>>(),
            ["0", "50", "100"]
        );
        let bar = &chart.bars[0];
        let plot = chart.baseline - TOP;
        assert!((bar.ok_height - plot * 0.6).abs() < 1e-9);
        assert!((bar.failed_height - plot * 0.2).abs() < 1e-9);
        assert!(
            (bar.failed_y + bar.failed_height - bar.ok_y).abs() < 1e-9,
            "failed sits on successful"
        );
        assert_eq!(chart.bars[1].ok_height, 0.0);
        assert!(bar.title.contains("60 successful, 20 failed"));
        assert_eq!(nice_ceiling(0), 2);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(101), 200);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    #[test]
    fn only_every_few_days_are_labelled() {
        let first = Day::parse("2026-01-01").unwrap();
        let mut day = first;
        let points: Vec<DomainPoint> = (0..30)
            .map(|_| {
                let p = DomainPoint {
                    day,
                    successful: 1,
                    failed: 0,
                };
                day = day.succ();
                p
            })
            .collect();
        let labels = Chart::of_days(&points)
            .bars
            .iter()
            .filter(|b| b.label.is_some())
            .count();
        assert!((MAX_LABELS / 2..=MAX_LABELS).contains(&labels), "{labels}");
    }
}
