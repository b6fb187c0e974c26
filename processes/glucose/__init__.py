"""Type-1 diabetes: blood glucose under an insulin pump, on the UVA/Padova simulator.

The plant is the FDA-accepted UVA/Padova T1D simulator, 2008 version (Kovatchev et al.,
J Diabetes Sci Technol 2009, on the meal model of Dalla Man et al., IEEE Trans Biomed Eng
2007), as packaged by simglucose (Jinyu Xie, 2018): 30 virtual patients
(adolescent#001-010, adult#001-010, child#001-010), each a 13-state nonlinear ODE of
glucose (stomach, gut, plasma, tissue, subcutaneous) and insulin (plasma, liver, two
subcutaneous depots, remote action) kinetics, integrated by simglucose one minute at a
time (`T1DPatient`, dopri5). Meals are eaten at 5 g/min; insulin enters the first
subcutaneous depot. We drive `T1DPatient`, `CGMSensor` and `InsulinPump` ourselves, with
exactly the per-sample semantics of simglucose's `T1DSimEnv` (actions held for one sample,
BG, CGM and CHO averaged over its minutes), so the package's basal-bolus anchors reproduce:
24 h, seed 1, TIR 100 % (adolescent#001), 88.1 % (adult#001), 73.8 % (child#001).

Sample period: 3 min, the Dexcom sensor of simglucose (GuardianRT samples every 5 min).
The faster sensor gives the controller a reading 2 min sooner after a meal starts or a
glucose fall turns, and it is the sensor the package's anchors were computed with.

Tags (see `SPEC` and `spec_for`):

* ``CGM`` [mg/dL], controlled sensor (setpoint 120 mg/dL). Hard LOW limit 70 mg/dL, the
  hypoglycaemia threshold: a controller must never dose so that it predicts glucose below
  70. No high limit: hyperglycaemia is scored (HBGI, time above 180) but is not a
  dosing constraint. The true plant may still fall below 70 after an unannounced meal's
  bolus-free rise or a baseline's over-correction; the metrics count it on TRUE plasma
  glucose (`violations`).
* ``IOB`` [U], insulin on board, computed from the insulin delivered (below); hard HIGH
  limit per patient (`iob_limit`), enforced on every controller by the episode runner.
* ``basal`` [U/h], actuator: the pump's basal rate, from 0 to the patient's max basal
  setting (`max_basal`: 10x the scheduled rate, at most the pump's 30 U/h).
* ``bolus`` [U per sample], actuator: insulin given on top of the basal during the
  sample, 0-30 U. A second actuator rather than a hidden part of the baseline, so the twin
  sees every unit of insulin as an input it can be held responsible for. The twin's
  controller leaves it to the bolus wizard (a hybrid closed loop, the spec's
  `control.baseline_actuators`) and sets the basal.
* ``CHO`` [g/min], measured disturbance: ANNOUNCED carbohydrate of the last sample
  (simglucose's convention: a meal of M g announced at one minute reads M/3 g/min in
  the next sample). Unannounced meals are eaten but never appear in this tag.

Pump limits come from simglucose's params/pump_params.csv (Insulet OmniPod: basal up to
30 U/h, bolus up to 30 U, both in 0.05 increments). The package's `InsulinPump` applies
them to rates in U/min (a unit slip that makes them never bind); we apply them in the
pump's real units and still pass every dose through `InsulinPump` (its rounding), as the
package env does. Rate limits: a pump switches a temp basal or starts a bolus at once,
with no slew; a rate limit on insulin would only delay a suspend, the pump's one
protective move before a low. Both rate limits are therefore the full range per sample,
so they never bind (the spec needs a number).

Insulin on board: the exponential insulin-action curve of OpenAPS/Loop (LoopKit
ExponentialInsulinModel) for rapid-acting insulin, peak activity 75 min, duration of
insulin action 6 h: with tau = tp (1 - tp/td) / (1 - 2 tp/td), a = 2 tau/td and
S = 1 / (1 - a + (1 + a) exp(-td/tau)), the fraction left t minutes after a dose is

    f(t) = 1 - S (1 - a) ((t^2 / (tau td (1 - a)) - t/tau - 1) exp(-t/tau) + 1),  0 < t < td.

IOB(t_k) = sum over earlier samples j of dose_j f(t_k - t_j), with each sample's insulin
(basal/20 + bolus) timestamped at the sample's start, as a pump logs it. It is total IOB
(basal included); the patient starts in the basal steady state, so the history starts
as 6 h of scheduled basal. Because f falls monotonically, capping each new dose at
`limit - IOB(now)` keeps IOB at or under the limit at every later sample
(`enforce_iob_limit`; bolus is cut before basal, basal is the lifeline).

The IOB limit of a patient (`iob_limit`) follows the OpenAPS max-IOB rule of thumb (an
average meal bolus plus three hours of the highest basal, on net IOB) on total IOB:
a large meal's bolus (100 g / carb ratio) + a correction from 300 to 140 mg/dL
(160 / correction factor) + 3 h of basal + the steady-state IOB of the basal itself
(about 2 h of basal). It bounds stacking, not a sustained overdose: held at the limit,
insulin still flows at about limit / 2 h. Over five simulated days (seeds 1-5) of each
of the 30 patients, the basal-bolus baseline peaks at 40-92 % of its limit, so the limit
never cuts the baseline there and the anchors above stand.

Baseline: simglucose's `BBController` (patient basal u2ss BW/6000; at an announced meal a
bolus CHO/CR + (CGM > 150)(CGM - 140)/CF), reproduced here on the patient's own Quest
parameters so it costs no pandas lookup per step. It keeps the package's correction
target of 140 mg/dL (that of the anchors); the 120 mg/dL setpoint is the twin's. The
fallback (`baseline_fallback`) is the same rule with a bolus wizard's IOB subtraction on
the correction. Oracle: none (`oracle_policy` returns
None). An honest bar would be an NMPC on the true 13-state model and state, with its
nonsmooth gastric emptying (tanh switching, max(EGP, 0), renal threshold) integrated at
minute resolution over a horizon as long as insulin acts (4-6 h): several hundred stiff
shooting intervals per solve, every 3 min, for every patient-day of a benchmark; we have
not built it. A "perfect bolus" controller that knows every meal would be another
baseline, not a bound.

Scoring on TRUE plasma glucose (BG averaged over each sample, as simglucose reports it;
the initial BG and the BG after each step): time in range 70-180 mg/dL, below 70, below
54, above 180 (%), mean BG, LBGI and HBGI (Kovatchev's indices, per reading with
`simglucose.analysis.risk.risk_index` on BG clipped to 20-600 mg/dL, averaged over all
readings). ``cost`` is the
blood glucose risk index BGRI = LBGI + HBGI (lower is better). ``violations`` counts
true BG readings below 70 mg/dL, the CGM hard limit (below 54 is reported apart),
``worst_violation`` is 70 minus the lowest true BG when it fell below 70.
"""

