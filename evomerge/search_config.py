"""The search config: what to search, with which controller, for how long.

Frozen into the run directory at the start; resume compares against it, so everything that
changes the trial sequence lives here (and nothing else does).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evomerge.errors import ConfigError
from evomerge.evaluate.specs import EvaluatorSpec
from evomerge.merge_methods import METHODS, PARAM_RANGES, SEARCH_RANGES, get_method
from evomerge.models import zoos
from evomerge.models.architecture import TENSOR_KINDS
from evomerge.models.smollm2 import SmolLM2Error
from evomerge.models.zoos import KINDS as ZOO_KINDS
from evomerge.recipe import RecipeError, describe_validation_error
from evomerge.search.registry import (
    CONTROLLER_KEYS,
    CONTROLLERS,
    AnyControllerSpec,
    defaults_of_every_kind,
)


class DigitsTaskSpec(BaseModel):
    """The M2N2 paper's digits task: flat MLP parameters as the genome."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["digits"] = "digits"
    init: Literal["scratch", "pretrained"] = "scratch"
    init_sigma: float = Field(0.01, gt=0)
    # random members to start from (scratch): None fills the M2N2 archive; SakanaAI's
    # natural_niches starts from 2 and lets children fill the empty slots
    init_members: int | None = Field(None, ge=1)
    # per-sample scores: 0/1 correctness (the paper) or p(true class), continuous
    scores: Literal["correct", "p_correct"] = "correct"
    expert_steps: int = Field(10, ge=1)
    expert_lr: float = Field(3e-3, gt=0)


class SyntheticTaskSpec(BaseModel):
    """A model-free task with heavy-tailed evaluation times (evomerge.tasks.synthetic): for
    measuring schedulers and executors."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["synthetic"]
    dimension: int = Field(8, ge=1)
    median_seconds: float = Field(0.2, ge=0)
    tail: float = Field(1.0, ge=0, description="sigma of the log-normal evaluation time")


class PSSpaceSpec(BaseModel):
    """Parameter space (evomerge.space.parameter): merge parameters per source × tensor kind ×
    layer group, every gene in [0, 1] scaled into its range."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ps"]
    method: Literal[METHODS] | None = None  # type: ignore[valid-type]
    methods: list[Literal[METHODS]] | None = None  # type: ignore[valid-type]
    groups: int = Field(1, ge=1)
    kinds: list[Literal[(*TENSOR_KINDS, "default")]] = ["default"]  # type: ignore[valid-type]
    # the search range of any parameter a method declares searchable (merge_methods)
    ranges: dict[Literal[tuple(SEARCH_RANGES)],  # type: ignore[valid-type]
                 tuple[float, float]] = Field(default_factory=dict)
    search_lambda: bool = False
    seed: int = Field(0, ge=0, description="DARE's drop seed, the same for every candidate")

    @model_validator(mode="after")
    def _one_method(self) -> PSSpaceSpec:
        if (self.method is None) == (self.methods is None):
            raise ValueError("give exactly one of method or methods")
        for name, (lo, hi) in self.ranges.items():
            if lo > hi:
                raise ValueError(f"ranges.{name}: [{lo}, {hi}] is empty (low above high)")
            allowed = PARAM_RANGES.get(name)
            if allowed and not allowed[0] <= lo <= hi <= allowed[1]:
                raise ValueError(f"ranges.{name}: [{lo}, {hi}] leaves [{allowed[0]:g}, "
                                 f"{allowed[1]:g}], the range of {name}")
        return self


