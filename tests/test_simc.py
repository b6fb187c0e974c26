"""SIMC PI tuning from a log: the identified first-order-plus-dead-time model and the
published rules (Skogestad 2003)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter

from twin.baseline import spec_fallback
from twin.simc import Fopdt, identify_fopdt, simc_pi, tune_loop, with_simc_gains
from twin.spec import ProcessSpec, SpecError

DT = 2.0

TAGS: dict[str, Any] = {
    "name": "heater",
    "sample_period_s": DT,
    "tags": [
        {"name": "T", "role": "sensor", "unit": "degC", "controlled": True},
        {
            "name": "P",
            "role": "actuator",
            "unit": "kW",
            "low": 0.0,
            "high": 100.0,
            "rate_limit": 5.0,
        },
        {
            "name": "F",
            "role": "actuator",
            "unit": "L/s",
            "low": 0.0,
            "high": 10.0,
            "rate_limit": 1.0,
        },
    ],
    "baseline": [{"sensor": "T", "actuator": "P"}],
}


def random_steps(rng: np.random.Generator, n: int, nominal: float, band: float) -> np.ndarray:
    u, value = np.empty(n), nominal
    for k in range(n):
        if k % 25 == 0:
            value = nominal + rng.uniform(-band, band)
        u[k] = value
    return u


def fopdt_log(
    gain: float,
    tau_s: float,
    delay: int,
    *,
    integrating: bool = False,
    n: int = 3000,
    seed: int = 0,
) -> pd.DataFrame:
    """T responds to P (first order, `delay` samples dead time) and to F (another lag):
    the pairing's model must be found with the other actuator moving too."""
    rng = np.random.default_rng(seed)
    power, flow = random_steps(rng, n, 50.0, 30.0), random_steps(rng, n, 5.0, 3.0)
    a = 1.0 if integrating else np.exp(-DT / tau_s)
    b = gain * DT / tau_s if integrating else gain * (1.0 - a)
    drive = np.concatenate([np.full(delay + 1, power[0]), power[: -delay - 1]])
    response = lfilter([b], [1.0, -a], drive - 50.0)
    if integrating:
        response = response - np.linspace(0.0, response[-1], n)  # an unmeasured outflow
    flow_before = np.concatenate([[flow[0]], flow[:-1]])  # acts from the next sample on
    other = lfilter([-0.8 * (1 - 0.9)], [1.0, -0.9], flow_before - 5.0)
    temperature = 40.0 + response + other
    noise = 0.01 * (temperature.max() - temperature.min())
    return pd.DataFrame(
        {
            "time_s": np.arange(n) * DT,
            "T": temperature + rng.normal(0.0, noise, n),
            "P": power,
            "F": flow,
        }
    )


def test_simc_rules_on_a_known_model() -> None:
    tuning = simc_pi(Fopdt(gain=2.0, tau_s=10.0, theta_s=1.0))
    assert tuning.kp == pytest.approx(10.0 / (2.0 * 2.0))  # tau / (k (tau_c + theta))
    assert tuning.ti_s == pytest.approx(8.0)  # min(tau, 4 (tau_c + theta))
    slower = simc_pi(Fopdt(gain=2.0, tau_s=10.0, theta_s=1.0), tau_c_s=4.0)
    assert slower.kp == pytest.approx(1.0) and slower.ti_s == pytest.approx(10.0)
    assert simc_pi(Fopdt(gain=-0.5, tau_s=10.0, theta_s=2.0)).kp < 0  # sign follows the gain


def test_identifies_gain_lag_and_dead_time_under_noise() -> None:
    spec = ProcessSpec.from_dict(TAGS)
    model = identify_fopdt(fopdt_log(0.4, 60.0, delay=5), spec, "T", "P")
    assert model.gain == pytest.approx(0.4, rel=0.1)
    assert model.tau_s == pytest.approx(60.0, rel=0.2)
    assert model.theta_s == pytest.approx((5 + 0.5) * DT, abs=DT)


