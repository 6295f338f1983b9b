"""The cheap baselines of the results table: lexical overlap → gradient-boosted trees, and the class prior.

A relevance model that loses to word overlap is not yet a product, so every table has
these rows, trained on the same pairs as the model rows. Features of a (query, item)
pair are word, stem, character n-gram and TF-IDF overlaps between the query and the
item's title and description (a dozen-odd numbers); scikit-learn's
``HistGradientBoostingClassifier`` maps them to the three grades. The prior row predicts
the training label distribution for every pair (its expected grade is the training mean).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from relevance_core.labels import NUM_LABELS
from training.config import TrainConfig
from training.data import Pair

_WORD = re.compile(r"[a-z0-9]+")

HAND_FEATURES = (
    "q_words",
    "title_words",
    "desc_words",
    "title_word_overlap",
    "title_stem_overlap",
    "title_fuzzy_overlap",
    "desc_word_overlap",
    "item_word_overlap",
    "last_word_in_title",
    "first_word_in_title",
    "numbers_in_title",
    "title_char3_containment",
    "title_char3_jaccard",
    "title_char5_containment",
    "desc_char3_containment",
    "first_match_position",
)
TFIDF_FEATURES = ("title_tfidf_word", "title_tfidf_char", "item_tfidf_word")
FEATURES = HAND_FEATURES + TFIDF_FEATURES  # the model's columns


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A crude stem: plural/verb endings off, then the first 5 characters."""
    for suffix in ("ies", "es", "s", "ing", "ed"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:5]


def char_ngrams(text: str, n: int) -> set[str]:
    t = " ".join(words(text))
    return {t[i : i + n] for i in range(max(0, len(t) - n + 1))}


def _share(q: Sequence[str], other: set[str]) -> float:
    return sum(w in other for w in q) / len(q) if q else 0.0


def _fuzzy(q: Sequence[str], other: Sequence[str]) -> float:
    """Mean over query words of the best character-level match in ``other`` (typos, compounds)."""
    if not q or not other:
        return 0.0
    return float(np.mean([max(SequenceMatcher(None, w, o).ratio() for o in other) for w in q]))


def pair_features(query: str, title: str, description: str) -> list[float]:
    """``HAND_FEATURES`` of one pair (the TF-IDF columns need fitted vectorizers: ``LexicalModel``)."""
    q, t, d = words(query), words(title), words(description)
    ts, ds = set(t), set(d)
    q_stems, t_stems = [stem(w) for w in q], {stem(w) for w in t}
    nums = [w for w in q if w.isdigit()]
    positions = [t.index(w) / len(t) for w in q if w in ts]
    q3, t3, d3 = char_ngrams(query, 3), char_ngrams(title, 3), char_ngrams(description, 3)
    q5, t5 = char_ngrams(query, 5), char_ngrams(title, 5)
    return [
        len(q),
        len(t),
        len(d),
        _share(q, ts),
        _share(q_stems, t_stems),
        _fuzzy(q, t),
        _share(q, ds),
        _share(q, ts | ds),
        float(bool(q) and q[-1] in ts),
        float(bool(q) and q[0] in ts),
        _share(nums, ts) if nums else -1.0,
        len(q3 & t3) / len(q3) if q3 else 0.0,
        len(q3 & t3) / len(q3 | t3) if q3 | t3 else 0.0,
        len(q5 & t5) / len(q5) if q5 else 0.0,
        len(q3 & d3) / len(q3) if q3 else 0.0,
        min(positions) if positions else 1.0,
    ]


