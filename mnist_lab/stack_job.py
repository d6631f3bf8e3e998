"""A stack of jobs trained as one model (`launcher=stacked`): each member a whole run.

Each member goes through the steps of a solo run (job.Job): its inputs are checked and loaded,
its model drawn from its own seed, its state restored from its own checkpoint, its record
opened with its own callbacks; then `loop.fit` trains the members together (stacking.Stack), and
each is tested, written and recorded as it would be alone. A member that fails (bad input, a
diverged loss, pruned) leaves; the others go on.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import replace
from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from mnist_lab.context import JobContext, output_in_run_log
from mnist_lab.job import Job, torch_settings, where_to_look
from mnist_lab.loop import Recipe, fit
from mnist_lab.queries import STACK_TAG
from mnist_lab.data import member_data
from mnist_lab.stacking import Member, Stack
from mnist_lab.stopping import stop_signals


def stack_seed(cfgs: Sequence[DictConfig]) -> int:
    """The seed of the stack's dropout masks: from its members' seeds and places, so the same
    stack draws the same masks again."""
    text = ",".join(f"{cfg.seed}:{cfg.dropout.p}" for cfg in cfgs)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def stack_name(ctxs: Sequence[JobContext]) -> str:
    numbers = [c.job_num for c in ctxs if c.job_num is not None]
    return "jobs " + ",".join(map(str, numbers)) if numbers else f"{len(ctxs)} runs"


def run_stack(members: Sequence[tuple[DictConfig, JobContext]]) -> list:
    """Train `members` as one stack (as many as the device's memory holds); one result per
    member: its objective, or the exception it ended with."""
    results: list = [None] * len(members)
    jobs: list[tuple[int, Job]] = []
    for i, (cfg, ctx) in enumerate(members):
        try:
            job = Job(cfg, ctx)
            with output_in_run_log(ctx):
                results[i] = job.prepare()
            if results[i] is None:
                jobs.append((i, job))
        except Exception as err:  # this member only: the others go on
            results[i] = err
    if not jobs:
        return results
    device = torch_settings(jobs[0][1].cfg, jobs[0][1].ctx)
    size = stack_size(jobs[0][1], device, len(jobs))
    for group in stacks(jobs, size):
        for i, outcome in zip((i for i, _ in group), train_stack([j for _, j in group], device)):
            results[i] = outcome
    return results


def stacks(jobs: list[tuple[int, Job]], size: int) -> list[list[tuple[int, Job]]]:
    """Members trained together: those resumed at the same epoch (a stack stopped between two
    members' checkpoints resumes as two), at most `size` at once."""
    by_epoch: dict[int, list] = {}
    for i, job in jobs:
        by_epoch.setdefault(job.resume_state["epoch"] if job.resume_state else 0, []).append(
            (i, job))
    return [same[k:k + size] for same in by_epoch.values() for k in range(0, len(same), size)]


def in_run_log(ctx: JobContext, callback):
    """A member's epoch callback whose lines also go to the member's own run log."""
    def logged(state, metrics: dict[str, float]) -> None:
        with output_in_run_log(ctx):
            callback(state, metrics)

    return logged


def stack_size(job: Job, device: torch.device, cap: int) -> int:
    """All of them (the launcher caps a stack's size), or on a GPU what 80% of its free
    memory holds."""
    if device.type != "cuda":
        return cap
    from mnist_lab.models import build_model

    free, _ = torch.cuda.mem_get_info(device)
    data_bytes = job.data.train_images.numel() + job.data.val_images.numel()
    return most_members(free, member_bytes(build_model(job.cfg), job.cfg.train.batch_size,
                                           data_bytes), cap)


def train_stack(jobs: Sequence[Job], device: torch.device) -> list:
    """One stack, trained; each member's objective or error."""
    outcomes: list = [None] * len(jobs)
    tag = f"{stack_name([j.ctx for j in jobs])} ({len(jobs)} members)"
    for job in jobs:  # each member's record is its tracker's from here on, as a solo run's
        job.tracker.__enter__()
        job.stack_tags = {STACK_TAG: tag}
    with stop_signals() as received:
        try:
            states = [job.build(device) for job in jobs]
            data = member_data([job.data for job in jobs], device)
            torch.manual_seed(stack_seed([job.cfg for job in jobs]))
            if jobs[0].resume_state:  # the masks' generator goes on where the stack stopped
                torch.set_rng_state(jobs[0].resume_state["rng"]["torch"])
            for job, state in zip(jobs, states):  # the test set, once on the device for all
                job.data = replace(job.data, test_images=data.test_images,
                                   test_labels=data.test_labels)
                with output_in_run_log(job.ctx):
                    job.start(state, device, received)
            stack = Stack([Member(state, [in_run_log(job.ctx, c) for c in job.callbacks])
                           for job, state in zip(jobs, states)])
            members = list(stack.members)
            fit(stack, data, Recipe.from_config(jobs[0].cfg))
        except BaseException as err:  # a stop signal, or a fault of the stack as a whole
            # each member's own copy: a record marks the error it recorded (mlflow_run_id)
            own = [copy.copy(err).with_traceback(err.__traceback__) for _ in jobs]
            for job, error in zip(jobs, own):  # every member's record: FAILED, or KILLED
                job.tracker.__exit__(type(error), error, err.__traceback__)
            if not isinstance(err, Exception):
                raise
            return own  # each member fails with it (out of memory, say)
        for k, (job, member) in enumerate(zip(jobs, members)):
            try:
                if member.error is not None:
                    raise member.error
                with output_in_run_log(job.ctx):
                    outcomes[k] = job.finish(member.state, job.data)
                    job.tracker.__exit__(None, None, None)
                    print(where_to_look(job.cfg, job.out, job.tracker), flush=True)
            except Exception as err:
                job.tracker.__exit__(type(err), err, err.__traceback__)
                outcomes[k] = err
    return outcomes


def member_bytes(model: nn.Module, batch_size: int, data_bytes: int) -> int:
    """A rough upper bound of what one more member costs on the device: weights, gradients,
    two optimizer moments and a copy (5x), its own data split, and the activations of a
    batch (every layer's output, kept for the backward pass)."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    probe = copy.deepcopy(model).cpu().eval()
    sizes: list[int] = []
    for layer in probe.modules():
        if not list(layer.children()):
            layer.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
    with torch.no_grad():
        probe(torch.zeros(1, 1, 28, 28))
    activations = sum(sizes) * batch_size * 4 * 3
    return 5 * weights + data_bytes + activations


def most_members(free_bytes: int, per_member: int, cap: int) -> int:
    """How many members fit: the setting's cap, and 80% of the device's free memory."""
    return max(1, min(cap, math.floor(0.8 * free_bytes / max(per_member, 1))))
