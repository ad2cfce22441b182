"""Assemble a method from its parts: encoder, prior, guide, likelihood (all chosen by registry name)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from guides import GUIDES
from models import PRIORS, ContrastiveModel
from pyro_ncl.batch import EncodedBatch
from pyro_ncl.config import Config, check_amp
from pyro_ncl.encoders import Encoder, build_encoder
from pyro_ncl.likelihoods import LIKELIHOODS
from pyro_ncl.ops import safe_normalize
from pyro_ncl.scopes import VIEW


# --test-gate: how a gated method's evaluated features use the posterior q(m | x)
TEST_GATES = {"mode": "the posterior's mode (the most probable mask: 1[logit > 0] for per-gate Bernoulli guides, the k "
                      "largest θ for exact_k)",
              "mean": "the posterior mean q(m = 1 | x) as a weight in (0, 1)"}


def check_parts(config: Config) -> None:
    """Refuse a combination of parts that makes no sense, naming the conflict (before anything is built)."""
    prior, guide, likelihood = PRIORS[config.prior], GUIDES[config.guide], LIKELIHOODS[config.likelihood]
    if prior.value_kind != guide.value_kind:
        raise ValueError(f"--prior {config.prior} scores {_kind(prior.value_kind)} but --guide {config.guide} "
                         f"produces {_kind(guide.value_kind)}: the ELBO would compare different kinds of value")
    if getattr(guide, "factorised_prior_only", False) and not getattr(prior, "factorised", True):
        raise ValueError(f"--guide {config.guide} takes its gate term as the exact KL to a factorised Bernoulli "
                         f"prior (bernoulli, beta_bernoulli); --prior {config.prior} is a penalty on the batch's "
                         f"open rates")
    if likelihood.requires_labels and prior.value_kind is not None:
        raise ValueError(f"--likelihood {config.likelihood} is supervised and gates its features from label "
                         f"embeddings; combine it with --prior none --guide none, not --prior {config.prior}")
    if config.test_gate not in TEST_GATES:
        raise ValueError(f"--test-gate must be one of {', '.join(TEST_GATES)}, got {config.test_gate!r}")
    config.validate()


def _kind(value_kind) -> str:
    return {None: "no gate", "hard": "hard {0,1} gates", "soft": "relaxed (0,1) gates"}[value_kind]


class ContrastiveSystem(nn.Module):
    """Encoder + Pyro model + Pyro guide. ``encode`` runs the encoder once on both views; ``model.model`` and
    ``guide.guide`` then read the shared ``EncodedBatch``."""

    amp_dtype: Optional[torch.dtype] = None  # autocast dtype of the encoder (``accelerate``); None: fp32
    channels_last: bool = False
    test_gate: str = "mode"  # the gate of the evaluated features: one of TEST_GATES
    kl_weight: float = 1.0  # β of the gate term (``scale_gate_term`` multiplies it during the KL warm-up)

    def __init__(self, encoder: Encoder, model: ContrastiveModel, guide: nn.Module):
        super().__init__()
        self.encoder, self.model, self.guide = encoder, model, guide

    @property
    def gated(self) -> bool:
        return self.model.prior is not None

    def encode(self, x1, x2, index, num_images: int, labels=None) -> EncodedBatch:
        x = torch.cat([x1, x2])
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            h, z = self.encoder(x)
        else:  # the encoder only: h and z leave it in fp32 for the gate head, the distributions and the loss
            with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
                h, z = self.encoder(x)
            h, z = h.float(), z.float()
        return EncodedBatch(h=h, z=z, index=index, num_images=num_images, labels=labels)

    def set_progress(self, epochs_done: float) -> None:
        """Training progress (epochs, fractional) for parts with a schedule (the budget curriculum of the top-k
        activation and of the budgeted gates)."""
        for part in (self.encoder, self.guide):
            if hasattr(part, "set_progress"):
                part.set_progress(epochs_done)

    def scale_gate_term(self, factor: float) -> None:
        """Weigh the gate term by β · ``factor`` (the KL warm-up; β = ``--kl-weight``) in the model and the guide."""
        weight = self.kl_weight * factor
        self.model.kl_weight = weight
        if hasattr(self.guide, "kl_weight"):
            self.guide.kl_weight = weight

    def step_values(self) -> Dict[str, Any]:
        """The last step's diagnostics as computed (detached tensors, on the training device: reading them does
        not wait for the device)."""
        return {**self.model.last_stats, **getattr(self.guide, "last_stats", {})}

    def step_stats(self) -> Dict[str, float]:
        """The last step's diagnostics (contrastive loss, gate KL per view, open-gate fraction) as floats."""
        return {k: float(v) for k, v in self.step_values().items()}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x [N, C, H, W] → h [N, F], z [N, K] (normalised), features [N, K] (the method's: for gated methods the
        normalised z gated by the test-time gate ``test_gate`` — the posterior's mode or the posterior mean
        q(m = 1 | x) as a weight — normalised again; normalised z otherwise), and for gated methods gate [N, K]
        (the hard mode) and probs [N, K] (the posterior open probabilities)."""
        h, z = self.encoder(x)
        h, z = h.float(), safe_normalize(z.float())
        out = {"h": h, "z": z, "features": z}
        if self.gated:
            answers = self.guide.answers(h, z)
            gates = {"mode": answers["mode"], "mean": answers["probs"]}
            out.update(gate=gates["mode"], probs=gates["mean"], features=safe_normalize(z * gates[self.test_gate]),
                       entropy=answers["entropy"])
            if "doubt_entropy" in answers:
                out["doubt_entropy"] = answers["doubt_entropy"]
        return out

    def parameter_groups(self, lr: float, gate_lr: float, weight_decay: float) -> List[dict]:
        """Encoder and model (likelihood, prior) parameters at ``lr``; the guide's own (gate head) at ``gate_lr``."""
        groups, seen = [], set()
        for module, group_lr in ((self.encoder, lr), (self.guide, gate_lr), (self.model, lr)):
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append(dict(params=params, lr=group_lr, weight_decay=weight_decay))
        return groups


