"""``hparams_search=per_fusion``: each arm of the sweep (each fusion) gets its own search over a grid on the
validation split, then its best point is retrained with several seeds and tested (``mmfuse.tuning``).

This module lives in ``hydra_plugins`` because Hydra only instantiates sweepers from there; Hydra imports it
whenever it scans for plugins, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mmfuse")


class PerFusionSweeper(Sweeper):
    def __init__(self, grid: Any, seeds: Any = (1, 2, 3), search_seed: int = 0, direction: str = "auto",
                 params: Any = None) -> None:
        from mmfuse.tuning import flatten_grid

        self.grid = flatten_grid(OmegaConf.to_container(grid) if isinstance(grid, DictConfig) else dict(grid or {}))
        self.seeds = [int(s) for s in seeds]
        self.search_seed = int(search_seed)
        self.direction = direction
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _arms_and_fixed(self, arguments: list[str]) -> tuple[list[list[str]], list[str]]:
        """The arms (the cartesian product of the swept keys' values) and the overrides common to every job.
        ``hydra.sweeper.params.seed`` (an experiment's ``seed: 1,2,3``) gives the final runs' seeds."""
        params = dict(self.params)
        if "seed" in params:
            self.seeds = [int(s) for s in str(params.pop("seed")).split(",")]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        merged: dict[str, Any] = {}  # by key, the command line last: it wins over the config's params (as Hydra's)
        for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments)):
            merged[o.get_key_element()] = o
        from mmfuse.tuning import check_no_overlap

        check_no_overlap(list(self.grid), list(merged))
        swept, fixed = [], []
        for key, o in merged.items():
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise ValueError(f"hparams_search=per_fusion: {key} must be a list of values (a,b,c or glob), "
                                     f"not a {o.value_type.name} sweep")
                swept.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            else:
                fixed.append(f"{key}={o.get_value_element_as_str()}")
        arms = [list(a) for a in itertools.product(*swept)] if swept else [[]]
        return arms, fixed

    def sweep(self, arguments: list[str]) -> Any:
        from mmfuse.cli import optimized_metric
        from mmfuse.errors import MMFuseError
        from mmfuse.tuning import (
            Arm,
            arm_name,
            final_job,
            grid_points,
            resolve_direction,
            run_results,
            search_job,
            select,
            write_summary,
        )

        points = grid_points(self.grid)
        arm_overrides, fixed = self._arms_and_fixed(arguments)
        arms = [Arm(a, arm_name(a)) for a in arm_overrides]
        if len({a.name for a in arms}) != len(arms):
            raise ValueError(f"hparams_search=per_fusion: two arms get the same directory name ({[a.name for a in arms]})")
        metric = optimized_metric(self.config)
        if not str(metric).startswith("val/"):
            raise MMFuseError(f"hparams_search=per_fusion selects on the validation split, but optimized_metric={metric}. "
                              "Fix: optimized_metric=val/<metric> (the test split is for the final runs only)")
        direction = resolve_direction(self.direction, metric)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("per-fusion tuning: %d arms × %d grid points (seed %d, no test split), then the best point × %d "
                 "seeds (test) for each; %s selected by %s", len(arms), len(points), self.search_seed,
                 len(self.seeds), metric, direction)

        jobs = [(arm, k, [*fixed, *search_job(arm, p, k, self.search_seed)]) for arm in arms for k, p in enumerate(points)]
        returns = [self._launch([j for _, _, j in jobs], 0)]
        for (arm, k, _), ret in zip(jobs, returns[0]):
            results = run_results(sweep_dir / "tune" / arm.name / str(k))
            score = ret.return_value if ret.status.name == "COMPLETED" else None
            arm.search.append({"overrides": points[k], "score": None if score is None else float(score),
                               "status": results.get("status"), "ended_by": results.get("ended_by"),
                               "steps": results.get("steps"), "dir": f"tune/{arm.name}/{k}"})
        finals = []
        for arm in arms:
            best = select([s["score"] for s in arm.search], direction)
            if best is None:
                log.error("per-fusion tuning: every search run of %s failed; it gets no final runs", arm.name)
                continue
            arm.best = {"overrides": points[best], "score": arm.search[best]["score"], "index": best}
            for seed in self.seeds:
                finals.append((arm, [*fixed, *final_job(arm, points[best], seed)]))
                arm.final.append(f"final/{arm.name}/seed{seed}")
        write_summary(sweep_dir, self.grid, metric, direction, self.seeds, self.search_seed, fixed, arms)  # the search's
        if finals:
            returns.append(self._launch([j for _, j in finals], len(jobs)))
            for arm in arms:
                arm.final_status = [run_results(sweep_dir / d).get("status", "missing") for d in arm.final]
            failed = [d for arm in arms for d, st in zip(arm.final, arm.final_status) if st != "completed"]
            if failed:
                log.error("per-fusion tuning: final runs not completed (see their results.json): %s", ", ".join(failed))
        path = write_summary(sweep_dir, self.grid, metric, direction, self.seeds, self.search_seed, fixed, arms)
        for arm in arms:
            if arm.best is not None:
                log.info("per-fusion tuning: %s: %s (%s %.4f)", arm.name, " ".join(arm.best["overrides"]), metric,
                         arm.best["score"])
        print(f"[mmfuse] per-fusion tuning written to {path}\n"
              f"[mmfuse] compare the final runs: python -m mmfuse.compare {sweep_dir} --metric "
              f"{(metric or 'val/acc').replace('val/', 'test/', 1)} --ci 0.95")
        return returns

    def _launch(self, batch: list[list[str]], initial_job_idx: int) -> Any:
        self.validate_batch_is_legal(batch)
        return self.launcher.launch(batch, initial_job_idx=initial_job_idx)
