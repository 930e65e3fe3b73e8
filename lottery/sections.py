"""One typed dataclass per params.yaml section, each with the checks that need nothing but itself.

A section's `check()` raises a ParamsError naming the key. What a key may be given the rest of the
params, and what a method needs and refuses, is checked by the method itself (lottery.validation
lists the rules). Which keys name a lineage is lottery.identity's schema.
"""

import typing
from dataclasses import dataclass

from lottery.checks import at_least, fraction, one_of, positive
from lottery.errors import ParamsError


@dataclass(frozen=True)
class DataHparams:
    dataset: str  # registry name in lottery.data
    source: str  # package | local | download
    local_root: str  # an existing torchvision root, used when source is `local`
    validation_size: int  # examples held out of the training set for early stopping
    train_subset: int  # 0 = the whole training set; else its first N (after the hold-out)
    test_subset: int  # 0 = the whole test set
    augmentation: str  # standard: the dataset's own training augmentation (CIFAR-10: crops and flips) | none

    def check(self):
        from lottery import data

        one_of("data.dataset", self.dataset, data.DATASETS)
        one_of("data.source", self.source, data.SOURCES)
        one_of("data.augmentation", self.augmentation, ("standard", "none"))
        if self.source == "package" and data.DATASETS[self.dataset].package is None:
            raise ParamsError(
                f"data.source = 'package': no registry package carries {self.dataset}; use 'local' or 'download'"
            )
        if self.source == "local" and not self.local_root:
            raise ParamsError("data.local_root = '': source 'local' needs an existing torchvision root")
        at_least("data.validation_size", self.validation_size, 1)
        at_least("data.train_subset", self.train_subset, 0)
        at_least("data.test_subset", self.test_subset, 0)
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


@dataclass(frozen=True)
class ModelHparams:
    name: str  # registry name in lottery.models (its rules: lottery.models.catalog.check_params)
    width: float  # channel multiplier of the VGG and ResNet models, hidden units of LeNet (1.0 = the paper's)
    init: str  # how θ0 is drawn: paper (the model's own) | glorot | kaiming_normal | signed_kaiming_constant

    def check(self):
        positive("model.width", self.width)


@dataclass(frozen=True)
class TrainHparams:
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
    weight_decay: float  # λ of the L2 penalty (λ/2)‖θ‖² on every parameter (factors: see lottery.factorize)
    bn_l1: float  # λ of the λ·Σ|γ| BatchNorm sparsity term (Network Slimming)
    bn_l1_rounds: str  # dense: the term shapes round 0 only (one pass) | every: each round's retraining too (multi-pass)
    precision: str  # float32 | bfloat16 (autocast of the training forward passes)
    tf32: bool  # TF32 matmuls and convolutions on GPUs that have them
    deterministic: bool  # deterministic cuDNN/cuBLAS kernels: a GPU run repeats bit for bit

    def check(self):
        one_of("train.optimizer", self.optimizer, ("adam", "sgd"))
        positive("train.lr", self.lr)
        fraction("train.momentum", self.momentum, closed_low=True)
        at_least("train.batch_size", self.batch_size, 1)
        at_least("train.iterations", self.iterations, 1)
        at_least("train.eval_every", self.eval_every, 1)
        one_of("train.test_curve", self.test_curve, ("improvements", "every"))
        one_of("train.device", self.device, ("auto", "cpu", "cuda"))
        if not 0 <= self.warmup_iterations < self.iterations:
            raise ParamsError(
                f"train.warmup_iterations = {self.warmup_iterations}: must be in [0, train.iterations)"
            )
        if self.milestones != sorted(set(self.milestones)) or any(not 0 < m < self.iterations for m in self.milestones):
            raise ParamsError(
                f"train.milestones = {self.milestones}: must increase strictly within (0, train.iterations)"
            )
        fraction("train.gamma", self.gamma, closed_high=True)
        at_least("train.weight_decay", self.weight_decay, 0)
        at_least("train.bn_l1", self.bn_l1, 0)
        one_of("train.bn_l1_rounds", self.bn_l1_rounds, ("dense", "every"))
        if self.bn_l1_rounds == "every" and not self.bn_l1:
            raise ParamsError("train.bn_l1_rounds = 'every': repeats the sparsity term, and train.bn_l1 is 0")
        one_of("train.precision", self.precision, ("float32", "bfloat16"))
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ParamsError("train.device = 'cuda': torch finds no CUDA device here (use 'auto' or 'cpu')")


