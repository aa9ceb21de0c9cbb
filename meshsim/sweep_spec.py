"""A sweep written down (``meshsim sweep FILE --spec sweep.yaml``) and the ``--grid`` /
``--sample`` options that say the same on the command line."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from ._base import Model
from .errors import Issue, ScenarioError, from_validation_error
from .scenario import parse_path_lenient
from .yamlio import load_file, parse_scalar

__all__ = ["SweepSpec", "load_spec", "parse_grid", "parse_samples"]


class SweepSpec(Model):
    """What to sweep, e.g.::

        grid:
          mesh.destinationRules.cart.trafficPolicy.connectionPool.http.http1MaxPendingRequests:
            [1, 10, 100]
        replications: 5
        variants: [baseline, bad-pod]
    """

    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    """Values of each path; every combination is a point."""
    samples: dict[str, Annotated[list[Any], Field(min_length=2, max_length=2)]] = Field(
        default_factory=dict)
    """``[low, high]`` of each path, sampled (integers when both ends are)."""
    n_samples: PositiveInt | None = None
    """How many points to sample (with ``samples``)."""
    design: Literal["lhs", "random"] = "lhs"
    """Latin hypercube (``lhs``) or independent uniform draws (``random``)."""
    replications: PositiveInt = 1
    """Runs per point and variant, on independent seeds."""
    seed: Annotated[int, Field(ge=0)] | None = None
    """Root seed; default the scenario's."""
    variants: list[str] = Field(default_factory=list)
    """Variants of the scenario to run each point in; default the scenario as written."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Changes for every run, as ``--set`` takes them."""

    @model_validator(mode="after")
    def _something_to_sweep(self) -> SweepSpec:
        if not self.grid and not self.samples:
            raise ValueError("give 'grid' (values per path) or 'samples' (ranges per path)")
        if self.samples and self.n_samples is None:
            raise ValueError("'samples' needs 'nSamples': how many points to draw")
        return self


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read a sweep spec file; problems are reported with their line."""
    data, lines = load_file(path)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, SweepSpec, data, os.fspath(path), lines) from None


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``--grid PATH=V1,V2,...`` (or ``PATH=[V1, V2]``) into ``{path: [values]}``."""
    out: dict[str, list[Any]] = {}
    issues = []
    for pair in pairs:
        path, sep, text = pair.partition("=")
        path = path.strip()
        if not sep or not path or not text.strip():
            issues.append(Issue((), f"expected PATH=V1,V2,..., got {pair!r}"))
            continue
        where = parse_path_lenient(path)
        if text.strip().startswith("["):
            values = parse_scalar(text, source="--grid", path=where)
        else:
            values = [parse_scalar(v.strip(), source="--grid", path=where)
                      for v in text.split(",")]
        out[path] = values
    if issues:
        raise ScenarioError("--grid", issues)
    return out


def parse_samples(pairs: list[str]) -> dict[str, list[Any]]:
    """``--sample PATH=LOW..HIGH`` into ``{path: [low, high]}``."""
    out: dict[str, list[Any]] = {}
    issues = []
    for pair in pairs:
        path, sep, text = pair.partition("=")
        low, dots, high = text.partition("..")
        if not sep or not path.strip() or not dots:
            issues.append(Issue((), f"expected PATH=LOW..HIGH, got {pair!r}"))
            continue
        where = parse_path_lenient(path.strip())
        bounds = [parse_scalar(v.strip(), source="--sample", path=where) for v in (low, high)]
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            issues.append(Issue(where, f"expected numbers LOW..HIGH, got {text!r}"))
            continue
        out[path.strip()] = bounds
    if issues:
        raise ScenarioError("--sample", issues)
    return out
