"""`stage=stir` settings: every setting of STIR's public code (its `configs/math.yaml`) is a
key here with that value as its default, unless the field's note says otherwise.

Mining, selection and the online rule are one configuration: the online settings are saved
with the library (`library.json`), so a library always decodes the way it was built for.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from lrt.errors import ConfigError
from lrt.modes import parse_mode

POS_SOURCES = ("rollout", "rollout_or_gold")


@dataclass
class OnlineSettings:
    """`stage.online`: Retrieve-Preview-Commit at inference (STIR.md, "Online")."""

    k_retrieve: int = 8
    """Entries retrieved by cosine similarity among those of control point m-1."""
    min_sim: float = 0.0
    """No steering for a segment whose best similarity is below this floor."""
    min_entries: int = 1
    """No steering for a segment whose control point has fewer library entries."""
    num_candidates: int = 4
    """L: corrections (not anchors) among the retrieved kept for preview, by sim x q."""
    probe_tokens: int = 4
    """Greedy look-ahead tokens per candidate (and for the null probe); 0: no preview."""
    beta: float = 2.0
    """Weight of the retrieval value sim x q in a candidate's score."""
    rho: float = 0.1
    """Weight of the probe's confidence gain over the null probe."""
    k_scale: float = 1.0
    """The committed vector is injected at scale k_scale x score (STIR's README uses 0.75)."""
    tau_null: float = 0.0
    """A best score below this commits nothing."""


@dataclass
class STIRSettings:
    """`conf/stage/stir.yaml`, checked (meanings beside each field)."""

    name: str = "stir"
    questions: int = 100
    """Training questions mined: the first N of `data.train` (STIR: max_train_examples)."""
    rollouts: int = 8
    """K rollouts per question."""
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    """T_max: the thinking budget of a rollout (budget-forced like `cot@T_max`) and the length
    scale of the reward. STIR's config has 16384 for long chains of thought; ours is CPU-sized."""
    eta: float = 0.01
    """Reward r = 1[correct] - eta x generated tokens / T_max."""
    batch_questions: int = 8
    """Questions whose rollouts decode together (batch of batch_questions x rollouts)."""
    delimiter: str = "\n\n"
    """Segments end where this text completes; short-answer tasks need "\\n" (one line a
    step). Backslash escapes are read as in Python, so `stage.delimiter='\\n'` works on a
    command line (Hydra passes the two characters through)."""
    control_points: int = 8
    """M: control points m = 1..M; online, segments 2..M are steered from entries at m-1."""
    layers: list[float] = field(default_factory=lambda: [0.6])
    """Decoder layers whose output states are mined, as fractions of depth:
    round(f x (L - 1)) with Python's rounding (STIR's candidate_layers)."""
    k_pos: int = 2
    """Positives per (question, m): the correct rollouts with the highest reward."""
    k_neg: int = 3
    """Negatives per (question, m): the incorrect rollouts with the lowest reward."""
    pos_source: str = "rollout"
    """`rollout`, or `rollout_or_gold`: the record's solution text is the positive when no
    correct rollout reaches m segments (STIR's math.yaml uses rollout_or_gold)."""
    keep_top: int = 128
    """C: pairs kept by quality over the whole training set."""
    library_size: int = 256
    """B: library entries (each pair gives a correction and an anchor)."""
    diversity: float = 0.5
    """lambda: weight of log det(K_S + eps I) in the greedy DPP."""
    epsilon: float = 1e-4
    forced_per_control_point: int = 8
    """Entries forced into the library per control point (top by quality) before the DPP."""
    online: OnlineSettings = field(default_factory=OnlineSettings)
    eval_modes: list[str] = field(default_factory=lambda: ["direct", "nothink", "cot", "stir"])
    """The held-out table at the end (`final_eval.enabled`); cot and stir at max_new_tokens."""

    def __post_init__(self) -> None:
        def positive(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        if "\\" in self.delimiter:
            self.delimiter = codecs.decode(self.delimiter, "unicode_escape")
        online = self.online
        checks = [
            ("questions", positive(self.questions), "must be a positive integer"),
            ("rollouts", positive(self.rollouts) and self.rollouts >= 2,
             "must be at least 2 (mining contrasts rollouts of a question)"),
            ("temperature", self.temperature > 0, "must be > 0 (rollouts are sampled)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("max_new_tokens", positive(self.max_new_tokens), "must be positive"),
            ("eta", self.eta >= 0, "must be >= 0"),
            ("batch_questions", positive(self.batch_questions), "must be positive"),
            ("delimiter", bool(self.delimiter), "must be non-empty text"),
            ("control_points", positive(self.control_points), "must be positive"),
            ("layers", bool(self.layers) and all(0 <= f <= 1 for f in self.layers),
             "must list fractions of depth in [0, 1]"),
            ("k_pos", positive(self.k_pos), "must be positive"),
            ("k_neg", positive(self.k_neg), "must be positive"),
            ("pos_source", self.pos_source in POS_SOURCES, f"is not one of {POS_SOURCES}"),
            ("keep_top", positive(self.keep_top), "must be positive"),
            ("library_size", positive(self.library_size), "must be positive"),
            ("diversity", self.diversity >= 0, "must be >= 0"),
            ("epsilon", self.epsilon > 0, "must be > 0"),
            ("forced_per_control_point", self.forced_per_control_point >= 0, "must be >= 0"),
            ("online.k_retrieve", positive(online.k_retrieve), "must be positive"),
            ("online.min_entries", positive(online.min_entries), "must be positive"),
            ("online.num_candidates", positive(online.num_candidates), "must be positive"),
            ("online.probe_tokens", online.probe_tokens >= 0, "must be >= 0"),
            ("online.k_scale", online.k_scale >= 0, "must be >= 0"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                owner, name = (online, key[7:]) if key.startswith("online.") else (self, key)
                value = getattr(owner, name)
                raise ConfigError(f"stage.{key}={value!r} {why}")
        for label in self.eval_modes:
            try:
                name, _ = parse_mode(label)
            except ConfigError as err:
                raise ConfigError(f"stage.eval_{err}") from None
            if name in ("lrt", "hybrid"):
                raise ConfigError(
                    f"stage.eval_modes: {label!r} needs a reasoner, and this stage trains none"
                )

    def layer_indices(self, num_layers: int) -> list[int]:
        """The decoder layers of `layers` for a base with `num_layers` (0-based, deduplicated)."""
        return sorted({int(round(f * (num_layers - 1))) for f in self.layers})
