//! Draws `edgewise_models::Progress` with indicatif: bytes, rate and ETA.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct Bar(Mutex<Option<ProgressBar>>);

impl Bar {
    pub fn new() -> Self {
        Self(Mutex::new(None))
    }
}

impl edgewise_models::Progress for Bar {
    fn begin(&self, label: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let style = ProgressStyle::with_template(
            "{msg:32} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_owned());
        if let Ok(mut b) = self.0.lock() {
            *b = Some(bar);
        }
    }
    fn set_position(&self, pos: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some(b) = b.as_ref() {
                b.set_position(pos)
            }
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(n)
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.0.lock() {
            if let Some(b) = b.take() {
                b.finish()
            }
        }
    }
}
