"""Shared fixtures: R's stored reference numbers and the datasets."""
import numpy as np
import pandas as pd
import pytest

import lmm_helpers as lh


@pytest.fixture(scope="session")
def ref() -> pd.DataFrame:
    return lh.load_reference()


def r_values(ref: pd.DataFrame, dataset: str, model: str, quantity: str) -> pd.Series:
    """R's numbers for one quantity of one model, indexed by term, in R's order."""
    hit = ref[(ref.dataset == dataset) & (ref.model == model) & (ref.quantity == quantity)]
    if hit.empty:
        raise KeyError((dataset, model, quantity))
    return pd.Series(hit["value"].to_numpy(), index=hit["term"].to_numpy())


def design(dataset: str):
    """y, X (with R's column order), groups and column names of each reference model."""
    df = lh.load_dataset(dataset)
    one = np.ones(len(df))
    if dataset == "toy":
        return df.Resp, np.column_stack([one, df.Treat]), df.Ind, ["(Intercept)", "Treat"]
    if dataset == "sleepstudy":
        return df.Reaction, np.column_stack([one, df.Days]), df.Subject, ["(Intercept)", "Days"]
    if dataset == "grouseticks":  # Year is a factor in R: treatment contrasts against 95
        X = np.column_stack([one, df.Year == 96, df.Year == 97, df.Height]).astype(float)
        return df.logTicks, X, df.Brood, ["(Intercept)", "Year96", "Year97", "Height"]
    if dataset == "singular":
        return df.y, np.column_stack([one, df.x]), df.g, ["(Intercept)", "x"]
    raise KeyError(dataset)
