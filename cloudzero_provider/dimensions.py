"""The dimensions LiteLLM spend can be grouped by, and how each one becomes a CBF tag.

Pure: no Airflow imports. The SQL for each dimension lives in ``hooks/litellm.py``; this module names them,
says which CBF tag carries each one, and validates a user's choice.

Default set and why
-------------------
CloudZero accepts at most 1,000,000 rows per stream and month, about 1,300 rows per hour. Every dimension
multiplies the rows of an hour by its number of distinct values *active in that hour*. The default groups by
team (id and alias), organization, internal user, model, model group and provider: a deployment with 30 teams,
200 active users and 10 models typically yields a few hundred rows an hour, because users mostly stay within
one team and a handful of models. High-cardinality dimensions -- end user (your customers), API key, call type
and request tags -- are opt-in: add them when your volume allows (``dimensions=[...]`` on the extract operator or
the DAG's ``dimensions`` setting) and watch the ``rows`` figure each window logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudzero_provider.cbf_rules import TAG_KEY_RE

TAG_DIMENSION_PREFIX = "tag:"
# A request-tag prefix as users write it before the colon, e.g. ``taskName`` in ``taskName:classify``.
TAG_NAME_RE = re.compile(r"[A-Za-z0-9_.\-@=+/]{1,64}")


@dataclass(frozen=True)
class Dimension:
    """One grouping dimension.

    :param name: What users write in ``dimensions=[...]``.
    :param tag: The CBF tag key that carries the value (``resource/tag:<tag>``).
    :param description: One line for docs and the DAG's ``doc_md``.
    """

    name: str
    tag: str
    description: str


BUILTIN: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension("team_id", "team_id", "LiteLLM team id"),
        Dimension("team_alias", "team_alias", "team alias, from the request's metadata"),
        Dimension("organization_id", "organization_id", "organization id"),
        Dimension("user", "user", "internal user id (LiteLLM_UserTable)"),
        Dimension("end_user", "end_user", "end user / customer: the `user` field of the OpenAI request"),
        Dimension("api_key", "api_key", "virtual key: the first 16 hex digits of its hash"),
        Dimension("api_key_alias", "api_key_alias", "virtual key alias, from the request's metadata"),
        Dimension("model", "model", "model as called at the provider"),
        Dimension("model_group", "model_group", "model name the caller asked LiteLLM for"),
        Dimension("provider", "provider", "custom_llm_provider (openai, anthropic, ...)"),
        Dimension("call_type", "call_type", "completion, embedding, ..."),
    )
}

DEFAULT_DIMENSIONS: tuple[str, ...] = (
    "team_id",
    "team_alias",
    "organization_id",
    "user",
    "model",
    "model_group",
    "provider",
)


def tag_dimension(prefix: str) -> Dimension:
    """The dimension for request tags ``<prefix>:<value>``: the value of the first such tag of a request."""
    if not TAG_NAME_RE.fullmatch(prefix):
        raise ValueError(
            f"request-tag prefix {prefix!r} must be 1-64 letters, digits or _ . - @ = + / (no spaces or colons)"
        )
    return Dimension(
        f"{TAG_DIMENSION_PREFIX}{prefix}", f"tag.{prefix}", f"value of request tag {prefix}:<value>"
    )


def resolve(names: Iterable[str] | None) -> list[Dimension]:
    """Validate a user's dimension list (``None`` means the default); clear errors name the bad entry."""
    chosen = list(DEFAULT_DIMENSIONS if names is None else names)
    if isinstance(names, str):
        raise ValueError("dimensions must be a list of names, not one string")
    out: list[Dimension] = []
    seen: set[str] = set()
    for name in chosen:
        if not isinstance(name, str):
            raise ValueError(f"dimension {name!r} is not a string")
        if name.startswith(TAG_DIMENSION_PREFIX):
            dim = tag_dimension(name[len(TAG_DIMENSION_PREFIX) :])
        elif name in BUILTIN:
            dim = BUILTIN[name]
        else:
            raise ValueError(
                f"unknown dimension {name!r}; choose from {sorted(BUILTIN)} or 'tag:<prefix>' for request tags"
            )
        if dim.name in seen:
            raise ValueError(f"dimension {name!r} is listed twice")
        assert TAG_KEY_RE.fullmatch(dim.tag)
        seen.add(dim.name)
        out.append(dim)
    return out


def names(dims: Sequence[Dimension]) -> list[str]:
    return [d.name for d in dims]
