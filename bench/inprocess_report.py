"""The two in-process sweeps of one benchmark run as one report: the signature called directly, and as kerve calls it.

The reference sweep calls each model's signature directly with TensorFlow's defaults, as issue 6 defines the
in-process limit. kerve's server calls it otherwise: through the session's callable on CPU, small batches' ops on
the calling thread when that is faster, TensorFlow's pool threads sleeping between tasks, thread counts sized to the
cores it may use. So `bench.run` sweeps each model a second time through the server's own code, set up as the
server under test is (`bench.inprocess --as-served`), and this module joins the two: what kerve is held to (the
in-process best, the batch-1 p50) is the better of both runs, and what its own cost is measured against
(`bench.ideal`: the model's CPU per sample, its call in the server against alone) is the second run, the same call
with the same threads. Pure dict arithmetic: no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DIRECT, SERVED = "direct", "served"  # the two runs: the signature called directly, and as kerve calls the model


def merge_as_served(reference: Mapping[str, Any], served: Mapping[str, Any]) -> dict[str, Any]:
    """The reference sweep and the one as the server calls the models (`served`) as one report.

    Each model keeps the reference's rows and gets the served ones under `as_served`; its `best` is the better of
    the two runs (naming the run, and whether TF's pool threads spun in it), so the in-process limit kerve is held
    to never drops because the server calls its models another way. `served` is how (`bench.inprocess.ServedCalls.how`).
    """
    merged = {**reference, "served": served["served"], "models": {}}
    for name, model in reference["models"].items():
        other = served["models"][name]
        best = {**model["best"], "run": DIRECT, "tf_thread_spinning": reference["tf_thread_spinning"]}
        if other["best"]["samples_per_s"] > best["samples_per_s"]:
            best = {**other["best"], "run": SERVED, "tf_thread_spinning": served["tf_thread_spinning"]}
        merged["models"][name] = {
            **model,
            "tf_thread_spinning": reference["tf_thread_spinning"],
            "best": best,
            "as_served": {
                "tf_thread_spinning": served["tf_thread_spinning"],
                "batches": other["batches"],
                "best": other["best"],
            },
        }
    return merged


def served_figures(model: Mapping[str, Any]) -> Mapping[str, Any]:
    """A model's in-process figures for `bench.ideal`: the rows as the server calls it, the better run's best."""
    return {"batches": model.get("as_served", model)["batches"], "best": model["best"]}


def sweeps(model: Mapping[str, Any]) -> list[tuple[str, bool, Mapping[str, Any]]]:
    """Each run's rows as (its name, whether it gave the best, rows by batch): DIRECT (the signature, TF's
    defaults; results from before the second run have only this one) and SERVED (kerve's call)."""
    best = model["best"].get("run", DIRECT)
    runs = [(DIRECT, model["batches"])]
    if "as_served" in model:
        runs.append((SERVED, model["as_served"]["batches"]))
    return [(name, name == best, rows) for name, rows in runs]


def batch1_p50_ms(model: Mapping[str, Any]) -> float | None:
    """The in-process batch-1 call's p50 that the c1 target is held to: the faster of the two runs."""
    runs = [model, model.get("as_served") or {}]
    p50s = [row["p50_ms"] for run in runs if (row := run.get("batches", {}).get("1")) is not None]
    return min(p50s) if p50s else None
