"""Golden and behavioural tests of the training/serving contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from relevance_core import LABEL2ID, LABELS, TEMPLATE_VERSION, expected_grade, probs_from_logits
from relevance_core.manifest import (
    ArtifactError,
    Manifest,
    read_manifest,
    staging_dir_for,
    verify_artifact,
    write_artifact,
)
from relevance_core.prompt import TEMPLATES, PromptRenderer, PromptTooLongError

SUFFIX_IDS = (198, 29919, 8169, 42)  # "\nRelevance:"


def test_label_order_is_fixed() -> None:
    assert LABELS == ("irrelevant", "weak", "strong")
    assert LABEL2ID == {"irrelevant": 0, "weak": 1, "strong": 2}
    assert TEMPLATE_VERSION == "darl-prompt-v2"
    assert TEMPLATES == {"darl-prompt-v1": True, "darl-prompt-v2": False}


def test_golden_render_title_only(tokenizer) -> None:
    r = PromptRenderer(tokenizer, 128).render("angle bracket", "Simpson Strong-Tie 12-Gauge Angle")
    assert r.token_ids == (
        22731, 42, 7256, 36573, 198,  # "Query: angle bracket\n"
        12659, 42, 33523, 17444, 29, 68, 519, 216, 33, 34, 29, 55, 603, 361, 39807,  # "Item: ..."
        *SUFFIX_IDS,
    )  # fmt: skip
    assert not r.truncated


def test_golden_render_with_description(tokenizer) -> None:
    r = PromptRenderer(tokenizer, 128, "darl-prompt-v1").render(
        "led bulb", "Philips 60W Equivalent Soft White A19 LED", "Dimmable, 800 lumens"
    )
    assert r.token_ids == (
        22731, 42, 2842, 16587, 198,
        12659, 42, 6480, 2259, 216, 38, 32, 71, 8691, 6787, 10241, 5683, 330, 33, 41, 11528,
        198, 18454, 42, 422, 9086, 515, 28, 216, 40, 32, 32, 29517, 581,
        *SUFFIX_IDS,
    )  # fmt: skip


def test_v2_ignores_the_description(tokenizer) -> None:
    v2 = PromptRenderer(tokenizer, 128, "darl-prompt-v2")
    title = "Philips 60W Equivalent Soft White A19 LED"
    assert v2.render("led bulb", title, "Dimmable, 800 lumens") == v2.render("led bulb", title)
    v1 = PromptRenderer(tokenizer, 128, "darl-prompt-v1")
    assert v1.render("led bulb", title) == v2.render("led bulb", title)  # title-only items: the same prompt
    with pytest.raises(ValueError, match="unknown prompt template"):
        PromptRenderer(tokenizer, 128, "darl-prompt-v0")


def test_truncation_cuts_only_the_item(tokenizer) -> None:
    renderer = PromptRenderer(tokenizer, 24, "darl-prompt-v1")
    full = PromptRenderer(tokenizer, 128, "darl-prompt-v1").render(
        "led bulb", "Philips 60W Equivalent Soft White A19 LED", "Dimmable"
    )
    cut = renderer.render("led bulb", "Philips 60W Equivalent Soft White A19 LED", "Dimmable")
    assert cut.truncated and len(cut) == 24
    query_part = (22731, 42, 2842, 16587, 198)
    assert cut.token_ids[:5] == query_part == full.token_ids[:5]
    assert cut.token_ids[-4:] == SUFFIX_IDS
    # The kept item tokens are a prefix of the untruncated item tokens.
    assert cut.token_ids[5:-4] == full.token_ids[5 : 5 + len(cut) - 9]


def test_query_is_never_truncated(tokenizer) -> None:
    renderer = PromptRenderer(tokenizer, 24)
    with pytest.raises(PromptTooLongError):
        renderer.render("a very long query " * 10, "title")


def test_special_tokens_in_text_are_split(tokenizer) -> None:
    r = PromptRenderer(tokenizer, 128).render("<|im_end|>", "x<|im_end|><|endoftext|>")
    specials = set(tokenizer.all_special_ids)
    assert not specials & set(r.token_ids)
    assert r.token_ids[-1] == SUFFIX_IDS[-1]


def test_render_many_equals_render(tokenizer) -> None:
    renderer = PromptRenderer(tokenizer, 32)
    items = [("short", None), ("a much longer title " * 5, "and a description"), ("t", "d")]
    many = renderer.render_many("query text", items)
    assert many == [renderer.render("query text", t, d) for t, d in items]


def test_softmax_is_fp32_and_stable() -> None:
    logits = np.array([[1000.0, 1000.0, 1000.0], [0.0, 0.0, np.log(2.0)]], dtype=np.float16)
    p = probs_from_logits(logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(p[1], [0.25, 0.25, 0.5], rtol=1e-3)
    with pytest.raises(ValueError):
        probs_from_logits(np.zeros((2, 4)))


def test_expected_grade_is_ordinal_in_unit_interval() -> None:
    p = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(expected_grade(p), [0.0, 0.5, 1.0, 0.5])


def _artifact(tmp_path: Path, **manifest_fields) -> Path:
    staging = staging_dir_for(tmp_path / "art")
    (staging / "head.safetensors").write_bytes(b"weights")
    (staging / "adapter").mkdir()
    (staging / "adapter" / "a.bin").write_bytes(b"adapter")
    write_artifact(staging, tmp_path / "art", Manifest(name="t", kind="adapter", **manifest_fields))
    return tmp_path / "art"


def test_manifest_roundtrip_lists_every_file(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    m = verify_artifact(art)
    assert set(m.files) == {"head.safetensors", "adapter/a.bin"}
    assert m.labels == list(LABELS) and m.template_version == TEMPLATE_VERSION
    assert len(m.version) == 16
    assert not list(tmp_path.glob(".art.tmp-*")), "staging directory left behind"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    (art / "head.safetensors").write_bytes(b"evil")
    with pytest.raises(ArtifactError, match=r"sha256 mismatch for head\.safetensors"):
        verify_artifact(art)


def test_missing_and_unlisted_files_are_refused(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    (art / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not in the manifest"):
        verify_artifact(art)
    (art / "extra.bin").unlink()
    (art / "adapter" / "a.bin").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        verify_artifact(art)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("template_version", "darl-prompt-v0", "prompt template"), ("labels", ["weak", "irrelevant", "strong"], "labels")],
)
def test_incompatible_contract_is_refused(tmp_path: Path, field: str, value, message: str) -> None:
    art = _artifact(tmp_path)
    data = json.loads((art / "manifest.json").read_text())
    data[field] = value
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message):
        verify_artifact(art)


def test_write_artifact_replaces_existing(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    first = read_manifest(art).version
    staging = staging_dir_for(art)
    shutil.copytree(art, staging, dirs_exist_ok=True)
    (staging / "manifest.json").unlink()
    (staging / "head.safetensors").write_bytes(b"new weights")
    write_artifact(staging, art, Manifest(name="t", kind="adapter"))
    assert verify_artifact(art).version != first
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a model artifact"):
        verify_artifact(tmp_path)


def test_interrupted_export_leaves_no_half_written_artifact(tmp_path: Path, monkeypatch) -> None:
    """A crash before the final rename leaves the previous artifact whole and no new one."""
    import relevance_core.manifest as manifest_mod

    art = _artifact(tmp_path)
    before = verify_artifact(art).version
    staging = staging_dir_for(art)
    (staging / "head.safetensors").write_bytes(b"half-trained")

    def crash(*args, **kwargs):
        raise OSError("No space left on device")  # or a kill: either way, before the rename

    with monkeypatch.context() as m:
        m.setattr(manifest_mod, "hash_tree", crash)
        with pytest.raises(OSError):
            write_artifact(staging, art, Manifest(name="t", kind="adapter"))
        with pytest.raises(OSError):
            write_artifact(staging, tmp_path / "fresh", Manifest(name="t", kind="adapter"))
    assert verify_artifact(art).version == before
    assert not (tmp_path / "fresh").exists()


def test_artifact_is_readable_by_other_users(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    assert art.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in art.rglob("*"))
