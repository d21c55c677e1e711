"""The data loaders: the datasets, R's stored numbers and printed outputs, and their errors."""
import pytest

import lmm_helpers as lh


def test_toy_is_the_articles_data():
    toy = lh.load_toy()
    assert list(toy.columns) == ["Ind", "Treat", "Resp"]
    assert toy.sort_values(["Ind", "Treat"]).Resp.tolist() == [10, 25, 3, 6]


def test_reference_value_reads_one_stored_number():
    ref = lh.load_reference()
    row = ref[(ref.dataset == "toy") & (ref.model == "lmer_ML") & (ref.quantity == "se") & (ref.term == "Treat")]
    assert lh.reference_value("toy", "lmer_ML", "se", "Treat") == float(row.value.iloc[0])


@pytest.mark.parametrize("args, message", [
    (("toyx", "lmer_ML", "sigma"), "dataset: no 'toyx'"),
    (("toy", "lmer_X", "sigma"), "model: no 'lmer_X' for {'dataset': 'toy'}"),
    (("toy", "lmer_ML", "sigmax"), "quantity: no 'sigmax'"),
    (("toy", "lmer_ML", "se", "X"), "term: no 'X' for {'dataset': 'toy', 'model': 'lmer_ML', 'quantity': 'se'}"),
    (("toy", "lmer_ML", "se"), "term: no ''"),  # se has one value per term: the term must be named
])
def test_reference_value_names_the_argument_that_matches_nothing(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        lh.reference_value(*args)


@pytest.mark.parametrize("loader, name", [(lh.load_dataset, "nosuch"), (lh.r_output, "nosuch")])
def test_unknown_names_are_refused(loader, name):
    with pytest.raises(ValueError, match="name: no"):
        loader(name)
