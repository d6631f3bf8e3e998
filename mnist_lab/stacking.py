"""Several runs of one architecture trained as one stacked model (`launcher=stacked`).

Each member is a whole solo run: its own `TrainingState` (model, optimizer, scheduler, batch
order, history, best weights) that its epoch callbacks see and its checkpoint saves, in the solo
format. Training runs on the stack: every weight gets a leading member dimension
(as `torch.func.stack_module_state` does), each layer runs once for all members (`vmap` over
`functional_call`), each member sees its own batches, dropout rate and dropout masks, and one
optimizer of the configured kind steps all members' weights with each member's own learning
rate and weight decay (`StackedOptimizer`). `loop.fit` trains a `Stack` as it trains one state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from mnist_lab.checkpoint import TrainingState
from mnist_lab.stacked_optim import MemberSchedulers, StackedOptimizer

EpochCallback = Callable[[TrainingState, dict[str, float]], None]


@dataclass
class Member:
    """One run in a stack (or the one run of a solo fit): its state and its epoch callbacks;
    `error` is why it left the stack early (pruned, diverged, a callback failed)."""

    state: TrainingState
    callbacks: Sequence[EpochCallback] = ()
    error: BaseException | None = None


class StackDropout(nn.Module):
    """Dropout whose rate is a buffer, so that under `vmap` each member drops at its own rate."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


def dropout_rate(model: nn.Module) -> float:
    return next((m.p for m in model.modules() if isinstance(m, nn.Dropout)), 0.0)


