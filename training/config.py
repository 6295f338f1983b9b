"""Training configuration: one YAML file per artifact, validated with pydantic.

Every knob that changes the trained weights lives here and is copied into the
artifact manifest, so a model can be traced back to the exact settings. Relative
paths are resolved against the repository root (the nearest ancestor of the
config file holding ``pyproject.toml``), so ``../shared/data`` means the same
thing from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relevance_core.manifest import BaseModelRef


class ConfigError(ValueError):
    """A training config (file or ``--set`` override) that cannot be read or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    root: str = "../shared/data"
    id_files: list[str] = Field(default_factory=lambda: ["homedepot.csv.gz"])
    ood_files: list[str] = Field(default_factory=lambda: ["crowdflower.csv.gz"])
    # Users' own CSV/JSONL files (same schema), added to the ID domain by their `split`.
    extra_files: list[str] = Field(default_factory=list)
    on_error: Literal["skip", "error"] = "skip"
    train_split: str = "train"
    pool_split: str = "pool"
    val_split: str = "val"
    test_split: str = "test"
    # Subsampling caps (null = all). Features for the probe use `max_train`.
    max_train: int | None = None
    max_pool_per_domain: int | None = None
    max_val_per_domain: int | None = None
    max_test_per_domain: int | None = None


class FeatureConfig(_Strict):
    batch_size: int = 64
    # auto: bf16 only where a bf16 GEMM measures faster than float32 (relevance_core/precision.py)
    autocast: Literal["auto", "bfloat16", "float32"] = "auto"
    # Feature cache (content-keyed, safe to share between runs); default <run_dir>/features.
    cache_dir: str | None = None


class ProbeConfig(_Strict):
    enabled: bool = True
    # One value, or a grid picked by the interpolation objective on ID+OOD val features.
    l2: float | list[float] = 1e-3
    max_iter: int = 300
    class_weight: Literal["none", "balanced"] = "none"
    # Fit the probe after DASA on train + the DASA-labelled pairs (their features are cached anyway),
    # so the head meets the new distribution in stage 1 already, not only in stage 2.
    dasa_pairs: bool = False


class DasaConfig(_Strict):
    enabled: bool = True
    strategy: Literal["dasa", "random"] = "dasa"
    # Detector weights in the combined (z-normalised) score; 0 disables one.
    mahalanobis_weight: float = 0.5
    knn_weight: float = 0.5
    shrinkage: float = 0.1
    knn_k: int = 10
    budget: int = 1000
    per_query_cap: int = 5
    label_source: Literal["reveal", "import"] = "reveal"


class LoraConfig(_Strict):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # Adapt only the last k decoder layers (null = all). Backward then stops k layers below the head,
    # which makes a training step cheaper (the measured stage-2 pairs/s is in each manifest's metrics).
    top_layers: int | None = Field(default=None, ge=1)


class LossConfig(_Strict):
    label_smoothing: float = 0.0
    confidence_penalty: float = 0.1
    ordinal_weight: float = 0.5
    ordinal_form: Literal["expected_grade_mse", "emd2"] = "expected_grade_mse"
    # CE class weights: "balanced" = inverse frequency of the stage-2 training labels.
    class_weight: Literal["none", "balanced"] = "none"
    # Home Depot grades are means of >= 3 raters: train on the mean grade spread over its two nearest
    # grades (training.losses.soft_target) instead of the hard 3-way label.
    soft_targets: bool = False
    # RankNet term over the items of one query (training.losses.pairwise_loss); > 0 also makes
    # stage 2 batch a query's items together (training.finetune.grouped_batch_order).
    pairwise_weight: float = Field(default=0.0, ge=0)


