"""One prompt template, rendered to token ids, shared by training and serving.

Layout: ``<query part><item part><suffix>``. The query comes first so that the
pairs of one request share a token prefix (vLLM prefix caching, KV reuse). The
item part is truncated to fit; the template's fixed parts never are, and the
suffix's last token is the one the classification head reads. The query is cut
only when asked (``cut_query``: the service's ``auto_truncate``), to half the max
length, so a long query still leaves the item room.

Each part is tokenized on its own and the ids are concatenated, so the query
prefix is byte-identical across a request's items and truncation is exact.
Special-token strings inside user text are split into ordinary tokens: a
title containing ``<|im_end|>`` can neither end the prompt nor look like padding.

Two template versions, recorded in each artifact's manifest: ``darl-prompt-v1``
renders the item as its title and then its description; ``darl-prompt-v2`` (new
artifacts) renders the title only. Home Depot, the training domain, has titles
only: a v1 model never saw a description in training, and on CrowdFlower
validation pairs the same model scored macro-F1 0.354 / kappa 0.092 with them
and 0.448 / 0.283 without (docs/results-findings.md). An artifact trained on
data with descriptions can keep v1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

# Template version → whether the item description is part of the prompt.
TEMPLATES: Final[dict[str, bool]] = {"darl-prompt-v1": True, "darl-prompt-v2": False}
TEMPLATE_VERSION: Final[str] = "darl-prompt-v2"  # what new artifacts are trained with

QUERY_TEMPLATE: Final[str] = "Query: {query}\n"
TITLE_TEMPLATE: Final[str] = "Item: {title}"
DESCRIPTION_TEMPLATE: Final[str] = "\nDescription: {description}"
SUFFIX: Final[str] = "\nRelevance:"

DEFAULT_MAX_LENGTH: Final[int] = 128


class PromptTooLongError(ValueError):
    """The query plus the template's fixed parts already exceed the max length."""


class TextTooLongError(ValueError):
    """Text over its character limit where cutting is off."""


def cut_to_limit(what: str, text: str | None, limit: int, refuse: str | None = None) -> tuple[str | None, bool]:
    """``text`` within ``limit`` characters and whether it was cut: the service's character limits
    (``max_query_chars``, ``max_field_chars``), one rule for serving and batch scoring. ``refuse`` (why
    cutting is off) makes over-long text a ``TextTooLongError`` instead."""
    if text is None or len(text) <= limit:
        return text, False
    if refuse is not None:
        raise TextTooLongError(f"{what} has {len(text)} characters; at most {limit} ({refuse})")
    return text[:limit], True


@dataclass(frozen=True, slots=True)
class Rendered:
    """Token ids of one (query, item) pair and whether its item text was cut."""

    token_ids: tuple[int, ...]
    truncated: bool
    query_truncated: bool = False

    def __len__(self) -> int:
        return len(self.token_ids)


def item_text(title: str, description: str | None = None, with_description: bool = True) -> str:
    """The item part of the prompt; the description follows the title if given and read."""
    text = TITLE_TEMPLATE.format(title=title)
    if description and with_description:
        text += DESCRIPTION_TEMPLATE.format(description=description)
    return text


class PromptRenderer:
    """Renders pairs with one tokenizer and one max length.

    ``tokenizer`` is a Hugging Face tokenizer (fast or slow); it is called with
    ``add_special_tokens=False`` and ``split_special_tokens=True``. ``template_version``: a key of
    ``TEMPLATES`` (the artifact's manifest says which).
    """

    def __init__(
        self, tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH, template_version: str = TEMPLATE_VERSION
    ) -> None:
        if template_version not in TEMPLATES:
            raise ValueError(f"unknown prompt template {template_version!r}; known: {sorted(TEMPLATES)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._template_version = template_version
        self.reads_description = TEMPLATES[template_version]
        self._suffix_ids = self._encode([SUFFIX])[0]
        # The smallest prompt must leave room for at least one item token.
        if len(self._suffix_ids) + 1 >= max_length:
            raise ValueError(f"max_length={max_length} leaves no room for the query and item")

    @property
    def template_version(self) -> str:
        return self._template_version

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            split_special_tokens=True,
            return_attention_mask=False,
        )
        return [list(ids) for ids in out["input_ids"]]

    def query_ids(self, query: str, cut: bool = False) -> tuple[list[int], bool]:
        """Token ids of the query part and whether they were cut.

        Without ``cut`` a query that leaves no room for an item raises ``PromptTooLongError``;
        with it, a query part over half the max length keeps its first tokens and its newline.
        """
        ids = self._encode([QUERY_TEMPLATE.format(query=query)])[0]
        was_cut = cut and len(ids) > self.max_length // 2
        if was_cut:
            newline = self._encode(["\n"])[0]
            ids = ids[: self.max_length // 2 - len(newline)] + newline
        if len(ids) + len(self._suffix_ids) + 1 > self.max_length:
            raise PromptTooLongError(
                f"query is {len(ids)} tokens; with the template it must leave room for "
                f"an item within max_length={self.max_length}"
            )
        return ids, was_cut

    def render_many(
        self, query: str, items: Sequence[tuple[str, str | None]], cut_query: bool = False
    ) -> list[Rendered]:
        """Render one query against many (title, description) items.

        The query is tokenized once and the items in one batched tokenizer call.
        """
        prefix, query_cut = self.query_ids(query, cut_query)
        budget = self.max_length - len(prefix) - len(self._suffix_ids)
        item_ids = self._encode([item_text(t, d, self.reads_description) for t, d in items])
        return [
            Rendered(
                token_ids=tuple(prefix + ids[:budget] + self._suffix_ids),
                truncated=len(ids) > budget,
                query_truncated=query_cut,
            )
            for ids in item_ids
        ]

    def render(self, query: str, title: str, description: str | None = None) -> Rendered:
        """Render one pair; same ids as ``render_many`` gives for it."""
        return self.render_many(query, [(title, description)])[0]
