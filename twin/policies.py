"""Loop policies: how the twin and the baseline share a loop, chosen by name in the spec.

A spec names one (`control.policy`); `default` fits a plant whose training log moved the
actuators on the state. Policies are plain data: the controller reads their switches, and
a process registers a policy of its own with `register_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopPolicy:
    """`data_envelope`: keep the twin's moves inside the moves the training log made from
    similar states where they drive a limited sensor towards its limit. Off for actuators a
    log moves on events rather than on the state (doses at meals): the neighbours' moves
    then say little about what a controller may do.

    `guard_keeps_twin_moves`: near a limit the baseline acts, but where the twin's move goes
    farther from every limit the guard saw than the baseline's (by the sign of the effect
    the twin predicts), the twin's goes out. Off where that sign cannot be trusted (a log
    whose doses come with meals teaches that the dose raises what it lowers)."""

    name: str
    description: str
    data_envelope: bool = True
    guard_keeps_twin_moves: bool = True


DEFAULT_POLICY = "default"

LOOP_POLICIES: dict[str, LoopPolicy] = {}


def register_policy(policy: LoopPolicy) -> LoopPolicy:
    """Make `policy` selectable by its name in a spec's `control.policy`."""
    if not policy.name or policy.name in LOOP_POLICIES:
        raise ValueError(f"loop policy name '{policy.name}' is empty or taken")
    LOOP_POLICIES[policy.name] = policy
    return policy


def loop_policy(name: str) -> LoopPolicy:
    try:
        return LOOP_POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown loop policy '{name}' (known: {', '.join(sorted(LOOP_POLICIES))})"
        ) from None


def policy_named_by(data_envelope: bool, guard_keeps_twin_moves: bool) -> str:
    """The policy with these two switches (specs written before policies had names)."""
    for policy in LOOP_POLICIES.values():
        if (policy.data_envelope, policy.guard_keeps_twin_moves) == (
            data_envelope,
            guard_keeps_twin_moves,
        ):
            return policy.name
    raise ValueError("no loop policy with these switches")


register_policy(
    LoopPolicy(
        DEFAULT_POLICY,
        "the twin plans every move, inside the data "
        "envelope; near a limit it keeps a move that backs away",
    )
)
register_policy(
    LoopPolicy(
        "hybrid",
        "for logs whose actuators move on events (doses at meals): no data envelope, "
        "near a limit the baseline's move goes out; with control.baseline_actuators the baseline "
        "gives those moves (a hybrid closed loop)",
        data_envelope=False,
        guard_keeps_twin_moves=False,
    )
)
register_policy(
    LoopPolicy("no_envelope", "as default, without the data envelope", data_envelope=False)
)
register_policy(
    LoopPolicy(
        "baseline_near_limits",
        "as default, but near a limit the baseline's move goes out",
        guard_keeps_twin_moves=False,
    )
)
