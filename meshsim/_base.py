"""The base class of every scenario model: frozen, camelCase in files, unknown fields rejected."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Frozen pydantic model whose fields are written in camelCase in scenario files.

    Python code uses the snake_case attribute names (``pod.max_pending``); files use Istio's
    camelCase style (``maxPending``). Unknown keys are errors, so a typo never passes silently.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        revalidate_instances="never",
    )


def kind_or(default: str) -> Callable[[Any], str]:
    """A union discriminator: the value's ``kind``, or ``default`` when it has none.

    Lets the common case be written without ``kind:`` (``errors: {rate: 0.01}``).
    """

    def kind(value: Any) -> str:
        if isinstance(value, Mapping):
            return str(value.get("kind", default))
        return getattr(value, "kind", default)

    return kind