from __future__ import annotations

from .baseline import (
    BasalBolusFallback,
    Policy,
    basal_bolus,
    baseline_fallback,
    baseline_policy,
    oracle_policy,
    twin_policy,
    wizard_correction,
)
from .episode import (
    ALL_CASES,
    BENCHMARK_CASES,
    EPISODE_SUMMARY,
    RISK_BG_RANGE,
    TRAINING_CASE_KEYS,
    TRAINING_RECIPE,
    case_group,
    episode_metrics,
    risk_indices,
    run_episode,
)
from .excitation import (
    CORRECT_ABOVE_MG_DL,
    CORRECT_AFTER_SAMPLES,
    MEAL_BOLUS_SHARE,
    PROBE_ABOVE_MG_DL,
    PROBE_CHANCE,
    PROBE_CLEAR_OF_MEALS_MIN,
    PROBE_FLOOR_MG_DL,
    RESCUE_BELOW_MG_DL,
    RESCUE_CARBS_G,
    RESCUE_EVERY_SAMPLES,
    SUSPEND_BELOW_MG_DL,
    SUSPEND_LOOKAHEAD_SAMPLES,
    SUSPEND_PROJECTION_MARGIN_MG_DL,
    TREND_SAMPLES,
    generate_training_log,
)
from .plant import (
    SPEC,
    VARIANTS,
    GlucoseSimulator,
    Meal,
    meal_plan,
    pump_guard,
    spec_for,
    variant_of,
)
from .therapy import (
    ALL_PATIENTS,
    BASAL_MAX_U_PER_H,
    BASAL_RATE_PER_S,
    BB_CORRECTION_ABOVE_MG_DL,
    BB_TARGET_MG_DL,
    BG_HIGH,
    BG_LOW,
    BG_SEVERE_LOW,
    BG_VERY_HIGH,
    BOLUS_MAX_U,
    BOLUS_RATE_PER_S,
    DEFAULT_PATIENT,
    DIA_SAMPLES,
    EPISODE_START,
    HOURS_PER_SAMPLE,
    INSULIN_DURATION_MIN,
    INSULIN_PEAK_MIN,
    IOB_BASAL_HOURS,
    IOB_CORRECTION_FROM_MG_DL,
    IOB_MEAL_G,
    MAX_BASAL_MULTIPLE,
    PUMP_NAME,
    SAMPLE_PERIOD_MIN,
    SAMPLE_PERIOD_S,
    SENSOR_NAME,
    SETPOINT_MG_DL,
    UNANNOUNCED_SHARE,
    InsulinOnBoard,
    Therapy,
    check_patient,
    enforce_iob_limit,
    insulin_remaining,
    iob_limit,
    max_basal,
    steady_basal_iob,
    therapy,
)

