//! Figures: a measurement, its baseline from the same run, the ratio and the
//! goal; printed as a table and optionally written as JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One figure of the benchmark set.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// Short name: `fanout`, `latency`, ...
    pub(crate) name: &'static str,
    /// What was measured, in words.
    pub(crate) what: String,
    /// `false` for a figure that is not measured (yet); nothing else is set then.
    pub(crate) measured: bool,
    pub(crate) value: Option<f64>,
    pub(crate) unit: String,
    /// What the baseline is, in words.
    pub(crate) baseline_what: String,
    pub(crate) baseline: Option<f64>,
    /// `value / baseline`.
    pub(crate) ratio: Option<f64>,
    /// A second baseline, for figures measured against two (p2p).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline2: Option<SecondBaseline>,
    /// The goal, in words.
    pub(crate) goal: String,
    /// Whether every part of the goal was met.
    pub(crate) goal_met: Option<bool>,
    /// Everything else measured on the way (percentiles, sizes, settings).
    pub(crate) details: BTreeMap<String, Value>,
    pub(crate) note: String,
}

/// A figure's second baseline: what it is, its value, and `value / it`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SecondBaseline {
    pub(crate) what: String,
    pub(crate) value: f64,
    pub(crate) ratio: f64,
}

impl Figure {
    pub(crate) fn new(name: &'static str, what: impl Into<String>) -> Self {
        Self {
            name,
            what: what.into(),
            measured: true,
            value: None,
            unit: String::new(),
            baseline_what: String::new(),
            baseline: None,
            ratio: None,
            baseline2: None,
            goal: String::new(),
            goal_met: None,
            details: BTreeMap::new(),
            note: String::new(),
        }
    }

    pub(crate) fn not_measured(name: &'static str, what: &str, note: &str) -> Self {
        Self {
            measured: false,
            note: note.to_owned(),
            ..Self::new(name, what)
        }
    }

    pub(crate) fn value(mut self, value: f64, unit: &str) -> Self {
        self.value = Some(value);
        self.unit = unit.to_owned();
        self
    }

    pub(crate) fn baseline(mut self, what: impl Into<String>, value: f64) -> Self {
        self.baseline_what = what.into();
        self.baseline = Some(value);
        if let Some(v) = self.value
            && value > 0.0
        {
            self.ratio = Some(v / value);
        }
        self
    }

    /// A second baseline, with its own (median) ratio.
    pub(crate) fn baseline2(mut self, what: impl Into<String>, value: f64, ratio: f64) -> Self {
        self.baseline2 = Some(SecondBaseline {
            what: what.into(),
            value,
            ratio,
        });
        self
    }

    pub(crate) fn goal(mut self, goal: impl Into<String>, met: bool) -> Self {
        self.goal = goal.into();
        self.goal_met = Some(met);
        self
    }

    pub(crate) fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Prints the figure as a few aligned lines.
    pub(crate) fn print(&self) {
        println!();
        println!("== {}: {}", self.name, self.what);
        if !self.measured {
            println!("   {}", self.note);
            return;
        }
        if let Some(v) = self.value {
            println!("   measured : {} {}", fmt_num(v), self.unit);
        }
        if let Some(b) = self.baseline {
            println!(
                "   baseline : {} {} ({})",
                fmt_num(b),
                self.unit,
                self.baseline_what
            );
        }
        if let Some(r) = self.ratio {
            println!("   ratio    : {r:.3}");
        }
        if let Some(b) = &self.baseline2 {
            println!(
                "   baseline2: {} {} ({})",
                fmt_num(b.value),
                self.unit,
                b.what
            );
            println!("   ratio2   : {:.3}", b.ratio);
        }
        if !self.goal.is_empty() {
            let verdict = match self.goal_met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "?",
            };
            println!("   goal     : {} -> {verdict}", self.goal);
        }
        for (k, v) in &self.details {
            let shown = match v {
                Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("   {k:<9}: {shown}");
        }
        if !self.note.is_empty() {
            println!("   note     : {}", self.note);
        }
    }
}

/// A number with a sensible number of digits.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The machine the figures were taken on.
pub(crate) fn machine(cores: usize) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    m.insert("nproc".into(), Value::from(cores));
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    m.insert("cpu".into(), Value::from(cpu));
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        .unwrap_or_default();
    m.insert("mem_total".into(), Value::from(mem));
    m.insert(
        "kernel".into(),
        Value::from(read("/proc/sys/kernel/osrelease").trim().to_owned()),
    );
    m.insert(
        "loadavg_at_start".into(),
        Value::from(read("/proc/loadavg").trim().to_owned()),
    );
    m
}
