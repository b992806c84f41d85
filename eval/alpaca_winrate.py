"""AlpacaEval annotations and win rates, computed by the `alpaca-eval` package's own code.

Annotations follow AlpacaEval's format: `generator_1` is the reference (the baseline),
`generator_2` the evaluated model, `preference` in [1, 2] (1: the reference wins, 2: the
model wins; a judge's probability p of preferring the model gives 1 + p, as AlpacaEval's
weighted annotators do). `alpaca_eval.metrics.get_length_controlled_winrate` then gives
the win rate and the length-controlled win rate; `alpaca_eval` itself can re-score the
written annotations.json.

The length-controlled GLM of AlpacaEval 2 (`length_controlled_v1`) needs `df_gamed.csv`
(instruction difficulties) from the Hub dataset tatsu-lab/alpaca_eval. Where it cannot
be had (offline, no cache), the package's `length_controlled_minimal` GLM is fitted with
the package's own design-matrix and fitting functions (length term only); the result
records which GLM was used.
"""

from __future__ import annotations

from typing import Dict, List

N_SPLITS = 5  # AlpacaEval's cross-validation folds for the GLM


def annotations(instructions: List[str], outputs: List[str], references: List[Dict], generator: str,
                p_model: List[float], annotator: str) -> List[Dict]:
    """AlpacaEval annotation records; `index` is the prompt's position in the 805-prompt set."""
    return [{"instruction": ins, "output_1": ref["output"], "generator_1": ref["generator"],
             "output_2": out, "generator_2": generator, "annotator": annotator,
             "preference": 1.0 + p, "index": i}
            for i, (ins, out, ref, p) in enumerate(zip(instructions, outputs, references, p_model))]


def _minimal_glm(records: List[Dict]) -> float:
    """AlpacaEval's `length_controlled_minimal` GLM, featurized as the package does minus the difficulty."""
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    df = pd.DataFrame(records)
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    std = delta.std()
    data = pd.DataFrame({"preference": df["preference"].astype(float).replace({0.0: 1.5}) - 1,
                         "std_delta_len": delta / std if std else delta * 0.0, "not_gamed_baseline": True})
    test = data[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0
    info = GLM_INFO["length_controlled_minimal"]
    train, x_test = make_dmatrix_for_model(data, test, formula=info["formula"])
    model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **info["kwargs"])
    return float(model.predict_proba(x_test)[:, 1].mean() * 100)


def win_rates(records: List[Dict]) -> Dict:
    """{win_rate, standard_error, length_controlled_winrate, glm, ...} in percent, as AlpacaEval reports."""
    from alpaca_eval.metrics.winrate import get_winrate

    out = {k: (float(v) if v is not None else None) for k, v in get_winrate(records).items()}
    if len(records) < N_SPLITS:
        return {**out, "length_controlled_winrate": None, "glm": f"none: fewer than {N_SPLITS} prompts"}
    try:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

        lc = get_length_controlled_winrate(records, save_weights_dir=None, is_warn_extreme_changes=False)
        return {**out, "length_controlled_winrate": float(lc["length_controlled_winrate"]),
                "lc_standard_error": float(lc["lc_standard_error"]), "glm": "length_controlled_v1"}
    except OSError as e:  # df_gamed.csv not reachable (huggingface_hub's errors are OSErrors)
        return {**out, "length_controlled_winrate": _minimal_glm(records),
                "glm": f"length_controlled_minimal (length_controlled_v1's df_gamed.csv unavailable: "
                       f"{type(e).__name__})"}
