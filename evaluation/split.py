"""Hold-out by MDP, so a candidate is never scored on the decisions it was trained on.

Evaluating on the training day inflates the estimate (the winner's curse: the model fit that
day's noise; in the demo CPE ran ~3 % above the realized value). Whole MDPs are held out —
steps of one episode never straddle train and evaluation — chosen by a stable hash of the
`mdp_id`, so reruns and other processes pick the same ones.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from evaluation.errors import EvaluationError


def held_out_mask(mdp_ids: pd.Series, fraction: float, seed: int = 0) -> np.ndarray:
    """True for rows whose MDP falls in the held-out `fraction` (stable crc32 of seed and mdp_id)."""
    if not 0.0 <= fraction < 1.0:
        raise EvaluationError(f"hold-out fraction must be in [0, 1), got {fraction}")
    codes, uniques = pd.factorize(mdp_ids.astype(str), sort=False)
    bucket = np.array([zlib.crc32(f"{seed}:{m}".encode()) / 2**32 for m in uniques], dtype=np.float64)
    return bucket[codes] < fraction if len(uniques) else np.zeros(len(mdp_ids), dtype=bool)


def hold_out_mdps(
    training_rows: pd.DataFrame, evaluation_rows: pd.DataFrame, fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows without the held-out MDPs, evaluation rows of the held-out MDPs only).

    A share `fraction` of the MDPs in `evaluation_rows` is reserved for evaluation and removed
    from `training_rows`; `fraction=0` returns both unchanged (no hold-out).
    """
    if fraction == 0.0:
        return training_rows, evaluation_rows
    held = held_out_mask(evaluation_rows["mdp_id"], fraction, seed)
    held_ids = set(evaluation_rows.loc[held, "mdp_id"].astype(str))
    if not held_ids:
        raise EvaluationError(
            f"holding out {fraction:.0%} of {evaluation_rows['mdp_id'].nunique()} MDPs selected none; "
            "evaluate on more MDPs or raise holdout_fraction"
        )
    keep = ~training_rows["mdp_id"].astype(str).isin(held_ids)
    return (
        training_rows.loc[keep].reset_index(drop=True),
        evaluation_rows.loc[held].reset_index(drop=True),
    )
