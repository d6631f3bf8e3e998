"""The optimizer of a stack (stacking.py): the members' optimizer run once over their stacked
weights, with each member's own learning rate, weight decay and scheduler."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from mnist_lab.checkpoint import TrainingState

PER_MEMBER = ("lr", "weight_decay")  # what each member of a stack sets for itself


def shared_settings(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's settings other than the per-member ones (betas, momentum, eps, ...), as
    its group holds them now (a one-cycle scheduler moves the momentum)."""
    group = optimizer.param_groups[0]
    return {k: group[k] for k in optimizer.defaults if k not in PER_MEMBER and k in group}


class StackedOptimizer:
    """The members' optimizer class run once over the stacked weights, with each member's own
    learning rate and weight decay, as its own (solo) optimizer holds them after its scheduler.

    The shared optimizer steps with lr 1 and no weight decay; each member's step is then scaled
    by its learning rate, which is exact for Adam, AdamW, SGD and RMSprop: their step is the
    learning rate times an update that does not depend on it. Weight decay is added to the
    gradient (L2: Adam, SGD, RMSprop) or shrinks the weights (AdamW) per member, as torch does.
    """

    def __init__(self, weights: Sequence[torch.Tensor], members: Sequence[TrainingState]):
        own = members[0].optimizer
        settings = shared_settings(own)
        self.decoupled = bool(settings.pop("decoupled_weight_decay", False)) or \
            isinstance(own, torch.optim.AdamW)
        self.weights, self.members = list(weights), members
        self.shared = type(own)(self.weights, lr=1.0, weight_decay=0.0, **settings)
        self._values: tuple = ()
        self._before: list[torch.Tensor] = []
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def hyperparameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr, weight decay) per member as (members,) tensors, rebuilt only when a value
        changed (a copy to the device each step would stall a GPU)."""
        values = tuple((m.optimizer.param_groups[0]["lr"],
                        m.optimizer.param_groups[0].get("weight_decay", 0.0))
                       for m in self.members)
        if values != self._values:
            device = self.weights[0].device
            lr, decay = zip(*values)
            self._tensors = (torch.tensor(lr, device=device), torch.tensor(decay, device=device))
            self._values = values
        return self._tensors

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.shared.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        group = self.shared.param_groups[0]
        for key, value in shared_settings(self.members[0].optimizer).items():
            if key in group and key != "decoupled_weight_decay":
                group[key] = value  # the same for every member (the stack's key says so)
        lr, decay = self.hyperparameters()
        per = [(lr.view(-1, *[1] * (w.dim() - 1)), decay.view(-1, *[1] * (w.dim() - 1)))
               for w in self.weights]
        decays = any(d for _, d in self._values)
        if decays and not self.decoupled:
            for w, (_, d) in zip(self.weights, per):
                if w.grad is not None:
                    w.grad.addcmul_(w, d)
        # the weights before the step, in buffers kept from step to step: a fresh copy each
        # step costs page faults (the CNN's 19 MB fc1 in a stack of 6: 3.9 ms against 0.9)
        if not self._before:
            self._before = [torch.empty_like(w) for w in self.weights]
        before = list(self._before)
        torch._foreach_copy_(before, self.weights)  # one kernel for all of them on a GPU
        shrink = [old * (r * d) for old, (r, d) in zip(before, per)] \
            if decays and self.decoupled else None  # AdamW's decay of the weights before
        self.shared.step()
        for j, (w, old, (r, _)) in enumerate(zip(self.weights, before, per)):
            old.lerp_(w, r)  # the member's step at its learning rate, in place
            if shrink is not None:
                old.sub_(shrink[j])
            self._before[j] = w.detach()  # its storage is next step's buffer
            w.set_(old)


class MemberSchedulers:
    """Each member's own scheduler, stepped together (`scheduler.step()` in the loop)."""

    def __init__(self, members: Sequence[TrainingState]):
        self.members = members

    def step(self) -> None:
        with warnings.catch_warnings():  # a member's own optimizer never steps: its
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")  # weights do
            for member in self.members:
                member.scheduler.step()
