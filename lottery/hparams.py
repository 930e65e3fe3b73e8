"""Typed hyperparameters read from params.yaml, validated in one place before any work starts.

Every key is required in params.yaml, so an experiment's params file says everything that
shaped it. A bad value raises `ParamsError` whose one-line message names the key. The file is
read as YAML 1.2, as DVC reads it (lottery.yaml12).

`Hparams.identity()` is the part of the params that determines the results: each section drops
the keys that cannot change what the pipeline computes (where the data came from, the device,
the settings of a method that is switched off). Lineages are named by it (lottery.provenance).
"""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from lottery import yaml12
from lottery.errors import UserError


class ParamsError(UserError, ValueError):
    """A params.yaml value that cannot be used; the message names the key."""


class Section:
    """A params section; `identity()` gives the keys that can change what the pipeline computes."""

    def identity(self):
        return _fields(self)


@dataclass(frozen=True)
class DataHparams(Section):
    dataset: str  # registry name in lottery.data
    source: str  # package | local | download
    local_root: str  # an existing torchvision root, used when source is `local`
    validation_size: int  # examples held out of the training set for early stopping
    train_subset: int  # 0 = the whole training set; else its first N (after the hold-out)
    test_subset: int  # 0 = the whole test set
    augmentation: str  # standard: the dataset's own training augmentation (CIFAR-10: crops and flips) | none

    def check(self):
        from lottery import data

        _one_of("data.dataset", self.dataset, data.DATASETS)
        _one_of("data.source", self.source, data.SOURCES)
        _one_of("data.augmentation", self.augmentation, ("standard", "none"))
        if self.source == "package" and data.DATASETS[self.dataset].package is None:
            raise ParamsError(
                f"data.source = 'package': no registry package carries {self.dataset}; use 'local' or 'download'"
            )
        if self.source == "local" and not self.local_root:
            raise ParamsError("data.local_root = '': source 'local' needs an existing torchvision root")
        _at_least("data.validation_size", self.validation_size, 1)
        _at_least("data.train_subset", self.train_subset, 0)
        _at_least("data.test_subset", self.test_subset, 0)
        available = data.DATASETS[self.dataset].train_size
        if self.validation_size >= available:
            raise ParamsError(
                f"data.validation_size = {self.validation_size}: {self.dataset} has only {available} training examples"
            )

    def training_examples(self):
        """How many examples the training split holds once the validation set is held out."""
        from lottery import data

        remaining = data.DATASETS[self.dataset].train_size - self.validation_size
        return min(self.train_subset, remaining) if self.train_subset else remaining

    def identity(self):
        # Where the files came from does not matter: every source is checked against the same digests.
        # A dataset without a standard augmentation trains the same either way (and lineages named
        # before the key existed trained without one): only an augmentation that happens is named.
        from lottery import data

        augmented = data.augmentation(self) is not None
        return _fields(self, drop=("source", "local_root") + (() if augmented else ("augmentation",)))


@dataclass(frozen=True)
class ModelHparams(Section):
    name: str  # registry name in lottery.models
    width: float  # channel multiplier of the VGG and ResNet models, hidden units of LeNet (1.0 = the paper's)
    init: str  # how θ0 is drawn: paper (the model's own) | glorot | kaiming_normal | signed_kaiming_constant

    def check(self):
        from lottery import models
        from lottery.models import base

        _one_of("model.name", self.name, models.REGISTRY)
        _positive("model.width", self.width)
        if self.width != 1.0 and not models.REGISTRY[self.name].scalable:
            raise ParamsError(f"model.width = {self.width!r}: {self.name} has fixed widths (use 1.0)")
        _one_of("model.init", self.init, ("paper", *base.INITS))

    def weights_init(self):
        """The init θ0 is drawn with (lottery.models.base.INITS): `paper` resolves to the model's."""
        from lottery import models

        return models.REGISTRY[self.name].paper_init if self.init == "paper" else self.init

    def identity(self):
        # The init that is drawn names the lineage, however params spell it. Lineages named before
        # model.init existed were all Glorot: Glorot keeps their names.
        init = self.weights_init()
        return {**_fields(self, drop=("init",)), **({"init": init} if init != "glorot" else {})}