def _row_cosine(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine of two L2-normalised sparse matrices."""
    return np.asarray(a.multiply(b).sum(axis=1)).ravel()


class LexicalModel:
    """Overlap features → ``HistGradientBoostingClassifier``; ``predict_proba`` like the LLM rows."""

    def __init__(self, seed: int = 13, max_iter: int = 400, learning_rate: float = 0.05) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.seed = seed
        self.clf = HistGradientBoostingClassifier(
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_leaf_nodes=31,
            l2_regularization=1.0,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=30,
            random_state=seed,
        )
        self.word_vec: Any = None
        self.char_vec: Any = None

    def _fit_vectorizers(self, pairs: Sequence[Pair]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [p.query for p in pairs] + sorted({f"{p.title} {p.description}" for p in pairs})
        self.word_vec = TfidfVectorizer(token_pattern=r"[a-z0-9]+", sublinear_tf=True).fit(texts)
        self.char_vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2).fit(texts)

    def features(self, pairs: Sequence[Pair]) -> np.ndarray:
        hand = np.array([pair_features(p.query, p.title, p.description) for p in pairs], dtype=np.float64)
        queries = [p.query for p in pairs]
        titles = [p.title for p in pairs]
        items = [f"{p.title} {p.description}" for p in pairs]
        qw, qc = self.word_vec.transform(queries), self.char_vec.transform(queries)
        tfidf = np.stack(
            [
                _row_cosine(qw, self.word_vec.transform(titles)),
                _row_cosine(qc, self.char_vec.transform(titles)),
                _row_cosine(qw, self.word_vec.transform(items)),
            ],
            axis=1,
        )
        return np.concatenate([hand, tfidf], axis=1)

    def fit(self, pairs: Sequence[Pair]) -> LexicalModel:
        self._fit_vectorizers(pairs)
        self.clf.fit(self.features(pairs), np.array([p.label for p in pairs]))
        return self

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        if not pairs:
            return np.zeros((0, NUM_LABELS))
        probs = np.zeros((len(pairs), NUM_LABELS))
        probs[:, self.clf.classes_] = self.clf.predict_proba(self.features(pairs))
        return probs


class PriorModel:
    """The training label distribution for every pair: what a model must beat to carry information."""

    def __init__(self) -> None:
        self.prior = np.full(NUM_LABELS, 1.0 / NUM_LABELS)

    def fit(self, pairs: Sequence[Pair]) -> PriorModel:
        counts = np.bincount([p.label for p in pairs], minlength=NUM_LABELS).astype(np.float64)
        self.prior = counts / counts.sum()
        return self

    def predict_proba(self, pairs: Sequence[Pair]) -> np.ndarray:
        return np.tile(self.prior, (len(pairs), 1))


def run_cheap_baseline(cfg: TrainConfig, kind: str, progress: bool = True) -> dict[str, Any]:
    """Fit the ``lexical`` or ``prior`` row on ``cfg``'s training pairs and evaluate it like a DaRL run.

    The training pairs are the DaRL rows' stage-2 pairs: ``finetune.max_train_pairs`` of the train
    split (same seed), plus any ``data.extra_files`` (e.g. a DaRL run's ``dasa_pairs.csv``).
    """
    import json
    import time

    from relevance_core.host import machine
    from training.data import load_splits, subsample
    from training.evaluate import summarize, with_candidates, write_report
    from training.ranking import training_foreign_pairs

    t0 = time.perf_counter()
    splits = load_splits(cfg)
    train = subsample(splits.train, cfg.finetune.max_train_pairs, cfg.seed + 10)
    # the DaRL rows' foreign items too (`finetune.foreign_per_query`): the same kind of training pairs
    train += training_foreign_pairs(train, cfg.finetune.foreign_per_query, cfg.seed + 11)
    model = LexicalModel(cfg.seed) if kind == "lexical" else PriorModel()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    groups = {}
    for name, pairs in (("id", splits.test_id), ("ood", splits.test_ood)):
        if pairs:
            scored = with_candidates(pairs, cfg.eval.foreign_per_query, cfg.eval.candidate_seed)
            groups[name] = (scored, model.predict_proba(scored))
    run_dir = cfg.run_path
    metrics = write_report(run_dir / "eval", groups, f"{cfg.name}: {kind} baseline", cfg.eval.ece_bins)
    summary = {
        "name": cfg.name,
        "kind": kind,
        **summarize(metrics),
        "stage2": {"train_pairs": len(train)},
        "timings_s": {"fit": round(fit_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "machine": machine(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
