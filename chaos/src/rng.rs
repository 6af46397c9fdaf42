//! Random streams and the few distributions the generator needs.
//!
//! Every part of the simulation draws from its own ChaCha stream of the one
//! seed, so that adding a metric to one node does not reshuffle the collectives
//! of every job (and a scenario's output stays stable while it is tuned).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type Rng8 = ChaCha8Rng;

/// Stream ids: each consumer of randomness gets its own block.
pub mod streams {
    pub const PLAN: u64 = 1;
    pub const WRITER: u64 = 2;
    pub const OUT: u64 = 3;
    pub const LAYOUT: u64 = 4;
    pub const JOB: u64 = 1_000;
    pub const NODE: u64 = 10_000;
    pub const SERVER: u64 = 100_000;
}

pub fn stream(seed: u64, id: u64) -> Rng8 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

pub trait RngExt: Rng {
    /// Uniform in [lo, hi); `lo` when the range is empty.
    fn uni(&mut self, lo: f64, hi: f64) -> f64 {
        if hi > lo {
            self.gen_range(lo..hi)
        } else {
            lo
        }
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        // Box-Muller; `1 - u` keeps the logarithm finite.
        let u1: f64 = 1.0 - self.gen::<f64>();
        let u2: f64 = self.gen::<f64>();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.gen::<f64>()).ln()
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.gen::<f64>() < p
    }

    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 30.0 {
            return self.normal(lambda, lambda.sqrt()).round().max(0.0);
        }
        let limit = (-lambda).exp();
        let mut k = 0.0;
        let mut p = self.gen::<f64>();
        while p > limit {
            k += 1.0;
            p *= self.gen::<f64>();
        }
        k
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.gen_range(0..items.len())]
    }

    fn int(&mut self, lo: u32, hi_inclusive: u32) -> u32 {
        self.gen_range(lo..=hi_inclusive)
    }
}

impl<R: Rng + ?Sized> RngExt for R {}

pub fn round_to(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

/// Timestamps keep microsecond (collectives) or millisecond (scrapes)
/// precision, as the real recorders do; this also keeps lines short.
pub fn round_dec(x: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (x * p).round() / p
}