@dataclass(frozen=True)
class TrainHparams(Section):
    optimizer: str  # adam | sgd
    lr: float
    momentum: float  # SGD only
    batch_size: int
    iterations: int  # every round trains this long
    eval_every: int  # validation metrics every N iterations (and test metrics: `test_curve`)
    test_curve: str  # test metrics at: improvements (of the validation loss; the end too) | every evaluation
    device: str  # auto | cpu | cuda
    warmup_iterations: int  # linear learning-rate warmup from 0 to `lr` over this many iterations
    milestones: list[int]  # iterations at which the learning rate is multiplied by `gamma`
    gamma: float
    weight_decay: float  # λ of the L2 penalty (λ/2)‖θ‖² on every parameter (factors: see factorize.frobenius_decay)
    bn_l1: float  # λ of the λ·Σ|γ| BatchNorm sparsity term (Network Slimming)
    bn_l1_rounds: str  # dense: the term shapes round 0 only (one pass) | every: each round's retraining too (multi-pass)
    precision: str  # float32 | bfloat16 (autocast of the training forward passes)
    tf32: bool  # TF32 matmuls and convolutions on GPUs that have them
    deterministic: bool  # deterministic cuDNN/cuBLAS kernels: a GPU run repeats bit for bit

    def check(self):
        _one_of("train.optimizer", self.optimizer, ("adam", "sgd"))
        _positive("train.lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ParamsError(f"train.momentum = {self.momentum!r}: must be in [0, 1)")
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.iterations", self.iterations, 1)
        _at_least("train.eval_every", self.eval_every, 1)
        _one_of("train.test_curve", self.test_curve, ("improvements", "every"))
        _one_of("train.device", self.device, ("auto", "cpu", "cuda"))
        if not 0 <= self.warmup_iterations < self.iterations:
            raise ParamsError(
                f"train.warmup_iterations = {self.warmup_iterations}: must be in [0, train.iterations)"
            )
        if self.milestones != sorted(set(self.milestones)) or any(not 0 < m < self.iterations for m in self.milestones):
            raise ParamsError(
                f"train.milestones = {self.milestones}: must increase strictly within (0, train.iterations)"
            )
        if not 0 < self.gamma <= 1:
            raise ParamsError(f"train.gamma = {self.gamma!r}: must be in (0, 1]")
        _at_least("train.weight_decay", self.weight_decay, 0)
        _at_least("train.bn_l1", self.bn_l1, 0)
        _one_of("train.bn_l1_rounds", self.bn_l1_rounds, ("dense", "every"))
        if self.bn_l1_rounds == "every" and not self.bn_l1:
            raise ParamsError("train.bn_l1_rounds = 'every': repeats the sparsity term, and train.bn_l1 is 0")
        _one_of("train.precision", self.precision, ("float32", "bfloat16"))
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ParamsError("train.device = 'cuda': torch finds no CUDA device here (use 'auto' or 'cpu')")

    def identity(self):
        # The device is recorded with each run's environment (lottery.provenance), not in its name.
        # test_curve only thins out the test curve: weights, masks and metrics are the same, and
        # deterministic kernels compute what the others do, only in a fixed order. float32 without
        # TF32, and the sparsity term in round 0 alone, are what lineages named before these keys
        # existed computed: their names stay.
        unused = ("device", "test_curve", "deterministic") + (("momentum",) if self.optimizer != "sgd" else ())
        unused += ("precision",) if self.precision == "float32" else ()
        unused += ("tf32",) if not self.tf32 else ()
        unused += ("bn_l1_rounds",) if self.bn_l1_rounds == "dense" else ()
        unused += ("weight_decay",) if not self.weight_decay else ()
        return _fields(self, drop=unused)


@dataclass(frozen=True)
class PruneHparams(Section):
    strategy: str  # registry name in lottery.pruning
    scope: str  # layerwise: each layer loses its own rate; global: one ranking over the layers but the output
    rate: float  # fraction of the remaining weights removed per round (fully-connected layers)
    conv_rate: typing.Optional[float]  # layerwise weight pruning: null = the model's paper rate for conv layers
    output_rate: typing.Optional[float]  # weight pruning, either scope: null = the model's paper rule
    schedule: str  # iterative: round r prunes round r-1; oneshot: round r prunes the dense net at once
    granularity: str  # weight: unstructured masks; channel: whole output channels (structured)
    min_channels: int  # channel pruning never leaves a layer fewer channels than this
    max_layer_fraction: float  # global channel pruning takes at most this fraction of any layer's channels

    def check(self):
        from lottery import pruning

        _one_of("prune.strategy", self.strategy, pruning.REGISTRY)
        _one_of("prune.granularity", self.granularity, ("weight", "channel"))
        supported = pruning.REGISTRY[self.strategy].granularities
        if self.granularity not in supported:
            raise ParamsError(f"prune.granularity = {self.granularity!r}: {self.strategy} prunes {' or '.join(supported)}s")
        _at_least("prune.min_channels", self.min_channels, 1)
        _one_of("prune.scope", self.scope, ("layerwise", "global"))
        scopes = getattr(pruning.REGISTRY[self.strategy], "scopes", ("layerwise", "global"))
        if self.scope not in scopes:
            raise ParamsError(f"prune.scope = {self.scope!r}: {self.strategy} ranks within each layer (use 'layerwise')")
        _one_of("prune.schedule", self.schedule, ("iterative", "oneshot"))
        for key in ("rate", "conv_rate"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise ParamsError(f"prune.{key} = {value!r}: must be in (0, 1)")
        if self.output_rate is not None and not 0 <= self.output_rate < 1:
            raise ParamsError(f"prune.output_rate = {self.output_rate!r}: must be in [0, 1) (0: the layer is left alone)")
        if not 0 < self.max_layer_fraction <= 1:
            raise ParamsError(f"prune.max_layer_fraction = {self.max_layer_fraction!r}: must be in (0, 1]")
        self._check_ignored_rates()

    def _check_ignored_rates(self):
        # A rate that the scope or granularity would not use is refused rather than silently dropped.
        if self.granularity == "channel":
            ignored = {
                "conv_rate": "every channel group takes prune.rate",
                "output_rate": "the output layer's classes are never pruned",
            }
        elif self.scope == "global":
            ignored = {"conv_rate": "prune.scope 'global' ranks the conv and fc weights together at prune.rate"}
        else:
            ignored = {}
        for key, reason in ignored.items():
            if getattr(self, key) is not None:
                raise ParamsError(f"prune.{key} = {getattr(self, key)!r}: {reason}; set it to null")
        if self.max_layer_fraction != 1.0 and (self.granularity, self.scope) != ("channel", "global"):
            raise ParamsError(
                f"prune.max_layer_fraction = {self.max_layer_fraction!r}: caps a global channel threshold only "
                "(prune.granularity 'channel', prune.scope 'global'); set it to 1.0"
            )

    def identity(self):
        # No cap (1.0) is what lineages named before the key existed computed: their names stay.
        return _fields(self, drop=("max_layer_fraction",) if self.max_layer_fraction == 1.0 else ())


@dataclass(frozen=True)
class RewindHparams(Section):
    target: str  # init: θk (LTH) | finetune: the pruned trained weights | scratch: a fresh random init
    iteration: int  # k for target init: rewind to the dense run's weights at iteration k (0 = θ0)
    finetune_lr: float  # target finetune: a constant learning rate ...
    finetune_iterations: int  # ... for this many iterations
    scratch_budget: str  # target scratch: same (Scratch-E) | flops (Scratch-B: iterations × dense/pruned FLOPs)
    max_budget_factor: float  # Scratch-B trains at most this many times train.iterations

    def check(self):
        _one_of("rewind.target", self.target, ("init", "finetune", "scratch"))
        _at_least("rewind.iteration", self.iteration, 0)
        if self.target != "init" and self.iteration:
            raise ParamsError(f"rewind.iteration = {self.iteration}: only rewind.target 'init' rewinds to θk")
        _positive("rewind.finetune_lr", self.finetune_lr)
        _at_least("rewind.finetune_iterations", self.finetune_iterations, 1)
        _one_of("rewind.scratch_budget", self.scratch_budget, ("same", "flops"))
        _at_least("rewind.max_budget_factor", self.max_budget_factor, 1)

    def identity(self):
        unused = {
            "init": ("finetune_lr", "finetune_iterations", "scratch_budget", "max_budget_factor"),
            "finetune": ("scratch_budget", "max_budget_factor"),
            "scratch": ("finetune_lr", "finetune_iterations"),
        }[self.target]
        return _fields(self, drop=unused)


@dataclass(frozen=True)
class ControlsHparams(Section):
    run: list[str]  # control branches trained beside each round's ticket (lottery.controls)
    same_sign: bool  # reinit_from_ticket keeps each weight's original sign

    def check(self):
        from lottery import controls

        for name in self.run:
            _one_of("controls.run", name, controls.REGISTRY)
        if len(set(self.run)) != len(self.run):
            raise ParamsError(f"controls.run = {self.run}: names a control twice")


@dataclass(frozen=True)
class EarlyBirdHparams(Section):
    enabled: bool  # search for an Early-Bird ticket while training dense (round 0)
    ratio: float  # fraction of channels the drawn masks prune (must equal prune.rate)
    epsilon: float  # the ticket has emerged when none of the last `queue` mask distances exceeds ε
    queue: int  # how many earlier epochs' masks each new mask is compared with (FIFO)
    quantize_bits: int  # 0: full-precision search; else weights and inputs fake-quantised to this many bits

    def check(self):
        if not 0 < self.ratio < 1:
            raise ParamsError(f"early_bird.ratio = {self.ratio!r}: must be in (0, 1)")
        if not 0 < self.epsilon <= 1:
            raise ParamsError(f"early_bird.epsilon = {self.epsilon!r}: must be in (0, 1]")
        _at_least("early_bird.queue", self.queue, 1)
        if self.quantize_bits and not 2 <= self.quantize_bits <= 16:
            raise ParamsError(f"early_bird.quantize_bits = {self.quantize_bits}: must be 0 (off) or 2..16")

    def identity(self):
        return _fields(self) if self.enabled else {"enabled": False}


@dataclass(frozen=True)
class SupermaskHparams(Section):
    iterations: int  # score-training steps per round (SGD with momentum, cosine decay to 0)
    lr: float
    momentum: float
    weight_decay: float  # on the scores
    weight_agnostic: bool  # each step, every kept weight is one shared value drawn from weight_agnostic.values

    def check(self):
        _at_least("supermask.iterations", self.iterations, 1)
        _positive("supermask.lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ParamsError(f"supermask.momentum = {self.momentum!r}: must be in [0, 1)")
        _at_least("supermask.weight_decay", self.weight_decay, 0)


@dataclass(frozen=True)
class WeightAgnosticHparams(Section):
    values: list[float]  # the shared weights w every round's mask is evaluated with ([] = none)
    signs: str  # init: a kept weight becomes w·sign(its θ0 value) | none: w itself (WANN)

    def check(self):
        _one_of("weight_agnostic.signs", self.signs, ("init", "none"))
        for index, value in enumerate(self.values):
            if value == 0:
                raise ParamsError(f"weight_agnostic.values[{index}] = 0: a shared weight of 0 removes every connection")
        if len(set(self.values)) != len(self.values):
            raise ParamsError(f"weight_agnostic.values = {self.values}: names a value twice")


@dataclass(frozen=True)
class FactorizeHparams(Section):
    enabled: bool  # each round trains a low-rank factorized network storing as many weights as its ticket would
    spectral_init: bool  # factors of the start weights by truncated SVD (SI) | drawn independently (plain)
    frobenius_decay: bool  # train.weight_decay on the factors as (λ/2)‖UVᵀ‖²_F (FD) | as (λ/2)(‖U‖² + ‖V‖²)

    def check(self):
        pass  # booleans: the combinations with other sections are checked in Hparams


@dataclass(frozen=True)
class CompactHparams(Section):
    latency_repeats: int  # timed forward passes per latency figure (their median is reported)

    def check(self):
        _at_least("compact.latency_repeats", self.latency_repeats, 1)


@dataclass(frozen=True)
class DistributedHparams(Section):
    processes_per_node: int  # data-parallel training processes (ranks) per machine, through torchrun
    nodes: int  # machines; above 1, every node runs the command the stage prints
    rendezvous: str  # host:port of torchrun's c10d rendezvous when nodes > 1

    @property
    def world_size(self):
        return self.processes_per_node * self.nodes

    def check(self):
        _at_least("distributed.processes_per_node", self.processes_per_node, 1)
        _at_least("distributed.nodes", self.nodes, 1)
        host, _, port = self.rendezvous.rpartition(":")
        if self.nodes > 1 and not (host and port.isdigit()):
            raise ParamsError(f"distributed.rendezvous = {self.rendezvous!r}: {self.nodes} nodes meet at a host:port")


@dataclass(frozen=True)
class TrackingHparams(Section):
    experiment: str  # MLflow experiment name
    uri: str  # '' = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the project root
    registered_model: str  # Model Registry name for the smallest matching ticket; '' = do not register

    def check(self):
        if not self.experiment:
            raise ParamsError("tracking.experiment = '': must name an MLflow experiment")


@dataclass(frozen=True)
class ReportHparams(Section):
    tolerance: float  # a ticket "matches dense" if its test accuracy is at most this much lower

    def check(self):
        _at_least("report.tolerance", self.tolerance, 0)


SECTIONS = {
    "data": DataHparams,
    "model": ModelHparams,
    "train": TrainHparams,
    "prune": PruneHparams,
    "rewind": RewindHparams,
    "controls": ControlsHparams,
    "early_bird": EarlyBirdHparams,
    "supermask": SupermaskHparams,
    "weight_agnostic": WeightAgnosticHparams,
    "factorize": FactorizeHparams,
    "compact": CompactHparams,
    "distributed": DistributedHparams,
    "tracking": TrackingHparams,
    "report": ReportHparams,
}
# Sections that do not change what the lineage's tickets are: they stay out of its identity, so
# adding rounds or controls extends a lineage rather than starting a new one.
# The number of processes, like the device, is recorded with each run's environment instead.
# Factorize, like a supermask search, joins the identity only when it is switched on (Hparams.identity),
# so the names of lineages from before the section existed stay.
NOT_LINEAGE = ("tracking", "report", "rounds", "controls", "compact", "supermask", "weight_agnostic", "distributed", "factorize")
IDENTITY_SECTIONS = tuple(name for name in SECTIONS if name not in NOT_LINEAGE)


@dataclass(frozen=True)
class Hparams:
    seed: int
    data: DataHparams
    model: ModelHparams
    train: TrainHparams
    prune: PruneHparams
    rewind: RewindHparams
    controls: ControlsHparams
    early_bird: EarlyBirdHparams
    supermask: SupermaskHparams
    weight_agnostic: WeightAgnosticHparams
    factorize: FactorizeHparams
    compact: CompactHparams
    distributed: DistributedHparams
    rounds: int  # pruning rounds after the dense round 0
    tracking: TrackingHparams
    report: ReportHparams
    raw: dict = dataclasses.field(compare=False, repr=False)

    def check(self):
        for section in SECTIONS:
            getattr(self, section).check()
        if self.rewind.iteration >= self.train.iterations:
            raise ParamsError(
                f"rewind.iteration = {self.rewind.iteration}: must be below train.iterations "
                f"({self.train.iterations})"
            )
        if self.rewind.target == "finetune" and self.rewind.finetune_iterations < self.train.eval_every:
            raise ParamsError(
                f"rewind.finetune_iterations = {self.rewind.finetune_iterations}: must be at least "
                f"train.eval_every ({self.train.eval_every})"
            )
        if self.controls.run and self.rewind.target != "init":
            raise ParamsError(
                f"controls.run = {self.controls.run}: the LTH controls need rewind.target 'init' "
                f"(not {self.rewind.target!r}); compare targets as separate experiments"
            )
        if self.train.batch_size > self.data.training_examples():
            raise ParamsError(
                f"train.batch_size = {self.train.batch_size}: larger than the training split "
                f"({self.data.training_examples()} examples)"
            )
        if self.distributed.world_size > 1:
            self._check_distributed()
        if self.early_bird.enabled:
            self._check_early_bird()
        if self.prune.granularity == "channel":
            self._check_channels()
        if self.searches_supermasks():
            self._check_supermask()
        if self.factorize.enabled:
            self._check_factorize()

    def _check_early_bird(self):
        # prune@1 must draw the very mask the search drew: Network Slimming's, at the same ratio.
        expected = {"strategy": "bn_slimming", "granularity": "channel", "scope": "global", "rate": self.early_bird.ratio}
        for key, value in expected.items():
            if getattr(self.prune, key) != value:
                raise ParamsError(
                    f"prune.{key} = {getattr(self.prune, key)!r}: early_bird.enabled draws Network Slimming masks, "
                    f"so it needs prune.{key} = {value!r}"
                )

    def _check_channels(self):
        import torch

        from lottery import channels, pruning

        if "random_sparse" in self.controls.run:
            raise ParamsError("controls.run = ['random_sparse']: needs prune.granularity 'weight' (it breaks channels)")
        model = self._model()
        channel_groups = channels.groups(model)
        if not channel_groups:
            raise ParamsError(f"prune.granularity = 'channel': {self.model.name} has no prunable channels")
        try:
            # A strategy that cannot score this model's channels (bn_slimming without BatchNorm) says so now.
            pruning.REGISTRY[self.prune.strategy].channel_scores(model, channel_groups, torch.Generator())
            pruning.check_channel_budget(self.prune, {g.name: g.size for g in channel_groups}, self.rounds)
        except ValueError as err:
            raise ParamsError(str(err)) from None

    def _check_distributed(self):
        import torch

        from lottery import devices

        ranks = self.distributed.world_size
        if self.train.batch_size % ranks:
            raise ParamsError(
                f"train.batch_size = {self.train.batch_size}: must be a multiple of the {ranks} data-parallel "
                "processes (distributed.processes_per_node × distributed.nodes)"
            )
        on_gpus = devices.device_for(self.train.device).type == "cuda"
        if on_gpus and self.distributed.processes_per_node > torch.cuda.device_count():
            raise ParamsError(
                f"distributed.processes_per_node = {self.distributed.processes_per_node}: one GPU per process, "
                f"and torch finds {torch.cuda.device_count()} here"
            )
        if self._has_batchnorm() and not on_gpus:
            raise ParamsError(
                f"distributed.processes_per_node = {self.distributed.processes_per_node}: {self.model.name} has "
                "BatchNorm, and torch's SyncBatchNorm runs on GPUs only (train.device cuda, or 1 process)"
            )

    def searches_supermasks(self):
        """Whether prune@r trains scores on frozen weights (edge-popup) rather than scoring trained ones."""
        from lottery import pruning

        return pruning.learns_scores(self.prune.strategy)

    def _check_supermask(self):
        # The search scores the weights the round will start from, and none of them is trained.
        if self.rewind.target != "init":
            raise ParamsError(
                f"rewind.target = {self.rewind.target!r}: prune.strategy {self.prune.strategy!r} searches a mask "
                "for the rewind point's weights, so it needs 'init'"
            )
        if self.prune.scope != "layerwise":
            raise ParamsError(f"prune.scope = {self.prune.scope!r}: {self.prune.strategy} keeps each layer's top scores (use 'layerwise')")
        if self._has_batchnorm():
            raise ParamsError(
                f"model.name = {self.model.name!r}: has BatchNorm, whose statistics a supermask of frozen weights "
                "has no stage to keep; use lenet_300_100 or conv2/conv4/conv6"
            )
        if self.supermask.weight_agnostic and not self.weight_agnostic.values:
            raise ParamsError("supermask.weight_agnostic = true: draws its shared weights from weight_agnostic.values, which is []")

    def _check_factorize(self):
        # A factorized round stores as many weights as the round's weight-pruned ticket would keep
        # (pruning.kept_weights); what only applies to masks is refused rather than ignored.
        needs = {
            "prune.granularity": (self.prune.granularity, "weight", "it matches the weights a weight-pruned ticket keeps"),
            "controls.run": (self.controls.run, [], "the controls retrain a mask's sparsity pattern"),
            "weight_agnostic.values": (self.weight_agnostic.values, [], "it evaluates masks of θ0's weights"),
        }
        for key, (value, wanted, reason) in needs.items():
            if value != wanted:
                raise ParamsError(f"{key} = {value!r}: factorize.enabled trains factorized layers and {reason}; use {wanted!r}")
        if self.searches_supermasks():
            raise ParamsError(f"prune.strategy = {self.prune.strategy!r}: searches a mask; factorize.enabled trains factorized layers")
        if self.rewind.target == "finetune" and not self.factorize.spectral_init:
            raise ParamsError(
                "factorize.spectral_init = false: rewind.target 'finetune' factorizes the trained weights by truncated SVD; "
                "plain factors would discard them (use 'init' or 'scratch')"
            )
        if self.rewind.target == "scratch" and self.rewind.scratch_budget == "flops":
            raise ParamsError("rewind.scratch_budget = 'flops': Scratch-B stretches a mask's budget; use 'same' with factorize.enabled")
        self._check_factorized_rounds()

    def _check_factorized_rounds(self):
        from lottery import pruning
        from lottery.factorize import plans

        model = self._model()
        target = pruning.kept_weights(self.prune, model, self.rounds, seed=0)
        try:
            plans.matched_ranks(model, target)
        except ValueError as err:
            raise ParamsError(f"prune.rate = {self.prune.rate}: round {self.rounds}'s ticket keeps {err}") from None

    def _model(self):
        """A model of these params (seed 0), for the checks that depend on its layers."""
        from lottery import data, models

        spec = data.DATASETS[self.data.dataset]
        return models.build(self.model.name, spec.input_shape, spec.num_classes, seed=0, width=self.model.width)

    def _has_batchnorm(self):
        from lottery.models.base import batchnorm_scales

        return bool(batchnorm_scales(self._model()))

    def branches(self):
        """(round, control) of every branch the params ask for: the ticket's rounds 0..N (control
        None), then each control at rounds 1..N."""
        ticket = [(round_, None) for round_ in range(self.rounds + 1)]
        return ticket + [(round_, name) for round_ in range(1, self.rounds + 1) for name in self.controls.run]

    def identity(self):
        """The params that determine the results, typed: the seed and each section's identity; the
        sections in NOT_LINEAGE (and keys a section drops) do not change what is computed, except
        that a supermask search's settings (and the shared weights a weight-agnostic search draws)
        shape its masks, and factorize's shape a factorized lineage."""
        tree = {"seed": self.seed, **{name: getattr(self, name).identity() for name in IDENTITY_SECTIONS}}
        if self.factorize.enabled:
            # Without weight decay, Frobenius decay has no decay to replace: the same lineage either way.
            tree["factorize"] = self.factorize.identity() if self.train.weight_decay else {"spectral_init": self.factorize.spectral_init}
        if self.searches_supermasks():
            tree["supermask"] = self.supermask.identity()
            if self.supermask.weight_agnostic:
                tree["supermask"]["shared_weights"] = self.weight_agnostic.identity()
        return tree

    @property
    def params_hash(self):
        """Digest of `identity()`: equal for params files that compute the same thing."""
        return digest(self.identity())


def digest(tree):
    """A short, stable digest of a JSON-able tree (key order does not matter)."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _fields(section, drop=()):
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name not in drop}


def from_dict(raw):
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    known = {"seed", "rounds", *SECTIONS}
    for key in raw:
        if key not in known:
            raise ParamsError(f"{key}: unknown section (expected one of {sorted(known)})")
    sections = {name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    hp = Hparams(
        seed=_typed("seed", _required(raw, "seed", ""), int),
        rounds=_rounds(_required(raw, "rounds", "")),
        raw=raw,
        **sections,
    )
    hp.check()
    return hp


def load(path="params.yaml"):
    return from_dict(_read(path))


def load_section(name, path="params.yaml"):
    """One section of a params file, typed and checked on its own: for commands that need only it
    (the lineage commands read `tracking`), so the rest of the file may ask for what this machine
    lacks (train.device: cuda on a CPU)."""
    raw = _read(path)
    if not isinstance(raw, dict):
        raise ParamsError("params: the file must be a mapping of sections")
    section = _section(name, SECTIONS[name], raw.get(name))
    section.check()
    return section


def _read(path):
    path = Path(path)
    try:
        return yaml12.load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def rounds_section(count):
    """The `rounds` mapping for `count` rounds: DVC's foreach needs each round's predecessor."""
    return {str(r): {"prev": r - 1} for r in range(1, count + 1)}


def _section(name, cls, values):
    if not isinstance(values, dict):
        raise ParamsError(f"{name}: missing section" if values is None else f"{name}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in fields:
            raise ParamsError(f"{name}.{key}: unknown key (expected one of {fields})")
    return cls(**{f: _typed(f"{name}.{f}", _required(values, f, name), hints[f]) for f in fields})


_MISSING = object()


def _required(values, key, section):
    value = values.get(key, _MISSING)
    if value is _MISSING:
        raise ParamsError(f"{section + '.' if section else ''}{key}: missing key")
    return value


def _typed(key, value, hint):
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: must be a list")
        (item,) = typing.get_args(hint)
        return [_typed(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
            return value
        if kind is bool and isinstance(value, bool):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ParamsError(f"{key} = {value!r}: must be {names}")


def _rounds(section):
    # Keys are strings: DVC's params context drops integer keys, and foreach needs them.
    hint = "(run `make rounds N=<count>`)"
    if not isinstance(section, dict) or not section:
        raise ParamsError(f"rounds: must map each round '1'..'N' to {{prev: N-1}} {hint}")
    expected = [str(r) for r in range(1, len(section) + 1)]
    if sorted(section, key=str) != sorted(expected) or any(type(k) is not str for k in section):
        raise ParamsError(f"rounds: keys {list(section)!r} must be the strings '1'..'{len(section)}' {hint}")
    for key in expected:
        if section[key] != {"prev": int(key) - 1}:
            raise ParamsError(f"rounds.{key} = {section[key]!r}: must be {{prev: {int(key) - 1}}}")
    return len(section)


def _one_of(key, value, allowed):
    if value not in allowed:
        raise ParamsError(f"{key} = {value!r}: unknown (expected one of {sorted(allowed)})")


def _positive(key, value):
    if not value > 0:
        raise ParamsError(f"{key} = {value!r}: must be > 0")


def _at_least(key, value, minimum):
    if value < minimum:
        raise ParamsError(f"{key} = {value!r}: must be >= {minimum}")
