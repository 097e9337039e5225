"""What a wave run needs to be run again: its plan, its exact settings and its mode, kept beside its logs.

``kas wave run --resume RUN_ID`` reads this record, asks the registry which of the run's tasks
succeeded, and runs the rest of the same plan with the same settings (not whatever the config says now).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kas.errors import KasError
from kas.registry import Registry
from kas.statedir import state_dir
from kas.status import succeeded
from kas.waves.plan import Plan

RECORD = "run.json"


@dataclass(frozen=True)
class RunRecord:
    """The inputs of one run: enough to repeat it exactly."""

    run_id: str
    plan: str  # the plan file's absolute path
    resources: dict[str, Any]  # the merged [resources] table it resolved (config, plan, --set)
    mode: str
    fail_fast: bool = False
    succeeded_before: tuple[str, ...] = ()  # tasks a resumed run skipped: they succeeded in an earlier one

    def save(self, folder: Path) -> None:
        """Written whole (temp file + rename) and private: a crash leaves the old record or the new one."""
        tmp = folder / f".{RECORD}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out)
        os.replace(tmp, folder / RECORD)


def run_folder(run_id: str) -> Path:
    return state_dir() / "logs" / f"run-{run_id}"


def load_record(run_id: str) -> RunRecord:
    """The record of ``run_id``; a clear error when there is none (pruned, or a typo)."""
    if not run_id or not all(c in "0123456789abcdef" for c in run_id):
        raise KasError(f"'{run_id}' is not a run id (the 6 hex digits after 'run ' in kas wave run's output)")
    path = run_folder(run_id) / RECORD
    try:
        data = json.loads(path.read_text())
        data["succeeded_before"] = tuple(data.get("succeeded_before", ()))
        return RunRecord(**data)
    except FileNotFoundError:
        raise KasError(
            f"no record of run {run_id}; a run's id is in its summary's --resume hint and in "
            "`kas instance list --all --json` (wave_run); a run whose tasks were pruned cannot be resumed"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise KasError(
            f"{path}: cannot read the run record ({exc}); run the plan again without --resume"
        ) from None


def remaining(plan: Plan, record: RunRecord, registry: Registry) -> tuple[Plan, list[str]]:
    """The plan without the tasks that succeeded in the recorded run (or before it); and those skipped."""
    done = set(record.succeeded_before) | {
        inst.task_id
        for inst in registry.instances(wave_run=record.run_id)
        if inst.task_id and succeeded(inst.status, inst.exit_status)
    }
    waves = [replace(w, tasks=[t for t in w.tasks if t.id not in done]) for w in plan.waves]
    skipped = [t.id for w in plan.waves for t in w.tasks if t.id in done]
    return replace(plan, waves=[w for w in waves if w.tasks]), skipped
