"""Greedy-token agreement between two engines on the same history, near ties counted.

Two engines computing the same function in different orders (fused kernels, compiled graphs, another precision) round
differently, so where the reference's two best logits lie within that rounding noise either choice is right. A step
counts as a near tie when the engines disagree there and the reference's top-2 margin, relative to its top logit, is at
most `NEAR_TIE` (2^-7: one bf16 ulp relative to the logit, bf16 keeps 8 significant bits). Any other disagreement is a
disagreement beyond a near tie (a mismatch). tests/gpu/test_megakernel.py counts the same way.

The rule fits an engine compared with a float32 reference. Two engines that both keep bf16 activations (eager and
compiled HF in bf16) differ by several 1e-2 in relative L2 of the logits on random weights (the rounding of 24 layers
of bf16 residual stream), so some of their disagreements lie a few bf16 ulps beyond a near tie; whether they compute
the same function is then told by the logits' relative L2 (`rel_l2`), and in float32, where the rule holds again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NEAR_TIE = 2.0**-7


@dataclass(frozen=True)
class Mismatch:
    """A step where the tokens differ and the reference's top-2 margin is larger than a near tie."""

    step: int
    token: int
    ref_token: int
    margin: float  # (top1 - top2) / |top1| of the reference logits


@dataclass(frozen=True)
class Agreement:
    """How the greedy tokens of an engine compare with a reference's, step by step."""

    steps: int
    agree: int
    near_tie_margins: tuple[float, ...] = ()
    mismatches: tuple[Mismatch, ...] = field(default=())

    @property
    def near_ties(self) -> int:
        """Steps that differ within a near tie."""
        return len(self.near_tie_margins)

    @property
    def ok(self) -> bool:
        """Every step agrees or is a near tie."""
        return not self.mismatches

    def text(self) -> str:
        """One line, e.g. "15/16 equal, 1 near tie (margin 4.9e-03), 0 beyond a near tie"."""
        ties = f"{self.near_ties} near tie{'s' if self.near_ties != 1 else ''}"
        if self.near_tie_margins:
            ties += " (margin " + ", ".join(f"{m:.1e}" for m in self.near_tie_margins) + ")"
        bad = ", ".join(f"step {m.step}: {m.token} vs {m.ref_token}, margin {m.margin:.1e}" for m in self.mismatches)
        return f"{self.agree}/{self.steps} equal, {ties}, {len(self.mismatches)} beyond a near tie" + (
            f" ({bad})" if bad else ""
        )

    def to_dict(self) -> dict[str, Any]:
        """For meta.json."""
        return {
            "steps": self.steps,
            "agree": self.agree,
            "near_ties": self.near_ties,
            "near_tie_margins": list(self.near_tie_margins),
            "mismatches": [vars(m) for m in self.mismatches],
            "text": self.text(),
        }


def rel_l2(got: Any, ref: Any) -> Any:
    """Relative L2 distance of each row of `got` from the same row of `ref` (numpy arrays [steps, vocab])."""
    import numpy as np

    diff = np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64)
    return np.linalg.norm(diff, axis=-1) / np.maximum(np.linalg.norm(np.asarray(ref, dtype=np.float64), axis=-1), 1e-30)


def follow(engine: Any, reference: Any, prompt: Sequence[int], steps: int) -> tuple[Agreement, Any]:
    """`reference` decodes `steps` greedy tokens after `prompt`; `engine` (a Backend too) follows that history.

    Returns the greedy agreement and the logits' relative L2 per step (numpy [steps]).
    """
    import numpy as np

    reference.reset()
    r, d = reference.prefill(prompt, logits=True), reference.decode(steps - 1, logits=True)
    ref_tokens, ref_logits = [r.tokens[0], *d.tokens], np.concatenate([r.logits, d.logits])
    engine.reset()
    f = engine.prefill(prompt, logits=True)
    g = engine.decode(steps - 1, logits=True, inputs=ref_tokens[:-1])
    logits = np.concatenate([f.logits, g.logits])
    if not np.isfinite(logits).all():
        raise ValueError(f"{engine.name}: NaN or inf in its logits")
    return greedy_agreement([f.tokens[0], *g.tokens], ref_tokens, ref_logits), rel_l2(logits, ref_logits)


def top2_margin(row: Any) -> float:
    """(top1 - top2) / |top1| of one logits row (numpy array [vocab])."""
    import numpy as np

    top2 = np.sort(np.asarray(row, dtype=np.float64))[-2:]
    return float((top2[1] - top2[0]) / max(abs(top2[1]), 1e-6))


def greedy_agreement(
    tokens: Sequence[int], ref_tokens: Sequence[int], ref_logits: Any, near_tie: float = NEAR_TIE
) -> Agreement:
    """Compare `tokens` with `ref_tokens` step by step; `ref_logits` [steps, vocab] are the reference's at each step.

    Both must be greedy choices on the same history (the engine fed the reference's tokens: teacher forcing), so one
    early near tie does not turn every later step into a disagreement.
    """
    if len(tokens) != len(ref_tokens) or len(ref_tokens) != len(ref_logits):
        raise ValueError(f"lengths differ: {len(tokens)} tokens, {len(ref_tokens)} reference, {len(ref_logits)} rows")
    agree, margins, bad = 0, [], []
    for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=True)):
        if a == b:
            agree += 1
            continue
        margin = top2_margin(ref_logits[i])
        if margin <= near_tie:
            margins.append(margin)
        else:
            bad.append(Mismatch(i, int(a), int(b), margin))
    return Agreement(len(tokens), agree, tuple(margins), tuple(bad))