def test_integrating_process_gets_the_slope_and_the_lag_rule() -> None:
    spec = ProcessSpec.from_dict(TAGS)
    df = fopdt_log(0.02 * 100.0, 100.0, delay=3, integrating=True)  # slope 0.02 /s per kW
    model = identify_fopdt(df, spec, "T", "P")
    assert model.slope == pytest.approx(0.02, rel=0.15)
    tuning = tune_loop(df, spec, spec.baseline[0])
    theta = model.theta_s
    assert tuning.kp == pytest.approx(1.0 / (model.slope * 2 * theta), rel=1e-6)
    assert tuning.ti_s == pytest.approx(8.0 * theta, rel=1e-6)  # min(8 theta, 4 (2 theta))


def test_pairing_without_gains_is_tuned_and_given_gains_are_kept() -> None:
    df = fopdt_log(0.4, 60.0, delay=5)
    spec = ProcessSpec.from_dict(TAGS)
    assert not spec.baseline[0].tuned
    assert spec_fallback(spec)({"T": 30.0}, {"T": 40.0}, {"P": 50.0, "F": 5.0}) == {
        "P": 50.0,
        "F": 5.0,
    }  # an untuned loop holds
    tuned = with_simc_gains(spec, df)
    loop = tuned.baseline[0]
    assert loop.kp is not None and loop.kp > 0 and loop.ti_s is not None
    expected = simc_pi(identify_fopdt(df, spec, "T", "P"))
    assert loop.kp == pytest.approx(expected.kp) and loop.ti_s == pytest.approx(expected.ti_s)
    given = ProcessSpec.from_dict(
        {**TAGS, "baseline": [{"sensor": "T", "actuator": "P", "kp": 1.0, "ti_s": 30.0}]}
    )
    assert with_simc_gains(given, df) is given


@pytest.mark.parametrize(
    "loop",
    [{"sensor": "T", "actuator": "P", "kp": 1.0}, {"sensor": "T", "actuator": "P", "ti_s": 10.0}],
)
def test_half_given_gains_are_refused(loop: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="give both kp and ti_s, or neither"):
        ProcessSpec.from_dict({**TAGS, "baseline": [loop]})


def test_a_log_without_the_actuators_effect_is_refused() -> None:
    df = fopdt_log(0.4, 60.0, delay=5)
    df["P"] = 50.0  # never moved: nothing to identify
    with pytest.raises(Exception, match="no effect of 'P' on 'T'|cannot tune"):
        identify_fopdt(df, ProcessSpec.from_dict(TAGS), "T", "P")


def test_a_loop_takes_over_from_another_controller_without_a_kick() -> None:
    """Velocity form: a loop whose actuator another controller moved since its last call
    starts afresh (integral only), not with kp times an error change it did not see; its
    own moves, cut to the rate limit as the safety clip would, are still its own."""
    spec = ProcessSpec.from_dict(
        {**TAGS, "baseline": [{"sensor": "T", "actuator": "P", "kp": 2.0, "ti_s": 10.0 * DT}]}
    )
    loop = spec_fallback(spec)
    assert loop is not None
    first = loop({"T": 39.0}, {"T": 40.0}, {"P": 50.0, "F": 5.0})["P"]
    assert first == pytest.approx(50.0 + 2.0 * 0.1 * 1.0)  # integral only at the start
    own = loop({"T": 38.0}, {"T": 40.0}, {"P": first, "F": 5.0})["P"]
    assert own == pytest.approx(first + 2.0 * (2.0 - 1.0) + 2.0 * 0.1 * 2.0)
    # the twin moved P to 60 kW meanwhile, and T fell 3 degC: no 2 * 3 kW kick
    taken = loop({"T": 35.0}, {"T": 40.0}, {"P": 60.0, "F": 5.0})["P"]
    assert taken == pytest.approx(60.0 + 2.0 * 0.1 * 5.0)
    # a step past the rate limit (5 kW/s) is asked as the clip would leave it
    fast = loop({"T": 20.0}, {"T": 40.0}, {"P": taken, "F": 5.0})["P"]
    assert fast == pytest.approx(taken + 5.0 * DT)