__all__ = [
    "ALL_PATIENTS",
    "BASAL_MAX_U_PER_H",
    "BASAL_RATE_PER_S",
    "BB_CORRECTION_ABOVE_MG_DL",
    "BB_TARGET_MG_DL",
    "BG_HIGH",
    "BG_LOW",
    "BG_SEVERE_LOW",
    "BG_VERY_HIGH",
    "BOLUS_MAX_U",
    "BOLUS_RATE_PER_S",
    "DEFAULT_PATIENT",
    "DIA_SAMPLES",
    "EPISODE_START",
    "HOURS_PER_SAMPLE",
    "INSULIN_DURATION_MIN",
    "INSULIN_PEAK_MIN",
    "IOB_BASAL_HOURS",
    "IOB_CORRECTION_FROM_MG_DL",
    "IOB_MEAL_G",
    "InsulinOnBoard",
    "MAX_BASAL_MULTIPLE",
    "PUMP_NAME",
    "SAMPLE_PERIOD_MIN",
    "SAMPLE_PERIOD_S",
    "SENSOR_NAME",
    "SETPOINT_MG_DL",
    "Therapy",
    "UNANNOUNCED_SHARE",
    "check_patient",
    "enforce_iob_limit",
    "insulin_remaining",
    "iob_limit",
    "max_basal",
    "steady_basal_iob",
    "therapy",
    "GlucoseSimulator",
    "Meal",
    "SPEC",
    "VARIANTS",
    "meal_plan",
    "pump_guard",
    "spec_for",
    "variant_of",
    "BasalBolusFallback",
    "Policy",
    "basal_bolus",
    "baseline_fallback",
    "baseline_policy",
    "oracle_policy",
    "twin_policy",
    "wizard_correction",
    "CORRECT_ABOVE_MG_DL",
    "CORRECT_AFTER_SAMPLES",
    "MEAL_BOLUS_SHARE",
    "PROBE_ABOVE_MG_DL",
    "PROBE_CHANCE",
    "PROBE_CLEAR_OF_MEALS_MIN",
    "PROBE_FLOOR_MG_DL",
    "RESCUE_BELOW_MG_DL",
    "RESCUE_CARBS_G",
    "RESCUE_EVERY_SAMPLES",
    "SUSPEND_BELOW_MG_DL",
    "SUSPEND_LOOKAHEAD_SAMPLES",
    "SUSPEND_PROJECTION_MARGIN_MG_DL",
    "TREND_SAMPLES",
    "generate_training_log",
    "ALL_CASES",
    "BENCHMARK_CASES",
    "EPISODE_SUMMARY",
    "RISK_BG_RANGE",
    "TRAINING_CASE_KEYS",
    "TRAINING_RECIPE",
    "case_group",
    "episode_metrics",
    "risk_indices",
    "run_episode",
]
