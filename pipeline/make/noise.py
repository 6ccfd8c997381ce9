"""Synthetic label noise: seeded generators and metrics (methods/NOISE.md).

Every generator is a pure function ``(labels, rate, rng[, extra]) -> new labels`` (int64, same
shape) that never modifies its input; the same labels, rate and seed give the same output on every
machine (numpy's PCG64 stream is platform independent). Label-set names carry the generator, rate
and seed, e.g. ``sym-0.40-s0`` (pipeline/format/label_sets.py parses them into a NoiseSpec);
:func:`generate` applies a spec.

CIFAR-100 ``asym`` follows the published convention (fine index i -> the next index in its block of
5, cyclically); the true-superclass map is ``asym-super``. Manifests from before that change record
``asym`` with variant ``cifar100-superclass``; the dataset reader refuses such a set and says why
(pipeline/format/label_sets.py: outdated_label_set).
"""
from __future__ import annotations

import numpy as np

from pipeline.format.label_sets import NoiseSpec, NoiseSpecError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-10 asymmetric protocol (Patrini et al. 2017): visually similar classes, by name.
CIFAR10_ASYM_MAP = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


def _check(labels: np.ndarray, rate: float, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise ValueError(f"label {labels[bad]} at index {bad} is outside [0, {num_classes})")
    return labels.astype(np.int64, copy=True)


def symmetric(labels: np.ndarray, rate: float, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """round(rate*N) samples chosen uniformly get a label drawn from ALL K classes (some keep theirs,
    so the realised rate is about rate*(K-1)/K): the SELC/ALR/ELR reading."""
    out = _check(labels, rate, num_classes)
    chosen = rng.permutation(len(out))[: int(round(rate * len(out)))]
    out[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return out


def symmetric_exclusive(labels: np.ndarray, rate: float, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """round(rate*N) samples chosen uniformly are flipped to one of the K-1 OTHER classes (MLC-style)."""
    out = _check(labels, rate, num_classes)
    if num_classes < 2:
        raise ValueError("symmetric-exclusive noise needs at least 2 classes")
    chosen = rng.permutation(len(out))[: int(round(rate * len(out)))]
    # adding 1..K-1 modulo K lands uniformly on every class but the true one
    out[chosen] = (out[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    return out


def _flip_with_map(labels: np.ndarray, rate: float, rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    """Each sample of class c with target[c] != c moves to target[c] with probability rate."""
    out = _check(labels, rate, len(target))
    flip = rng.random(len(out)) < rate  # drawn for every sample so the stream does not depend on labels
    out[flip] = target[out[flip]]
    return out


def asymmetric_cifar10(labels: np.ndarray, rate: float, rng: np.random.Generator, classes: list[str] | None = None) -> np.ndarray:
    """truck->automobile, bird->airplane, deer->horse, cat->dog, dog->cat with probability rate.
    ``classes`` names the label order (default CIFAR-10's); it must hold the ten CIFAR-10 classes."""
    classes = list(CIFAR10_CLASSES if classes is None else classes)
    if set(classes) != set(CIFAR10_CLASSES):
        raise ValueError(f"CIFAR-10 asymmetric noise needs the CIFAR-10 classes {CIFAR10_CLASSES}, got {classes}")
    target = np.arange(len(classes))
    for src, dst in CIFAR10_ASYM_MAP.items():
        target[classes.index(src)] = classes.index(dst)
    return _flip_with_map(labels, rate, rng, target)


def cifar100_block_map() -> np.ndarray:
    """target[i] = 5*(i//5) + (i+1)%5: the next index inside i's block of 5, cyclically. The map of
    every published CIFAR-100 asym number (SELC, ALR, ELR, DivideMix, IDO code), which call the blocks
    "superclasses" although the alphabetical fine indices make them unrelated to the coarse classes."""
    i = np.arange(100)
    return 5 * (i // 5) + (i + 1) % 5


def asymmetric_cifar100(labels: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each class moves to the next class of its block of 5 (cifar100_block_map) with probability rate."""
    return _flip_with_map(labels, rate, rng, cifar100_block_map())


def cifar100_superclass_map(fine: np.ndarray, coarse: np.ndarray, num_classes: int = 100) -> np.ndarray:
    """target[f] = the next fine class (by index, cyclic) inside f's true superclass, read from the
    data's (fine, coarse) pairs (``asym-super``; no published number uses it)."""
    fine = np.asarray(fine, dtype=np.int64)
    coarse = np.asarray(coarse, dtype=np.int64)
    if fine.shape != coarse.shape:
        raise ValueError(f"fine labels {fine.shape} and coarse labels {coarse.shape} differ in shape")
    parent = np.full(num_classes, -1, dtype=np.int64)
    for f, c in set(zip(fine.tolist(), coarse.tolist())):
        if parent[f] not in (-1, c):
            raise ValueError(f"fine class {f} appears under coarse classes {parent[f]} and {c}")
        parent[f] = c
    target = np.arange(num_classes)
    for c in np.unique(parent[parent >= 0]):
        members = np.flatnonzero(parent == c)  # ascending fine indices of this superclass
        target[members] = np.roll(members, -1)
    return target


def asymmetric_cifar100_superclass(labels: np.ndarray, rate: float, rng: np.random.Generator, coarse_labels: np.ndarray, num_classes: int = 100) -> np.ndarray:
    """Each class moves to the next fine class of its true superclass with probability rate."""
    return _flip_with_map(labels, rate, rng, cifar100_superclass_map(labels, coarse_labels, num_classes))


def pair_flip(labels: np.ndarray, rate: float, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """class i -> (i+1) mod K with probability rate."""
    return _flip_with_map(labels, rate, rng, (np.arange(num_classes) + 1) % num_classes)


def random_flip_map(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """target[i]: one class drawn uniformly from the K-1 classes other than i, independently per
    class (so two classes may share a target). The "flip" noise of MLC / EBOMLC."""
    if num_classes < 2:
        raise ValueError("flip noise needs at least 2 classes")
    return (np.arange(num_classes) + rng.integers(1, num_classes, size=num_classes)) % num_classes


def random_flip(labels: np.ndarray, rate: float, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """class i -> one fixed random class j != i (random_flip_map, drawn first from rng) with probability rate."""
    return _flip_with_map(labels, rate, rng, random_flip_map(num_classes, rng))


def _truncated_normal(rng: np.random.Generator, mean: float, std: float, size: int, low=0.0, high=1.0) -> np.ndarray:
    """N(mean, std) truncated to [low, high] by rejection (exact; at most a few rounds for std 0.1)."""
    out = np.empty(size)
    todo = np.arange(size)
    while len(todo):
        draw = rng.normal(mean, std, size=len(todo))
        ok = (draw >= low) & (draw <= high)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def instance_dependent(
    labels: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    num_classes: int,
    images: np.ndarray,
    chunk: int = 4096,
) -> np.ndarray:
    """Instance-dependent noise of Xia et al. 2020 ("Part-dependent label noise", Alg. 2).

    images: uint8 (N, ...) pixels, flattened to D values scaled to [0, 1]. Per sample
    q_i ~ N(rate, 0.1) truncated to [0, 1]; once W ~ N(0, 1) of shape (K, D, K); for a sample with
    label y the scores s = x . W[y] with s[y] = -inf give P = q_i * softmax(s), P[y] = 1 - q_i.
    Worked class by class in chunks of ``chunk`` rows so only a (chunk, D) float32 block is live.
    """
    out = _check(labels, rate, num_classes)
    n = len(out)
    if len(images) != n:
        raise ValueError(f"instance-dependent noise got {len(images)} images for {n} labels")
    flat = np.asarray(images).reshape(n, -1)  # (N, D) uint8, no copy
    d = flat.shape[1]
    q = _truncated_normal(rng, rate, 0.1, n)  # (N,) flip rate per sample
    w = rng.standard_normal((num_classes, d, num_classes), dtype=np.float32)  # (K, D, K)
    u = rng.random(n)  # (N,) uniform draw per sample for the new label
    new = out.copy()
    for c in range(num_classes):
        rows = np.flatnonzero(out == c)
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            x = flat[r].astype(np.float32) / 255.0  # (n, D) in [0, 1]
            s = x @ w[c]  # (n, K)
            s[:, c] = -np.inf
            s -= s.max(axis=1, keepdims=True)
            p = np.exp(s.astype(np.float64))
            p /= p.sum(axis=1, keepdims=True)
            p *= q[r, None]
            p[:, c] = 1.0 - q[r]
            cdf = np.cumsum(p, axis=1)  # (n, K)
            pick = (cdf < u[r, None] * cdf[:, -1:]).sum(axis=1)
            new[r] = np.minimum(pick, num_classes - 1)
    return new


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def noise_rate(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the clean one."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} label arrays differ in shape")
    return float((clean != noisy).mean()) if len(clean) else 0.0


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) float64, T[i, j] = fraction of clean class i labelled j; rows sum to 1 (0 for absent classes)."""
    clean, noisy = np.asarray(clean, dtype=np.int64), np.asarray(noisy, dtype=np.int64)
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


# ---------------------------------------------------------------------------------------------
# applying a label-set name (the names themselves: pipeline/format/label_sets.py)
# ---------------------------------------------------------------------------------------------


def variant(spec: NoiseSpec, classes: list[str], coarse_labels: np.ndarray | None) -> str | None:
    """The map an asymmetric spec means on a dataset (recorded as the manifest's "variant"); None for
    other kinds. CIFAR-100 is recognised by its coarse labels, which only its official pickles carry
    (so fine indices are in the official order the blocks of 5 refer to)."""
    if spec.kind not in ("asym", "asym-super"):
        return None
    is_cifar100 = coarse_labels is not None and len(classes) == 100
    if spec.kind == "asym-super":
        if not is_cifar100:
            raise NoiseSpecError(f"{spec.name}: true-superclass noise needs CIFAR-100 with its coarse labels")
        return "cifar100-superclass"
    if set(classes) == set(CIFAR10_CLASSES):
        return "cifar10-map"
    if is_cifar100:
        return "cifar100-blocks5"
    raise NoiseSpecError(
        f"{spec.name}: asymmetric noise is defined for CIFAR-10 classes or CIFAR-100 with its coarse "
        f"labels; this dataset has neither, use pair-{spec.rate:.2f}-s{spec.seed} instead"
    )


def generate(
    spec: NoiseSpec,
    clean: np.ndarray,
    classes: list[str],
    coarse_labels: np.ndarray | None = None,
    images: np.ndarray | None = None,
) -> np.ndarray:
    """Applies the generator a spec names; the asymmetric map is the one :func:`variant` picks."""
    k = len(classes)
    rng = spec.rng()
    if spec.kind == "sym":
        return symmetric(clean, spec.rate, rng, k)
    if spec.kind == "symx":
        return symmetric_exclusive(clean, spec.rate, rng, k)
    if spec.kind == "pair":
        return pair_flip(clean, spec.rate, rng, k)
    if spec.kind == "flip":
        return random_flip(clean, spec.rate, rng, k)
    asym = variant(spec, classes, coarse_labels)
    if asym == "cifar10-map":
        return asymmetric_cifar10(clean, spec.rate, rng, classes)
    if asym == "cifar100-blocks5":
        return asymmetric_cifar100(clean, spec.rate, rng)
    if asym == "cifar100-superclass":
        return asymmetric_cifar100_superclass(clean, spec.rate, rng, coarse_labels, k)
    if spec.kind == "idn":
        if images is None:
            raise NoiseSpecError(f"{spec.name}: instance-dependent noise needs the images")
        return instance_dependent(clean, spec.rate, rng, k, images)
    raise NoiseSpecError(f"unknown noise kind {spec.kind!r}")
