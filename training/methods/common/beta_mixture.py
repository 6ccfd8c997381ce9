"""Two-component Beta mixtures fitted by EM, one per class at once (IDO stage 2; ../shared/methods/IDO.md).

Pure numpy/scipy maths, no torch: per-class arrays of shape (C, 2) with component 0 = clean (mass
near x = 0, few wrong events) and component 1 = noisy (mass near x = 1). Every step is vectorised
over samples and classes (np.bincount by class), so a fit over 50k samples and 100 classes costs a
few milliseconds per EM iteration.

    x      = normalise_counts(counts, labels, C)         # (N,) in (0, 1), class-wise min/max
    m      = BetaMixture.initial(C); m.fit(x, labels, 20)  # first fit; later m.fit(x, labels, 2) warm-started
    post   = m.posteriors(x, labels)                     # p, q, F0, F1, eps per sample

EM (as the authors' code does it, written anew):
  E-step  r_k(x) = pi_k Beta(x; a_k, b_k) / sum_j (...), the weighted likelihoods floored at 1e-6
          (an x far in both tails would otherwise give 0/0);
  M-step  weighted method of moments per component: m = sum r x / sum r, v = sum r (x - m)^2 / sum r,
          a = m (m (1 - m) / v - 1), b = a (1 - m) / m;  pi_k = mean r_k.
          Shape guards: clean b and noisy a that fall under 1.02 are set to 1.1, which keeps the clean
          density decreasing towards x = 1 and the noisy one increasing (the spec's rule). Numerical
          guards that do not act on a healthy fit: v is floored at 1e-8 and a, b are clipped to
          [1e-2, 1e4] (a class whose counts are all equal has v = 0); a component with no weight in
          a class keeps its previous parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import betainc, betaln

log = logging.getLogger(__name__)

EDGE = 1e-6  # x is squeezed into [EDGE, 1 - EDGE] (spec: x * (1 - 2e-6) + 1e-6)
LIKELIHOOD_FLOOR = 1e-6  # floor of the weighted likelihoods in the E-step and the posteriors
SHAPE_FLOOR = 1.02  # clean b / noisy a under this ...
SHAPE_RESET = 1.1  # ... are set to this
VAR_FLOOR = 1e-8
SHAPE_CLIP = (1e-2, 1e4)
CLEAN, NOISY = 0, 1


def normalise_counts(counts: np.ndarray, labels: np.ndarray, num_classes: int, *, classwise: bool = True,
                     active: np.ndarray | None = None) -> np.ndarray:
    """Wrong-event counts (N,) -> x (N,) float64 in (0, 1) (IDO.md stage 2, step 1).

    x = (we - min) / (max - min) over the sample's class (or over all samples when classwise=False),
    0.5 where max = min, then squeezed by x (1 - 2e-6) + 1e-6. `active` (N,) bool restricts min and
    max to the samples that are trained on (e.g. not the held-out clean subset); others get x = 0.5.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    active = np.ones(counts.shape, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    lo, hi = count_ranges(counts, labels, num_classes, classwise=classwise, active=active)
    x = scale_counts(counts, labels if classwise else np.zeros_like(labels), lo, hi)
    return np.where(active, x, 0.5 * (1.0 - 2 * EDGE) + EDGE)


def scale_counts(counts: np.ndarray, groups: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Counts (N,) -> x (N,) with the given per-group (min, max): (we - min) / (max - min), 0.5 where
    max = min, squeezed by x (1 - 2e-6) + 1e-6. Counts above an earlier fit's max give x > 1 (outside
    the mixture's support: BetaMixture.posteriors gives them p = q = 0 and eps = 0)."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    span = (hi - lo)[groups]  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(span > 0, (counts - lo[groups]) / np.where(span > 0, span, 1.0), 0.5)
    return x * (1.0 - 2 * EDGE) + EDGE


def count_ranges(counts: np.ndarray, labels: np.ndarray, num_classes: int, *, classwise: bool = True,
                 active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of the active counts per class, (C,) each ((1,) when classwise=False); a class
    without active samples has min = +inf, max = -inf."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if counts.shape != labels.shape:
        raise ValueError(f"wrong-event counts: {counts.shape[0]} counts for {labels.shape[0]} labels")
    active = np.ones(counts.shape, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    group = labels if classwise else np.zeros_like(labels)
    groups = num_classes if classwise else 1
    lo = np.full(groups, np.inf)
    hi = np.full(groups, -np.inf)
    np.minimum.at(lo, group[active], counts[active])
    np.maximum.at(hi, group[active], counts[active])
    return lo, hi


def beta_logpdf(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log Beta(x; a, b), elementwise over broadcast arrays."""
    return (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - betaln(a, b)


@dataclass
class Posteriors:
    """Per-sample outputs of a fitted mixture, all float64 (N,)."""

    p: np.ndarray  # posterior of the clean component
    q: np.ndarray  # posterior of the noisy component (= 1 - p for two components, except x >= 1)
    f0: np.ndarray  # clean component's CDF at x
    f1: np.ndarray  # noisy component's CDF at x
    eps: np.ndarray  # p F0(x) + (1 - q) (1 - F1(x)): the consistency weight of IDO's loss


@dataclass
class BetaMixture:
    """C independent two-component Beta mixtures; arrays (C, 2), column 0 clean, column 1 noisy."""

    a: np.ndarray  # (C, 2) alpha shapes
    b: np.ndarray  # (C, 2) beta shapes
    pi: np.ndarray  # (C, 2) mixing weights, rows sum to 1
    iterations: int = 0  # EM iterations run so far (over all fits)

    @classmethod
    def initial(cls, num_classes: int) -> "BetaMixture":
        """The spec's start: clean Beta(1, 2), noisy Beta(2, 1), weights 0.5 / 0.5, for every class."""
        a = np.tile([1.0, 2.0], (num_classes, 1))
        b = np.tile([2.0, 1.0], (num_classes, 1))
        return cls(a=a, b=b, pi=np.full((num_classes, 2), 0.5))

    @property
    def num_classes(self) -> int:
        return self.a.shape[0]

    def _weighted_likelihoods(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N, 2): pi_k Beta(x; a_k, b_k) of each sample's class, floored at LIKELIHOOD_FLOOR."""
        a, b, pi = self.a[labels], self.b[labels], self.pi[labels]  # (N, 2) each
        lik = pi * np.exp(beta_logpdf(x[:, None], a, b))
        return np.maximum(lik, LIKELIHOOD_FLOOR)

    def responsibilities(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """E-step: (N, 2) posterior of each component for each sample, rows sum to 1."""
        lik = self._weighted_likelihoods(x, labels)
        return lik / lik.sum(axis=1, keepdims=True)

    def fit(self, x: np.ndarray, labels: np.ndarray, iterations: int, *, active: np.ndarray | None = None
            ) -> "BetaMixture":
        """`iterations` EM steps from the current parameters (warm start), on the active samples."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if active is not None:
            x, labels = x[active], labels[active]
        if x.size and (x.min() <= 0 or x.max() >= 1):
            raise ValueError("BetaMixture.fit: x must lie in (0, 1); pass normalise_counts(...) output")
        c = self.num_classes
        for _ in range(iterations):
            r = self.responsibilities(x, labels)  # (N, 2)
            mass = np.stack([np.bincount(labels, r[:, k], minlength=c) for k in range(2)], axis=1)  # (C, 2)
            sums = np.stack([np.bincount(labels, r[:, k] * x, minlength=c) for k in range(2)], axis=1)
            has = mass > 1e-12
            safe = np.where(has, mass, 1.0)
            mean = sums / safe  # (C, 2)
            dev2 = (x[:, None] - mean[labels]) ** 2  # (N, 2)
            var = np.stack([np.bincount(labels, r[:, k] * dev2[:, k], minlength=c) for k in range(2)], axis=1) / safe
            var = np.maximum(var, VAR_FLOOR)
            mean = np.clip(mean, EDGE, 1 - EDGE)
            a = mean * (mean * (1 - mean) / var - 1)
            b = a * (1 - mean) / mean
            a = np.clip(a, *SHAPE_CLIP)
            b = np.clip(b, *SHAPE_CLIP)
            self.a = np.where(has, a, self.a)
            self.b = np.where(has, b, self.b)
            self.b[:, CLEAN] = np.where(self.b[:, CLEAN] < SHAPE_FLOOR, SHAPE_RESET, self.b[:, CLEAN])
            self.a[:, NOISY] = np.where(self.a[:, NOISY] < SHAPE_FLOOR, SHAPE_RESET, self.a[:, NOISY])
            total = mass.sum(axis=1, keepdims=True)
            self.pi = np.where(total > 1e-12, mass / np.where(total > 1e-12, total, 1.0), self.pi)
            self.iterations += 1
        return self

    def posteriors(self, x: np.ndarray, labels: np.ndarray) -> Posteriors:
        """p, q, F0, F1 and eps for every sample (IDO.md stage 2, step 3). x >= 1 (a count above the
        fit's max, dynamic posteriors) is outside both components: p = q = 0, F0 = F1 = 1, eps = 0."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        beyond = x >= 1.0
        inside = np.where(beyond, 0.5, x)
        r = self.responsibilities(inside, labels)
        p, q = np.where(beyond, 0.0, r[:, CLEAN]), np.where(beyond, 0.0, r[:, NOISY])
        f0 = np.where(beyond, 1.0, betainc(self.a[labels, CLEAN], self.b[labels, CLEAN], inside))
        f1 = np.where(beyond, 1.0, betainc(self.a[labels, NOISY], self.b[labels, NOISY], inside))
        eps = p * f0 + (1.0 - q) * (1.0 - f1)
        return Posteriors(p=p, q=q, f0=f0, f1=f1, eps=eps)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """JSON-ready parameters: per class [[a, b, pi] clean, [a, b, pi] noisy] (the spec's (C, 2, 3))."""
        table = np.stack([self.a, self.b, self.pi], axis=2)  # (C, 2, 3)
        return {"components": ["clean", "noisy"], "fields": ["a", "b", "pi"], "params": table.tolist(),
                "iterations": self.iterations}

    @classmethod
    def from_dict(cls, d: dict) -> "BetaMixture":
        table = np.asarray(d["params"], dtype=np.float64)
        if table.ndim != 3 or table.shape[1:] != (2, 3):
            raise ValueError(f"BetaMixture.from_dict: params must be (C, 2, 3), got {table.shape}")
        return cls(a=table[:, :, 0].copy(), b=table[:, :, 1].copy(), pi=table[:, :, 2].copy(),
                   iterations=int(d.get("iterations", 0)))