class SeedMixtureSpaceSpec(BaseModel):
    """Seed mixtures (evomerge.space.mixture): per-layer-group coefficients over the sources,
    M2N2's representation for merging pre-trained models."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["seed_mixture"]
    groups: int = Field(1, ge=1)
    coefficient_range: tuple[float, float] = (0.0, 1.0)


class DFSSpaceSpec(BaseModel):
    """Data-flow space (evomerge.space.dataflow, docs/design.md §4): which layers of the sources run
    in which order, each hop's input scaled. sources[0] is model A (tokenizer, embeddings,
    final norm, head; every route starts and ends with its first and last layer). For PS+DFS,
    make source A the best model of a parameter-space search (`evomerge export RUN --best`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dfs"]
    repeats: int = Field(3, ge=1, description="times the layer sequence is laid out")
    # none: every scale 1; slot: one per slot; pair: the paper's W[i, j] per layer pair
    scale_mode: Literal["none", "slot", "pair"] = "pair"
    scale_range: tuple[float, float] = (0.05, 2.0)  # above 0, around 1.0 (the space checks)
    sigma: float = Field(1 / 6, gt=0, le=0.5, description="initial route: indicators at ±2σ")


class ObjectiveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    evaluator: str | None = Field(None, description="default: the only evaluator")
    metric: str | None = Field(None, min_length=1)
    # or several metrics of the evaluator folded into one (`min`: the worst skill)
    metrics: list[str] | None = Field(None, min_length=2)
    combine: Literal["min", "mean"] | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    # the Pareto reference point's coordinate: a value worse than any candidate should score
    reference: float | None = None
    # what the controller sees on the search split, when not the reported metric(s) (which
    # the validation and test splits give): a smoother per-item signal, e.g. the answer's
    # probability `task/p_answer` for exact match; one per metric, in order
    search_metric: str | None = Field(None, min_length=1)
    search_metrics: list[str] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ObjectiveSpec:
        if (self.metric is None) == (self.metrics is None):
            raise ValueError("give exactly one of metric or metrics")
        if (self.metrics is None) != (self.combine is None):
            raise ValueError("metrics and combine go together (combine: min or mean)")
        if self.search_metric is not None and self.metric is None:
            raise ValueError("search_metric goes with metric (search_metrics with metrics)")
        if self.search_metrics is not None and (
                self.metrics is None or len(self.search_metrics) != len(self.metrics)):
            raise ValueError("search_metrics: one per entry of metrics, in order")
        return self

    @property
    def parts(self) -> list[str]:
        """The evaluator metrics this objective reports (validation and test splits)."""
        return list(self.metrics) if self.metrics else [str(self.metric)]

    @property
    def search_parts(self) -> list[str]:
        """The metrics it reads on the search split (the reported ones unless told)."""
        if self.search_metrics:
            return list(self.search_metrics)
        return [self.search_metric] if self.search_metric else self.parts

    def value(self, metrics: dict[str, float], search: bool = False) -> float | None:
        """The objective from an evaluation's metrics (`search`: the search split's)."""
        values = [metrics.get(m) for m in (self.search_parts if search else self.parts)]
        if any(v is None for v in values):
            return None
        if self.combine == "mean":
            return float(sum(values) / len(values))  # type: ignore[arg-type]
        return float(min(values))  # type: ignore[type-var]


class BaselineSpec(BaseModel):
    """A hand-set recipe scored before the search on the same splits as every candidate: a
    reference line in the live view, report and plots, and a starting point for the
    controller when the run's space can express it (docs/design.md §7.5)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    method: Literal[METHODS]  # type: ignore[valid-type]
    # a per-source parameter: one value for every source, or a list (one per source);
    # a shared one (t, lambda, normalize, ...): one value
    parameters: dict[str, float | list[float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_parameters(self) -> BaselineSpec:
        method = get_method(self.method)
        per_source, shared = method.per_source_defaults, method.shared_defaults
        for key, value in self.parameters.items():
            if key not in per_source and key not in shared:
                raise ValueError(f"parameters.{key}: not a parameter of {self.method} "
                                 f"(it reads {sorted({*per_source, *shared})})")
            if key in shared and isinstance(value, list):
                raise ValueError(f"parameters.{key}: one value (a parameter shared by the "
                                 "sources)")
        return self


class CandidateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "float16", "bfloat16"] | None = None  # default: the sources'
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    merge_threads: int = Field(2, ge=1)
    # memory for the TIES/DARE selections reused across candidates (4 bytes per parameter per
    # source at most); None: half of what the device has free once the sources are
    # resident; 0: off. Speed only: the weights are the same either way.
    selection_cache_gib: float | None = Field(None, ge=0)


def adapter_ref(value: Any, where: str = "") -> Any:
    """A source entry {model: base, adapter: dir} as the one reference `base+adapter`;
    anything but a mapping as it is (the field's own validation names what is wrong)."""
    if not isinstance(value, dict):
        return value
    if set(value) == {"model", "adapter"} and \
            all(isinstance(v, str) and v for v in value.values()):
        return f"{value['model']}+{value['adapter']}"
    raise ValueError(f"{where}: a model reference, or {{model: base, adapter: dir}} for a "
                     f"LoRA adapter (got keys {', '.join(sorted(map(str, value)))})")


class MergeTaskSpec(BaseModel):
    """Search merge recipes of real models (docs/design.md §1): sources → space → live candidate →
    evaluators → objectives."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["merge"]
    base: str | None = None
    # a model directory or hub id; `base+adapter` or {model: base, adapter: dir} for a PEFT
    # LoRA adapter over its base
    sources: list[str] = Field(min_length=1)
    space: Annotated[PSSpaceSpec | SeedMixtureSpaceSpec | DFSSpaceSpec,
                     Field(discriminator="kind")]
    evaluators: list[EvaluatorSpec] = Field(min_length=1)
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    # what M2N2's members compete on: per-sample scores of these objectives or metrics
    # (`metric` of the only evaluator, or `evaluator:metric`); default: every maximised
    # objective that has per-sample scores
    sample_scores: list[str] | None = None
    candidate: CandidateSpec = Field(default_factory=CandidateSpec)
    # hand-set recipes scored first (docs/design.md §7.5); None: each source alone, task
    # arithmetic at 1 and at 1/n, TIES and DARE-TIES at density 0.5 and weight 1, those the
    # run's space can express; []: none
    baselines: list[BaselineSpec] | None = None
    allow_pickle: bool = False
    allow_download: bool = False

    @field_validator("sources", mode="before")
    @classmethod
    def _adapter_sources(cls, value: Any) -> Any:
        """{model, adapter} entries are the explicit form of `model+adapter`."""
        if not isinstance(value, list):
            return value
        return [adapter_ref(v, f"[{i}]") for i, v in enumerate(value)]

    @model_validator(mode="after")
    def _check_names(self) -> MergeTaskSpec:
        names = [e.name for e in self.evaluators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evaluators: the name {dup[0]!r} is used twice")
        onames = [o.name for o in self.objectives]
        dup = sorted({n for n in onames if onames.count(n) > 1})
        if dup:
            raise ValueError(f"objectives: the name {dup[0]!r} is used twice")
        for i, o in enumerate(self.objectives):
            if o.evaluator is None:
                if len(names) > 1:
                    raise ValueError(f"objectives[{i}].evaluator: required with several "
                                     f"evaluators ({names})")
                o.evaluator = names[0]
            elif o.evaluator not in names:
                raise ValueError(f"objectives[{i}].evaluator: {o.evaluator!r} is not one of "
                                 f"the evaluators {names}")
            if o.reference is None and o.direction == "minimize":
                raise ValueError(f"objectives[{i}].reference: required for a minimised "
                                 "objective (a value worse than any candidate's)")
        for i, n in enumerate(self.sample_scores or []):
            ev = self.score_source(n)[0]
            if ev not in names:
                raise ValueError(f"sample_scores[{i}]: {n!r} names no objective, and "
                                 f"{ev!r} is not an evaluator")
        if self.space.kind == "seed_mixture" and len(self.sources) < 2:
            raise ValueError("sources: a seed mixture needs at least two seed models")
        names = [b.name for b in self.baselines or []]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"baselines: the name {dup[0]!r} is used twice")
        for i, b in enumerate(self.baselines or []):
            for key, value in b.parameters.items():
                if isinstance(value, list) and len(value) != len(self.sources):
                    raise ValueError(f"baselines[{i}].parameters.{key}: {len(value)} values "
                                     f"for {len(self.sources)} sources")
        if self.baselines and self.space.kind == "dfs":
            raise ValueError("baselines: a data-flow search routes layers and merges no "
                             "parameters; its baseline is model A (sources[0]) alone: leave "
                             "baselines out, or [] for none")
        if self.space.kind == "dfs" and self.base is not None:
            raise ValueError("base: a data-flow search routes the sources' layers and merges "
                             "nothing; leave the base out (sources[0] is model A)")
        return self


    def score_source(self, entry: str) -> tuple[str, str]:
        """(evaluator, metric) of a `sample_scores` entry."""
        for o in self.objectives:
            if o.name == entry:
                if o.metric is None:
                    raise ValueError(f"sample_scores: objective {entry!r} combines metrics; "
                                     "name the metrics themselves")
                return str(o.evaluator), o.search_metric or o.metric
        if ":" in entry:
            ev, _, metric = entry.partition(":")
            return ev, metric
        return (self.evaluators[0].name if len(self.evaluators) == 1 else ""), entry



class ExecutorSpec(BaseModel):
    """Where candidates are evaluated: inline (in this process), on Ray actors, or on
    `workers` simulated ones (a discrete-event clock; tasks with a cost model only). A run-time
    choice: resume may change it (it is not part of the config's digest)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["inline", "ray", "simulated"] = "inline"
    workers: int = Field(1, ge=1)
    address: str | None = None  # a Ray cluster to join (also RAY_ADDRESS); none: this machine
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)  # None: 1 for cuda candidates, else 0
    timeout_s: float | None = Field(None, gt=0)  # an evaluation running longer fails
    max_failures: int = Field(3, ge=1)  # a worker failing this often in a row is retired
    # no Ray node able to take a worker this long (the nodes lost or full): the run stops,
    # resumable, instead of waiting on Ray forever
    placement_timeout_s: float = Field(300.0, gt=0)
    # simulated only: evaluation times drawn log-normal (this median, this sigma) for a task
    # without a cost model of its own
    median_seconds: float | None = Field(None, gt=0)
    tail: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _simulated_keys(self) -> ExecutorSpec:
        if self.kind != "simulated" and self.median_seconds is not None:
            raise ValueError("median_seconds: an option of the simulated executor only")
        return self


class AnchorSpec(BaseModel):
    """The first rung as learned anchor points (docs/design.md §7.4): once `min_full`
    candidates are scored in full, each new one is scored on `items` anchor items per
    objective metric, chosen and weighted by k-means on the per-item scores of the candidates
    scored in full so far (refitted after every `refit_every` more), and its objectives are
    estimated from them; it goes on to the full split on that estimate."""

    model_config = ConfigDict(extra="forbid")

    items: int = Field(ge=1)  # per objective metric
    min_full: int = Field(8, ge=2)  # full evaluations before the first fit
    refit_every: int = Field(10, ge=1)  # full evaluations between refits


class FidelitySpec(BaseModel):
    """Multi-fidelity (asynchronous successive halving): every candidate is scored on the
    leading `rungs[0]` share of the search split first, or on learned `anchors`; after each
    rung it goes on to the next only if its primary objective is in the best `promote` share
    of the last `window` results at that rung. Only full-fidelity trials enter the Pareto
    front. (With the whole history instead of a window, an improving controller beats its
    rung's early, poor candidates nearly every time and nearly everything is promoted:
    measured on digits.)"""

    model_config = ConfigDict(extra="forbid")

    rungs: list[float] | None = Field(None, min_length=2)
    anchors: AnchorSpec | None = None
    promote: float = Field(gt=0, lt=1)
    window: int | None = Field(200, ge=1)  # None: every result so far (classic ASHA)

    @model_validator(mode="after")
    def _increasing(self) -> FidelitySpec:
        r = self.rungs
        if (r is None) == (self.anchors is None):
            raise ValueError("give rungs (leading shares of the search split) or anchors "
                             "(learned anchor items), one of the two")
        if r is not None and (any(not 0 < a < b for a, b in zip(r, r[1:], strict=False))
                              or r[-1] != 1.0 or r[0] <= 0):
            raise ValueError(f"rungs: {r} must increase strictly from above 0 to 1.0")
        return self


class MlflowSpec(BaseModel):
    """Mirror the run to MLflow (the `tracking` extra): `uri` a tracking URI (default: a
    SQLite store inside the run directory, `sqlite:///<run>/mlflow.db`, with its artifacts
    beside it), `experiment` its experiment (default: the config's name)."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(None, min_length=1)
    experiment: str | None = Field(None, min_length=1)


class TrackingSpec(BaseModel):
    """Experiment trackers a run is mirrored to; the run directory stays the record."""

    model_config = ConfigDict(extra="forbid")

    mlflow: MlflowSpec | None = None


class ZooSpec(BaseModel):
    """Example sources the config's paths name, built there first if missing."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[ZOO_KINDS]  # type: ignore[valid-type]
    dir: str = Field(min_length=1)  # relative to the current directory


class SearchConfig(BaseModel):
    """A search config file, validated whole before anything runs: task, controller, budget."""
    model_config = ConfigDict(extra="forbid")

    name: str = "search"
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's seed range
    budget: int = Field(ge=1, description="evaluations")
    max_seconds: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(500, ge=1)
    task: Annotated[DigitsTaskSpec | MergeTaskSpec | SyntheticTaskSpec,
                    Field(discriminator="kind")] = Field(
        default_factory=DigitsTaskSpec)
    controller: AnyControllerSpec
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    fidelity: FidelitySpec | None = None  # multi-fidelity rungs; None: every trial in full
    zoo: ZooSpec | None = None  # example sources to build before the search, if missing
    tracking: TrackingSpec | None = None  # where the run is mirrored (not what it is)
    # when the budget is spent: the best trial (first objective) as <run>/best, a model dir
    # with its recipe and mergekit YAML
    export_best: bool = False
    # besides the Pareto front's entrants, the trials among the best `rescore_top` so far by
    # the first objective are scored on the validation and test splits (the validation split
    # chooses the best; docs/design.md §7.5)
    rescore_top: int = Field(3, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _frozen_before_baselines(cls, data: Any, info: ValidationInfo) -> Any:
        """Runs frozen before baselines and top-k re-scoring existed continue as they ran."""
        if not (info.context and info.context.get("frozen")) or not isinstance(data, dict):
            return data
        data = {"rescore_top": 0, **data}
        task = data.get("task")
        if isinstance(task, dict) and task.get("kind") == "merge":
            data["task"] = {"baselines": [], **task}
        return data

    @field_validator("controller", mode="before")
    @classmethod
    def _controller_keys(cls, data: Any, info: ValidationInfo) -> Any:
        """A key of another controller is a mistake to name, not to ignore. Run directories
        frozen before each kind had its own settings kept every kind's keys at their
        defaults, so a frozen config may carry them at their defaults (they are dropped)."""
        if not isinstance(data, dict):
            return data  # the union says what it expects
        kind = data.get("kind")
        if kind not in CONTROLLERS:
            what = f"{kind!r} is not a controller" if "kind" in data else "missing"
            raise ValueError(f"kind: {what}; one of {', '.join(CONTROLLERS)}")
        own = CONTROLLERS[kind].model_fields
        frozen = bool(info.context and info.context.get("frozen"))
        defaults = defaults_of_every_kind()
        kept = {}
        for key, value in data.items():
            owners = [k for k, keys in CONTROLLER_KEYS.items() if key in keys]
            if key in own or not owners:  # its own key, or unknown: the model says
                kept[key] = value
            elif not (frozen and value == defaults[key]):
                raise ValueError(f"{key}: an option of {' and '.join(owners)}, not of {kind}")
        return kept

    @model_validator(mode="before")
    @classmethod
    def _task_kind_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("task"), dict):
            data = {**data, "task": {"kind": "digits", **data["task"]}}
        return data

    def digest(self, ignore_budget: bool = True) -> str:
        """What must not change across a resume (budget and time limit may grow)."""
        data = self.model_dump(mode="json")
        data.pop("executor")  # where trials run does not change what they are
        data.pop("tracking")  # nor does where they are mirrored
        # digests predate per-kind controller settings: computed on every kind's keys
        data["controller"] = {**defaults_of_every_kind(), **data["controller"]}
        if ignore_budget:
            data.pop("budget")
            data.pop("max_seconds")
        # keys added after runs already existed count only when set, so those runs resume
        for path, default in _LATE_KEYS:
            *parents, last = path
            node = data
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(last, default) == default:
                node.pop(last, None)
        for ev in (data.get("task") or {}).get("evaluators") or []:
            for key in _LATE_EVALUATOR_KEYS:
                if ev.get(key, _UNSET) in (None, False):
                    ev.pop(key)
        for o in (data.get("task") or {}).get("objectives") or []:
            for key in ("search_metric", "search_metrics"):
                if key in o and o[key] is None:
                    o.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The frozen copy: the controller block keeps only its own kind's keys, so the file
        reads (and can be reused) as a config."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_LATE_KEYS: list[tuple[tuple[str, ...], Any]] = [
    (("fidelity",), None),
    (("fidelity", "anchors"), None),
    (("controller", "allow_high_dimension"), False),
    (("task", "candidate", "selection_cache_gib"), None),
    (("zoo",), None),
    (("export_best",), False),
    (("rescore_top",), 0),
    (("task", "baselines"), []),
    (("controller", "asynchronous"), "auto"),
    (("controller", "allow_large_budget"), False),
]
# evaluator keys added later, absent from older runs' digests while unset (None or False)
_LATE_EVALUATOR_KEYS = ("validation_tasks", "validation_fraction", "validation_data",
                        "validation")
_UNSET = object()


# pydantic puts the chosen member of a tagged union into error locations
# (task.merge.space.ps.groups); users wrote task.space.groups
_UNION_TAGS = frozenset({"digits", "merge", "synthetic", "ps", "seed_mixture", "dfs",
                         "lm_eval", "perplexity", "classification", "callable",
                         *CONTROLLERS})


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                frozen: bool = False) -> SearchConfig:
    """Read and validate a config. `overrides` are command-line values (an error in one names
    its --flag, not the file); `frozen`: the copy a run directory keeps (see
    `SearchConfig._controller_keys`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "controller" not in data and {"method", "merge_method"} & set(data):
        raise ConfigError(f"{path}: this is a merge recipe, not a search config; build it with "
                          f"`evomerge merge {path} OUT_DIR`")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in given.items():
        try:
            SearchConfig.__pydantic_validator__.validate_assignment(
                SearchConfig.model_construct(), key, value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--{key.replace('_', '-')}: {msg} (got {value})") from None
    data.update(given)
    try:
        cfg = SearchConfig.model_validate(data, context={"frozen": frozen})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc, skip=_UNION_TAGS)}") from None
    if isinstance(cfg.task, MergeTaskSpec):
        _resolve_paths(cfg.task, path)
    return cfg


def build_zoo(path: str | Path) -> None:
    """Build the example sources a config's `zoo:` block names, where missing: before
    `load_config`, which checks that the sources exist. A file that cannot be read is left to
    `load_config` to name."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(data, dict) or not isinstance(data.get("zoo"), dict):
        return
    try:
        spec = ZooSpec.model_validate(data["zoo"])
    except ValidationError as exc:
        raise ConfigError(f"{path}: zoo.{describe_validation_error(exc)}") from None
    try:
        zoos.ensure(spec.kind, Path(spec.dir))
    except SmolLM2Error as exc:
        raise ConfigError(f"{path}: zoo.kind {spec.kind}: {exc}") from None


