"""Method registry: an explicit list, one file per method (STYLE 8)."""

from __future__ import annotations

from pydantic import ValidationError

from pipeline.errors import ConfigError
from training.methods.alr import ALR
from training.methods.base import Method, MethodContext
from training.methods.ce import CE
from training.methods.coteaching import Coteaching
from training.methods.dividemix import DivideMix
from training.methods.ebomlc import EBOMLC
from training.methods.elr import ELR
from training.methods.gce import GCE
from training.methods.ido import IDO
from training.methods.mlc import MLC
from training.methods.mlc_d import MLCD
from training.methods.mwnet import MWNet
from training.methods.sce import SCE
from training.methods.sop import SOP
from training.methods.l2rw import L2RW
from training.methods.surrogate import Surrogate

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (CE, ALR, L2RW, Surrogate, MLC, MLCD, EBOMLC, IDO,
                                                              GCE, SCE, ELR, Coteaching, SOP, MWNet, DivideMix)}


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as err:
        bad = "; ".join(f"method.params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid parameters for method {name!r}: {bad}") from None
    return cls(config, ctx)
