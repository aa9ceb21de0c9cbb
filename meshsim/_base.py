"""The base class of every scenario model: frozen, camelCase in files, unknown fields rejected."""

from __future__ import annotations

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