class FinetuneConfig(_Strict):
    method: Literal["lora", "full", "none"] = "lora"
    max_train_pairs: int | None = None
    epochs: float = 1.0
    batch_size: int = 16
    grad_accum: int = 2
    lr: float = 2e-4
    head_lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    autocast: Literal["auto", "bfloat16", "float32"] = "auto"
    checkpoint_every: int = 50
    # Train only the last k decoder layers with method=full (LoRA uses lora.top_layers); null = all.
    top_layers: int | None = Field(default=None, ge=1)
    # Compute the frozen layers below the trained ones once per pair and train on their cached
    # states (training.trunk): epochs then cost only the trained layers' forward and backward.
    cache_trunk: bool = False
    # Per training query, this many items of other training queries as extra `irrelevant` pairs
    # (the candidate lists search ranking sends mix such items in with the judged ones).
    foreign_per_query: int = Field(default=0, ge=0)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    loss: LossConfig = Field(default_factory=LossConfig)

    def trainable_top(self) -> int | None:
        """How many top decoder layers stage 2 trains (None: all of them)."""
        return self.lora.top_layers if self.method == "lora" else self.top_layers


class InterpolateConfig(_Strict):
    enabled: bool = True
    grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    objective: Literal["macro_f1_mean", "macro_f1_id", "macro_f1_ood", "accuracy_mean", "neg_ece_mean"] = (
        "macro_f1_mean"
    )
    # After the coefficient: fit one temperature on ID+OOD val (NLL) and fold it into the head
    # (Guo et al. 2017). It leaves every prediction (argmax) as it was and only rescales confidence.
    temperature: bool = False


class EvalConfig(_Strict):
    ece_bins: int = 15
    batch_size: int = 64
    # Candidate-set ranking (training.ranking): per test query, this many items of other queries
    # join its judged ones as irrelevant; drawn with `candidate_seed`, the same for every row.
    foreign_per_query: int = Field(default=20, ge=0)
    candidate_seed: int = 0
    # Learning curve: evaluate on val (with this many foreign items per query) at this many evenly
    # spaced steps of stage 2; recorded in stage2_history.json and summary.json (0 = off).
    curve_points: int = Field(default=0, ge=0)
    curve_foreign_per_query: int = Field(default=5, ge=0)


class TrainConfig(_Strict):
    name: str
    seed: int = 13
    threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    # "default" = relevance_core.base_model.DEFAULT_BASE; else a BaseModelRef mapping.
    base_model: Literal["default"] | BaseModelRef = "default"
    max_length: int = 96
    # relevance_core.prompt.TEMPLATES: v2 renders the item title only (training data without
    # descriptions), v1 the title and the description. Recorded in the manifest; the service renders the same.
    prompt_template: Literal["darl-prompt-v1", "darl-prompt-v2"] = "darl-prompt-v2"
    # Keep the first k decoder layers of the base (null = all): the head reads layer k's last token.
    # Recorded in the manifest; the service rebuilds the same depth. `darl probe-depth` measures it.
    num_layers: int | None = Field(default=None, ge=1)
    run_dir: str | None = None  # default runs/<name>
    output_dir: str | None = None  # default model_artifacts/<name>
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    dasa: DasaConfig = Field(default_factory=DasaConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    interpolate: InterpolateConfig = Field(default_factory=InterpolateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # Where relative paths are resolved; set by `load_config`, not by users.
    root_dir: str = "."

    def path(self, p: str | Path) -> Path:
        """Resolve ``p`` against the repository root."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (Path(self.root_dir) / p).resolve()

    @property
    def run_path(self) -> Path:
        return self.path(self.run_dir or f"runs/{self.name}")

    @property
    def output_path(self) -> Path:
        return self.path(self.output_dir or f"model_artifacts/{self.name}")

    def base_ref(self) -> BaseModelRef:
        from relevance_core.base_model import DEFAULT_BASE

        if self.base_model == "default":
            return DEFAULT_BASE
        ref = self.base_model
        if ref.source == "path" and ref.path:
            return ref.model_copy(update={"path": str(self.path(ref.path))})
        return ref

    def for_manifest(self) -> dict[str, Any]:
        """The config as recorded in the manifest (without machine-local root)."""
        return self.model_dump(mode="json", exclude={"root_dir"})


def find_root(start: Path) -> Path:
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").is_file():
            return d
    return Path.cwd()


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["finetune.epochs=2", "dasa.enabled=false"]`` → nested dict (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The validated config in ``path`` with ``overrides`` merged in; ``ConfigError`` names what is wrong."""
    import yaml

    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if overrides:
        raw = deep_update(raw, overrides)
    raw.setdefault("root_dir", str(find_root(path.parent)))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {problems}") from e
