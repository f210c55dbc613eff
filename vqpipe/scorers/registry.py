"""Scorer registry: ``create_scorer(name, ...)`` in the spirit of pyiqa's ``create_metric``.

Built-in scorers register themselves here with a lazy ``"module:Class"`` target, so listing
scorers never imports model code. Third-party packages can add scorers through the
``vqpipe.scorers`` entry-point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from vqpipe.scorers.base import Scorer

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "vqpipe.scorers"


class UnknownScorerError(ValueError):
    """Raised by :func:`create_scorer` for a name that no scorer is registered under."""


@dataclass(frozen=True)
class ScorerSpec:
    """How to build one registered scorer."""

    name: str
    target: str | type[Scorer]  # "package.module:Class" or the class itself
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def load(self) -> type[Scorer]:
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, Scorer)):
            raise TypeError(f"scorer {self.name!r}: {self.target} is not a Scorer subclass")
        return cls


_REGISTRY: dict[str, ScorerSpec] = {}
_ENTRY_POINTS_LOADED = False


def _key(name: str) -> str:
    """Registry keys ignore case, '-' and '_' ("Q-Align" == "qalign")."""
    return name.lower().replace("-", "").replace("_", "")


def register_scorer(
    name: str,
    target: str | type[Scorer],
    *,
    description: str = "",
    defaults: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ScorerSpec:
    """Register a scorer class (or lazy ``"module:Class"`` path) under ``name``."""
    key = _key(name)
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"a scorer named {name!r} is already registered")
    spec = ScorerSpec(name=name, target=target, description=description, defaults=defaults or {})
    _REGISTRY[key] = spec
    return spec


def unregister_scorer(name: str) -> None:
    """Remove a registered scorer (mostly for tests)."""
    _REGISTRY.pop(_key(name), None)


def _register_builtins() -> None:
    register_scorer(
        "gamma",
        "vqpipe.scorers.gamma:GammaScorer",
        description="Gamma: CLIP ViT-B/16 + Mixture of Assessment Experts (fast, generic)",
    )
    register_scorer(
        "qalign",
        "vqpipe.scorers.qalign:QAlignScorer",
        description="Q-Align / OneAlign (mPLUG-Owl2): image quality, aesthetics, video quality",
    )
    register_scorer(
        "compare2score",
        "vqpipe.scorers.compare2score:Compare2ScoreScorer",
        description="Compare2Score (mPLUG-Owl2): soft comparisons with anchors, Thurstone MAP",
    )
    register_scorer(
        "compare2score-lmm",
        "vqpipe.scorers.compare2score_lmm:LMMCompare2ScoreScorer",
        description="zero-shot Compare2Score with any transformers image-text-to-text LMM",
    )
    register_scorer(
        "brightness",
        "vqpipe.scorers.brightness:BrightnessScorer",
        description="mean luminance: a trivial reference scorer (smoke tests, overhead)",
    )


_register_builtins()


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if _key(ep.name) not in _REGISTRY:
            register_scorer(ep.name, ep.value, description=f"plugin from {ep.value}")


def list_scorers() -> list[str]:
    """Names of all registered scorers, sorted."""
    _load_entry_points()
    return sorted(spec.name for spec in _REGISTRY.values())


def get_scorer_spec(name: str) -> ScorerSpec:
    """The registry entry for ``name``; :class:`UnknownScorerError` lists the known names."""
    _load_entry_points()
    try:
        return _REGISTRY[_key(name)]
    except KeyError:
        names = list_scorers()
        close = difflib.get_close_matches(_key(name), [_key(n) for n in names], n=1)
        hint = f"; did you mean {_REGISTRY[close[0]].name!r}?" if close else ""
        known = ", ".join(names) or "(none registered)"
        raise UnknownScorerError(
            f"unknown scorer {name!r}{hint} (known scorers: {known})"
        ) from None


def create_scorer(
    name: str,
    checkpoint: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> Scorer:
    """Build a scorer by name.

    ``checkpoint``: local path, fsspec URI (``s3://...``) or hub id (when online); ``None``
    uses the scorer's default. ``device``: ``None`` picks CUDA when available. ``dtype``:
    ``None`` picks bf16 on CUDA and fp32 on CPU. ``options`` go to the scorer's constructor,
    over the registry's defaults for it.
    """
    spec = get_scorer_spec(name)
    kwargs = {**spec.defaults, **options}
    cls = spec.load()
    check_keywords(spec.name, cls, kwargs)
    return cls(checkpoint=checkpoint, device=device, dtype=dtype, **kwargs)


def check_keywords(name: str, cls: type[Scorer], options: dict[str, Any]) -> None:
    """A :class:`TypeError` naming an option that ``cls.__init__`` does not take, the accepted
    ones and the closest of them (a constructor with ``**kwargs`` takes any)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"scorer {name!r} takes no option {key!r}{hint} (accepted: {', '.join(accepted)})"
            )
