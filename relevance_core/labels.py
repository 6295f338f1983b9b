"""Ordinal relevance grades. The order is part of the artifact contract."""

from typing import Final

LABELS: Final[tuple[str, str, str]] = ("irrelevant", "weak", "strong")
LABEL2ID: Final[dict[str, int]] = {name: i for i, name in enumerate(LABELS)}
NUM_LABELS: Final[int] = len(LABELS)
