"""Partial loading: pretrained variables into a model for a new task, by parameter name.

    variables = model.init(key, jnp.zeros((1, 32, 32, 1)))        # the new model (e.g. 5 classes)
    variables, report = load_pretrained(variables, pretrained, reinit=("head",))
    print(report)   # what was loaded, re-initialized and ignored

Every array of the new model is either loaded from the source (same name, same shape) or
named by a `reinit` pattern, in which case it keeps its fresh initialization and whatever the
source holds under that name is ignored. Anything else is an error that lists every missing,
unexpected and mis-shaped array at once: nothing is skipped silently.

Names are the '/'-joined module path inside a collection, e.g. `layer1_0/conv1/conv/kernel`
or `head/bias`; the report prefixes the collection (`params/head/bias`,
`batch_stats/stem/norm/mean`). A pattern is a regular expression that must match a whole
name, or a whole leading part of it that ends at a '/': `head` names `head/kernel` and
`head/bias`, `layer4.*` everything in the fourth stage, `.*norm/scale` every norm's scale.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import numpy as np
from flax import traverse_util

from cnn_jax.errors import UserError

Patterns = Union[str, Sequence[str], None]
MAX_LISTED = 30  # names listed per category in an error; the rest are counted


def parse_patterns(patterns: Patterns) -> tuple[str, ...]:
    """A comma-separated string or a sequence of regular expressions, each checked."""
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    out = tuple(p.strip() for p in patterns if p and p.strip())
    for p in out:
        try:
            re.compile(p)
        except re.error as error:
            raise ValueError(f"Invalid parameter-name pattern {p!r}: {error}.") from None
    return out


def matcher(patterns: Patterns) -> Callable[[str], bool]:
    """`name -> bool`: whether any pattern names `name` (the whole of it, or a leading part
    of it ending at a '/')."""
    compiled = [re.compile(f"(?:{p})(?:/.*)?") for p in parse_patterns(patterns)]
    return lambda name: any(c.fullmatch(name) for c in compiled)


def flatten(variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """{(collection, module, ..., leaf): array}."""
    return traverse_util.flatten_dict(dict(variables), keep_empty_nodes=False)


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat))


def leaf_name(path: tuple[str, ...]) -> str:
    """The name patterns match: the path without its collection."""
    return "/".join(path[1:])


def full_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


@dataclasses.dataclass
class LoadReport:
    """What a load did, by name: `loaded` from the source, `reinitialized` (kept at the new
    model's initialization), `ignored` (in the source, not used)."""
    loaded: list[str] = dataclasses.field(default_factory=list)
    reinitialized: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    loaded_values: int = 0
    source: str = ""

    def __str__(self) -> str:
        def listing(names):
            shown = ", ".join(names[:8])
            return shown + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")

        lines = [f"loaded {len(self.loaded)} arrays ({self.loaded_values:,} values)"
                 + (f" from {self.source}" if self.source else "")]
        lines.append(f"re-initialized {len(self.reinitialized)}"
                     + (f": {listing(self.reinitialized)}" if self.reinitialized else ""))
        lines.append(f"ignored {len(self.ignored)}"
                     + (f": {listing(self.ignored)}" if self.ignored else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(shown) + more


def load_error(what: str, missing: list[str], unexpected: list[str], mismatched: list[str],
               hint: str) -> ValueError:
    """One error listing every problem of a load, by category."""
    parts = [f"Cannot load {what}:"]
    if missing:
        parts.append(_listing("missing from the source", missing))
    if unexpected:
        parts.append(_listing("unexpected (in the source, not in the model)", unexpected))
    if mismatched:
        parts.append(_listing("shape mismatch", mismatched))
    parts.append(hint)
    return ValueError("\n".join(parts))


def check_finite(variables: Mapping[str, Any], source: str) -> None:
    """Raises UserError naming every array of `variables` (from `source`, a file or a run)
    that holds NaN or Inf: weights like that would only show as a NaN loss at step 1."""
    bad = []
    for path, value in flatten(variables).items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            bad.append(f"{full_name(path)} ({nan} NaN, {inf} Inf of {value.size})")
    if bad:
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise UserError(f"{source} holds weights that are not finite: {', '.join(bad[:MAX_LISTED])}"
                        f"{more}; a model with them outputs NaN. Use weights saved before they "
                        "diverged, or export them again.")


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def load_pretrained(target: Mapping[str, Any], source: Mapping[str, Any], *,
                    reinit: Patterns = ()) -> tuple[dict[str, Any], LoadReport]:
    """`target`'s variables with every array taken from `source` by name.

    `target`: the new model's initialized variables ({'params': ..., 'batch_stats': ...}).
    `source`: the pretrained variables, e.g. from `cnn_jax.train.checkpoint.restore_variables`.
    `reinit`: patterns of names kept at `target`'s initialization (the new head); the source's
    arrays under those names are ignored, whatever their shape.

    Returns the new variables (target's structure and dtypes) and a `LoadReport`. Raises a
    ValueError listing every array missing from the source, unexpected in it, or of another
    shape, unless `reinit` names it.
    """
    is_reinit = matcher(reinit)
    target_flat, source_flat = flatten(target), flatten(source)
    report = LoadReport()
    missing, mismatched = [], []
    out = {}
    for path, value in target_flat.items():
        name = leaf_name(path)
        if is_reinit(name):
            out[path] = value
            report.reinitialized.append(full_name(path))
            if path in source_flat:
                report.ignored.append(full_name(path))
        elif path not in source_flat:
            missing.append(f"{full_name(path)} {_shape(value)}")
        elif _shape(source_flat[path]) != _shape(value):
            mismatched.append(f"{full_name(path)}: source {_shape(source_flat[path])}, "
                              f"model {_shape(value)}")
        else:
            out[path] = jax.numpy.asarray(source_flat[path], dtype=value.dtype)
            report.loaded.append(full_name(path))
            report.loaded_values += int(np.size(value))
    unexpected = []
    for path in source_flat:
        if path in target_flat:
            continue
        if is_reinit(leaf_name(path)):
            report.ignored.append(full_name(path))
        else:
            unexpected.append(f"{full_name(path)} {_shape(source_flat[path])}")
    check_finite(unflatten({path: source_flat[path] for path in source_flat if path in target_flat
                            and not is_reinit(leaf_name(path))}), "The pretrained variables")
    if missing or unexpected or mismatched:
        raise load_error(
            "the pretrained variables", missing, unexpected, mismatched,
            "Names in `reinit` (e.g. reinit=('head',) for a classifier with another number of "
            "classes) keep the model's initialization and ignore the source's arrays.")
    return unflatten(out), report

