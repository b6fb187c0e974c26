"""A zoo of plants the project was not built for, used by the benchmark only through the
files a plant engineer has: a historian CSV log and a tag file (`Plant.export`)."""

from .base import Actuator, Plant, PlantState, Segment, Sensor
from .oracle import OracleNmpc
from .plants import HELD_OUT, PLANTS

__all__ = [
    "HELD_OUT",
    "PLANTS",
    "Actuator",
    "OracleNmpc",
    "Plant",
    "PlantState",
    "Segment",
    "Sensor",
]
