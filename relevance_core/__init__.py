"""The contract shared by training and serving.

Label order, prompt rendering, artifact manifest and logits->probabilities live
here so that the two halves of the project cannot drift apart. Light
dependencies only: heavy libraries are imported inside the functions that need
them.
"""

from relevance_core.labels import LABEL2ID, LABELS, NUM_LABELS
from relevance_core.postprocess import expected_grade, probs_from_logits
from relevance_core.prompt import TEMPLATE_VERSION, PromptRenderer, Rendered

__all__ = [
    "LABEL2ID",
    "LABELS",
    "NUM_LABELS",
    "TEMPLATE_VERSION",
    "PromptRenderer",
    "Rendered",
    "expected_grade",
    "probs_from_logits",
]
