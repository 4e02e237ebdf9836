import numpy as np
import pyarrow.parquet as pq
import pytest

from distillery.data.schema import LOG_SCHEMA, row_problem
from distillery.data.synthetic import SyntheticConfig, generate, write_splits
from distillery.data.text import to_text


def _auc(y, s):
    order = np.argsort(s)
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y.sum()
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))


def test_same_seed_same_rows_other_seed_other_rows():
    cfg = SyntheticConfig(seed=3, rows_test=500)
    a, b = generate(cfg, "test"), generate(cfg, "test")
    assert a.equals(b)
    c = generate(SyntheticConfig(seed=4, rows_test=500), "test")
    assert a["query"].to_pylist() != c["query"].to_pylist()


def test_splits_are_independent_streams():
    cfg = SyntheticConfig(rows_train=300, rows_test=300)
    assert generate(cfg, "train")["query"].to_pylist() != generate(cfg, "test")["query"].to_pylist()


def test_click_rate_and_oracle_auc_in_realistic_range():
    table = generate(SyntheticConfig(seed=0, rows_test=40_000), "test")
    y = table["click"].to_numpy()
    p = table["click_prob"].to_numpy()
    assert 0.01 <= y.mean() <= 0.05
    assert 0.72 <= _auc(y, p) <= 0.82
    # the drawn clicks follow the stored probability
    assert abs(y.mean() - p.mean()) < 0.004


def test_relevance_is_carried_by_meaning_not_shared_words():
    """Matching ads raise the click rate although query and ad share no fixed wording."""
    cfg = SyntheticConfig(seed=1, rows_test=20_000, noise_std=0.0)
    table = generate(cfg, "test").to_pandas()
    from distillery.data.vocab import TOPICS

    topic_of_title = {t: name for name, spec in TOPICS.items() for t in spec[3]}
    topic_of_phrase = {q: name for name, spec in TOPICS.items() for q in spec[2]}

    def query_topic(q):
        return next(t for phrase, t in sorted(topic_of_phrase.items(), key=lambda kv: -len(kv[0])) if phrase in q)

    sample = table.head(3000)
    same = sample.apply(lambda r: topic_of_title[r.ad_title] == query_topic(r.query), axis=1)
    assert sample.click_prob[same].mean() > 2.5 * sample.click_prob[~same].mean()
    # titles never repeat the query's phrase word for word
    assert not any(phrase in title.lower() for phrase in topic_of_phrase for title in topic_of_title)


def test_rows_are_valid_log_rows(tmp_path):
    cfg = SyntheticConfig(rows_train=50, rows_unlabeled=80, rows_test=40, files_per_split=3)
    summary = write_splits(cfg, str(tmp_path))
    assert summary["unlabeled"]["rows"] == 80 and summary["unlabeled"]["files"] == 3
    table = pq.read_table(tmp_path / "unlabeled")
    assert table.num_rows == 80
    assert table.schema.equals(LOG_SCHEMA, check_metadata=False)
    assert len(set(table["id"].to_pylist())) == 80
    for row in table.slice(0, 20).to_pylist():
        assert row_problem(row) is None
        text = to_text(row)
        assert text.startswith("query: ") and "| ad: " in text and "click" not in text


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split"):
        generate(SyntheticConfig(), "validation")
