"""Synthetic label-set names: what a name such as ``sym-0.40-s0`` promises about the labels on disk.

A name carries the generator, the rate and the seed; :func:`parse_noise_spec` turns it into a
:class:`NoiseSpec`, whose :meth:`NoiseSpec.rng` is the one stream the labels are drawn from. The
generators that apply a spec are pipeline/make/noise.py's; the dataset reader
(pipeline/format/dataset.py) needs only the names, to refuse a recorded set whose name no longer
means what it did when it was made (:func:`outdated_label_set`): CIFAR-100 ``asym`` follows the
published blocks of 5 now, and manifests from before record it with variant ``cifar100-superclass``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

KINDS = {
    "sym": "symmetric",
    "symx": "symmetric-exclusive",
    "asym": "asymmetric",
    "asym-super": "asymmetric",
    "pair": "pair-flip",
    "flip": "random-flip",
    "idn": "instance-dependent",
}
_NAME_RE = re.compile(r"^(?P<kind>[a-z]+(?:-[a-z]+)?)-(?P<rate>[01]\.\d\d)-s(?P<seed>\d+)$")
ACCEPTED_FORMS = (
    "sym-<rate>-s<seed> (symmetric over all K), symx-<rate>-s<seed> (to another class), "
    "asym-<rate>-s<seed> (CIFAR-10 map or CIFAR-100 blocks of 5), "
    "asym-super-<rate>-s<seed> (CIFAR-100 true superclasses), pair-<rate>-s<seed> (i -> i+1), "
    "flip-<rate>-s<seed> (i -> one fixed random j != i, MLC/EBOMLC), "
    "idn-<rate>-s<seed> (instance-dependent); rate with two decimals in [0.00, 1.00], e.g. sym-0.40-s0"
)


class NoiseSpecError(UserError, ValueError):
    """A label-set name that is not one of the accepted forms."""


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    kind: str  # key of KINDS: "sym", "symx", "asym", "asym-super", "pair", "flip", "idn"
    rate: float  # target noise rate in [0, 1]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.rate:.2f}-s{self.seed}"

    @property
    def generator(self) -> str:
        return KINDS[self.kind]

    def rng(self) -> np.random.Generator:
        # The kind is mixed into the seed so sym-0.40-s0 and pair-0.40-s0 draw unrelated streams.
        # asym-super shares asym's stream: it then gives exactly the labels (and sha256) that CIFAR-100
        # asym gave before asym followed the published blocks of 5.
        stream = "asym" if self.kind == "asym-super" else self.kind
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode())])


def parse_noise_spec(name: str) -> NoiseSpec:
    m = _NAME_RE.match(name)
    if not m or m.group("kind") not in KINDS:
        raise NoiseSpecError(f"label set {name!r} is not a synthetic noise name; accepted forms: {ACCEPTED_FORMS}")
    rate = float(m.group("rate"))
    if rate > 1.0:
        raise NoiseSpecError(f"label set {name!r}: rate {rate} is above 1; accepted forms: {ACCEPTED_FORMS}")
    return NoiseSpec(kind=m.group("kind"), rate=rate, seed=int(m.group("seed")))


def is_noise_spec(name: str) -> bool:
    try:
        parse_noise_spec(name)
    except NoiseSpecError:
        return False
    return True


def outdated_label_set(name: str, params: dict) -> str | None:
    """Why a label set recorded in a manifest no longer means what its name says now, or None: CIFAR-100
    ``asym`` converted before it followed the published blocks of 5 (recorded variant
    cifar100-superclass) must not pass for the new one."""
    if not is_noise_spec(name):
        return None
    spec = parse_noise_spec(name)
    if spec.kind != "asym" or params.get("variant") != "cifar100-superclass":
        return None
    return (
        f"label set {name!r} was generated when CIFAR-100 asym meant true superclasses; asym now follows the "
        f"published blocks of 5. Regenerate it with tools/make_shards.py --add-label-set --label-set {name} "
        f"--force, or add asym-super-{spec.rate:.2f}-s{spec.seed}, which gives those old labels"
    )
