"""Structured output's grammars, compiled with xgrammar (the library vLLM uses): a `Guide`
(JSON schema, regular expression, choice, EBNF grammar) becomes a compiled grammar over the
base's vocabulary, checked once per distinct guide and kept (`Grammars.compile`).

The transformers engine runs one matcher per guided row (`hf.decode.Row`): before each step it
writes the row's allowed tokens into the batch's bitmask, after it the chosen token advances
the matcher. vLLM compiles the same guide itself, with the same library and the same
whitespace rule (none between JSON tokens: small models otherwise pad answers with whitespace
to max_tokens)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

log = logging.getLogger(__name__)

KEEP = 64  # compiled grammars kept (a JSON schema's takes milliseconds to compile, or more)

GuideKind = Literal["json", "regex", "choice", "grammar"]


@dataclass(frozen=True, slots=True)
class Guide:
    """Structured output: every answer matches `spec`, a JSON schema (`json`, as JSON text;
    `{"type": "object"}` for any object), a regular expression, a choice of strings (`choice`,
    a JSON list) or an EBNF grammar (`grammar`, xgrammar's and vLLM's dialect)."""

    kind: GuideKind
    spec: str


def choice_regex(choices: list[str]) -> str:
    """A regular expression matching exactly one of `choices` (vLLM's `choice`)."""
    return "(" + "|".join(re.escape(choice) for choice in choices) + ")"


class Grammars:
    """Compiled grammars for one tokenizer and vocabulary (the logits' width)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
        )
        self.vocab_size = vocab_size
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        self._compiled: OrderedDict[Guide, Any] = OrderedDict()
        self._lock = threading.Lock()  # the server's threads and the engine's share it

    def compile(self, guide: Guide) -> Any:
        """`guide` compiled; a guide the library cannot compile is a 400 naming the reason."""
        with self._lock:
            compiled = self._compiled.get(guide)
            if compiled is not None:
                self._compiled.move_to_end(guide)
                return compiled
        try:
            compiled = self._compile(guide)
        except (ValueError, RuntimeError, TypeError) as exc:  # xgrammar's own errors derive
            reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(exc)).strip()  # its log prefix
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, f"the {guide.kind} constraint does not compile: {reason}"
            ) from exc
        with self._lock:
            self._compiled[guide] = compiled
            while len(self._compiled) > KEEP:
                self._compiled.popitem(last=False)
        return compiled

    def _compile(self, guide: Guide) -> Any:
        if guide.kind == "json":
            return self._compiler.compile_json_schema(
                guide.spec, any_whitespace=False, separators=(",", ":")
            )
        if guide.kind == "regex":
            return self._compiler.compile_regex(guide.spec)
        if guide.kind == "choice":
            return self._compiler.compile_regex(choice_regex(json.loads(guide.spec)))
        return self._compiler.compile_grammar(guide.spec)
