"""Synthetic label-set names (pipeline/format/label_sets.py): the accepted forms, and the recorded sets
whose name no longer means what it did."""

from __future__ import annotations

import pytest

from pipeline.format.label_sets import NoiseSpecError, outdated_label_set, parse_noise_spec


@pytest.mark.parametrize(
    "name,kind,rate,seed",
    [("sym-0.40-s0", "sym", 0.4, 0), ("symx-0.20-s3", "symx", 0.2, 3), ("asym-0.40-s0", "asym", 0.4, 0),
     ("pair-0.45-s12", "pair", 0.45, 12), ("idn-0.40-s1", "idn", 0.4, 1),
     ("asym-super-0.40-s0", "asym-super", 0.4, 0)],
)
def test_parse_noise_spec_accepts_the_documented_forms(name, kind, rate, seed):
    spec = parse_noise_spec(name)
    assert (spec.kind, spec.rate, spec.seed, spec.name) == (kind, rate, seed, name)


@pytest.mark.parametrize(
    "name", ["sym-0.4-s0", "gauss-0.40-s0", "sym-1.50-s0", "sym-0.40", "cifar10n-worse", "super-asym-0.40-s0",
             "asym-super-x-0.40-s0"],
)
def test_parse_noise_spec_rejects_other_names_listing_accepted_forms(name):
    with pytest.raises(NoiseSpecError, match="accepted forms"):
        parse_noise_spec(name)


def test_outdated_label_set_flags_only_cifar100_asym_with_the_old_superclass_meaning():
    reason = outdated_label_set("asym-0.40-s1", {"variant": "cifar100-superclass"})
    assert "asym-super-0.40-s1" in reason and "--force" in reason
    assert outdated_label_set("asym-0.40-s1", {"variant": "cifar100-blocks5"}) is None
    assert outdated_label_set("asym-super-0.40-s1", {"variant": "cifar100-superclass"}) is None
    assert outdated_label_set("cifar100n-noisy", {"variant": "cifar100-superclass"}) is None