@dataclass(frozen=True)
class PruneHparams:
    strategy: str  # registry name in lottery.pruning (its rules live with the strategy)
    scope: str  # layerwise: each layer loses its own rate; global: one ranking over the layers but the output
    rate: float  # fraction of the remaining weights removed per round (fully-connected layers)
    conv_rate: typing.Optional[float]  # layerwise weight pruning: null = the model's paper rate for conv layers
    output_rate: typing.Optional[float]  # weight pruning, either scope: null = the model's paper rule
    schedule: str  # iterative: round r prunes round r-1; oneshot: round r prunes the dense net at once
    granularity: str  # weight: unstructured masks; channel: whole output channels (structured)
    min_channels: int  # channel pruning never leaves a layer fewer channels than this
    max_layer_fraction: float  # global channel pruning takes at most this fraction of any layer's channels

    def check(self):
        one_of("prune.granularity", self.granularity, ("weight", "channel"))
        at_least("prune.min_channels", self.min_channels, 1)
        one_of("prune.scope", self.scope, ("layerwise", "global"))
        one_of("prune.schedule", self.schedule, ("iterative", "oneshot"))
        for key in ("rate", "conv_rate"):
            if getattr(self, key) is not None:
                fraction(f"prune.{key}", getattr(self, key))
        if self.output_rate is not None and not 0 <= self.output_rate < 1:
            raise ParamsError(f"prune.output_rate = {self.output_rate!r}: must be in [0, 1) (0: the layer is left alone)")
        fraction("prune.max_layer_fraction", self.max_layer_fraction, closed_high=True)
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


@dataclass(frozen=True)
class RewindHparams:
    target: str  # init: θk (LTH) | finetune: the pruned trained weights | scratch: a fresh random init
    iteration: int  # k for target init: rewind to the dense run's weights at iteration k (0 = θ0)
    finetune_lr: float  # target finetune: a constant learning rate ...
    finetune_iterations: int  # ... for this many iterations
    scratch_budget: str  # target scratch: same (Scratch-E) | flops (Scratch-B: iterations × dense/pruned FLOPs)
    max_budget_factor: float  # Scratch-B trains at most this many times train.iterations

    def check(self):
        one_of("rewind.target", self.target, ("init", "finetune", "scratch"))
        at_least("rewind.iteration", self.iteration, 0)
        if self.target != "init" and self.iteration:
            raise ParamsError(f"rewind.iteration = {self.iteration}: only rewind.target 'init' rewinds to θk")
        positive("rewind.finetune_lr", self.finetune_lr)
        at_least("rewind.finetune_iterations", self.finetune_iterations, 1)
        one_of("rewind.scratch_budget", self.scratch_budget, ("same", "flops"))
        at_least("rewind.max_budget_factor", self.max_budget_factor, 1)


@dataclass(frozen=True)
class ControlsHparams:
    run: list[str]  # control branches trained beside each round's ticket (lottery.controls)
    same_sign: bool  # reinit_from_ticket keeps each weight's original sign

    def check(self):
        if len(set(self.run)) != len(self.run):
            raise ParamsError(f"controls.run = {self.run}: names a control twice")


