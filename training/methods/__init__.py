"""Method registry: an explicit list, one file per method (STYLE 8)."""

from __future__ import annotations

import inspect

from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from training.methods.alr import ALR
from training.methods.base import Method, MethodContext
from training.methods.ce import CE
from training.methods.coteaching import Coteaching
from training.methods.dividemix import DivideMix
from training.methods.ebomlc import EBOMLC
from training.methods.elr import ELR
from training.methods.elr_plus import ELRPlus
from training.methods.gce import GCE
from training.methods.ido import IDO
from training.methods.jocor import JoCoR
from training.methods.mlc import MLC
from training.methods.mlc_d import MLCD
from training.methods.mwnet import MWNet
from training.methods.sce import SCE
from training.methods.sop import SOP
from training.methods.sop_plus import SOPPlus
from training.methods.l2rw import L2RW
from training.methods.surrogate import Surrogate

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (CE, ALR, L2RW, Surrogate, MLC, MLCD, EBOMLC, IDO,
                                                              GCE, SCE, ELR, ELRPlus, Coteaching, JoCoR, SOP, SOPPlus,
                                                              MWNet, DivideMix)}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config(name: str, params: dict) -> BaseModel:
    """The validated parameters of method `name`, defaults included; errors name the method.params key."""
    try:
        return method_class(name).Config.model_validate(params)
    except ValidationError as err:
        bad = "; ".join(f"method.params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid parameters for method {name!r}: {bad}") from None


def build_method(name: str, params: dict, ctx: MethodContext) -> Method:
    return method_class(name)(method_config(name, params), ctx)


def describe_method(name: str) -> str:
    """The method's docstring summary and its parameters: type, default (or "required") and the meaning
    written beside each field of its Config class."""
    cls = method_class(name)
    meanings: dict[str, str] = {}
    for config_cls in reversed(cls.Config.__mro__):  # base classes first, subclasses override
        try:
            source = inspect.getsource(config_cls)
        except (OSError, TypeError):
            continue
        above: list[str] = []  # comment lines right above a field
        for line in source.splitlines():
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# "))
                continue
            field, colon, rest = text.partition(":")
            if colon and field.isidentifier() and ("=" in rest or "#" in rest):
                meanings[field] = rest.split("#", 1)[1].strip() if "#" in rest else " ".join(above)
            above = []
    doc = (inspect.getmodule(cls).__doc__ or cls.__name__).strip().split("\n\n")[0]
    lines = [f"{name}: {' '.join(doc.split())}", "", "method.params:"]
    for field, info in cls.Config.model_fields.items():
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        kind = info.annotation.__name__ if isinstance(info.annotation, type) else str(info.annotation)
        lines.append(f"  {field} ({kind.replace('typing.', '')}, {default}): {meanings.get(field, '')}".rstrip(": "))
    if not cls.Config.model_fields:
        lines.append("  (none)")
    return "\n".join(lines)
