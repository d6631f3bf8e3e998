"""The stacked launcher: jobs that differ only in `stackable` keys go to the app's
`stack_task` together, the others to its task function one by one, as Hydra's basic launcher
runs them.

A stack task takes the members' whole configs (each with its `hydra` node: output folder, job
number, overrides) and returns one result per member, its return value or the exception it
ended with. The launcher does for each member what Hydra's `run_job` does around a task: the
output folder, `.hydra/` files, `hydra.runtime.output_dir`, the job callbacks and a `JobReturn`.
The app needs nothing else from it; the launcher knows nothing of the app.
"""

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, \
    setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.mnist_lab_stacked_launcher.launcher.StackedLauncher"
    stack_task: str = "???"  # module.function that trains a list of jobs at once
    # the keys jobs of one stack may differ in; a group node (`init`) covers all its keys
    stackable: List[str] = field(default_factory=list)
    max_members: int = 16  # most jobs in one stack


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf,
                             provider="mnist_lab_stacked_launcher")


def stack_key(config: DictConfig, stackable: Sequence[str]) -> str:
    """What the jobs of one stack share: the task config, unresolved, less the stackable keys."""
    task = OmegaConf.to_container(config, resolve=False)
    task.pop("hydra", None)
    for key in stackable:
        *parents, last = key.split(".")
        node = task
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return repr(task)


def stacks(configs: Sequence[DictConfig], stackable: Sequence[str],
           most: int) -> List[List[int]]:
    """Job indices grouped by `stack_key`, in order of first appearance, at most `most` each."""
    groups: dict = {}
    for i, config in enumerate(configs):
        groups.setdefault(stack_key(config, stackable), []).append(i)
    return [same[k:k + most] for same in groups.values() for k in range(0, len(same), most)]


class StackedLauncher(Launcher):
    takes_batches = True  # a sweeper gains by handing it whole batches (see the Optuna sweeper)

    def __init__(self, stack_task: str, stackable: List[str], max_members: int) -> None:
        if max_members < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members}: must be 1 or more")
        self.stack_task = get_method(stack_task)  # a name that does not resolve fails here
        self.stackable, self.max_members = list(stackable), max_members
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                        list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            configs.append(config)
        groups = stacks(configs, self.stackable, self.max_members)
        log.info(f"Launching {len(configs)} jobs as {len(groups)} "
                 f"stack{'s' if len(groups) > 1 else ''}")
        returns: List[Optional[JobReturn]] = [None] * len(configs)
        for group in groups:
            for i in group:
                log.info(f"\t#{initial_job_idx + i} : "
                         f"{' '.join(filter_overrides(job_overrides[i]))}")
            if len(group) == 1:
                returns[group[0]] = run_job(hydra_context=self.hydra_context,
                                            task_function=self.task_function,
                                            config=configs[group[0]],
                                            job_dir_key="hydra.sweep.dir",
                                            job_subdir_key="hydra.sweep.subdir")
            else:
                for i, ret in zip(group, self.run_stack([configs[i] for i in group])):
                    returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def run_stack(self, configs: List[DictConfig]) -> List[JobReturn]:
        """What `run_job` does for one job, for each member around one call of the stack task."""
        callbacks = self.hydra_context.callbacks
        members, returns = [], []
        original = HydraConfig.instance().cfg
        try:
            for config in configs:
                members.append(self.prepare(config))
                returns.append(JobReturn(overrides=list(config.hydra.overrides.task),
                                         cfg=members[-1][1], hydra_cfg=members[-1][2],
                                         working_dir=os.getcwd(),
                                         task_name=config.hydra.job.name))
                callbacks.on_job_start(config=config, task_function=self.task_function)
        finally:
            HydraConfig.instance().cfg = original
        results = self.stack_task([member for member, _, _ in members])
        for (member, _, _), ret, result in zip(members, returns, results):
            ret.status = JobStatus.FAILED if isinstance(result, BaseException) else \
                JobStatus.COMPLETED
            ret.return_value = result
            callbacks.on_job_end(config=member, job_return=ret)
        return returns

    @staticmethod
    def prepare(config: DictConfig) -> tuple[DictConfig, DictConfig, DictConfig]:
        """A member's output folder and `.hydra/` files, and its config with the task part
        resolved while Hydra's config is the member's (`${hydra:runtime.output_dir}`)."""
        output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        OmegaConf.resolve(task)
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            folder = Path(output_dir) / str(config.hydra.output_subdir)
            folder.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task, folder / "config.yaml")
            OmegaConf.save(hydra_cfg, folder / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, folder / "overrides.yaml")
        member = copy.deepcopy(task)
        with open_dict(member):
            member.hydra = hydra_cfg.hydra
        return member, task, hydra_cfg