@dataclass(frozen=True)
class EarlyBirdHparams:
    enabled: bool  # search for an Early-Bird ticket while training dense (round 0)
    ratio: float  # fraction of channels the drawn masks prune (must equal prune.rate)
    epsilon: float  # the ticket has emerged when none of the last `queue` mask distances exceeds ε
    queue: int  # how many earlier epochs' masks each new mask is compared with (FIFO)
    quantize_bits: int  # 0: full-precision search; else weights and inputs fake-quantised to this many bits

    def check(self):
        fraction("early_bird.ratio", self.ratio)
        fraction("early_bird.epsilon", self.epsilon, closed_high=True)
        at_least("early_bird.queue", self.queue, 1)
        if self.quantize_bits and not 2 <= self.quantize_bits <= 16:
            raise ParamsError(f"early_bird.quantize_bits = {self.quantize_bits}: must be 0 (off) or 2..16")


@dataclass(frozen=True)
class SupermaskHparams:
    iterations: int  # score-training steps per round (SGD with momentum, cosine decay to 0)
    lr: float
    momentum: float
    weight_decay: float  # on the scores
    weight_agnostic: bool  # each step, every kept weight is one shared value drawn from weight_agnostic.values

    def check(self):
        at_least("supermask.iterations", self.iterations, 1)
        positive("supermask.lr", self.lr)
        fraction("supermask.momentum", self.momentum, closed_low=True)
        at_least("supermask.weight_decay", self.weight_decay, 0)


@dataclass(frozen=True)
class WeightAgnosticHparams:
    values: list[float]  # the shared weights w every round's mask is evaluated with ([] = none)
    signs: str  # init: a kept weight becomes w·sign(its θ0 value) | none: w itself (WANN)

    def check(self):
        one_of("weight_agnostic.signs", self.signs, ("init", "none"))
        for index, value in enumerate(self.values):
            if value == 0:
                raise ParamsError(f"weight_agnostic.values[{index}] = 0: a shared weight of 0 removes every connection")
        if len(set(self.values)) != len(self.values):
            raise ParamsError(f"weight_agnostic.values = {self.values}: names a value twice")


@dataclass(frozen=True)
class FactorizeHparams:
    enabled: bool  # each round trains a low-rank factorized network storing as many weights as its ticket would
    spectral_init: bool  # factors of the start weights by truncated SVD (SI) | drawn independently (plain)
    frobenius_decay: bool  # train.weight_decay on the factors as (λ/2)‖UVᵀ‖²_F (FD) | as (λ/2)(‖U‖² + ‖V‖²)

    def check(self):
        pass  # booleans; what factorizing needs of the other sections is its own rule (lottery.factorize.rules)


@dataclass(frozen=True)
class CompactHparams:
    latency_repeats: int  # timed forward passes per latency figure (their median is reported)

    def check(self):
        at_least("compact.latency_repeats", self.latency_repeats, 1)


@dataclass(frozen=True)
class DistributedHparams:
    processes_per_node: int  # data-parallel training processes (ranks) per machine, through torchrun
    nodes: int  # machines; above 1, every node runs the command the stage prints
    rendezvous: str  # host:port of torchrun's c10d rendezvous when nodes > 1

    @property
    def world_size(self):
        return self.processes_per_node * self.nodes

    def check(self):
        at_least("distributed.processes_per_node", self.processes_per_node, 1)
        at_least("distributed.nodes", self.nodes, 1)
        host, _, port = self.rendezvous.rpartition(":")
        if self.nodes > 1 and not (host and port.isdigit()):
            raise ParamsError(f"distributed.rendezvous = {self.rendezvous!r}: {self.nodes} nodes meet at a host:port")


@dataclass(frozen=True)
class TrackingHparams:
    experiment: str  # MLflow experiment name
    uri: str  # '' = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the project root
    registered_model: str  # Model Registry name for the smallest matching ticket; '' = do not register

    def check(self):
        if not self.experiment:
            raise ParamsError("tracking.experiment = '': must name an MLflow experiment")


@dataclass(frozen=True)
class ReportHparams:
    tolerance: float  # a ticket "matches dense" if its test accuracy is at most this much lower

    def check(self):
        at_least("report.tolerance", self.tolerance, 0)


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
