"""``kas check`` without ``--pid``: every running agent's tree against the profile it runs under.

Each agent is read from the kernel (psutil and /proc) and compared with the profile its row records
(after ``kas profile apply``, the new one). Only a process with a *higher* priority than its profile
allows fails the audit: that is the one that takes frames from the desktop. One kept lower than asked
(nice 10 after a switch to ``normal``) is reported, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kas.instances import refresh
from kas.launch.tree import GuardRef
from kas.probe import ProcFacts
from kas.registry import Registry
from kas.status import ORPHANED, PAUSED, RUNNING
from kas.text import processes


@dataclass
class AgentAudit:
    """One running agent's tree, as the kernel shows it, against its recorded profile."""

    inst_id: str
    name: str
    profile: str
    procs: list[ProcFacts] = field(default_factory=list)
    guard_lost: bool = False  # it had a guard, which is gone: nothing keeps the profile on new processes

    @property
    def raised(self) -> list[ProcFacts]:
        return [p for p in self.procs if p.problems]

    @property
    def lower(self) -> list[ProcFacts]:
        return [p for p in self.procs if p.notes]

    @property
    def escaped(self) -> list[ProcFacts]:
        return [p for p in self.procs if "own session" in p.marks]

    @property
    def verdict(self) -> str:
        if self.raised:
            return "fail"
        return "warn" if self.guard_lost else ("info" if self.lower else "ok")

    def summary(self) -> str:
        if self.raised:
            return "; ".join(f"pid {p.pid} ({p.name}): {', '.join(p.problems)}" for p in self.raised)
        parts = [f"{processes(len(self.procs))} hold the {self.profile} profile"]
        if self.lower:
            kept = sorted({note for p in self.lower for note in p.notes})
            lower = f"kept at a lower priority than {self.profile} asks: {'; '.join(kept)}"
            parts = [f"{processes(len(self.procs))}; {lower}"]
        if self.escaped:
            shown = ", ".join(f"{p.pid} ({p.name}, AG {p.autogroup_nice})" for p in self.escaped)
            parts.append(f"own sessions: {shown}")
        if self.guard_lost:
            parts.append("its guard is gone: what it starts from now is not kept at the profile")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.inst_id,
            "name": self.name,
            "profile": self.profile,
            "status": self.verdict,
            "raised": [p.to_json() for p in self.raised],
            "lower": [p.to_json() for p in self.lower],
            "escaped": [p.pid for p in self.escaped],
            "processes": len(self.procs),
            "guard_lost": self.guard_lost,
        }


def audit_agents(registry: Registry) -> list[AgentAudit]:
    """Every running (or paused) agent of the registry, checked process by process."""
    audits = []
    for inst in registry.instances(include_finished=False):
        view = refresh(registry, inst)
        if view.status not in (RUNNING, PAUSED, ORPHANED) or not view.procs:
            continue
        audit = AgentAudit(inst.id, inst.name, inst.resource_profile, view.procs)
        audit.guard_lost = (
            bool(inst.guard_pid) and not GuardRef(inst.guard_pid or 0, inst.guard_create_time).alive()
        )
        audits.append(audit)
    return audits
