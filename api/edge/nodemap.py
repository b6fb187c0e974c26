"""The tag map of a plant connection: which OPC UA node (or MQTT metric) carries each tag.

An OPC UA map file (YAML or JSON)::

    tags:                       # every sensor and actuator of the loop's process
      Ca: "ns=2;s=cstr/Ca"      # sensors (and disturbances): read every sample
      T:  "ns=2;s=cstr/T"
      Caf: "ns=2;s=cstr/Caf"    # disturbances are optional
      Tf: "ns=2;s=cstr/Tf"
      Tc: "ns=2;s=cstr/Tc"      # actuators: the setpoint is written here
    readback:                   # optional: where the plant reports what it applied
      Tc: "ns=2;s=cstr/Tc_pv"
    period_s: 1.0               # optional; default: the process's sample period

Checked once, against the loop's process spec, before anything connects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twin.errors import InvalidInput
from twin.spec import ProcessSpec, TagRole


class NodeMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: dict[str, str] = Field(min_length=1)
    readback: dict[str, str] = Field(default_factory=dict)
    period_s: float | None = Field(default=None, gt=0, le=3600)

    def check(self, spec: ProcessSpec) -> NodeMap:
        """Every sensor and actuator mapped, nothing unknown; InvalidInput if not."""
        problems = []
        roles = {t.name: t.role for t in spec.tags}
        for tag in [*self.tags, *self.readback]:
            if tag not in roles:
                problems.append(f"'{tag}' is not a tag of {spec.name}")
        for tag in self.readback:
            if roles.get(tag) not in (None, TagRole.ACTUATOR):
                problems.append(f"readback '{tag}' is not an actuator")
        for t in [*spec.sensors, *spec.actuators]:
            if t.name not in self.tags:
                problems.append(f"{t.role} '{t.name}' has no node")
        for tag, node in {**self.tags, **self.readback}.items():
            if not node.strip():
                problems.append(f"'{tag}': empty node id")
        if problems:
            raise InvalidInput(f"tag map for {spec.name}: " + "; ".join(problems))
        return self

    def reads(self, spec: ProcessSpec) -> dict[str, str]:
        """Tags read every sample: sensors, disturbances, actuator readbacks."""
        inputs = {t.name for t in spec.tags if t.role is not TagRole.ACTUATOR}
        out = {tag: node for tag, node in self.tags.items() if tag in inputs}
        out.update(self.readback)
        return out

    def writes(self, spec: ProcessSpec) -> dict[str, str]:
        return {t.name: self.tags[t.name] for t in spec.actuators}


def load_node_map(path: Path, spec: ProcessSpec) -> NodeMap:
    if not path.is_file():
        raise FileNotFoundError(f"tag map {path} not found")
    text = path.read_text()
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(f"tag map {path}: not valid YAML/JSON ({exc})") from None
    try:
        return NodeMap.model_validate(raw).check(spec)
    except ValidationError as exc:
        raise InvalidInput(
            f"tag map {path}: "
            + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
            )
        ) from None