def _resolve_paths(task: MergeTaskSpec, config_path: Path) -> None:
    """Local paths become absolute (the current directory first, then the config's folder),
    so the config frozen into a run directory means the same files from anywhere. Anything
    that exists in neither place (a hub repo id, an lm-eval task name) is left as written;
    a model that is plainly a local path and exists in neither is an error."""
    config_dir = config_path.parent

    from evomerge.models.refs import join_adapter, missing_local, split_adapter

    def fix_one(ref: str) -> str:
        p = Path(ref).expanduser()
        for cand in (p, config_dir / p):
            if cand.exists():
                return str(cand.resolve())
        return ref

    def fix(ref: str | None) -> str | None:
        if ref is None:
            return None
        base, adapter = split_adapter(ref)  # `base+adapter`: each part on its own
        return join_adapter(fix_one(base), fix_one(adapter) if adapter else None)

    for where, ref in [("task.base", task.base),
                       *((f"task.sources[{i}]", s) for i, s in enumerate(task.sources))]:
        base, adapter = split_adapter(ref) if ref else (None, None)
        for part, at in ((base, where), (adapter, f"{where} (its adapter)")):
            problem = part and missing_local(part, at, [Path.cwd(), config_dir])
            if problem:
                raise ConfigError(f"{config_path}: {problem}")
    task.base = fix(task.base)
    task.sources = [fix(s) or s for s in task.sources]
    for ev in task.evaluators:
        for key in ("data", "heldout_data", "validation_data"):
            if hasattr(ev, key):
                setattr(ev, key, fix(getattr(ev, key)))
        for key in ("include_path", "python_path"):
            if hasattr(ev, key):
                setattr(ev, key, [fix(p) or p for p in getattr(ev, key)])
        for key in ("tasks", "heldout_tasks", "validation_tasks"):
            if getattr(ev, key, None):
                setattr(ev, key, [fix(t) if t.endswith((".yaml", ".yml")) else t
                                  for t in getattr(ev, key)])


__all__ = ["ConfigError", "RecipeError", "SearchConfig", "build_zoo", "load_config"]
