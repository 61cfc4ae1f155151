"""Adapter refs: `name` (prod alias, else latest), `name:3` (version), `name@canary` (alias),
and a version's served name (`name-v3-<12 hex>`, one exact content)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
VERSION_PATTERN = re.compile(r"[0-9]{1,10}")  # ASCII only: str.isdigit takes other scripts' digits
MAX_VERSION = 2**31 - 1  # the version column's range (a 32-bit integer in PostgreSQL)
PROD_ALIAS = "prod"
# Names the serving layer gives a meaning of its own; an adapter may not take them.
RESERVED_NAMES = frozenset({"base", "auto"})
# Adapters named so are weighted mixes Switchboard derives from others (their manifests list
# the components); a hand publish may not take the prefix.
MIX_PREFIX = "mix-"
DIGEST_CHARS = 12  # of the content digest, in a served name
# `served_name`'s shape. No adapter name may take it, so a served name is never ambiguous.
SERVED_NAME = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9_-]{0,62})-v(?P<version>[0-9]{1,10})"
    rf"-(?P<digest>[0-9a-f]{{{DIGEST_CHARS}}})"
)


def validate_name(name: str, what: str = "adapter name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SwitchboardError(
            ErrorCode.INVALID_NAME,
            f"invalid {what} {name!r}: use 1-63 characters of lowercase letters, digits, "
            "'-' and '_', starting with a letter or digit",
        )
    if what == "adapter name" and name in RESERVED_NAMES:
        raise SwitchboardError(
            ErrorCode.INVALID_NAME, f"{name!r} is reserved and cannot name an adapter"
        )
    if what == "adapter name" and SERVED_NAME.fullmatch(name):
        raise SwitchboardError(
            ErrorCode.INVALID_NAME,
            f"{name!r} has the shape of a served name (name-vN-<12 hex>) and cannot name an "
            "adapter",
        )
    return name


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A parsed ref. At most one of `version` and `alias` is set; `digest` (a served name's)
    only with `version`."""

    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        if not isinstance(text, str) or not text:
            raise SwitchboardError(ErrorCode.INVALID_REF, "empty adapter ref")
        served = SERVED_NAME.fullmatch(text)
        if served is not None and 1 <= int(served["version"]) <= MAX_VERSION:
            return cls(served["name"], int(served["version"]), digest=served["digest"])
        if ":" in text and "@" in text:
            raise SwitchboardError(
                ErrorCode.INVALID_REF,
                f"invalid ref {text!r}: use name, name:VERSION or name@ALIAS, not both",
            )
        if ":" in text:
            name, _, raw = text.partition(":")
            if not VERSION_PATTERN.fullmatch(raw) or not 1 <= int(raw) <= MAX_VERSION:
                raise SwitchboardError(
                    ErrorCode.INVALID_REF,
                    f"invalid ref {text!r}: the version after ':' must be an integer "
                    f"from 1 to {MAX_VERSION}",
                )
            return cls(validate_name(name), version=int(raw))
        if "@" in text:
            name, _, alias = text.partition("@")
            return cls(validate_name(name), alias=validate_name(alias, "alias"))
        return cls(validate_name(text))

    def __str__(self) -> str:
        if self.digest is not None and self.version is not None:
            return served_name(self.name, self.version, self.digest)
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def served_name(name: str, version: int, content_digest: str) -> str:
    """What an engine calls a version: unique per content, since vLLM keys caches by it."""
    return f"{name}-v{version}-{content_digest[:DIGEST_CHARS]}"
