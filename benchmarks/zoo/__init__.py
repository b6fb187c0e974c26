"""A zoo of plants the project was not built for, used by the benchmark only through the
files a plant engineer has: a historian CSV log and a tag file (`Plant.export`)."""

from .base import Actuator, Disturbance, Plant, PlantState, Segment, Sensor
from .held_out import HELD_OUT
from .oracle import OracleNmpc
from .plants import PLANTS

__all__ = [
    "HELD_OUT",
    "PLANTS",
    "Actuator",
    "Disturbance",
    "OracleNmpc",
    "Plant",
    "PlantState",
    "Segment",
    "Sensor",
]