def accelerate(system: ContrastiveSystem, amp: str = "none", channels_last: bool = False,
               compile: bool = False) -> ContrastiveSystem:
    """Speed settings of the encoder, in place: ``amp="bf16"`` autocasts the encoder's forward (its outputs are
    cast back to fp32), ``channels_last`` converts its weights and inputs, ``compile`` wraps its forward with
    ``torch.compile`` (``nn.Module.compile``: parameter names and checkpoints unchanged). On the CPU all three
    work (bf16 autocast is supported by torch but rarely faster; compile needs a C++ compiler)."""
    check_amp(amp)
    system.amp_dtype = torch.bfloat16 if amp == "bf16" else None
    system.channels_last = channels_last
    if channels_last:
        system.encoder.to(memory_format=torch.channels_last)
    if compile:
        system.encoder.compile()
    return system


def build_system(config: Config, in_channels: int, num_classes: int = 10,
                 device: Optional[torch.device] = None) -> ContrastiveSystem:
    """``config`` must be resolved (``Config.resolved``)."""
    check_parts(config)
    encoder = build_encoder(config.backbone, in_channels, config.width, config.cifar_stem, config.hidden_dim,
                            config.feature_dim, config.non_neg, topk=config.topk,
                            anneal_epochs=config.budget_anneal_epochs, epochs=config.epochs,
                            schedule=config.budget_schedule, start=config.budget_start)
    prior = PRIORS[config.prior].build(config.feature_dim, config)
    guide = GUIDES[config.guide].build(encoder, prior, config)
    likelihood = LIKELIHOODS[config.likelihood].build(config.feature_dim, config, num_classes)
    model = ContrastiveModel(likelihood, prior, kl_weight=config.kl_weight,
                             analytic_kl=guide.analytic_kl,
                             scope=getattr(guide, "scope", VIEW))
    system = ContrastiveSystem(encoder, model, guide)
    system.test_gate, system.kl_weight = config.test_gate, config.kl_weight
    return system.to(device) if device is not None else system