def template_of(models: Sequence[nn.Module]) -> nn.Module:
    """The members' architecture, with every dropout a `StackDropout`. A member with dropout
    0 has no dropout layers (models.classifier_head), so the template is made from one that
    has them; weights are matched by their order, which dropout layers do not change."""
    template = copy.deepcopy(max(models, key=lambda m: sum(isinstance(x, nn.Dropout)
                                                           for x in m.modules())))
    for name, module in list(template.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(module, child_name, StackDropout())
    if hasattr(template, "channels_last"):
        template.channels_last = False  # a per-member view under vmap keeps the default layout
    return template


class StackedModel(nn.Module):
    """The members' weights stacked along dim 0, run as one model. Input: (members, batch,
    1, 28, 28), each member its own images, or (batch, 1, 28, 28) shared by all members;
    output: (members, batch, classes)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.__dict__["template"] = template_of(models)  # not a submodule: its weights are unused
        names = [n for n, _ in self.template.named_parameters()]
        buffer_names = [n for n, b in self.template.named_buffers() if not n.endswith(".p")]
        self.names, self.buffer_names = names, buffer_names
        # by order, not by name: a member without dropout layers numbers its layers otherwise
        params = by_order([list(m.parameters()) for m in models], len(names))
        buffers = by_order([list(m.buffers()) for m in models], len(buffer_names))
        # A Linear weight is kept as (members, in, out): the batched matmuls then read it and
        # write its gradient without a transposing copy (2.6 ms a step for the FFNN's first
        # layer in a stack of 6 on CPU); `weights` shows it to each member as (out, in).
        modules = dict(self.template.named_modules())
        self.flipped = {n for n in names if n.endswith("weight")
                        and isinstance(modules[n.rpartition(".")[0]], nn.Linear)}
        self.params = nn.ParameterDict()  # ParameterDict keys may not hold dots
        for name, stacked in zip(names, params):
            self.params[name.replace(".", "/")] = nn.Parameter(self.to_stack(name, stacked))
        rates = torch.tensor([dropout_rate(m) for m in models], device=params[0].device)
        self.stacked_buffers = dict(zip(buffer_names, buffers))
        self.stacked_buffers.update({n: rates for n, _ in self.template.named_buffers()
                                     if n.endswith(".p")})

    def to_stack(self, name: str, members: torch.Tensor) -> torch.Tensor:
        """The members' tensors for weight `name`, stacked, in the stack's layout."""
        return members.transpose(1, 2).contiguous() if name in self.flipped else members

    def as_members(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        """The reverse of `to_stack`: a view, (members, *the member's shape)."""
        return stacked.transpose(1, 2) if name in self.flipped else stacked

    def weights(self) -> dict[str, torch.Tensor]:
        """Each weight as the members' models hold it, (members, *its shape)."""
        return {name: self.as_members(name, self.params[name.replace(".", "/")])
                for name in self.names}

    def train(self, mode: bool = True) -> "StackedModel":
        self.template.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def one(weights, buffers, images):
            return functional_call(self.template, (weights, buffers), (images,))

        per_member = 0 if x.dim() == 5 else None
        return vmap(one, in_dims=(0, 0, per_member), randomness="different")(
            self.weights(), self.stacked_buffers, x)


def by_order(tensors: Sequence[Sequence[torch.Tensor]], count: int) -> list[torch.Tensor]:
    """The members' j-th tensors stacked, for each j (`torch.func.stack_module_state` matches
    them by name instead)."""
    if any(len(own) != count for own in tensors):
        raise ValueError("the members of a stack must have the same architecture")
    return [torch.stack([own[j].detach() for own in tensors]) for j in range(count)]


@dataclass
class Stack:
    """Members trained as one model; `loop.fit` trains it. `sync` copies the stack's weights
    and optimizer state into each member's own model and optimizer (for its callbacks and
    checkpoint); `load` is the reverse, after the members were restored from checkpoints."""

    members: list[Member]
    model: StackedModel = field(init=False)
    optimizer: StackedOptimizer = field(init=False)
    rows: list[int] = field(init=False)  # each member's place in the data given to fit

    def __post_init__(self) -> None:
        self.rows = list(range(len(self.members)))
        self.build()

    def build(self) -> None:
        states = [m.state for m in self.members]
        self.model = StackedModel([s.model for s in states])
        self.optimizer = StackedOptimizer(list(self.model.params.values()), states)
        self.load_optimizer_state()

    @property
    def states(self) -> list[TrainingState]:
        return [m.state for m in self.members]

    @property
    def generator(self) -> list[torch.Generator]:
        return [s.generator for s in self.states]

    @property
    def scheduler(self) -> MemberSchedulers | None:
        states = self.states
        return MemberSchedulers(states) if states and states[0].scheduler is not None else None

    @property
    def epoch(self) -> int:
        return self.states[0].epoch

    def data_for(self, data):
        """The members' rows of `data`, whose train and val tensors have a member dimension."""
        if self.rows == list(range(data.train_images.shape[0])):
            return data
        rows = torch.tensor(self.rows, device=data.train_images.device)
        return data.members(rows)

    @torch.no_grad()
    def sync(self) -> None:
        """Stack -> members: weights, BN statistics and optimizer state, in the solo format."""
        model = self.model
        for i, state in enumerate(self.states):
            for p, stacked in zip(state.model.parameters(), model.weights().values()):
                p.copy_(stacked[i])
            buffers = [b for _, b in state.model.named_buffers()]
            for b, name in zip(buffers, model.buffer_names):
                b.copy_(model.stacked_buffers[name][i])
            own = state.optimizer
            for p, name, stacked in zip(own.param_groups[0]["params"], model.names,
                                        model.params.values()):
                saved = self.optimizer.shared.state.get(stacked)
                if saved:
                    own.state[p] = {k: member_slice(model.as_members(name, v), i)
                                    if torch.is_tensor(v) and v.shape == stacked.shape
                                    else v.clone() if torch.is_tensor(v) else v
                                    for k, v in saved.items()}

    def load_optimizer_state(self) -> None:
        """Members -> stack: each member's optimizer state (after `TrainingState.restore`)."""
        states, model = self.states, self.model
        for j, (name, stacked) in enumerate(zip(model.names, model.params.values())):
            own = [s.optimizer.state.get(s.optimizer.param_groups[0]["params"][j]) for s in states]
            if not all(own):
                continue
            self.optimizer.shared.state[stacked] = {
                k: (model.to_stack(name, torch.stack([o[k] for o in own]))
                    if torch.is_tensor(v) and v.dim() > 0
                    else v.clone() if torch.is_tensor(v) else v) for k, v in own[0].items()}

    def drop(self, member: Member, error: BaseException) -> None:
        """`member` leaves the stack with `error`; the others go on, their state kept."""
        self.sync()
        member.error = error
        place = self.members.index(member)
        del self.members[place], self.rows[place]
        if self.members:
            self.build()


def member_slice(value: torch.Tensor, i: int) -> torch.Tensor:
    return value[i].clone(memory_format=torch.contiguous_format)
