"""Statistical and exact tests of the noise generators (pipeline/make/noise.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.format.label_sets import NoiseSpec, NoiseSpecError, parse_noise_spec
from pipeline.make import noise

K = 10
N = 20_000


def _balanced(n: int = N, k: int = K) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % k


def _tol(p: float, n: int) -> float:
    """5 standard errors of a binomial proportion: a false failure is ~1e-6 likely."""
    return 5 * np.sqrt(max(p * (1 - p), 1e-4) / n)


def test_symmetric_realised_rate_is_r_times_k_minus_1_over_k():
    clean = _balanced()
    noisy = noise.symmetric(clean, 0.4, np.random.default_rng(0), K)
    assert abs(noise.noise_rate(clean, noisy) - 0.4 * (K - 1) / K) < _tol(0.36, N)
    # off-diagonal mass is spread evenly over all other classes
    t = noise.transition_matrix(clean, noisy, K)
    off = t[~np.eye(K, dtype=bool)]
    assert np.all(np.abs(off - 0.04) < _tol(0.04, N // K))


def test_symmetric_exclusive_never_keeps_the_true_label_of_chosen_samples():
    clean = _balanced()
    noisy = noise.symmetric_exclusive(clean, 0.4, np.random.default_rng(1), K)
    assert noise.noise_rate(clean, noisy) == pytest.approx(0.4, abs=1 / N)  # exactly round(0.4 N) flipped
    # the flipped mass is spread evenly over the K-1 other classes
    t = noise.transition_matrix(clean, noisy, K)
    expected = np.full((K, K), 0.4 / (K - 1))
    np.fill_diagonal(expected, 0.6)
    assert np.abs(t - expected).max() < _tol(0.4, N // K)
    noisy_all = noise.symmetric_exclusive(clean, 1.0, np.random.default_rng(1), K)
    assert np.all(noisy_all != clean)


@pytest.mark.parametrize("gen", ["sym", "symx", "pair", "asym"])
def test_generators_are_deterministic_per_seed_and_differ_across_seeds(gen):
    clean = _balanced()
    a = noise.generate(NoiseSpec(kind=gen, rate=0.4, seed=0), clean, noise.CIFAR10_CLASSES)
    b = noise.generate(NoiseSpec(kind=gen, rate=0.4, seed=0), clean, noise.CIFAR10_CLASSES)
    c = noise.generate(NoiseSpec(kind=gen, rate=0.4, seed=1), clean, noise.CIFAR10_CLASSES)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64


def test_generators_do_not_modify_their_input():
    clean = _balanced()
    before = clean.copy()
    noise.symmetric(clean, 0.5, np.random.default_rng(0), K)
    noise.pair_flip(clean, 0.5, np.random.default_rng(0), K)
    assert np.array_equal(clean, before)


def test_asymmetric_cifar10_transition_matrix_is_the_published_map():
    clean = _balanced()
    noisy = noise.asymmetric_cifar10(clean, 0.4, np.random.default_rng(2))
    t = noise.transition_matrix(clean, noisy, K)
    c = noise.CIFAR10_CLASSES.index
    expected = np.eye(K)
    for src, dst in noise.CIFAR10_ASYM_MAP.items():
        expected[c(src), c(src)] = 0.6
        expected[c(src), c(dst)] = 0.4
    assert np.abs(t - expected).max() < _tol(0.4, N // K)
    # untouched classes keep their labels exactly
    for name in ("airplane", "automobile", "frog", "horse", "ship"):
        assert t[c(name), c(name)] == 1.0


def test_asymmetric_cifar10_follows_class_names_not_positions():
    shuffled = list(reversed(noise.CIFAR10_CLASSES))
    clean = _balanced()
    noisy = noise.asymmetric_cifar10(clean, 1.0, np.random.default_rng(0), shuffled)
    truck, auto = shuffled.index("truck"), shuffled.index("automobile")
    assert np.all(noisy[clean == truck] == auto)


CIFAR100 = [f"fine{i:02d}" for i in range(100)]
# fine -> coarse with superclasses NOT made of consecutive indices, as in the real (alphabetical) CIFAR-100
PARENT = np.random.default_rng(0).permutation(np.repeat(np.arange(20), 5))


def test_cifar100_block_map_is_the_published_blocks_of_5():
    target = noise.cifar100_block_map()
    assert [target[i] for i in (0, 3, 4, 5, 9, 97, 99)] == [1, 4, 0, 6, 5, 98, 95]
    for start in range(0, 100, 5):  # each block is one 5-cycle
        block = np.arange(start, start + 5)
        assert list(target[block]) == list(np.roll(block, -1))


def test_cifar100_asym_transition_matrix_follows_the_blocks_not_the_superclasses():
    """asym-0.40 on CIFAR-100 (recognised by its coarse labels): T = 0.6 I + 0.4 at (i, next in block)."""
    clean = _balanced(50_000, 100)
    noisy = noise.generate(parse_noise_spec("asym-0.40-s0"), clean, CIFAR100, PARENT[clean])
    t = noise.transition_matrix(clean, noisy, 100)
    expected = 0.6 * np.eye(100)
    expected[np.arange(100), noise.cifar100_block_map()] = 0.4
    assert np.abs(t - expected).max() < _tol(0.4, 500)
    assert abs(noise.noise_rate(clean, noisy) - 0.4) < _tol(0.4, len(clean))


def test_cifar100_superclass_map_cycles_inside_each_superclass():
    fine = np.tile(np.arange(100), 30)
    target = noise.cifar100_superclass_map(fine, PARENT[fine])
    for c in range(20):
        members = np.flatnonzero(PARENT == c)
        assert list(target[members]) == list(np.roll(members, -1))
    noisy = noise.asymmetric_cifar100_superclass(fine, 1.0, np.random.default_rng(0), PARENT[fine])
    assert np.all(PARENT[noisy] == PARENT[fine]) and np.all(noisy != fine)


def test_asym_super_transition_matrix_and_shared_stream_with_asym():
    """asym-super keeps the true-superclass map and flips the same samples as asym (same stream), so it
    reproduces the labels CIFAR-100 asym gave before it followed the blocks of 5."""
    clean = _balanced(50_000, 100)
    sup = noise.generate(parse_noise_spec("asym-super-0.30-s2"), clean, CIFAR100, PARENT[clean])
    t = noise.transition_matrix(clean, sup, 100)
    expected = 0.7 * np.eye(100)
    expected[np.arange(100), noise.cifar100_superclass_map(clean, PARENT[clean])] = 0.3
    assert np.abs(t - expected).max() < _tol(0.3, 500)
    blocks = noise.generate(parse_noise_spec("asym-0.30-s2"), clean, CIFAR100, PARENT[clean])
    assert np.array_equal(sup != clean, blocks != clean) and not np.array_equal(sup, blocks)


@pytest.mark.parametrize(
    "name,classes,coarse,message",
    [("asym-super-0.40-s0", noise.CIFAR10_CLASSES, None, "coarse labels"),
     ("asym-0.40-s0", CIFAR100, None, "pair-0.40-s0")],  # 100 classes without coarse labels: not CIFAR-100
)
def test_asymmetric_kinds_refuse_datasets_they_are_not_defined_for(name, classes, coarse, message):
    with pytest.raises(NoiseSpecError, match=message):
        noise.generate(parse_noise_spec(name), _balanced(200, len(classes)), classes, coarse)


@pytest.mark.parametrize(
    "name,classes,coarse,recorded",
    [("asym-0.40-s0", noise.CIFAR10_CLASSES, None, "cifar10-map"),
     ("asym-0.40-s0", CIFAR100, PARENT, "cifar100-blocks5"),
     ("asym-super-0.40-s0", CIFAR100, PARENT, "cifar100-superclass"),
     ("sym-0.40-s0", CIFAR100, PARENT, None)],
)
def test_variant_recorded_per_asymmetric_map(name, classes, coarse, recorded):
    assert noise.variant(parse_noise_spec(name), classes, coarse) == recorded


def test_pair_flip_moves_to_next_class_with_probability_r():
    clean = _balanced()
    noisy = noise.pair_flip(clean, 0.45, np.random.default_rng(3), K)
    t = noise.transition_matrix(clean, noisy, K)
    for i in range(K):
        assert abs(t[i, (i + 1) % K] - 0.45) < _tol(0.45, N // K)
        assert t[i, i] + t[i, (i + 1) % K] == pytest.approx(1.0)


def test_instance_dependent_mean_rate_and_determinism():
    rng = np.random.default_rng(0)
    n = 4000
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    clean = _balanced(n)
    a = noise.instance_dependent(clean, 0.4, np.random.default_rng(5), K, images, chunk=97)
    b = noise.instance_dependent(clean, 0.4, np.random.default_rng(5), K, images)  # chunking changes nothing
    assert np.array_equal(a, b)
    assert abs(noise.noise_rate(clean, a) - 0.4) < _tol(0.4, n) + 0.01
    assert a.min() >= 0 and a.max() < K
    # the flip target depends on the image: per class, not all flips go to one class
    flipped_to = {int(x) for x in a[(clean == 0) & (a != clean)]}
    assert len(flipped_to) > 1


def test_transition_matrix_rows_are_normalised_and_absent_classes_zero():
    t = noise.transition_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert np.allclose(t, [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 0]])


def test_generate_asym_on_unknown_classes_suggests_pair():
    with pytest.raises(NoiseSpecError, match="pair-0.40-s0"):
        noise.generate(parse_noise_spec("asym-0.40-s0"), _balanced(100, 3), ["a", "b", "c"])


def test_random_flip_sends_each_class_to_one_fixed_other_class():
    """flip-<r>: MLC/EBOMLC's flip noise, class i -> one random j != i with probability r."""
    clean = _balanced()
    noisy = noise.generate(parse_noise_spec("flip-0.40-s3"), clean, noise.CIFAR10_CLASSES)
    target = noise.random_flip_map(K, parse_noise_spec("flip-0.40-s3").rng())
    assert np.all(target != np.arange(K))
    t = noise.transition_matrix(clean, noisy, K)
    expected = 0.6 * np.eye(K)
    expected[np.arange(K), target] = 0.4
    assert np.abs(t - expected).max() < _tol(0.4, N // K)
    # the map depends on the seed (ten independent draws: equal maps are ~1e-9 likely)
    other = noise.random_flip_map(K, parse_noise_spec("flip-0.40-s4").rng())
    assert not np.array_equal(target, other)
